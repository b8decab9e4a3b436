"""The prompt panel's issue-14 controls driven as a user does: the Sampler and Schedule type combos, Clip skip, the
LoRA picker; parameters read from a PNG or the history set them; engine notices reach the status bar."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor
from safetensors.numpy import save_file

from desktop_app.core.events import Result
from desktop_app.core.images import save_png
from desktop_app.core.infotext import png_info
from desktop_app.core.requests import GenerateRequest
from desktop_app.core.samplers import SAMPLERS, SCHEDULES
from tests.ui_conftest_helpers import FakeEngine, child, choose, click_generate, make_window, qloop, type_into  # noqa: F401


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def window(qtbot, qloop, tmp_path, engine):  # noqa: F811
    w = make_window(qtbot, tmp_path / "data", engine)
    yield w
    w.close()


def test_samplers_and_schedules_are_listed_by_their_a1111_names(window):
    sampler, schedule = child(window, "schedulerCombo"), child(window, "scheduleCombo")
    names = [sampler.itemText(i) for i in range(sampler.count())]
    assert names[0].startswith("Model default")
    assert names[1:] == list(SAMPLERS.values())
    assert "DPM++ 2M SDE" in names and "Euler a" in names and "UniPC" in names
    assert [schedule.itemText(i) for i in range(schedule.count())] == ["Automatic", *SCHEDULES.values()]
    assert not schedule.isEnabled()  # the model's default sampler runs on its own schedule


def test_the_chosen_sampler_schedule_and_clip_skip_reach_the_request(qtbot, window, engine):
    choose(qtbot, child(window, "schedulerCombo"), "DPM++ 2M")
    schedule = child(window, "scheduleCombo")
    assert schedule.isEnabled()
    choose(qtbot, schedule, "Karras")
    type_into(qtbot, child(window, "clipSkipSpin"), "2")
    qtbot.keyClicks(child(window, "promptEdit"), "a red circle")
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert (request.scheduler, request.schedule, request.clip_skip) == ("dpmpp_2m", "karras", 2)
    assert request.prompt == "a red circle"

    # Euler a has no Karras schedule: the combo falls back to Automatic and offers only what it can do
    choose(qtbot, child(window, "schedulerCombo"), "Euler a")
    assert schedule.currentText() == "Automatic" and not schedule.isEnabled()
    type_into(qtbot, child(window, "clipSkipSpin"), "1")
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert (request.scheduler, request.schedule, request.clip_skip) == ("euler_a", None, None)


def test_a_png_of_ours_sets_sampler_schedule_and_clip_skip(qtbot, window, tmp_path):
    made = GenerateRequest(prompt="a blue square", scheduler="dpmpp_sde", schedule="exponential", clip_skip=3, seed=5)
    result = Result(request=made, images=[Image.new("RGB", (64, 64), (0, 0, 200))], seeds=[5])
    path = tmp_path / "ours.png"
    save_png(result.images[0], path, png_info(result, 0))
    assert window.open_image(str(path))
    assert child(window, "schedulerCombo").currentText() == "DPM++ SDE"
    assert child(window, "scheduleCombo").currentText() == "Exponential"
    assert child(window, "clipSkipSpin").value() == 3
    assert window.build_request().clip_skip == 3


def test_use_parameters_from_the_history_sets_both_combos(qtbot, window, engine):
    choose(qtbot, child(window, "schedulerCombo"), "UniPC")
    choose(qtbot, child(window, "scheduleCombo"), "Karras")
    type_into(qtbot, child(window, "clipSkipSpin"), "2")
    result = click_generate(qtbot, window)
    choose(qtbot, child(window, "schedulerCombo"), "DDIM")
    type_into(qtbot, child(window, "clipSkipSpin"), "1")
    window._on_history_reuse(result.request)  # the history panel's "Use parameters"
    assert child(window, "schedulerCombo").currentText() == "UniPC"
    assert child(window, "scheduleCombo").currentText() == "Karras"
    assert child(window, "clipSkipSpin").value() == 2


def test_the_last_sessions_sampler_schedule_and_clip_skip_come_back(qtbot, qloop, tmp_path):  # noqa: F811
    first = make_window(qtbot, tmp_path / "data", FakeEngine())
    choose(qtbot, child(first, "schedulerCombo"), "DPM++ 2M SDE")
    choose(qtbot, child(first, "scheduleCombo"), "Exponential")
    type_into(qtbot, child(first, "clipSkipSpin"), "2")
    first.close()
    second = make_window(qtbot, tmp_path / "data", FakeEngine())
    values = second.prompt_panel.values()
    assert (values["scheduler"], values["schedule"], values["clip_skip"]) == ("dpmpp_2m_sde", "exponential", 2)
    second.close()


# -- the LoRA picker ------------------------------------------------------------------------------------
def _lora(path, width):
    """A kohya-style LoRA whose cross-attention width says its family (768: SD 1.x, 2048: SDXL)."""
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    if width == 2048:
        base = "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k"
    tensors = {
        f"{base}.lora_down.weight": np.zeros((4, width), np.float16),
        f"{base}.lora_up.weight": np.zeros((320, 4), np.float16),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def test_a_lora_is_listed_with_its_family_and_inserted_as_a_tag_at_the_cursor(qtbot, window, engine, tmp_path):
    folder = tmp_path / "data" / "loras"
    _lora(folder / "shapes.safetensors", 768)
    _lora(folder / "xl_style.safetensors", 2048)
    choose(qtbot, child(window, "modelPicker"), "Built-in (shapes)")  # loaded: the engine says it is SD 1.x
    qtbot.waitUntil(lambda: window.models.info(window.models.current()) is not None, timeout=5000)
    qtbot.mouseClick(child(window, "loraSectionToggle"), Qt.MouseButton.LeftButton)
    rows = child(window, "loraList")
    texts = [rows.item(i).text() for i in range(rows.count())]
    assert texts[0].startswith("shapes") and "SD 1.x" in texts[0] and "⚠" not in texts[0]
    assert texts[1].startswith("xl_style") and "SDXL" in texts[1] and "⚠" in texts[1]  # not for this SD 1.x model

    prompt = child(window, "promptEdit")
    qtbot.keyClicks(prompt, "a red circle on grey")
    cursor = prompt.textCursor()
    cursor.setPosition(len("a red circle"))
    prompt.setTextCursor(cursor)
    qtbot.mouseClick(rows.viewport(), Qt.MouseButton.LeftButton, pos=rows.visualItemRect(rows.item(0)).center())
    type_into(qtbot, child(window, "loraWeightSpin"), "0.8")
    prompt.setTextCursor(cursor)  # the weight spin took the focus; the prompt keeps its cursor place
    qtbot.mouseClick(child(window, "insertLoraButton"), Qt.MouseButton.LeftButton)
    assert prompt.toPlainText() == "a red circle <lora:shapes:0.8> on grey"
    click_generate(qtbot, window)
    assert engine.runs[-1].prompt == "a red circle <lora:shapes:0.8> on grey"

    # the SDXL one says why it will not load, in the picker and when inserted
    qtbot.mouseClick(rows.viewport(), Qt.MouseButton.LeftButton, pos=rows.visualItemRect(rows.item(1)).center())
    note = child(window, "loraNoteLabel")
    assert note.isVisible() and "SDXL" in note.text() and "SD 1.x" in note.text()
    prompt.moveCursor(QTextCursor.MoveOperation.End)
    qtbot.mouseDClick(rows.viewport(), Qt.MouseButton.LeftButton, pos=rows.visualItemRect(rows.item(1)).center())
    assert prompt.toPlainText().endswith("on grey <lora:xl_style:1>")
    assert "will not load" in window.statusBar().currentMessage()
    # the weight is each LoRA's own
    qtbot.mouseClick(rows.viewport(), Qt.MouseButton.LeftButton, pos=rows.visualItemRect(rows.item(0)).center())
    assert abs(child(window, "loraWeightSpin").value() - 0.8) < 1e-9


def test_refresh_lists_a_lora_added_to_the_folder_and_an_empty_folder_says_where(qtbot, window, tmp_path, monkeypatch):
    qtbot.mouseClick(child(window, "loraSectionToggle"), Qt.MouseButton.LeftButton)
    empty = child(window, "loraEmptyLabel")
    assert empty.isVisible() and str(tmp_path / "data" / "loras") in empty.text()
    assert not child(window, "insertLoraButton").isEnabled()
    _lora(tmp_path / "data" / "loras" / "late.safetensors", 768)
    qtbot.mouseClick(child(window, "refreshLorasButton"), Qt.MouseButton.LeftButton)
    assert child(window, "loraList").count() == 1 and not empty.isVisible()
    opened = []
    from desktop_app.ui import lora_picker

    # no file manager in the test: what the desktop is asked to open is enough
    monkeypatch.setattr(lora_picker.QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    qtbot.mouseClick(child(window, "openLoraFolderButton"), Qt.MouseButton.LeftButton)
    assert opened == [str(tmp_path / "data" / "loras")]


def test_an_engine_notice_stays_in_the_status_bar_after_the_job(qtbot, window, engine):
    engine.notices = ["<lora:missing:1>: no LoRA named missing in the LoRA folder; the job ran without it"]
    qtbot.keyClicks(child(window, "promptEdit"), "a circle <lora:missing:1>")
    click_generate(qtbot, window)
    message = window.statusBar().currentMessage()
    assert message.startswith("Done") and "no LoRA named missing" in message  # not hidden by "Done"
    engine.notices = []
    click_generate(qtbot, window)
    assert "missing" not in window.statusBar().currentMessage()  # the next job's status is its own


def test_the_clip_skip_spin_never_passes_twelve(qtbot, window):
    spin = child(window, "clipSkipSpin")
    type_into(qtbot, spin, "40")
    assert spin.value() <= 12
    assert window.build_request().clip_skip == spin.value()
