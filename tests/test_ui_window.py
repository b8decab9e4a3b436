"""The real main window driven through its widgets, with a fake engine (numpy only, fast)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QObject, QPoint, QPointF, Qt, Slot

from desktop_app.core.requests import EditRequest, GenerateRequest, Img2ImgRequest, InpaintRequest
from tests.ui_conftest_helpers import FakeEngine, child, click_generate, make_window, paint, qloop  # noqa: F401

OBJECT_NAMES = [
    "promptEdit",
    "negativePromptEdit",
    "modeSelector",
    "stepsSpin",
    "guidanceSpin",
    "seedSpin",
    "widthSpin",
    "heightSpin",
    "modelPicker",
    "generateButton",
    "cancelButton",
    "maskCanvas",
    "timestepSlider",
    "progressBar",
    "historyPanel",
]


class Steps(QObject):
    """Counts progress signals on the GUI thread."""

    def __init__(self, worker):
        super().__init__()
        self.steps = []
        self.cancelled = []
        worker.progress.connect(self.on_progress)
        worker.cancelled.connect(self.on_cancelled)

    @Slot(int, object)
    def on_progress(self, job_id, ev):
        self.steps.append(ev.step)

    @Slot(int)
    def on_cancelled(self, job_id):
        self.cancelled.append(job_id)


@pytest.fixture
def fake_engine():
    return FakeEngine()


@pytest.fixture
def window(qtbot, qloop, tmp_path, fake_engine):
    w = make_window(qtbot, tmp_path / "data", fake_engine)
    yield w
    w.close()


def set_prompt(w, text):
    child(w, "promptEdit").setPlainText(text)


def test_window_has_the_named_widgets(window):
    for name in OBJECT_NAMES:
        child(window, name)
    assert child(window, "historyPanel").isVisible()
    assert [window.prompt_panel.mode_selector.itemData(i) for i in range(4)] == [
        "generate",
        "img2img",
        "inpaint",
        "edit",
    ]


def test_window_shows_before_torch_is_imported(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys, json
        from PySide6.QtWidgets import QApplication
        app = QApplication([])
        from desktop_app.app.application import create_main_window
        w = create_main_window(data_dir={str(tmp_path)!r})
        w.show(); app.processEvents()
        heavy = [m for m in ("torch", "diffusers", "transformers", "desktop_app.engine.engine") if m in sys.modules]
        w.close()
        print(json.dumps(heavy))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_generate_click_gives_progress_per_step_and_result_on_canvas(qtbot, window, fake_engine):
    fake_engine.step_delay = 0.03
    steps = Steps(window.worker)
    set_prompt(window, "a red square")
    child(window, "stepsSpin").setValue(6)
    child(window, "widthSpin").setValue(96)
    child(window, "heightSpin").setValue(64)
    child(window, "seedSpin").setValue(42)
    previews = []
    window.document.shownChanged.connect(lambda: previews.append(window.document.showing))
    result = click_generate(qtbot, window)
    assert steps.steps == [1, 2, 3, 4, 5, 6]
    assert (
        previews.count("view") >= 1 and previews[-1] == "result"
    )  # live previews (the newest when the GUI falls behind), then the result
    req = fake_engine.runs[-1]
    assert isinstance(req, GenerateRequest) and req.prompt == "a red square" and req.steps == 6
    assert (req.width, req.height, req.seed) == (96, 64, 42)
    shown = window.canvas.shown_image()
    assert shown.size == (96, 64)
    assert np.array_equal(np.asarray(shown), np.asarray(result.images[0]))
    assert child(window, "progressBar").value() == child(window, "progressBar").maximum()
    # the slider now scrubs the trajectory
    slider = child(window, "timestepSlider")
    assert window.timestep_panel.mode == "trajectory" and slider.maximum() == 5
    # reuse the last seed
    child(window, "seedSpin").setValue(-1)
    window.prompt_panel.reuse_seed_button.click()
    assert int(child(window, "seedSpin").value()) == 42


def test_ctrl_enter_in_prompt_runs(qtbot, window, fake_engine):
    edit = child(window, "promptEdit")
    edit.setFocus()
    child(window, "stepsSpin").setValue(2)
    with qtbot.waitSignal(window.resultReady, timeout=10000):
        qtbot.keyClick(edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.wait(100)
    assert len(fake_engine.runs) == 1  # one job, not one from the action and one from the edit


def test_inpaint_leaves_unmasked_pixels_unchanged(qtbot, window, fake_engine, tmp_path):
    rng = np.random.default_rng(1)
    src = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    path = tmp_path / "src.png"
    src.save(path)
    assert window.open_image(str(path))
    window.prompt_panel.set_mode("inpaint")
    paint(qtbot, window, [(20, 20), (50, 30)], size=10)
    mask = np.asarray(window.canvas.mask_image())
    child(window, "stepsSpin").setValue(3)
    result = click_generate(qtbot, window)
    req = fake_engine.runs[-1]
    assert isinstance(req, InpaintRequest) and req.mask is not None and req.mask.size == src.size
    out = np.asarray(result.images[0])
    keep = mask == 0
    assert np.array_equal(out[keep], np.asarray(src)[keep])
    assert not np.array_equal(out[~keep], np.asarray(src)[~keep])


def test_cancel_stops_a_run_and_next_run_works(qtbot, window, fake_engine):
    fake_engine.step_delay = 0.03
    steps = Steps(window.worker)
    child(window, "stepsSpin").setValue(100)
    qtbot.mouseClick(child(window, "generateButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(steps.steps) >= 2, timeout=10000)
    assert child(window, "cancelButton").isEnabled()
    with qtbot.waitSignal(window.worker.cancelled, timeout=5000):
        qtbot.mouseClick(child(window, "cancelButton"), Qt.MouseButton.LeftButton)
    assert len(steps.steps) < 20
    assert child(window, "jobStatusLabel").text() == "Cancelled"
    fake_engine.step_delay = 0.0
    child(window, "stepsSpin").setValue(2)
    assert click_generate(qtbot, window).images


def test_escape_cancels(qtbot, window, fake_engine):
    fake_engine.step_delay = 0.03
    steps = Steps(window.worker)
    child(window, "stepsSpin").setValue(100)
    window.generate()
    qtbot.waitUntil(lambda: len(steps.steps) >= 1, timeout=10000)
    window.canvas.setFocus()
    with qtbot.waitSignal(window.worker.cancelled, timeout=5000):
        qtbot.keyClick(window.canvas, Qt.Key.Key_Escape)


def test_bad_image_file_shows_error_and_next_run_works(qtbot, window, fake_engine, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    assert not window.open_image(str(bad))
    assert window.error_banner.isVisible()
    assert "broken.png" in window.last_error[0] and window.last_error[1]
    child(window, "stepsSpin").setValue(2)
    assert click_generate(qtbot, window).images
    assert not window.error_banner.isVisible()


def test_engine_error_shows_message_and_window_keeps_working(qtbot, window, fake_engine):
    from desktop_app.core.errors import OutOfMemory

    fake_engine.fail_next = OutOfMemory(
        "The GPU ran out of memory for this job.", "Make fewer images per job (batch 1)."
    )
    child(window, "stepsSpin").setValue(2)
    qtbot.mouseClick(child(window, "generateButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=10000)
    assert window.error_banner.isVisible()
    assert window.last_error == ("The GPU ran out of memory for this job.", "Make fewer images per job (batch 1).")
    assert click_generate(qtbot, window).images
    assert not window.error_banner.isVisible()  # the cause is gone: the next job worked


def test_invalid_request_shows_hint_without_queueing(qtbot, window, fake_engine):
    window.prompt_panel.set_mode("inpaint")
    window.generate()
    assert window.last_error is not None and "source image" in window.last_error[0]
    window.set_source_image(Image.new("RGB", (64, 64)))
    window.prompt_panel.set_mode("inpaint")
    window.generate()
    assert "mask" in window.last_error[0].lower()
    assert fake_engine.runs == []


def test_jobs_queue_and_queue_length_is_shown(qtbot, window, fake_engine):
    fake_engine.step_delay = 0.01
    child(window, "stepsSpin").setValue(5)
    for _ in range(3):
        window.generate()
    qtbot.waitUntil(lambda: window.queue_label.text() == "Queue: 3", timeout=2000)
    qtbot.waitUntil(lambda: len(fake_engine.runs) == 3 and window.queue_label.text() == "Queue: 0", timeout=10000)


def test_5000_progress_signals_through_the_window(qtbot, window, fake_engine):
    fake_engine.progress_per_step = 5000
    steps = Steps(window.worker)
    child(window, "stepsSpin").setValue(1)
    click_generate(qtbot, window, timeout=30000)
    assert len(steps.steps) == 5000
    assert child(window, "progressBar").maximum() == 5000


def test_request_building_for_each_mode(qtbot, window):
    set_prompt(window, "a cat")
    window.set_source_image(Image.new("RGB", (64, 48), (10, 20, 30)))
    window.prompt_panel.set_mode("img2img")
    window.timestep_panel.set_t0(300)
    req = window.build_request()
    assert isinstance(req, Img2ImgRequest) and req.strength == pytest.approx(0.3)
    assert req.image is not None and req.image.size == (64, 48)
    window.prompt_panel.set_mode("edit")
    window.prompt_panel.source_prompt_edit.setText("a dog")
    child(window, "strengthSpin").setValue(0.45)  # each image mode keeps its own strength
    req = window.build_request()
    assert isinstance(req, EditRequest) and req.t0 == 450 and req.source_prompt == "a dog" and req.mask is None
    window.prompt_panel.set_mode("img2img")
    assert window.build_request().strength == pytest.approx(0.3)
    window.prompt_panel.set_mode("generate")
    assert type(window.build_request()) is GenerateRequest


def test_fill_from_request(qtbot, window):
    src = Image.new("RGB", (64, 64), (1, 2, 3))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (10, 10, 30, 30))
    req = InpaintRequest(
        prompt="p", negative_prompt="n", steps=7, guidance=3.5, seed=99, image=src, mask=mask, mask_blur=2
    )
    window.fill_from_request(req)
    assert window.prompt_panel.mode() == "inpaint"
    assert child(window, "promptEdit").toPlainText() == "p"
    assert child(window, "negativePromptEdit").toPlainText() == "n"
    assert child(window, "stepsSpin").value() == 7 and child(window, "guidanceSpin").value() == 3.5
    assert int(child(window, "seedSpin").value()) == 99
    assert np.array_equal(np.asarray(window.canvas.mask_image()), np.asarray(mask))
    window.fill_from_request({"prompt": "from text", "steps": 12, "scheduler": "euler"})
    assert child(window, "stepsSpin").value() == 12
    assert window.build_request().scheduler == "euler"


def test_model_change_applies_its_defaults(qtbot, window, tmp_path):
    folder = tmp_path / "mymodel"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    (folder / "diffusion_desk.json").write_text(json.dumps({"steps": 9, "guidance": 2.5, "width": 128, "height": 192}))
    window.prompt_panel.set_model(str(folder))
    qtbot.waitUntil(lambda: child(window, "stepsSpin").value() == 9, timeout=5000)  # once it has loaded
    assert child(window, "guidanceSpin").value() == 2.5
    assert (child(window, "widthSpin").value(), child(window, "heightSpin").value()) == (128, 192)
    assert window.build_request().model == str(folder)


def test_settings_persist(qtbot, qloop, tmp_path, fake_engine):
    data = tmp_path / "data"
    w = make_window(qtbot, data, fake_engine)
    w.resize(760, 560)  # inside the offscreen screen, so the geometry restores as it was
    qtbot.wait(10)
    set_prompt(w, "persist me")
    child(w, "stepsSpin").setValue(17)
    child(w, "guidanceSpin").setValue(4.5)
    child(w, "seedSpin").setValue(1234567890123 % 2**32)
    w.canvas.set_brush_size(77)
    w.prompt_panel.set_mode("img2img")
    w.splitter.setSizes([250, 300, 200])
    sizes = w.splitter.sizes()
    w.close()
    assert (data / "settings.ini").is_file()
    w2 = make_window(qtbot, data, fake_engine)
    assert child(w2, "promptEdit").toPlainText() == "persist me"
    assert child(w2, "stepsSpin").value() == 17
    assert child(w2, "guidanceSpin").value() == 4.5
    assert int(child(w2, "seedSpin").value()) == 1234567890123 % 2**32
    assert w2.canvas.brush_size == 77
    assert w2.prompt_panel.mode() == "generate"  # an image mode is not restored without its image
    assert w2.splitter.sizes() == sizes
    w2.close()


def test_shortcuts_brush_tools_and_zoom(qtbot, window):
    window.set_source_image(Image.new("RGB", (64, 64)))
    window.canvas.setFocus()
    size = window.canvas.brush_size
    qtbot.keyClick(window.canvas, Qt.Key.Key_BracketRight)
    assert window.canvas.brush_size > size
    qtbot.keyClick(window.canvas, Qt.Key.Key_BracketLeft)
    qtbot.keyClick(window.canvas, Qt.Key.Key_BracketLeft)
    assert window.canvas.brush_size < size
    qtbot.keyClick(window.canvas, Qt.Key.Key_E)
    assert window.canvas.tool == "eraser"
    qtbot.keyClick(window.canvas, Qt.Key.Key_B)
    assert window.canvas.tool == "brush"
    qtbot.keyClick(window.canvas, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)
    assert window.canvas.scale == 1.0
    qtbot.keyClick(window.canvas, Qt.Key.Key_0, Qt.KeyboardModifier.ControlModifier)
    assert window.canvas.scale > 1.0  # 64 px fitted into a big canvas
    paint(qtbot, window, [(32, 32)], size=8)
    assert window.canvas.mask_image() is not None
    qtbot.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert window.canvas.mask_image() is None
    qtbot.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert window.canvas.mask_image() is not None
    # typing a "b" into the prompt types it, it does not switch tools
    window.canvas.set_tool("eraser")
    edit = child(window, "promptEdit")
    edit.setFocus()
    qtbot.keyClicks(edit, "be")
    assert edit.toPlainText().endswith("be") and window.canvas.tool == "eraser"


def test_copy_save_and_use_result_as_source(qtbot, window, tmp_path):
    from PySide6.QtGui import QGuiApplication

    child(window, "stepsSpin").setValue(2)
    result = click_generate(qtbot, window)
    window.canvas.setFocus()
    qtbot.keyClick(window.canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert QGuiApplication.clipboard().image().size().width() == result.images[0].width
    out = tmp_path / "out.png"
    assert window.save_result(out)
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(result.images[0]))
    window.use_result_as_source()
    assert window.source_image is not None and window.prompt_panel.mode() == "img2img"
    # paste an image from the clipboard as the source
    QGuiApplication.clipboard().setImage(window.canvas.grab().toImage())
    window.paste_image()
    assert window.source_image.size == (window.canvas.width(), window.canvas.height())


def test_trajectory_scrub_preview_then_full_decode(qtbot, window):
    child(window, "stepsSpin").setValue(5)
    result = click_generate(qtbot, window)
    slider = child(window, "timestepSlider")
    slider.setValue(1)
    # cheap preview at once (latent resolution), full decode when the slider rests
    assert window.document.showing == "view"
    assert window.canvas.shown_image().size == (result.images[0].width // 4, result.images[0].height // 4)
    qtbot.waitUntil(lambda: window.canvas.shown_image().size == result.images[0].size, timeout=5000)
    assert "step 2/5 · t " in window.timestep_panel.label.text()
    assert window.timestep_panel.label.text().endswith(f"t {result.trajectory.timesteps[1]}")


def test_t0_slider_shows_forward_process(qtbot, window):
    window.set_source_image(Image.new("RGB", (64, 64), (200, 100, 50)))
    window.prompt_panel.set_mode("img2img")
    assert window.timestep_panel.mode == "t0"
    slider = child(window, "timestepSlider")
    slider.setValue(900)
    # the forward process is computed on the worker, then previews follow the slider at once
    qtbot.waitUntil(lambda: window.timeline._forward is not None, timeout=5000)
    slider.setValue(100)
    shown = np.asarray(window.canvas.shown_image(), np.float64)
    slider.setValue(950)
    noisy = np.asarray(window.canvas.shown_image(), np.float64)
    target = np.array([200, 100, 50], np.float64)
    assert np.abs(shown - target).mean() < np.abs(noisy - target).mean()
    assert "t₀ = 950" in window.timestep_panel.label.text()
    assert window.build_request().strength == pytest.approx(0.95)


def test_model_that_fails_to_load_shows_error(qtbot, window):
    window.prompt_panel.set_model("/nowhere/missing-model", user=True)
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=5000)
    assert "missing-model" in window.last_error[0]


def test_run_gui_shows_window_and_exits_cleanly(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from PySide6.QtCore import QTimer
        from desktop_app.app import application as gui
        seen = []
        def hook(w):
            seen.append(w)
            QTimer.singleShot(300, w.close)
        gui.window_created_hooks.append(hook)
        rc = gui.run_gui(data_dir={str(tmp_path)!r})
        w = seen[0]
        print("RC", rc, w.findChild(type(w.history_panel), "historyPanel") is not None, w.history is not None)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RC 0 True" in out.stdout
    assert (tmp_path / "settings.ini").is_file()


def test_attach_history_swaps_the_panel(qtbot, window):
    old = window.history_panel
    window.attach_history(None)
    assert window.history_panel is not old
    assert window.history_panel.objectName() == "historyPanel"
    assert window.splitter.indexOf(window.history_panel) == 2


def test_text_shortcuts_stay_with_the_prompt(qtbot, window):
    from PySide6.QtGui import QGuiApplication

    QGuiApplication.clipboard().setText("pasted words")
    edit = child(window, "promptEdit")
    edit.setFocus()
    qtbot.keyClick(edit, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert edit.toPlainText() == "pasted words"
    assert window.last_error is None and window.source_image is None
    qtbot.keyClick(edit, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert edit.toPlainText() == ""


def test_image_modes_show_the_source_size(qtbot, window):
    child(window, "widthSpin").setValue(128)
    child(window, "heightSpin").setValue(256)
    window.set_source_image(Image.new("RGB", (96, 64)))
    window.prompt_panel.set_mode("img2img")
    assert (child(window, "widthSpin").value(), child(window, "heightSpin").value()) == (96, 64)
    assert not child(window, "widthSpin").isEnabled()
    window.prompt_panel.set_mode("generate")
    assert (child(window, "widthSpin").value(), child(window, "heightSpin").value()) == (128, 256)
    assert (window.build_request().width, window.build_request().height) == (128, 256)


def test_batch_results_can_be_browsed(qtbot, window):
    child(window, "stepsSpin").setValue(1)
    child(window, "seedSpin").setValue(10)
    window.prompt_panel.batch_spin.setValue(3)
    result = click_generate(qtbot, window)
    assert len(result.images) == 3
    qtbot.waitUntil(window.next_image_button.isVisible, timeout=2000)  # tool bars lay out on the next pass
    assert window.image_index_label.text() == "1 / 3"
    window.canvas.setFocus()
    qtbot.keyClick(window.canvas, Qt.Key.Key_Right, Qt.KeyboardModifier.AltModifier)
    assert window.image_index_label.text() == "2 / 3"
    assert np.array_equal(np.asarray(window.canvas.shown_image()), np.asarray(result.images[1]))
    window.prev_image_button.click()
    window.prev_image_button.click()
    assert window.image_index_label.text() == "3 / 3"
    window.prompt_panel.reuse_seed_button.click()
    assert int(child(window, "seedSpin").value()) == 12


def test_drop_an_image_file_on_the_canvas(qtbot, window, tmp_path):
    from PySide6.QtCore import QMimeData, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    path = tmp_path / "dropped.png"
    Image.new("RGB", (72, 48), (9, 9, 9)).save(path)
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(path))])
    enter = QDragEnterEvent(
        QPoint(50, 50), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(window.canvas, enter)
    assert enter.isAccepted()
    # Qt only delivers a drop during a real drag; call the handler as the drag machinery would
    ev = QDropEvent(
        QPointF(50, 50), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    window.canvas.dropEvent(ev)
    assert window.source_image is not None and window.source_image.size == (72, 48)


def test_progress_labels_for_each_phase(window):
    from desktop_app.core.events import Progress

    label = window.job_status_label
    window.jobs._on_progress(1, Progress(3, 10, 700, 2.5, 2.8))
    assert label.text().startswith("Step 3/10 · t=700 · 2.5 it/s · ETA 3 s")
    window.jobs._on_progress(1, Progress(2, 20, 100, 4.0, 90, "invert"))
    assert label.text().startswith("Inverting 2/20") and "ETA 1 min 30 s" in label.text()
    window.jobs._on_progress(1, Progress(3 * 2**30, 5 * 2**30, 0, 50 * 2**20, 40, "download"))
    assert label.text() == "Downloading 3.0 GB / 5.0 GB · 50.0 MB/s · ETA 40 s"
    assert window.progress_bar.value() == 600


def test_show_result_from_history_without_trajectory(qtbot, window):
    from desktop_app.core.events import Result

    window.set_source_image(Image.new("RGB", (64, 64)))
    window.prompt_panel.set_mode("img2img")
    req = GenerateRequest(prompt="old", seed=5)
    window.show_result(Result(request=req, images=[Image.new("RGB", (80, 48), (1, 2, 3))], seeds=[5]))
    assert window.canvas.shown_image().size == (80, 48)
    assert window.timestep_panel.mode == "t0"
    window.use_result_as_source()
    assert window.source_image.size == (80, 48)
