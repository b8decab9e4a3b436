"""Selections, mask operations and pen pressure driven through the real window: the rectangle, lasso and flood
fill tools chosen by their shortcuts and used with real mouse drags and clicks, the Mask menu's grow / shrink /
feather (its pixel dialog answered), mask from transparency, save and load a mask PNG, undo after each, the mask
the submitted inpaint request carries, and synthesized QTabletEvents whose pressure sets the stamp."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QInputDevice, QPointingDevice, QTabletEvent
from PySide6.QtWidgets import QApplication

from desktop_app.core.requests import InpaintRequest
from desktop_app.model import mask_ops
from tests.ui_conftest_helpers import FakeEngine, click_generate, make_window, paint, qloop  # noqa: F401

W, H = 96, 64


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def window(qtbot, qloop, tmp_path, engine):  # noqa: F811
    w = make_window(qtbot, tmp_path / "data", engine)
    yield w
    w.close()


def _open(window, tmp_path, image=None):
    """Open a picture as the user does (a file), zoomed to 2x so every widget pixel lands inside one image pixel."""
    rng = np.random.default_rng(0)
    image = image if image is not None else Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    path = tmp_path / "source.png"
    image.save(path)
    assert window.open_image(str(path))
    window.canvas.set_zoom(2.0)
    window.canvas.pan_by(0, 0)


def _at(window, x, y) -> QPoint:
    p = window.canvas.image_to_widget(x, y)
    return QPoint(int(round(p.x())), int(round(p.y())))


def _drag(qtbot, window, points, modifier=Qt.KeyboardModifier.NoModifier):
    canvas = window.canvas
    pts = [_at(window, x, y) for x, y in points]
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, modifier, pts[0])
    for p in pts[1:]:
        qtbot.mouseMove(canvas, p)
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, modifier, pts[-1])


def _key(qtbot, window, key, modifier=Qt.KeyboardModifier.NoModifier):
    window.canvas.setFocus()
    qtbot.keyClick(window.canvas, key, modifier)


def _status(window) -> str:
    return window.statusBar().currentMessage()


def test_a_rectangle_drag_masks_exactly_that_rectangle_and_the_request_carries_it(qtbot, window, engine, tmp_path):
    _open(window, tmp_path)
    _key(qtbot, window, Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier)  # Shift+M: rectangle select
    assert window.brush.tool == "rectangle"
    _drag(qtbot, window, [(10, 12), (25, 20), (40, 30)])
    expected = np.zeros((H, W), np.uint8)
    expected[12:30, 10:40] = 255
    assert np.array_equal(window.document.mask, expected)
    # Alt held subtracts: a hole in the middle
    _drag(qtbot, window, [(20, 16), (30, 26)], Qt.KeyboardModifier.AltModifier)
    expected[16:26, 20:30] = 0
    assert np.array_equal(window.document.mask, expected)
    window.prompt_panel.set_mode("inpaint")
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert isinstance(request, InpaintRequest) and request.mask is not None
    assert np.array_equal(np.asarray(request.mask.convert("L")), expected)
    _key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # the hole goes back
    expected[16:26, 20:30] = 255
    assert np.array_equal(window.document.mask, expected)


def test_a_lasso_masks_its_polygon_and_two_points_only_give_a_notice(qtbot, window, tmp_path):
    _open(window, tmp_path)
    _key(qtbot, window, Qt.Key.Key_L)
    assert window.brush.tool == "lasso"
    corners = [(10, 10), (70, 14), (40, 55)]
    path = [corners[0]]
    for a, b in zip(corners, corners[1:] + corners[:1]):  # along each edge, as a hand drags
        path += [(a[0] + (b[0] - a[0]) * t / 8, a[1] + (b[1] - a[1]) * t / 8) for t in range(1, 9)]
    _drag(qtbot, window, path)
    mask = window.document.mask.copy()
    expected = mask_ops.polygon((W, H), [window.canvas.widget_to_image(QPointF(_at(window, *p))) for p in path])
    assert np.array_equal(mask, expected)
    assert mask[25, 40] == 255 and mask[12, 68] == 0 and mask[50, 12] == 0 and mask[60, 90] == 0
    assert 0.9 < (mask > 0).sum() / (0.5 * abs(60 * 45 - 4 * 30)) < 1.1  # the triangle's area, 1320 px
    _drag(qtbot, window, [(80, 50), (82, 52)])  # a lasso of two points
    assert "at least three points" in _status(window)
    assert np.array_equal(window.document.mask, mask)


def test_flood_fill_masks_the_clicked_shape_of_a_two_colour_image(qtbot, window, tmp_path):
    rgb = np.full((H, W, 3), (30, 160, 40), np.uint8)
    shape = np.zeros((H, W), bool)
    ys, xs = np.mgrid[0:H, 0:W]
    shape |= (xs - 30) ** 2 + (ys - 30) ** 2 <= 15**2  # a disc
    shape |= (abs(xs - 60) <= 20) & (abs(ys - 30) <= 4)  # and a bar joined to it
    rgb[shape] = (200, 40, 60)
    _open(window, tmp_path, Image.fromarray(rgb))
    _key(qtbot, window, Qt.Key.Key_G)
    assert window.brush.tool == "fill"
    qtbot.mouseClick(window.canvas, Qt.MouseButton.LeftButton, pos=_at(window, 30.5, 30.5))
    assert np.array_equal(window.document.mask > 0, shape)
    # Ctrl-click on the background subtracts nothing that is masked; a plain click adds the background too
    qtbot.mouseClick(window.canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, _at(window, 2, 2))
    assert np.array_equal(window.document.mask > 0, shape)
    qtbot.mouseClick(window.canvas, Qt.MouseButton.LeftButton, pos=_at(window, 2, 2))
    assert window.document.mask.all()
    window.document.undo()
    assert np.array_equal(window.document.mask > 0, shape)


def test_grow_shrink_feather_from_the_mask_menu_each_one_undo_step(qtbot, window, tmp_path, monkeypatch):
    _open(window, tmp_path)
    _key(qtbot, window, Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier)
    _drag(qtbot, window, [(30, 20), (60, 44)])
    rect = window.document.mask.copy()
    answers = iter([3, 3, 4, 30])
    monkeypatch.setattr(window.mask_actions, "ask_px", lambda *a: next(answers))
    window.mask_actions.act_grow.trigger()
    grown = window.document.mask.copy()
    assert np.array_equal(grown, mask_ops.grow(rect, 3))
    assert grown[17:47, 30:60].all() and grown[20:44, 27:63].all() and not grown[:16].any()
    window.mask_actions.act_shrink.trigger()
    assert np.array_equal(window.document.mask, mask_ops.shrink(grown, 3))
    window.mask_actions.act_feather.trigger()
    soft = window.document.mask.copy()
    assert soft[32, 45] == 255 and soft[0, 0] == 0 and ((soft > 0) & (soft < 255)).sum() > 100  # grey edges
    window.mask_actions.act_shrink.trigger()  # 30 px: nothing is left
    assert not window.document.mask.any()
    assert "leaves no mask" in _status(window) and "Undo" in _status(window)
    for expected in (soft, mask_ops.shrink(grown, 3), grown, rect):
        assert window.document.undo()
        assert np.array_equal(window.document.mask, expected)


def test_mask_from_transparency_and_save_then_load_round_trip(qtbot, window, tmp_path, monkeypatch):
    _open(window, tmp_path)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[10:30, 40:80, 3] = 0
    rgba[40, 5, 3] = 100
    cutout = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(cutout)
    monkeypatch.setattr(window.mask_actions, "ask_open", lambda *a: str(cutout))
    window.mask_actions.act_from_alpha.trigger()
    mask = window.document.mask.copy()
    assert mask[10:30, 40:80].min() == 255 and mask[40, 5] == 155 and (mask > 0).sum() == 20 * 40 + 1
    saved = tmp_path / "saved"
    monkeypatch.setattr(window.mask_actions, "ask_save", lambda *a: str(saved) + ".png")
    window.mask_actions.act_save.trigger()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "saved.png")), mask)
    window.document.clear_mask()
    assert not window.document.has_mask()
    monkeypatch.setattr(window.mask_actions, "ask_open", lambda *a: str(tmp_path / "saved.png"))
    window.mask_actions.act_load.trigger()
    assert np.array_equal(window.document.mask, mask)  # bit-exact, grey level included
    # an opaque picture has no transparency: an error, the mask stays
    opaque = tmp_path / "opaque.png"
    Image.new("RGB", (W, H)).save(opaque)
    monkeypatch.setattr(window.mask_actions, "ask_open", lambda *a: str(opaque))
    window.mask_actions.act_from_alpha.trigger()
    assert window.error_banner.isVisible() and "no transparency" in window.error_banner.label.text()
    assert np.array_equal(window.document.mask, mask)


def test_a_mask_of_another_size_is_scaled_with_a_notice_or_refused_naming_both(qtbot, window, tmp_path, monkeypatch):
    _open(window, tmp_path)
    small = np.zeros((H // 2, W // 2), np.uint8)
    small[4:12, 8:20] = 255
    path = tmp_path / "half.png"
    Image.fromarray(small, "L").save(path)
    monkeypatch.setattr(window.mask_actions, "ask_open", lambda *a: str(path))
    window.mask_actions.act_load.trigger()
    expected = np.zeros((H, W), np.uint8)
    expected[8:24, 16:40] = 255
    assert np.array_equal(window.document.mask, expected)
    assert "48×32" in _status(window) and "96×64" in _status(window)
    paint(qtbot, window, [(80, 50)], size=6)  # paint after it: a refused file must not lose it
    before = window.document.mask.copy()
    wrong = tmp_path / "wrong.png"
    Image.new("L", (200, 40), 255).save(wrong)
    monkeypatch.setattr(window.mask_actions, "ask_open", lambda *a: str(wrong))
    window.mask_actions.act_load.trigger()
    assert np.array_equal(window.document.mask, before)
    banner = window.error_banner
    assert banner.isVisible() and "200×40" in banner.label.text() and "96×64" in banner.label.text()


def _pen():
    return QPointingDevice(
        "test pen",
        7,
        QInputDevice.DeviceType.Stylus,
        QPointingDevice.PointerType.Pen,
        QInputDevice.Capability.Position | QInputDevice.Capability.Pressure,
        1,
        3,
    )


def _tablet(canvas, device, kind, pos: QPoint, pressure: float) -> bool:
    button = Qt.MouseButton.LeftButton if kind != QTabletEvent.Type.TabletMove else Qt.MouseButton.NoButton
    buttons = Qt.MouseButton.NoButton if kind == QTabletEvent.Type.TabletRelease else Qt.MouseButton.LeftButton
    event = QTabletEvent(
        kind,
        device,
        QPointF(pos),
        QPointF(canvas.mapToGlobal(pos)),
        pressure,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        Qt.KeyboardModifier.NoModifier,
        button,
        buttons,
    )
    QApplication.sendEvent(canvas, event)
    return event.isAccepted()


def _pen_dot(window, device, x, y, pressure):
    canvas = window.canvas
    pos = _at(window, x, y)
    assert _tablet(canvas, device, QTabletEvent.Type.TabletPress, pos, pressure)
    _tablet(canvas, device, QTabletEvent.Type.TabletMove, pos, pressure)
    _tablet(canvas, device, QTabletEvent.Type.TabletRelease, pos, pressure)


def test_tablet_pressure_sets_the_stamp_size_or_its_opacity(qtbot, window, tmp_path):
    _open(window, tmp_path)
    window.canvas.set_brush_size(20)
    device = _pen()
    assert window.brush.pressure == "size"
    _pen_dot(window, device, 20, 32, 1.0)
    _pen_dot(window, device, 60, 32, 0.25)
    mask = window.document.mask
    full, light = (mask[:, :40] > 0).sum(), (mask[:, 40:] > 0).sum()
    assert 250 < full < 380  # a disc of diameter 20: 314 px
    assert 10 < light < 40  # diameter 5: 20 px
    assert mask[32, 60] == 255  # full opacity at any size
    window.document.undo()
    window.document.undo()
    assert not window.document.mask.any()
    window.mask_actions.pressure_actions["opacity"].trigger()
    assert window.brush.pressure == "opacity"
    _pen_dot(window, device, 40, 32, 0.5)
    assert abs(int(window.document.mask[32, 40]) - 128) <= 1  # half the pressure: half the strength
    assert 250 < (window.document.mask > 0).sum() < 380  # at the full size
    window.mask_actions.pressure_actions["off"].trigger()
    _pen_dot(window, device, 70, 20, 0.1)
    assert window.document.mask[20, 70] == 255
    # the mouse paints as before whatever the pressure setting
    paint(qtbot, window, [(10, 55)], size=8)
    assert window.document.mask[55, 10] == 255


def test_the_pressure_mode_and_fill_tolerance_come_back_next_session(qtbot, window, tmp_path):
    from PySide6.QtCore import QSettings

    from desktop_app.model.brush import Brush

    window.mask_actions.pressure_actions["opacity"].trigger()
    window.brush.set_fill_tolerance(77)
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    window.brush.save(settings)
    settings.sync()
    fresh = Brush()
    fresh.restore(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    assert (fresh.pressure, fresh.fill_tolerance) == ("opacity", 77)
    settings.setValue("brush/pressure", "hard")  # a hand-edited file: the default
    fresh.restore(settings)
    assert fresh.pressure == "size"
