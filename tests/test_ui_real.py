"""The real window on the real engine with the tiny random model (64x64, few steps: well under a second)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QObject, QPoint, Qt, Slot
from PySide6.QtWidgets import QWidget

from tests.ui_conftest_helpers import qloop  # noqa: F401


class Events(QObject):
    def __init__(self, worker):
        super().__init__()
        self.steps, self.previews, self.cancelled = [], [], []
        worker.progress.connect(self.on_progress)
        worker.preview.connect(self.on_preview)
        worker.cancelled.connect(self.on_cancelled)

    @Slot(int, object)
    def on_progress(self, job_id, ev):
        self.steps.append((ev.step, ev.total))

    @Slot(int, object)
    def on_preview(self, job_id, ev):
        self.previews.append(ev.step)

    @Slot(int)
    def on_cancelled(self, job_id):
        self.cancelled.append(job_id)


@pytest.fixture
def real_window(qtbot, qloop, tmp_path, tiny_model_dir, engine):
    from desktop_app.app.application import create_main_window

    w = create_main_window(model=str(tiny_model_dir), data_dir=tmp_path / "data", engine_factory=lambda: engine)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    pp = w.prompt_panel
    pp.steps_spin.setValue(4)
    pp.width_spin.setValue(64)
    pp.height_spin.setValue(64)
    pp.seed_spin.setValue(7)
    pp.prompt_edit.setPlainText("a red circle")
    yield w
    w.close()


def child(w, name) -> Any:
    return w.findChild(QWidget, name)


def test_real_run_progress_each_step_and_result_on_canvas(qtbot, real_window):
    ev = Events(real_window.worker)
    with qtbot.waitSignal(real_window.resultReady, timeout=60000) as blocker:
        qtbot.mouseClick(child(real_window, "generateButton"), Qt.MouseButton.LeftButton)
    result = blocker.args[0]
    assert [s for s, _ in ev.steps] == [1, 2, 3, 4] and all(t == 4 for _, t in ev.steps)
    assert result.images[0].size == (64, 64)
    assert np.array_equal(np.asarray(real_window.canvas.shown_image()), np.asarray(result.images[0]))
    assert len(result.trajectory) == 4 and real_window.timestep_panel.mode == "trajectory"
    # scrub to the first step: cheap preview, then the full decode on the worker thread
    child(real_window, "timestepSlider").setValue(0)
    qtbot.waitUntil(
        lambda: (
            real_window.canvas.shown_image().size == (64, 64)
            and any(k[2:] == (0, "x0") for k in real_window.timeline._decoded)
        ),
        timeout=10000,
    )


def test_real_inpaint_keeps_unmasked_pixels(qtbot, real_window):
    rng = np.random.default_rng(3)
    src = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    real_window.set_source_image(src)
    real_window.prompt_panel.set_mode("inpaint")
    real_window.prompt_panel.mask_blur_spin.setValue(0)
    canvas = real_window.canvas
    canvas.set_brush_size(16)
    a, b = canvas.image_to_widget(20, 32), canvas.image_to_widget(44, 32)
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=QPoint(int(a.x()), int(a.y())))
    qtbot.mouseMove(canvas, pos=QPoint(int(b.x()), int(b.y())))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=QPoint(int(b.x()), int(b.y())))
    mask = np.asarray(canvas.mask_image())
    with qtbot.waitSignal(real_window.resultReady, timeout=60000) as blocker:
        real_window.generate()
    out = np.asarray(blocker.args[0].images[0]).astype(int)
    keep = mask == 0
    # pixels away from the painted area are the source's, exactly or within rounding
    from scipy.ndimage import binary_dilation

    far = np.logical_not(binary_dilation(np.logical_not(keep), iterations=2))
    assert np.abs(out[far] - np.asarray(src).astype(int)[far]).max() <= 1
    assert np.abs(out[~keep] - np.asarray(src).astype(int)[~keep]).mean() > 5


def test_real_cancel_stops_and_next_run_works(qtbot, real_window):
    ev = Events(real_window.worker)
    real_window.prompt_panel.steps_spin.setValue(150)
    real_window.generate()
    qtbot.waitUntil(lambda: len(ev.steps) >= 1, timeout=60000)
    with qtbot.waitSignal(real_window.worker.cancelled, timeout=10000):
        qtbot.mouseClick(child(real_window, "cancelButton"), Qt.MouseButton.LeftButton)
    assert len(ev.steps) < 150
    real_window.prompt_panel.steps_spin.setValue(3)
    with qtbot.waitSignal(real_window.resultReady, timeout=60000):
        real_window.generate()


def test_real_bad_model_then_good_run(qtbot, real_window, tmp_path):
    good = real_window.prompt_panel.model()
    real_window.prompt_panel.set_model(str(tmp_path / "no-such-model"))
    real_window.generate()
    qtbot.waitUntil(lambda: real_window.last_error is not None, timeout=30000)
    assert real_window.error_banner.isVisible()
    real_window.prompt_panel.set_model(good)
    real_window.prompt_panel.steps_spin.setValue(2)
    with qtbot.waitSignal(real_window.resultReady, timeout=60000):
        real_window.generate()


def test_real_t0_slider_forward_process_and_img2img(qtbot, real_window):
    src = Image.new("RGB", (64, 64), (220, 40, 40))
    real_window.set_source_image(src)
    real_window.prompt_panel.set_mode("img2img")
    slider = child(real_window, "timestepSlider")
    slider.setValue(500)
    qtbot.waitUntil(lambda: real_window.timeline._forward is not None, timeout=30000)
    slider.setValue(50)
    low = real_window.canvas.shown_image()
    assert low is not None
    slider.setValue(990)
    assert real_window.canvas.shown_image() is not None
    with qtbot.waitSignal(real_window.resultReady, timeout=60000) as blocker:
        real_window.generate()
    assert blocker.args[0].request.strength == pytest.approx(0.99)


def test_real_edit_from_the_window(qtbot, real_window):
    ev = Events(real_window.worker)
    real_window.set_source_image(Image.new("RGB", (64, 64), (30, 60, 220)))
    real_window.prompt_panel.set_mode("edit")
    real_window.prompt_panel.source_prompt_edit.setText("a blue background")
    real_window.timestep_panel.set_t0(500)
    with qtbot.waitSignal(real_window.resultReady, timeout=60000) as blocker:
        real_window.generate()
    result = blocker.args[0]
    assert result.request.kind == "edit" and result.request.t0 == 500
    assert result.images[0].size == (64, 64)
    assert ev.steps  # inversion and denoising both report progress


def test_editing_our_own_result_replays_its_trajectory(qtbot, real_window):
    with qtbot.waitSignal(real_window.resultReady, timeout=60000) as made:
        real_window.generate()
    assert made.args[0].request.scheduler == "ddim"
    real_window.use_result_as_source()
    real_window.prompt_panel.set_mode("edit")
    real_window.prompt_panel.source_prompt_edit.setText("a red circle")
    real_window.timestep_panel.set_t0(600)
    with qtbot.waitSignal(real_window.resultReady, timeout=60000) as edited:
        real_window.generate()
    assert "Edit source" in edited.args[0].info  # replayed, not inverted
    # a source opened from elsewhere is inverted as usual
    real_window.set_source_image(made.args[0].images[0].copy())
    with qtbot.waitSignal(real_window.resultReady, timeout=60000) as inverted:
        real_window.generate()
    assert "Edit source" not in inverted.args[0].info


def test_suggest_mask_fills_the_canvas_mask(qtbot, real_window):
    real_window.set_source_image(Image.new("RGB", (64, 64), (200, 30, 30)))
    real_window.canvas.set_mask(np.zeros((64, 64), np.uint8))
    real_window.prompt_panel.set_mode("edit")
    real_window.prompt_panel.source_prompt_edit.setText("a red square")
    real_window.prompt_panel.prompt_edit.setPlainText("a green triangle on a yellow background")
    button = child(real_window, "suggestMaskButton")
    assert button is not None and button.isVisible()
    with qtbot.waitSignal(real_window.worker.serviceDone, timeout=60000):
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: real_window.canvas.mask_image() is not None or real_window.last_error is not None, timeout=10000
    )
    mask = real_window.canvas.mask_image()
    assert mask is not None and mask.size == (64, 64)
    real_window.canvas.undo()  # the suggestion is one undoable step
    assert real_window.canvas.mask_image() is None


def test_suggest_mask_with_equal_prompts_says_why(qtbot, real_window):
    real_window.set_source_image(Image.new("RGB", (64, 64)))
    real_window.prompt_panel.set_mode("edit")
    real_window.prompt_panel.source_prompt_edit.setText("a red circle")
    assert real_window.suggest_mask() is None
    assert "same" in real_window.last_error[0]
