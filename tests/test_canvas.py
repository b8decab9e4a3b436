"""MaskCanvas: strokes by mouse drag land on exactly the image pixels under them, at any zoom; undo/redo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt

from desktop_app.ui.canvas import MaskCanvas


def brute_distance(points, w, h):
    """Distance from every pixel centre to a polyline, computed independently of the canvas code."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    best = np.full((h, w), np.inf)
    segs = list(zip(points[:-1], points[1:])) or [(points[0], points[0])]
    for (ax, ay), (bx, by) in segs:
        dx, dy = bx - ax, by - ay
        l2 = dx * dx + dy * dy
        t = np.zeros_like(xs) if l2 == 0 else np.clip(((xs - ax) * dx + (ys - ay) * dy) / l2, 0, 1)
        best = np.minimum(best, np.hypot(xs - (ax + t * dx), ys - (ay + t * dy)))
    return best


@pytest.fixture
def canvas(qtbot):
    c = MaskCanvas()
    qtbot.addWidget(c)
    c.resize(420, 320)
    c.show()
    qtbot.waitExposed(c)
    rng = np.random.default_rng(0)
    c.set_image(Image.fromarray(rng.integers(0, 256, (100, 160, 3), dtype=np.uint8)))
    return c


def drag(qtbot, canvas, widget_points):
    """Press at the first point, move through the rest with the button held, release at the last."""
    pts = [QPoint(*p) for p in widget_points]
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=pts[0])
    for p in pts[1:]:
        qtbot.mouseMove(canvas, pos=p)
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=pts[-1])
    return [canvas.widget_to_image(QPointF(p)) for p in pts]


def check_stroke(mask, image_points, radius):
    h, w = mask.shape
    d = brute_distance(image_points, w, h)
    inside = d <= radius - 1e-6
    outside = d > radius + 1e-6
    assert (mask[inside] == 255).all(), "a pixel under the stroke was not painted"
    assert (mask[outside] == 0).all(), "a pixel off the stroke was painted"
    assert inside.sum() > 0


@pytest.mark.parametrize("zoom", ["fit", 3.0])
def test_drag_paints_exactly_under_the_stroke(qtbot, canvas, zoom):
    if zoom == "fit":
        canvas.zoom_fit()
    else:
        canvas.set_zoom(zoom, QPointF(canvas.width() / 2, canvas.height() / 2))
    canvas.set_brush_size(10)
    scale = canvas.scale
    # a bent stroke, with one long jump that must still be continuous
    centre = canvas.image_to_widget(80, 50)
    cx, cy = int(centre.x()), int(centre.y())
    s = max(1, int(8 * scale))
    widget_points = [(cx - 3 * s, cy - s), (cx - 2 * s, cy - s), (cx, cy), (cx + 3 * s, cy + s)]
    image_points = drag(qtbot, canvas, widget_points)
    mask = canvas.mask_array()
    check_stroke(mask, image_points, 5.0)
    # the mask lives in image pixels whatever the zoom
    assert mask.shape == (100, 160)
    # a point halfway along the long last segment is painted (interpolated, not dotted)
    mx = (image_points[2][0] + image_points[3][0]) / 2
    my = (image_points[2][1] + image_points[3][1]) / 2
    assert mask[int(my), int(mx)] == 255
    # far away stays clear
    assert mask[2, 2] == 0 and mask[97, 157] == 0


def test_brush_size_is_in_image_pixels_at_two_zoom_levels(qtbot, canvas):
    canvas.set_brush_size(6)
    areas = []
    for zoom in (1.0, 4.0):
        canvas.clear_mask()
        canvas.set_zoom(zoom, QPointF(canvas.width() / 2, canvas.height() / 2))
        p = canvas.image_to_widget(80, 50)
        drag(qtbot, canvas, [(int(p.x()), int(p.y()))])
        areas.append(int((canvas.mask_array() == 255).sum()))
    # a dab of diameter 6 image pixels covers ~28 pixels at either zoom
    assert all(20 <= a <= 40 for a in areas), areas


def test_undo_restores_previous_mask_and_redo_reapplies(qtbot, canvas):
    canvas.set_brush_size(8)
    a = canvas.image_to_widget(20, 20)
    b = canvas.image_to_widget(60, 20)
    drag(qtbot, canvas, [(int(a.x()), int(a.y())), (int(b.x()), int(b.y()))])
    after_first = canvas.mask_array()
    c = canvas.image_to_widget(40, 10)
    d = canvas.image_to_widget(40, 80)
    drag(qtbot, canvas, [(int(c.x()), int(c.y())), (int(d.x()), int(d.y()))])
    after_second = canvas.mask_array()
    assert not np.array_equal(after_first, after_second)
    assert canvas.undo()
    assert np.array_equal(canvas.mask_array(), after_first)
    assert canvas.undo()
    assert not canvas.mask_array().any()
    assert not canvas.undo()
    assert canvas.redo()
    assert np.array_equal(canvas.mask_array(), after_first)
    assert canvas.redo()
    assert np.array_equal(canvas.mask_array(), after_second)


def test_eraser_clear_invert_are_undoable(qtbot, canvas):
    canvas.set_brush_size(20)
    p = canvas.image_to_widget(80, 50)
    drag(qtbot, canvas, [(int(p.x()), int(p.y()))])
    painted = canvas.mask_array()
    canvas.set_tool("eraser")
    canvas.set_brush_size(6)
    drag(qtbot, canvas, [(int(p.x()), int(p.y()))])
    erased = canvas.mask_array()
    assert erased[50, 80] == 0 and erased.sum() < painted.sum()
    canvas.invert_mask()
    assert canvas.mask_array()[50, 80] == 255 and canvas.mask_array()[0, 0] == 255
    canvas.clear_mask()
    assert canvas.mask_image() is None
    canvas.undo()
    canvas.undo()
    assert np.array_equal(canvas.mask_array(), erased)


def test_soft_brush_and_mask_image(qtbot, canvas):
    canvas.set_brush_size(20)
    canvas.set_hardness(0.0)
    p = canvas.image_to_widget(80, 50)
    drag(qtbot, canvas, [(int(p.x()), int(p.y()))])
    m = canvas.mask_image()
    assert m.mode == "L" and m.size == (160, 100)
    arr = np.asarray(m)
    assert 0 < arr[50, 86] < 255  # soft edge
    assert arr.max() > 200


def test_new_image_of_other_size_resets_mask_same_size_keeps_it(qtbot, canvas):
    p = canvas.image_to_widget(80, 50)
    drag(qtbot, canvas, [(int(p.x()), int(p.y()))])
    canvas.set_image(Image.new("RGB", (160, 100)), keep_mask=True)
    assert canvas.mask_image() is not None
    canvas.set_image(Image.new("RGB", (64, 64)), keep_mask=True)
    assert canvas.mask_image() is None and canvas.mask_array().shape == (64, 64)


def test_pan_with_middle_button_does_not_paint(qtbot, canvas):
    canvas.set_zoom(2.0)
    before = canvas.image_to_widget(0, 0)
    qtbot.mousePress(canvas, Qt.MouseButton.MiddleButton, pos=QPoint(100, 100))
    qtbot.mouseMove(canvas, pos=QPoint(130, 120))
    qtbot.mouseRelease(canvas, Qt.MouseButton.MiddleButton, pos=QPoint(130, 120))
    after = canvas.image_to_widget(0, 0)
    assert (after.x() - before.x(), after.y() - before.y()) == pytest.approx((30, 20))
    assert canvas.mask_image() is None


def test_view_image_shows_over_base(qtbot, canvas):
    canvas.set_view(Image.new("RGB", (40, 25), (0, 255, 0)))
    assert canvas.shown_image().getpixel((0, 0)) == (0, 255, 0)
    canvas.clear_view()
    assert canvas.shown_image().size == (160, 100)
    canvas.grab()  # paints without error


def test_space_drag_pans(qtbot, canvas):
    canvas.set_zoom(2.0)
    canvas.setFocus()
    before = canvas.image_to_widget(0, 0)
    qtbot.keyPress(canvas, Qt.Key.Key_Space)
    drag(qtbot, canvas, [(100, 100), (90, 140)])
    qtbot.keyRelease(canvas, Qt.Key.Key_Space)
    after = canvas.image_to_widget(0, 0)
    assert (after.x() - before.x(), after.y() - before.y()) == pytest.approx((-10, 40))
    assert canvas.mask_image() is None
    drag(qtbot, canvas, [(100, 100)])  # space released: paints again
    assert canvas.mask_image() is not None


def test_wheel_zooms_around_the_cursor(qtbot, canvas):
    from PySide6.QtCore import QPoint as P
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    anchor = QPointF(150, 120)
    ix, iy = canvas.widget_to_image(anchor)
    s0 = canvas.scale
    ev = QWheelEvent(
        anchor,
        canvas.mapToGlobal(anchor),
        P(0, 0),
        P(0, 120),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(canvas, ev)
    assert canvas.scale == pytest.approx(s0 * 1.25)
    assert canvas.widget_to_image(anchor) == pytest.approx((ix, iy))
