"""The defects a new user hit in the window (issue 12), each driven through the real window (pytest-qt, offscreen)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QMessageBox, QToolBar, QToolButton, QWidget

from desktop_app.core.events import Progress, Result
from desktop_app.core.latents import LatentPreviewer, Trajectory
from desktop_app.core.requests import EditRequest, GenerateRequest, InpaintRequest
from tests.test_hostile_inputs import read_only_data  # noqa: F401  (a fixture)
from tests.ui_conftest_helpers import FakeEngine, child, click_generate, make_window, paint, qloop  # noqa: F401

IDENTITY = LatentPreviewer(np.concatenate([np.eye(3, dtype=np.float32), np.zeros((1, 3), np.float32)]))


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def window(qtbot, qloop, tmp_path, engine):
    w = make_window(qtbot, tmp_path / "data", engine)
    yield w
    w.close()


def canvas_pixel(w, x, y):
    """The colour the canvas paints at image pixel (x, y)."""
    p = w.canvas.image_to_widget(x + 0.5, y + 0.5)
    return QColor(w.canvas.grab().toImage().pixel(int(p.x()), int(p.y())))


def batch_result(colours):
    """A finished run of len(colours) images whose trajectories differ per image (flat colours per step)."""
    steps, b = 4, len(colours)
    xt, x0 = [], []
    for i in range(steps):
        frames = np.stack(
            [
                np.full((3, 4, 4), (np.array(c, np.float32) / 127.5 - 1)[:, None, None] * (i + 1) / steps)
                for c in colours
            ]
        )
        x0.append(frames.astype(np.float32))
        xt.append(frames.astype(np.float32) * 0.5)
    traj = Trajectory(timesteps=[999, 666, 333, 0], xt=xt, x0=x0, previewer=IDENTITY, model="builtin")
    images = [Image.new("RGB", (16, 16), c) for c in colours]
    return Result(
        request=GenerateRequest(prompt="p", seed=1, batch=b, model="builtin"),
        images=images,
        seeds=[1, 2, 3][:b],
        trajectory=traj,
    )


# -- defect 3 -------------------------------------------------------------------------------------
def test_slider_scrubs_the_batch_image_that_is_shown(qtbot, window):
    result = batch_result([(250, 0, 0), (0, 0, 250), (0, 250, 0)])
    window.show_result(result)
    window.canvas.setFocus()
    qtbot.keyClick(window.canvas, Qt.Key.Key_Right, Qt.KeyboardModifier.AltModifier)  # image 2: blue
    assert window.image_index_label.text() == "2 / 3"
    slider = child(window, "timestepSlider")
    slider.setValue(2)
    shown = np.asarray(window.canvas.shown_image())
    assert shown[..., 2].mean() > 150 and shown[..., 0].mean() < 60, "the slider scrubbed another image of the batch"
    # the full decode, when the slider rests, is of the shown image too
    qtbot.waitUntil(lambda: window.canvas.shown_image().size == (16, 16), timeout=5000)
    shown = np.asarray(window.canvas.shown_image())
    assert shown[..., 2].mean() > 150 and shown[..., 0].mean() < 60


# -- defect 4 -------------------------------------------------------------------------------------
def test_every_image_mode_shows_its_strength_and_inpaint_its_controls(qtbot, window, engine):
    window.set_source_image(Image.new("RGB", (64, 64), (40, 40, 40)))
    strength = child(window, "strengthSpin")
    for mode in ("img2img", "inpaint", "edit"):
        window.prompt_panel.set_mode(mode)
        assert strength.isVisible(), f"{mode} hides its strength"
    window.prompt_panel.set_mode("generate")
    assert not strength.isVisible()
    window.prompt_panel.set_mode("inpaint")
    for name in ("onlyMaskedCheck", "onlyMaskedPaddingSpin", "maskBlurSpin", "maskGrowSpin"):
        assert child(window, name).isVisible(), name
    paint(qtbot, window, [(20, 20), (40, 40)])
    strength.setValue(0.55)
    qtbot.mouseClick(child(window, "onlyMaskedCheck"), Qt.MouseButton.LeftButton)
    child(window, "onlyMaskedPaddingSpin").setValue(48)
    child(window, "maskGrowSpin").setValue(3)
    child(window, "stepsSpin").setValue(2)
    click_generate(qtbot, window)
    req = engine.runs[-1]
    assert isinstance(req, InpaintRequest)
    assert (req.strength, req.only_masked, req.only_masked_padding, req.mask_grow) == (0.55, True, 48, 3)
    # the slider shows the same strength, without toggling "Start t"
    window.prompt_panel.set_mode("img2img")
    strength.setValue(0.3)
    window.timestep_panel.timeline.set_mode("t0")
    assert window.timestep_panel.label.text() == "t₀ = 300 · 0.30"


# -- defect 5 -------------------------------------------------------------------------------------
def test_at_1024x700_no_control_hides_behind_a_chevron(qtbot, window):
    window.resize(1024, 700)
    qtbot.wait(50)
    for bar in window.findChildren(QToolBar):
        ext = bar.findChild(QToolButton, "qt_toolbar_ext_button")
        assert ext is None or not ext.isVisible(), f"{bar.objectName()} hides some of its actions"
    assert child(window, "timestepSlider").width() >= 150
    for act in (window.act_undo, window.act_redo, window.act_clear, window.act_invert, window.act_use):
        button = window.mask_toolbar.widgetForAction(act)
        assert button is not None and button.isVisible(), act.text()


# -- defect 7 -------------------------------------------------------------------------------------
def test_ctrl_z_in_a_spin_box_undoes_the_mask(qtbot, window):
    window.set_source_image(Image.new("RGB", (64, 64)))
    paint(qtbot, window, [(32, 32)])
    assert window.canvas.mask_image() is not None
    steps = child(window, "stepsSpin")
    steps.setFocus()
    steps.setValue(12)
    qtbot.keyClick(steps, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert window.canvas.mask_image() is None, "Ctrl+Z went to the spin box"
    assert steps.value() == 12


# -- defect 10 ------------------------------------------------------------------------------------
def test_mask_colour_is_the_users_and_is_not_drawn_over_unrelated_results(qtbot, window):
    window.set_source_image(Image.new("RGB", (64, 64), (200, 30, 30)))  # a red picture: the pink overlay vanished on it
    window.brush.set_overlay_color("#00ff00")
    window.brush.set_overlay_opacity(1.0)
    paint(qtbot, window, [(32, 32)], size=16)
    c = canvas_pixel(window, 32, 32)
    assert c.green() > 200 and c.red() < 60
    # a picture made from text alone: the mask painted for the red source is not over it
    window.prompt_panel.set_mode("generate")
    child(window, "stepsSpin").setValue(1)
    result = click_generate(qtbot, window)
    c = canvas_pixel(window, 32, 32)
    assert (c.red(), c.green(), c.blue()) == result.images[0].getpixel((32, 32))
    # back on the source, the mask is there again
    window.document.show_source()
    assert canvas_pixel(window, 32, 32).green() > 200


# -- defect 13 ------------------------------------------------------------------------------------
def test_suggest_mask_says_it_is_busy_and_shows_its_failure(qtbot, window, engine, monkeypatch):
    def slow_failure(*args, **kwargs):
        time.sleep(0.3)
        raise RuntimeError("no attention maps")

    monkeypatch.setattr(engine, "suggest_mask", slow_failure)
    window.set_source_image(Image.new("RGB", (64, 64)))
    window.prompt_panel.set_mode("edit")
    window.prompt_panel.prompt_edit.setPlainText("a blue circle")
    window.prompt_panel.source_prompt_edit.setText("a red circle")
    button = child(window, "suggestMaskButton")
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert not button.isEnabled() and "Suggesting" in button.text()
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=5000)
    assert "Suggesting a mask failed" in window.last_error[0] and window.error_banner.isVisible()
    assert button.isEnabled() and button.text() == "Suggest mask"


def test_suggest_mask_fills_the_mask(qtbot, window):
    window.set_source_image(Image.new("RGB", (64, 64)))
    window.prompt_panel.set_mode("edit")
    window.prompt_panel.prompt_edit.setPlainText("a blue circle")
    window.prompt_panel.source_prompt_edit.setText("a red circle")
    qtbot.mouseClick(child(window, "suggestMaskButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.canvas.mask_image() is not None, timeout=5000)
    assert np.asarray(window.canvas.mask_image())[32, 32] == 255
    window.canvas.undo()
    assert window.canvas.mask_image() is None


# -- defect 14 ------------------------------------------------------------------------------------
def test_scrubbing_an_older_result_after_a_model_switch_keeps_the_chosen_model(qtbot, window, engine, tmp_path):
    decodes = []
    engine_decode = engine.decode_trajectory
    engine.decode_trajectory = lambda *a, **k: decodes.append(a[1]) or engine_decode(*a, **k)
    child(window, "stepsSpin").setValue(4)
    click_generate(qtbot, window)  # with the built-in model
    folder = tmp_path / "other-model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    window.prompt_panel.set_model(str(folder))
    qtbot.waitUntil(lambda: window.models.state() == "ready", timeout=5000)
    loads = []
    window.worker.serviceDone.connect(lambda job, kind, value: loads.append(kind))
    child(window, "timestepSlider").setValue(1)
    window.timestep_panel._emit_rest_now()
    qtbot.wait(300)
    assert decodes == [] and "preload" not in loads
    assert window.models.current() == str(folder)
    assert window.document.showing == "view"  # the cheap preview still shows the step


# -- defect 16 (the window's side) --------------------------------------------------------------------
def test_a_broken_model_is_not_kept_and_changes_no_setting(qtbot, window):
    steps = child(window, "stepsSpin")
    steps.setValue(17)
    window.prompt_panel.set_model("/nowhere/missing-model")
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=5000)
    assert "missing-model" in window.last_error[0]
    assert window.models.current() == "builtin" and window.prompt_panel.model_picker.currentData() == "builtin"
    assert steps.value() == 17


# -- defect 8 (the text while a model loads) ------------------------------------------------------------
def test_the_first_job_says_it_loads_the_model(qtbot, window, engine):
    texts = []
    window.jobs.statusChanged.connect(texts.append)
    child(window, "stepsSpin").setValue(2)
    click_generate(qtbot, window)
    assert texts[0] == "Loading the built-in model…"
    assert texts[-1].startswith("Done")
    assert window.job_status_label.text().startswith("Done")


# -- defect 17 ------------------------------------------------------------------------------------
def test_an_error_banner_goes_when_its_cause_is_gone(qtbot, window, tmp_path):
    window.prompt_panel.set_mode("img2img")
    window.generate()
    assert window.error_banner.isVisible() and "source image" in window.last_error[0]
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    assert window.open_image(str(good))
    assert not window.error_banner.isVisible()


def test_edit_mode_names_the_target_prompt_and_its_methods(qtbot, window):
    window.set_source_image(Image.new("RGB", (64, 64)))
    window.prompt_panel.set_mode("edit")
    assert "Target prompt" in child(window, "promptLabel").text()
    combo = child(window, "editMethodCombo")
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert all(" " in label and label[0].isupper() for label in labels), labels
    assert combo.currentData() == "direct"
    window.prompt_panel.set_mode("img2img")
    assert child(window, "promptLabel").text() == "Prompt"


def test_a_replay_is_labelled_as_one(qtbot, window):
    child(window, "stepsSpin").setValue(2)
    click_generate(qtbot, window)
    window.use_result_as_source()
    window.prompt_panel.set_mode("edit")
    window.prompt_panel.source_prompt_edit.setText("a red square")
    job = window.generate()
    assert job is not None and window.jobs._jobs[job].replay
    window.jobs._on_progress(job, Progress(2, 8, 400, 5.0, 1.0, "invert"))
    assert window.job_status_label.text().startswith("Replaying the source 2/8")


def test_help_lists_the_shortcuts(qtbot, window):
    menus = [a.text().replace("&", "") for a in window.menuBar().actions()]
    assert "Help" in menus
    qtbot.keyClick(window, Qt.Key.Key_F1)
    dlg = window.findChild(QWidget, "shortcutsDialog")
    assert dlg is not None and dlg.isVisible()
    table = dlg.findChild(QWidget, "shortcutsTable")
    rows = {table.item(i, 0).text(): table.item(i, 1).text() for i in range(table.rowCount())}
    assert rows["Undo"] == "Ctrl+Z" and "Ctrl+Return" in rows["Generate"] and rows["Cancel current job"] == "Esc"
    dlg.close()


def test_the_default_brush_suits_the_image(qtbot, window):
    window.set_source_image(Image.new("RGB", (64, 64)))
    assert window.canvas.brush_size <= 8  # not half of a 64 px picture
    paint(qtbot, window, [(10, 10)], size=window.canvas.brush_size)
    assert np.asarray(window.canvas.mask_image()).mean() < 255 * 0.05


@pytest.mark.parametrize("answer", [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
def test_quitting_during_a_job_asks_first(qtbot, window, engine, monkeypatch, answer):
    engine.step_delay = 0.05
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or answer)
    child(window, "stepsSpin").setValue(100)
    window.generate()
    qtbot.waitUntil(lambda: window.jobs.is_running(), timeout=5000)
    window.close()
    assert asked and "running" in asked[0]
    if answer == QMessageBox.StandardButton.No:
        assert window.isVisible() and window.jobs.pending() == 1
        window.jobs.cancel_all()
        qtbot.waitUntil(lambda: window.jobs.pending() == 0, timeout=5000)
    else:
        assert not window.isVisible()


def test_a_finished_result_is_saved_to_the_history_with_its_parent(qtbot, window):
    child(window, "stepsSpin").setValue(2)
    first = click_generate(qtbot, window)
    saver = window.history_saver
    qtbot.waitUntil(lambda: saver.pending() == 0 and bool(saver.entries_for(first)), timeout=5000)
    window.use_result_as_source()
    window.prompt_panel.set_mode("img2img")
    second = click_generate(qtbot, window)
    qtbot.waitUntil(lambda: saver.pending() == 0 and bool(saver.entries_for(second)), timeout=5000)
    parent = saver.entries_for(first)[0]
    child_entry = saver.entries_for(second)[0]
    assert child_entry.parent_id == parent.id
    assert len(window.history.list()) == 2


def test_edit_request_takes_its_strength_on_the_models_schedule(qtbot, window):
    window.set_source_image(Image.new("RGB", (64, 64)))
    window.prompt_panel.set_mode("edit")
    child(window, "strengthSpin").setValue(1.0)
    req = window.build_request()
    assert isinstance(req, EditRequest) and req.t0 == window.timeline.T - 1  # the deepest timestep, never T


def test_a_value_typed_while_a_model_loads_is_kept(qtbot, window, tmp_path):
    folder = tmp_path / "slow-model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    (folder / "diffusion_desk.json").write_text('{"steps": 9, "guidance": 2.5, "width": 128, "height": 128}')
    window.prompt_panel.set_model(str(folder))  # the load runs on the worker thread
    child(window, "stepsSpin").setValue(13)  # typed before the load ends
    qtbot.waitUntil(lambda: window.models.state() == "ready", timeout=5000)
    assert child(window, "stepsSpin").value() == 13
    assert child(window, "guidanceSpin").value() == 2.5  # what the user did not touch takes the model's value


def test_a_history_that_cannot_open_says_why(qtbot, qloop, tmp_path, engine):
    from PySide6.QtWidgets import QLabel

    data = tmp_path / "data"
    data.mkdir()
    (data / "history").write_text("not a folder")
    w = make_window(qtbot, data, engine)
    try:
        texts = " ".join(label.text() for label in w.history_panel.findChildren(QLabel) if label.isVisible())
        assert "The history is not open" in texts and "history" in texts.split("The history is not open", 1)[1]
        child(w, "stepsSpin").setValue(1)
        result = click_generate(qtbot, w)  # the window keeps working; the result stays in memory
        assert w.history_saver.unsaved() == [result]
    finally:
        w.close()


def test_the_window_opens_on_a_data_folder_it_cannot_create(qtbot, qloop, read_only_data, engine):
    """A `--data-dir` that does not exist under a read-only folder: the window opens and makes images (its settings
    and history are not kept); it used to stop with an OSError from creating the settings folder."""
    w = make_window(qtbot, read_only_data / "new", engine)
    try:
        child(w, "stepsSpin").setValue(1)
        assert click_generate(qtbot, w).images
    finally:
        w.close()


def test_the_slider_shows_the_noisy_latent_when_asked(qtbot, window):
    result = batch_result([(250, 0, 0)])
    window.show_result(result)
    toggle = child(window, "trajectoryWhich")
    assert toggle.isVisible() and toggle.text() == "x̂₀"
    child(window, "timestepSlider").setValue(1)
    clean = np.asarray(window.canvas.shown_image()).copy()
    qtbot.mouseClick(toggle, Qt.MouseButton.LeftButton)
    assert window.timeline.which == "xt" and toggle.text() == "xₜ"
    noisy = np.asarray(window.canvas.shown_image())
    assert not np.array_equal(clean, noisy)  # xt of a step is not its x0_hat


def test_the_mouse_wheel_scrolls_the_panel_and_leaves_the_fields_it_passes_over(qtbot, window):
    """Scrolling to the Edit group with the wheel turned the mask blur from 4 px to 0: an unfocused spin box or
    combo box now hands the wheel to the panel; one the user clicked into still takes it."""
    from PySide6.QtCore import QPoint, QPointF
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    window.resize(1000, 600)  # short enough that the panel scrolls
    window.prompt_panel.set_mode("inpaint")
    spin = child(window, "maskBlurSpin")
    bar = window.prompt_scroll.verticalScrollBar()
    qtbot.waitUntil(lambda: spin.isVisible() and bar.maximum() > 0)
    before, top = spin.value(), bar.value()

    def wheel(widget, steps: int) -> None:
        centre = QPointF(widget.rect().center())
        event = QWheelEvent(
            centre,
            QPointF(widget.mapToGlobal(QPoint(int(centre.x()), int(centre.y())))),
            QPoint(0, 0),
            QPoint(0, -120 * steps),
            Qt.MouseButton.NoButton,
            Qt.KeyboardModifier.NoModifier,
            Qt.ScrollPhase.NoScrollPhase,
            False,
        )
        QApplication.sendEvent(widget, event)

    wheel(spin, 2)
    assert spin.value() == before  # the field kept its value
    assert bar.value() > top  # and the panel scrolled
    spin.setFocus()
    qtbot.waitUntil(spin.hasFocus)
    wheel(spin, 1)
    assert spin.value() == before - 1  # clicked into, it takes the wheel as before
