"""The staging strip in the real window: a run's results wait under the canvas to be cycled, accepted (one undo
step) or discarded (never from the history), with a before / after toggle that says what is shown."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, Qt, QTimer

from tests.ui_conftest_helpers import (  # noqa: F401
    FakeEngine,
    canvas_pixel,
    child,
    click_generate,
    make_window,
    paint,
    qloop,
    seed_colour,
)


@pytest.fixture
def fake_engine():
    return FakeEngine()


@pytest.fixture
def window(qtbot, qloop, tmp_path, fake_engine):
    w = make_window(qtbot, tmp_path / "data", fake_engine)
    yield w
    w.close()


def thumbs(w) -> list:
    return w.staging_strip.thumbnails()


def run_batch(qtbot, w, n: int, seed: int = 10, steps: int = 1):
    child(w, "stepsSpin").setValue(steps)
    child(w, "seedSpin").setValue(seed)
    w.prompt_panel.batch_spin.setValue(n)
    return click_generate(qtbot, w)


def test_a_batch_of_three_lands_in_the_strip_and_each_can_be_shown(qtbot, window):
    strip = child(window, "stagingStrip")
    assert not strip.isVisible()  # nothing made yet
    result = run_batch(qtbot, window, 3)
    qtbot.waitUntil(strip.isVisible, timeout=2000)
    assert len(thumbs(window)) == 3
    label = child(window, "stagingLabel")
    assert label.text() == "Result 1 of 3"
    assert canvas_pixel(window, 32, 32) == seed_colour(10)
    qtbot.mouseClick(child(window, "stagingNextButton"), Qt.MouseButton.LeftButton)
    assert label.text() == "Result 2 of 3"
    assert canvas_pixel(window, 32, 32) == seed_colour(11)
    strip.setFocus()
    qtbot.keyClick(strip, Qt.Key.Key_Right)  # the arrow keys cycle while the strip has focus
    assert label.text() == "Result 3 of 3"
    assert canvas_pixel(window, 32, 32) == seed_colour(12)
    qtbot.keyClick(strip, Qt.Key.Key_Right)  # wraps around
    assert label.text() == "Result 1 of 3"
    qtbot.mouseClick(thumbs(window)[1], Qt.MouseButton.LeftButton)
    assert label.text() == "Result 2 of 3"
    assert np.array_equal(np.asarray(window.canvas.shown_image()), np.asarray(result.images[1]))
    assert thumbs(window)[1].isChecked() and not thumbs(window)[0].isChecked()


def test_before_after_says_which_is_shown(qtbot, window):
    window.set_source_image(Image.new("RGB", (64, 64), (10, 200, 30)))
    window.prompt_panel.set_mode("img2img")
    run_batch(qtbot, window, 2, seed=20)
    label = child(window, "stagingLabel")
    toggle = child(window, "beforeAfterButton")
    assert label.text() == "Result 1 of 2"
    assert canvas_pixel(window, 32, 32) == seed_colour(20)
    qtbot.mouseClick(toggle, Qt.MouseButton.LeftButton)
    assert label.text() == "Before (the source)" and toggle.isChecked()
    assert canvas_pixel(window, 32, 32) == (10, 200, 30)
    assert window.shown_label.text() == "showing the source"
    qtbot.mouseClick(toggle, Qt.MouseButton.LeftButton)
    assert label.text() == "Result 1 of 2" and not toggle.isChecked()
    assert canvas_pixel(window, 32, 32) == seed_colour(20)
    qtbot.keyClick(window, Qt.Key.Key_B, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert label.text() == "Before (the source)"


def test_accept_makes_the_result_the_source_and_undo_brings_the_old_one_and_its_mask_back(qtbot, window):
    old = Image.new("RGB", (64, 64), (200, 40, 40))
    window.set_source_image(old)
    window.prompt_panel.set_mode("inpaint")
    paint(qtbot, window, [(10, 10), (30, 30)], size=8)
    painted = window.document.mask.copy()
    assert painted.any()
    result = run_batch(qtbot, window, 2, seed=30)
    qtbot.mouseClick(thumbs(window)[1], Qt.MouseButton.LeftButton)
    qtbot.mouseClick(child(window, "acceptResultButton"), Qt.MouseButton.LeftButton)
    assert np.array_equal(np.asarray(window.document.source), np.asarray(result.images[1]))
    assert window.document.showing == "source"
    window.brush.set_overlay_visible(False)
    assert canvas_pixel(window, 20, 20) == seed_colour(31)  # the accepted image, drawn as the source
    assert canvas_pixel(window, 60, 60) == (200, 40, 40)  # the FakeEngine keeps unmasked pixels
    window.brush.set_overlay_visible(True)
    assert not child(window, "stagingStrip").isVisible()  # the strip empties on accept
    assert np.array_equal(window.document.mask, painted)  # same size: the mask stays
    assert "source" in window.statusBar().currentMessage()
    # one undo step: the old source, its mask and the strip come back
    qtbot.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert np.array_equal(np.asarray(window.document.source), np.asarray(old))
    assert np.array_equal(window.document.mask, painted)
    assert child(window, "stagingStrip").isVisible() and len(thumbs(window)) == 2
    assert child(window, "stagingLabel").text() == "Result 2 of 2"  # as it was before the accept
    # the stroke before it is still one more undo step away
    qtbot.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not window.document.mask.any()
    qtbot.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert np.array_equal(np.asarray(window.document.source), np.asarray(result.images[1]))  # redo accepts again


def test_discard_takes_a_result_out_of_the_strip_but_not_out_of_the_history(qtbot, window):
    result = run_batch(qtbot, window, 3, seed=40)
    saver = window.history_saver
    qtbot.waitUntil(lambda: saver.pending() == 0 and len(saver.entries_for(result)) == 3, timeout=5000)
    qtbot.mouseClick(child(window, "stagingNextButton"), Qt.MouseButton.LeftButton)  # result 2 shown
    qtbot.mouseClick(child(window, "discardResultButton"), Qt.MouseButton.LeftButton)
    assert len(thumbs(window)) == 2
    assert child(window, "stagingLabel").text() == "Result 2 of 2"  # the next one (seed 42) takes its place
    assert canvas_pixel(window, 32, 32) == seed_colour(42)
    assert "history keeps" in window.statusBar().currentMessage()
    assert len(window.history.list()) == 3
    # "Discard all" is on the Discard button's menu: open it by its arrow, click the item
    button = child(window, "discardResultButton")
    menu = button.menu()

    def pick():
        qtbot.waitUntil(menu.isVisible, timeout=2000)
        rect = menu.actionGeometry(window.staging_strip.discard_all_action)
        qtbot.mouseClick(menu, Qt.MouseButton.LeftButton, pos=rect.center())

    QTimer.singleShot(0, pick)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton, pos=QPoint(button.width() - 4, button.height() // 2))
    qtbot.waitUntil(lambda: not menu.isVisible(), timeout=2000)
    assert not child(window, "stagingStrip").isVisible()
    assert len(window.history.list()) == 3  # every image is still in the history


def test_repeat_runs_jobs_with_consecutive_seeds_into_one_strip(qtbot, window, fake_engine):
    child(window, "stepsSpin").setValue(1)
    child(window, "seedSpin").setValue(50)
    window.prompt_panel.batch_spin.setValue(2)
    repeat = child(window, "repeatSpin")
    repeat.setFocus()
    qtbot.keyClick(repeat, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(repeat, "3")
    qtbot.mouseClick(child(window, "generateButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(window.document.staged) == 6, timeout=10000)
    assert [r.seed for r in fake_engine.runs] == [50, 52, 54]  # each run takes `batch` seeds
    assert len(thumbs(window)) == 6
    colours = []
    for k in range(6):
        qtbot.mouseClick(thumbs(window)[k], Qt.MouseButton.LeftButton)
        assert child(window, "stagingLabel").text() == f"Result {k + 1} of 6"
        colours.append(canvas_pixel(window, 32, 32))
    assert colours == [seed_colour(s) for s in range(50, 56)]


def test_a_random_seed_repeats_from_one_drawn_seed(qtbot, window, fake_engine):
    child(window, "stepsSpin").setValue(1)
    window.prompt_panel.repeat_spin.setValue(2)
    qtbot.mouseClick(child(window, "generateButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(window.document.staged) == 2, timeout=10000)
    first, second = (r.seed for r in fake_engine.runs)
    assert first is not None and second == first + 1


def test_an_accepted_result_keeps_a_painted_region_where_it_was(qtbot, window):
    """Regions painted on the source keep their paint through an accept at the same size."""
    window.set_source_image(Image.new("RGB", (64, 64)))
    window.prompt_panel.set_mode("img2img")
    window.brush.set_tool("region")
    paint(qtbot, window, [(40, 40), (50, 50)], size=6)
    region = window.document.regions[0].mask.copy()
    assert region.any()
    run_batch(qtbot, window, 1, seed=60)
    window.staging_strip.accept()
    assert np.array_equal(window.document.regions[0].mask, region)
    window.document.undo()
    assert np.array_equal(window.document.regions[0].mask, region)
