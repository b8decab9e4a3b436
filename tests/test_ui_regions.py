"""Regional prompts driven through the real window: regions added and painted with real mouse strokes, their prompts
and weights typed, the masks the submitted request carries, undo, the notices, Edit mode, a new picture's size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from tests.ui_conftest_helpers import FakeEngine, child, click_generate, make_window, paint, qloop, type_into  # noqa: F401


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def window(qtbot, qloop, tmp_path, engine):  # noqa: F811
    w = make_window(qtbot, tmp_path / "data", engine)
    yield w
    w.close()


def _click(qtbot, w, name):
    qtbot.mouseClick(child(w, name), Qt.MouseButton.LeftButton)


def _add_region(qtbot, w, prompt, weight=None):
    if not w.regions_section.is_open():
        _click(qtbot, w, "regionsSectionToggle")
    _click(qtbot, w, "addRegionButton")
    qtbot.keyClicks(child(w, "regionPromptEdit"), prompt)
    if weight is not None:
        type_into(qtbot, child(w, "regionWeightSpin"), weight)


def _mask(request, i=0):
    return np.asarray(request.regions[i].mask)


def test_text_to_image_regions_are_painted_on_a_blank_canvas_of_the_chosen_size(qtbot, window, engine):
    type_into(qtbot, child(window, "widthSpin"), "128")
    type_into(qtbot, child(window, "heightSpin"), "96")
    assert window.canvas._content_size() is None  # nothing to paint on yet: the canvas says what to do
    qtbot.keyClicks(child(window, "promptEdit"), "a grey room")
    _add_region(qtbot, window, "a red sofa", "1.5")
    assert window.canvas._content_size() == (128, 96)  # the blank canvas of the text-to-image size
    paint(qtbot, window, [(20, 20), (40, 20)], size=10)  # the Add button chose the Region brush
    assert window.brush.tool == "region"
    assert not window.document.has_mask()  # the inpaint mask is untouched
    _add_region(qtbot, window, "a window")
    paint(qtbot, window, [(100, 70)], size=10)
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert request.kind == "generate" and request.prompt == "a grey room"
    assert [(r.prompt, r.weight) for r in request.regions] == [("a red sofa", 1.5), ("a window", 1.0)]
    first, second = _mask(request, 0), _mask(request, 1)
    assert first.shape == (96, 128) and request.regions[0].mask.mode == "L"
    assert first[20, 30] == 255 and first[70, 100] == 0 and first[60, 60] == 0
    assert second[70, 100] == 255 and second[20, 30] == 0
    assert first.astype(bool).sum() < 128 * 96 // 8  # only the stroke


def test_regions_on_a_source_are_at_its_size_and_drawn_in_their_colour(qtbot, window, engine):
    window.set_source_image(Image.new("RGB", (160, 120), (128, 128, 128)))
    _add_region(qtbot, window, "a cat")
    paint(qtbot, window, [(30, 60), (60, 60)], size=16)
    canvas = window.canvas
    qtbot.waitUntil(lambda: True)
    shot = canvas.grab().toImage()
    p_in, p_out = canvas.image_to_widget(45, 60), canvas.image_to_widget(130, 20)
    inside, outside = shot.pixelColor(p_in.toPoint()), shot.pixelColor(p_out.toPoint())
    assert (outside.red(), outside.green(), outside.blue()) == (128, 128, 128)
    color = window.document.regions[0].color
    assert inside.blue() > 150 and inside.red() < 120, (inside.name(), color)  # the first region is blue
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert request.kind == "img2img" and request.regions[0].prompt == "a cat"
    mask = _mask(request)
    assert mask.shape == (120, 160) and mask[60, 45] == 255 and mask[20, 130] == 0

    # inpaint takes them too, beside its own mask
    window.prompt_panel.set_mode("inpaint")
    qtbot.mouseClick(child(window, "canvasToolbar").widgetForAction(window.act_brush), Qt.MouseButton.LeftButton)
    paint(qtbot, window, [(120, 90)], size=10)
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert request.kind == "inpaint" and np.asarray(request.mask)[90, 120] == 255
    assert _mask(request)[90, 120] == 0 and _mask(request)[60, 45] == 255


def test_undo_takes_back_region_paint_and_an_unpainted_region_is_left_out_with_a_notice(qtbot, window, engine):
    window.set_source_image(Image.new("RGB", (96, 96)))
    _add_region(qtbot, window, "a moon")
    paint(qtbot, window, [(20, 20), (40, 40)], size=8)
    assert window.document.regions[0].has_paint()
    window.canvas.setFocus()
    qtbot.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not window.document.regions[0].has_paint()
    click_generate(qtbot, window)
    assert engine.runs[-1].regions == ()
    assert "Region 1 has no paint: left out" in window.statusBar().currentMessage()
    qtbot.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert window.document.regions[0].has_paint()  # redo
    child(window, "regionPromptEdit").clear()
    click_generate(qtbot, window)
    assert engine.runs[-1].regions == ()
    assert "Region 1 has no prompt: left out" in window.statusBar().currentMessage()


def test_removing_and_clearing_a_region_are_undone_and_its_prompt_comes_back(qtbot, window, engine):
    window.set_source_image(Image.new("RGB", (96, 96)))
    _add_region(qtbot, window, "a tree")
    paint(qtbot, window, [(50, 50)], size=12)
    _click(qtbot, window, "clearRegionButton")
    assert not window.document.regions[0].has_paint()
    window.act_undo.trigger()
    assert window.document.regions[0].has_paint()
    _click(qtbot, window, "removeRegionButton")
    assert window.document.regions == [] and child(window, "regionsList").count() == 0
    window.act_undo.trigger()
    assert child(window, "regionsList").count() == 1
    assert child(window, "regionPromptEdit").toPlainText() == "a tree"
    click_generate(qtbot, window)
    assert _mask(engine.runs[-1])[50, 50] == 255


def test_edit_mode_says_regions_do_not_apply_and_sends_none(qtbot, window, engine):
    window.set_source_image(Image.new("RGB", (64, 64)))
    _add_region(qtbot, window, "a hat")
    paint(qtbot, window, [(30, 30)], size=10)
    window.prompt_panel.set_mode("edit")
    panel = child(window, "regionsPanel")
    assert not panel.isEnabled() and "Edit mode" in panel.toolTip()
    assert not window.act_region.isEnabled() and window.brush.tool == "brush"
    child(window, "sourcePromptEdit").setText("a photo")
    qtbot.keyClicks(child(window, "promptEdit"), "a photo of a hat")
    click_generate(qtbot, window)
    assert engine.runs[-1].kind == "edit" and engine.runs[-1].regions == ()
    assert "Regions do not apply in Edit mode" in window.statusBar().currentMessage()
    window.prompt_panel.set_mode("img2img")
    assert panel.isEnabled() and window.act_region.isEnabled()


def test_a_new_picture_of_another_size_clears_the_regions_paint_and_undo_brings_it_back(qtbot, window, engine):
    window.set_source_image(Image.new("RGB", (100, 80)))
    _add_region(qtbot, window, "a boat")
    paint(qtbot, window, [(10, 10), (30, 10)], size=8)
    window.set_source_image(Image.new("RGB", (200, 160)))
    assert not window.document.regions[0].has_paint()
    assert "cleared" in window.statusBar().currentMessage() and "Ctrl+Z" in window.statusBar().currentMessage()
    assert child(window, "regionPromptEdit").toPlainText() == "a boat"  # the prompt stays
    window.act_undo.trigger()
    mask = window.document.regions[0].mask
    assert mask.shape == (160, 200) and mask[20, 40] == 255 and mask[100, 150] == 0  # scaled to this picture
    click_generate(qtbot, window)
    assert engine.runs[-1].regions[0].mask.size == (200, 160)
    # the same size keeps them as painted
    window.set_source_image(Image.new("RGB", (200, 160), (9, 9, 9)))
    assert window.document.regions[0].mask[20, 40] == 255


def test_the_region_brush_on_an_empty_list_makes_the_first_region(qtbot, window):
    window.set_source_image(Image.new("RGB", (64, 64)))
    window.canvas.setFocus()
    qtbot.keyClick(window.canvas, Qt.Key.Key_R)
    assert window.brush.tool == "region"
    paint(qtbot, window, [(32, 32)], size=10)
    assert len(window.document.regions) == 1 and window.document.regions[0].mask[32, 32] == 255
    assert window.regions_section.is_open() and "(1)" in child(window, "regionsSectionToggle").text()


def test_changing_the_text_to_image_size_scales_the_regions_in_one_undo_step(qtbot, window, engine):
    type_into(qtbot, child(window, "widthSpin"), "64")
    type_into(qtbot, child(window, "heightSpin"), "64")
    _add_region(qtbot, window, "a star")
    paint(qtbot, window, [(16, 16)], size=8)
    spin = child(window, "widthSpin")
    spin.setFocus()
    for _ in range(8):  # arrow-key steps of 8 px: 64 -> 128
        qtbot.keyClick(spin, Qt.Key.Key_Up)
    mask = window.document.regions[0].mask
    assert mask.shape == (64, 128) and mask[16, 32] == 255 and mask[16, 100] == 0
    window.act_undo.trigger()  # one step back to what was painted
    assert window.document.regions[0].mask.shape == (64, 64)
    assert child(window, "widthSpin").value() == 64  # the size goes back with it
    assert window.document.regions[0].mask[16, 16] == 255


def test_the_latent_mode_chosen_in_the_panel_reaches_the_request_and_comes_back_from_its_png(
    qtbot, window, engine, tmp_path
):
    from desktop_app.core.infotext import png_info
    from tests.ui_conftest_helpers import choose

    qtbot.keyClicks(child(window, "promptEdit"), "on a white background")
    _add_region(qtbot, window, "a red circle")
    paint(qtbot, window, [(10, 30), (20, 30)], size=10)
    combo = child(window, "regionModeCombo")
    assert combo.currentText() == "Latent"  # the window's default: the mode that works with the built-in model
    assert "Latent" in combo.toolTip() and "cost" in combo.toolTip()
    click_generate(qtbot, window)
    assert engine.runs[-1].region_mode == "latent"
    choose(qtbot, combo, "Attention")
    result = click_generate(qtbot, window)
    assert engine.runs[-1].region_mode == "attention" and engine.runs[-1].regions[0].prompt == "a red circle"

    path = tmp_path / "made.png"
    result.images[0].save(path, pnginfo=png_info(result))
    choose(qtbot, combo, "Latent")
    assert window.open_image(str(path))  # our PNG's parameters: the mode comes back with the prompt
    assert combo.currentText() == "Attention" and window.document.region_mode == "attention"


def test_without_regions_the_request_keeps_the_default_mode(qtbot, window, engine):
    from tests.ui_conftest_helpers import choose

    if not window.regions_section.is_open():
        _click(qtbot, window, "regionsSectionToggle")
    choose(qtbot, child(window, "regionModeCombo"), "Latent")
    qtbot.keyClicks(child(window, "promptEdit"), "a red circle")
    click_generate(qtbot, window)
    assert engine.runs[-1].regions == () and engine.runs[-1].region_mode == "attention"  # the request's default
