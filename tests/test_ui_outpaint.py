"""Outpainting in the real window: drag the canvas frame's edge or type pixels, the request gets `extend`, the
result at the extended size lands in the strip and becomes the source when accepted; too large is refused with
the sizes named; the inpaint section's new controls reach the request and come back from a PNG's parameters."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, Qt

from tests.ui_conftest_helpers import (  # noqa: F401  (qloop is a fixture)
    FakeEngine,
    canvas_pixel,
    child,
    choose,
    click_generate,
    make_window,
    paint,
    qloop,
    seed_colour,
    type_into,
)

SOURCE = (30, 140, 220)


@pytest.fixture
def fake_engine():
    return FakeEngine()


@pytest.fixture
def window(qtbot, qloop, tmp_path, fake_engine):
    w = make_window(qtbot, tmp_path / "data", fake_engine)
    w.set_source_image(Image.new("RGB", (64, 48), SOURCE))
    w.prompt_panel.set_mode("inpaint")
    child(w, "stepsSpin").setValue(1)
    child(w, "seedSpin").setValue(7)
    yield w
    w.close()


def drag_right_edge(qtbot, w, widget_px: int) -> int:
    """Press just outside the frame's right edge and drag it `widget_px` outward; returns the image pixels."""
    canvas = w.canvas
    edge = canvas.image_to_widget(64, 24)
    start = QPoint(int(edge.x()) + 3, int(edge.y()))
    end = QPoint(start.x() + widget_px, start.y())
    scale = canvas.scale
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(canvas, pos=QPoint(start.x() + widget_px // 2, start.y()))
    qtbot.mouseMove(canvas, pos=end)
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=end)
    return int(round(widget_px / scale))


def test_dragging_the_right_edge_extends_the_canvas_and_the_request(qtbot, window, fake_engine):
    canvas = window.canvas
    widget_px = int(round(32 * canvas.scale))  # about 32 image pixels at this zoom
    n = drag_right_edge(qtbot, window, widget_px)
    assert n > 0
    assert window.document.extension == (0, 0, n, 0)
    assert not window.document.mask.any()  # the drag painted nothing
    assert child(window, "extendRightSpin").value() == n  # the spins follow the frame
    assert window.size_label.text() == f"64×48 → {64 + n}×48"
    assert window.prompt_panel.outpaint_section.is_open()  # opened to show the numbers
    # the new area shows as a checkerboard, not the empty canvas's background
    assert canvas_pixel(window, 64 + n / 2, 24) != (30, 31, 34)
    assert canvas_pixel(window, 32, 24) == SOURCE
    result = click_generate(qtbot, window)
    request = fake_engine.runs[-1]
    assert request.extend == (0, 0, n, 0) and request.outpaints
    assert request.outpaint_fill == "edge" and request.outpaint_overlap == 16
    width = -(-(64 + n) // 8) * 8
    assert result.images[0].size == (width, 48)
    # the result covers the extended canvas: generated on the right, the source kept where it was
    assert window.document.showing == "result"
    assert canvas_pixel(window, 64 + n / 2, 24) == seed_colour(7)
    assert canvas_pixel(window, 10, 24) == SOURCE
    qtbot.mouseClick(child(window, "acceptResultButton"), Qt.MouseButton.LeftButton)
    assert window.document.source.size == (width, 48)
    assert window.document.extension == (0, 0, 0, 0)  # the new source is the whole canvas
    assert window.size_label.text() == f"{width}×48"
    qtbot.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert window.document.source.size == (64, 48)  # undo brings the original back


def test_the_spins_extend_the_canvas_and_a_size_not_a_multiple_of_8_is_rounded_with_a_notice(
    qtbot, window, fake_engine
):
    qtbot.mouseClick(child(window, "outpaintSectionToggle"), Qt.MouseButton.LeftButton)
    type_into(qtbot, child(window, "extendRightSpin"), "20")
    type_into(qtbot, child(window, "extendTopSpin"), "16")
    assert window.document.extension == (0, 16, 20, 0)
    assert "R 20" in child(window, "outpaintSectionToggle").text()
    choose(qtbot, child(window, "outpaintFillCombo"), "Noise")
    type_into(qtbot, child(window, "outpaintOverlapSpin"), "24")
    result = click_generate(qtbot, window)
    request = fake_engine.runs[-1]
    assert request.extend == (0, 16, 20, 0)
    assert request.outpaint_fill == "noise" and request.outpaint_overlap == 24
    assert result.images[0].size == (88, 64)  # 84 is rounded up to 88 on the right
    assert "rounded up to 88x64" in window.statusBar().currentMessage()
    assert window.document.shown_rect() == (0, -16, 88, 64)
    assert canvas_pixel(window, 30, 10) == SOURCE  # the source's place in the result
    assert canvas_pixel(window, 70, -8) == seed_colour(7)


def test_an_extension_past_2048_is_refused_with_the_size_named_and_nothing_is_lost(qtbot, window, fake_engine):
    paint(qtbot, window, [(10, 10), (20, 20)], size=6)
    painted = window.document.mask.copy()
    qtbot.mouseClick(child(window, "outpaintSectionToggle"), Qt.MouseButton.LeftButton)
    type_into(qtbot, child(window, "extendLeftSpin"), "2000")
    qtbot.mouseClick(child(window, "generateButton"), Qt.MouseButton.LeftButton)
    qtbot.wait(100)
    assert fake_engine.runs == []  # nothing was submitted
    message, hint = window.last_error
    assert "2064x48" in message and "2048" in message
    assert window.error_banner.isVisible()
    assert np.array_equal(window.document.mask, painted)  # the painted mask is kept
    assert window.document.extension == (2000, 0, 0, 0)  # and so is what was typed, to correct it


def test_dragging_stops_at_2048_with_a_notice(qtbot, window):
    drag_right_edge(qtbot, window, int(2100 * window.canvas.scale))
    assert window.document.extension == (0, 0, 2048 - 64, 0)
    assert "at most 2048" in window.statusBar().currentMessage()


def test_the_extension_applies_in_inpaint_mode_only(qtbot, window, fake_engine):
    window.document.set_extension(0, 0, 16, 0)
    window.prompt_panel.set_mode("img2img")
    assert not window.canvas.extend_enabled
    click_generate(qtbot, window)
    assert fake_engine.runs[-1].kind == "img2img"
    assert "Inpaint mode only" in window.statusBar().currentMessage()


def test_the_new_controls_reach_the_request_and_come_back_from_a_png(qtbot, window, fake_engine, tmp_path):
    paint(qtbot, window, [(20, 20), (30, 30)], size=8)
    panel = window.prompt_panel
    choose(qtbot, child(window, "maskedContentCombo"), "Latent noise")
    qtbot.mouseClick(child(window, "softMaskCheck"), Qt.MouseButton.LeftButton)
    qtbot.mouseClick(child(window, "colorMatchCheck"), Qt.MouseButton.LeftButton)
    type_into(qtbot, child(window, "blendBandSpin"), "12")
    qtbot.mouseClick(child(window, "outpaintSectionToggle"), Qt.MouseButton.LeftButton)
    choose(qtbot, child(window, "outpaintFillCombo"), "Blurred edge")
    type_into(qtbot, child(window, "outpaintOverlapSpin"), "40")
    click_generate(qtbot, window)
    request = fake_engine.runs[-1]
    assert (request.masked_content, request.soft_mask, request.color_match, request.blend_band) == (
        "latent_noise",
        True,
        True,
        12,
    )
    assert (request.outpaint_fill, request.outpaint_overlap, request.extend) == ("blur", 40, (0, 0, 0, 0))
    path = tmp_path / "made.png"
    assert window.save_result(path)
    # back to the defaults, then open the PNG: its parameters fill the controls again
    choose(qtbot, child(window, "maskedContentCombo"), "Original")
    panel.soft_mask_check.setChecked(False)
    panel.color_match_check.setChecked(False)
    panel.blend_band_spin.setValue(0)
    choose(qtbot, child(window, "outpaintFillCombo"), "Edge stretch")
    panel.outpaint_overlap_spin.setValue(16)
    assert window.open_image(str(path))
    assert panel.masked_content_combo.currentData() == "latent_noise"
    assert panel.soft_mask_check.isChecked() and panel.color_match_check.isChecked()
    assert panel.blend_band_spin.value() == 12
    assert panel.outpaint_fill_combo.currentData() == "blur"
    assert panel.outpaint_overlap_spin.value() == 40
