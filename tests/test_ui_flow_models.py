"""SD 3.x and Flux in the window (issue 18): the controls a flow model does not use are off and say why, guidance is
Flux's distilled guidance (none on schnell), and Run > Performance… reaches the engine; driven through the real
window over the mock backend (pytest-qt, offscreen)."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image
from PySide6.QtWidgets import QDialogButtonBox, QListWidget

import desktop_app.worker as worker_module
from desktop_app.core.model_registry import CURATED
from desktop_app.core.modelinfo import is_flow
from desktop_app.core.requests import EditRequest, GenerateRequest
from desktop_app.model.lora_library import FAMILY_NAMES
from desktop_app.ui.settings import load_engine_options, make_settings, save_engine_options
from desktop_app.worker import EngineOptions
from tests.ui_conftest_helpers import FakeEngine, child, choose, click_generate, make_window, qloop  # noqa: F401

FAMILIES = {
    "owner/schnell": "flux-schnell",
    "owner/dev": "flux-dev",
    "owner/fill": "flux-fill",
    "owner/kontext": "flux-kontext",
    "owner/sd35": "sd3",
}


@pytest.fixture
def engine():
    fake = FakeEngine()
    fake.families.update(FAMILIES)
    fake.defaults.update(
        {
            "owner/schnell": {"steps": 4, "guidance": 0.0, "width": 64, "height": 64},
            "owner/dev": {"steps": 28, "guidance": 3.5, "width": 64, "height": 64},
            "owner/kontext": {"steps": 28, "guidance": 2.5, "width": 64, "height": 64},
            "owner/sd35": {"steps": 28, "guidance": 4.5, "width": 64, "height": 64},
        }
    )
    return fake


@pytest.fixture
def window(qtbot, qloop, tmp_path, engine):
    w = make_window(qtbot, tmp_path / "data", engine)
    yield w
    w.close()


def load(qtbot, w, source):
    with qtbot.waitSignal(w.models.defaultsReady, timeout=10000):
        w.models.select(source)


def test_flux_schnell_takes_no_sampler_guidance_or_negative_prompt(qtbot, window, engine):
    pp = window.prompt_panel
    pp.negative_prompt_edit.setPlainText("blurry")
    pp.set_sampler("euler")
    pp.clip_skip_spin.setValue(2)
    load(qtbot, window, "owner/schnell")
    sampler, guidance = child(window, "schedulerCombo"), child(window, "guidanceSpin")
    assert not sampler.isEnabled() and "flow-matching scheduler" in sampler.toolTip()
    assert not child(window, "scheduleCombo").isEnabled() and not child(window, "clipSkipSpin").isEnabled()
    assert not guidance.isEnabled() and guidance.value() == 0 and "without guidance" in guidance.toolTip()
    negative = child(window, "negativePromptEdit")
    assert not negative.isEnabled() and "does not use a negative prompt" in negative.toolTip()
    assert pp.steps_spin.value() == 4
    pp.prompt_edit.setPlainText("a cat")
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert isinstance(request, GenerateRequest)
    # what the model would refuse or ignore is not sent: no sampler, no clip skip, guidance 0, no negative prompt
    assert (request.scheduler, request.clip_skip, request.guidance, request.negative_prompt) == (None, None, 0, "")


def test_flux_dev_fill_and_kontext_take_distilled_guidance(qtbot, window, engine):
    for source in ("owner/dev", "owner/fill", "owner/kontext"):
        load(qtbot, window, source)
        guidance = child(window, "guidanceSpin")
        assert child(window, "guidanceLabel").text() == "Distilled guidance"
        assert guidance.isEnabled() and "guidance-distilled" in guidance.toolTip()
        assert not child(window, "negativePromptEdit").isEnabled()
        assert FAMILY_NAMES[FAMILIES[source]] in guidance.toolTip()
    assert child(window, "guidanceSpin").value() == 2.5  # Kontext's own
    window.set_source_image(Image.new("RGB", (64, 64)))
    window.prompt_panel.set_mode("edit")
    assert child(window, "promptLabel").text() == "Instruction (what to change)"
    window.prompt_panel.prompt_edit.setPlainText("make the circle blue")
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert isinstance(request, EditRequest)
    assert (request.method, request.guidance, request.scheduler, request.source_prompt) == (
        "kontext",
        2.5,
        None,
        "",
    )


def test_sd3_keeps_cfg_and_the_negative_prompt(qtbot, window, engine):
    load(qtbot, window, "owner/sd35")
    assert child(window, "guidanceLabel").text() == "Guidance" and child(window, "guidanceSpin").isEnabled()
    assert child(window, "negativePromptEdit").isEnabled()
    assert not child(window, "schedulerCombo").isEnabled()
    window.prompt_panel.negative_prompt_edit.setPlainText("blurry")
    click_generate(qtbot, window)
    assert engine.runs[-1].negative_prompt == "blurry" and engine.runs[-1].guidance == 4.5
    # back on a Stable Diffusion model everything is there again
    load(qtbot, window, "builtin")
    assert child(window, "schedulerCombo").isEnabled() and child(window, "clipSkipSpin").isEnabled()
    assert child(window, "guidanceSpin").isEnabled() and child(window, "negativePromptEdit").isEnabled()
    assert child(window, "suggestMaskButton").isEnabled()
    choose_flow = [
        child(window, "editMethodCombo").itemData(i) for i in range(child(window, "editMethodCombo").count())
    ]
    assert choose_flow == ["direct", "negative-prompt", "ddim", "ledits"]


def test_an_edit_on_a_flow_model_sends_its_flow_solver(qtbot, window, engine):
    load(qtbot, window, "owner/dev")
    window.set_source_image(Image.new("RGB", (64, 64)))
    window.prompt_panel.set_mode("edit")
    choose(qtbot, child(window, "editMethodCombo"), "RF-Solver")
    assert not child(window, "attentionControlCheck").isVisible()  # Prompt-to-Prompt runs over SD's inversions
    assert "flow" in child(window, "editHintLabel").text()
    suggest = child(window, "suggestMaskButton")
    assert not suggest.isEnabled() and "paint the mask" in suggest.toolTip()  # no UNet to suggest one from
    window.prompt_panel.prompt_edit.setPlainText("a blue circle")
    click_generate(qtbot, window)
    assert (engine.runs[-1].method, engine.runs[-1].attention_control) == ("rf-solver", None)


def test_the_models_dialog_lists_the_flow_models_with_their_families(qtbot, window):
    from desktop_app.ui.models_dialog import ModelsDialog

    flow = [m for m in CURATED if is_flow(m.family)]
    assert {m.family for m in flow} >= {"sd3", "flux-dev", "flux-schnell", "flux-fill", "flux-kontext"}
    dlg = ModelsDialog(window.models, window)
    qtbot.addWidget(dlg)
    curated = dlg.findChild(QListWidget, "curatedList")
    assert curated is not None
    texts = [curated.item(i).text() for i in range(curated.count())]
    for model in flow:
        assert any(model.name in t and FAMILY_NAMES[model.family] in t for t in texts), (model.name, texts)


# -- performance settings ---------------------------------------------------------------------------------------
def test_performance_settings_persist_and_reach_the_engine_factory(qtbot, qloop, tmp_path, monkeypatch):
    monkeypatch.setattr(worker_module, "_engine_options", EngineOptions())  # put back after: later engines are plain
    data = tmp_path / "data"
    chosen = EngineOptions(device="cpu", dtype="fp32", attention_slicing=True, vae_tiling=True)
    settings = make_settings(data)
    save_engine_options(settings, chosen)
    settings.sync()
    made: list[EngineOptions] = []
    fake = FakeEngine()

    def factory():
        made.append(worker_module.engine_options())  # what default_engine_factory builds the engine with
        return fake

    from desktop_app.app.wiring import create_main_window

    w = create_main_window(data_dir=data, engine_factory=factory)
    qtbot.addWidget(w)
    try:
        w.prompt_panel.prompt_edit.setPlainText("a cat")
        click_generate(qtbot, w)
        assert made == [chosen]  # the first engine is made with the kept settings
        dlg = w.open_performance_dialog()
        assert child(dlg, "deviceCombo").currentData() == "cpu" and child(dlg, "AttentionSlicingCheck").isChecked()
        choose(qtbot, child(dlg, "dtypeCombo"), "bf16 (Flux's own; recent GPUs)")
        child(dlg, "SequentialOffloadCheck").setChecked(True)
        assert "next model load" in child(dlg, "performanceNote").text()
        buttons = dlg.findChild(QDialogButtonBox)
        assert buttons is not None
        buttons.button(QDialogButtonBox.StandardButton.Ok).click()
        wanted = dataclasses.replace(chosen, dtype="bf16", sequential_offload=True)
        assert load_engine_options(make_settings(data)) == wanted  # kept for the next session
        assert w.worker.engine_options == wanted
        click_generate(qtbot, w)  # between jobs the worker makes its engine again, with them
        assert made == [chosen, wanted]
        click_generate(qtbot, w)
        assert len(made) == 2  # only a change does
    finally:
        w.close()


def test_out_of_memory_says_where_the_option_is(qtbot, window, engine):
    from desktop_app.core.errors import OutOfMemory

    engine.fail_next = OutOfMemory(
        "The CUDA ran out of memory for this job.", "Turn on VAE tiling: large images then decode in tiles."
    )
    window.generate()
    qtbot.waitUntil(lambda: window.error_banner.isVisible(), timeout=5000)
    assert window.last_error == (
        "The CUDA ran out of memory for this job.",
        "Turn on VAE tiling: large images then decode in tiles. (Run > Performance…)",
    )


def test_damaged_performance_settings_fall_back_to_automatic(tmp_path):
    settings = make_settings(tmp_path)
    settings.setValue("performance/device", "tpu")
    settings.setValue("performance/dtype", "fp8")
    settings.setValue("performance/vae_tiling", "true")
    assert load_engine_options(settings) == EngineOptions(vae_tiling=True)


def test_the_real_engine_takes_the_options_when_made_and_between_jobs(tiny_model_dir):
    engine = worker_module.default_engine_factory(
        EngineOptions(device="cpu", dtype="fp32", attention_slicing=True, vae_tiling=True)
    )
    assert engine.device.type == "cpu" and str(engine.dtype) == "torch.float32"
    assert engine.models.memory.attention_slicing and engine.models.memory.vae_tiling
    assert not engine.models.memory.cpu_offload
    engine.models.get(str(tiny_model_dir))
    worker_module.reconfigure_engine(engine, EngineOptions(device="cpu", dtype="bf16", sequential_offload=True))
    assert engine.models.loaded is None  # let go: the next job loads it with the new options
    assert str(engine.dtype) == str(engine.models.dtype) == "torch.bfloat16"
    memory = engine.models.memory
    assert memory.sequential_offload and not memory.cpu_offload and not memory.attention_slicing


# -- the real window on the real engine with a tiny FLUX.1 schnell ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_schnell(tmp_path_factory):
    from tiny_flow import tiny_flow_dir

    return tiny_flow_dir(tmp_path_factory, "flux-schnell")


def test_real_flux_schnell_in_the_window(qtbot, qloop, tmp_path, tiny_schnell):
    """The engine's word on the family sets the controls, and what the window then sends runs: no guidance, no
    sampler, no negative prompt, schnell's 4 steps."""
    from desktop_app.app.wiring import create_main_window
    from desktop_app.engine.engine import Engine

    engine = Engine(device="cpu")
    w = create_main_window(data_dir=tmp_path / "data", engine_factory=lambda: engine)
    qtbot.addWidget(w)
    w.show()
    try:
        pp = w.prompt_panel
        pp.negative_prompt_edit.setPlainText("blurry")
        pp.guidance_spin.setValue(7.0)
        with qtbot.waitSignal(w.models.defaultsReady, timeout=120000):
            w.models.select(str(tiny_schnell))
        assert w.models.family() == "flux-schnell"
        assert not pp.guidance_spin.isEnabled() and pp.guidance_spin.value() == 0
        assert not pp.scheduler_combo.isEnabled() and not pp.negative_prompt_edit.isEnabled()
        assert pp.steps_spin.value() == 4 and pp.edit_methods() == ["fireflow", "rf-solver", "rf-inversion"]
        pp.prompt_edit.setPlainText("a red circle")
        result = click_generate(qtbot, w, timeout=120000)
        assert result.images[0].size == (64, 64) and len(result.seeds) == 1
        assert (result.request.guidance, result.request.negative_prompt, result.request.steps) == (0, "", 4)
    finally:
        w.close()
