"""Seamless inpainting as a user sees it: untouched pixels stay untouched over rounds, soft masks, blend band, colours."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter
from PySide6.QtWidgets import QWidget

from desktop_app.core.imaging import feather_mask, paste_back
from desktop_app.core.modelinfo import builtin_model_path
from desktop_app.core.requests import InpaintRequest
from desktop_app.engine import engine as engine_module
from desktop_app.engine.blending import band_mask, band_region, blend_back, color_match, spread
from tests.ui_conftest_helpers import qloop  # noqa: F401 - the fixture
from tools import shapes

BUILTIN = builtin_model_path()
needs_builtin = pytest.mark.skipif(not (BUILTIN / "model_index.json").is_file(), reason="built-in model not built")


def pixels(image: Image.Image | None) -> np.ndarray:
    assert image is not None
    return np.asarray(image.convert("RGB")).astype(np.int16)


def shapes_picture(colour="red", shape="square", background="white", position="left") -> Image.Image:
    return shapes.render(shapes.make_spec(shape, colour, background, position), 64)


def box_mask(box=(32, 16, 56, 48), size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def soft_disc(size=(64, 64)) -> Image.Image:
    """A disc with a wide grey edge, as a soft brush paints it: white to radius 8, grey down to 0 at radius 16."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    radius = np.hypot(x - 44, y - 32)
    return Image.fromarray(np.rint(np.clip((16 - radius) / 8, 0, 1) * 255).astype(np.uint8), "L")


def inpaint(model, image, mask, **kw) -> InpaintRequest:
    kw.setdefault("steps", 8)
    kw.setdefault("seed", 5)
    kw.setdefault("prompt", "a blue circle on a yellow background")
    return InpaintRequest(model=str(model), image=image, mask=mask, **kw)


# -- pixels outside mask + band: bit-identical after 10 rounds ------------------------------------
@needs_builtin
@pytest.mark.parametrize(
    "options",
    [dict(blend_band=8, color_match=True), dict(blend_band=8, color_match=True, soft_mask=True, mask_grow=2)],
    ids=["hard", "soft"],
)
def test_ten_rounds_keep_every_pixel_outside_mask_and_band_bit_identical(engine, options):
    original = shapes_picture()
    mask = soft_disc() if options.get("soft_mask") else box_mask()
    image = original
    for round_ in range(10):
        request = inpaint(BUILTIN, image, mask, seed=100 + round_, **options)
        image = engine.run(request).images[0]
    grown = mask.filter(ImageFilter.MaxFilter(2 * options.get("mask_grow", 0) + 1))
    keep = np.asarray(band_region(grown, options["blend_band"])) == 0
    assert keep.sum() > 0.3 * keep.size  # a real part of the picture is meant to stay
    out, src = pixels(image), pixels(original)
    assert np.array_equal(out[keep], src[keep]), f"{int((out[keep] != src[keep]).any(-1).sum())} pixels changed"
    inside = np.asarray(mask) == 255
    assert np.abs(out[inside] - src[inside]).mean() > 20  # the masked area was repainted: the test can fail


# -- soft masks --------------------------------------------------------------------------------
@pytest.mark.parametrize("nine_channel", [False, True], ids=["4-channel", "9-channel"])
def test_an_all_white_soft_mask_runs_exactly_as_the_hard_mask(
    engine, tiny_model_dir, tiny_inpaint_model_dir, nine_channel
):
    model = tiny_inpaint_model_dir if nine_channel else tiny_model_dir
    source = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    white = Image.new("L", (64, 64), 255)
    hard = engine.run(inpaint(model, source, white, prompt="x"))
    soft = engine.run(inpaint(model, source, white, prompt="x", soft_mask=True))
    assert np.array_equal(pixels(hard.images[0]), pixels(soft.images[0]))
    assert soft.info["Soft inpainting"] is True and "Soft inpainting" not in hard.info


def test_a_black_and_white_soft_mask_on_the_latent_grid_matches_the_hard_mask(engine, tiny_model_dir):
    """Hard masks behave as before: with a 4-channel UNet the pipeline already holds the unmasked latents to the
    noised source with the same noise, so a soft run of a 0/255 mask on the 8 px grid is the same picture.
    (A 9-channel UNet repaints unmasked latents in a hard run; a soft run holds them to the source.)"""
    source = Image.fromarray(np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = box_mask((24, 24, 40, 48))
    hard = engine.run(inpaint(tiny_model_dir, source, mask, prompt="x", strength=0.7, batch=2))
    soft = engine.run(inpaint(tiny_model_dir, source, mask, prompt="x", strength=0.7, batch=2, soft_mask=True))
    for h, s in zip(hard.images, soft.images, strict=True):  # each image of a batch with its own noise
        assert np.array_equal(pixels(h), pixels(s))


@pytest.mark.parametrize("nine_channel", [False, True], ids=["4-channel", "9-channel"])
@pytest.mark.parametrize("only_masked", [False, True], ids=["whole", "only-masked"])
def test_a_soft_mask_keeps_every_unpainted_pixel(
    engine, tiny_model_dir, tiny_inpaint_model_dir, nine_channel, only_masked
):
    """Grey paint on part of the picture, at strength 1 and 0.6, on either UNet and through the "only masked" crop
    (the hook crops its grey levels as the pipeline crops the mask)."""
    model = tiny_inpaint_model_dir if nine_channel else tiny_model_dir
    source = Image.fromarray(np.random.default_rng(12).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = soft_disc()
    for strength in (1.0, 0.6):
        request = inpaint(model, source, mask, prompt="x", soft_mask=True, strength=strength, only_masked=only_masked)
        out = pixels(engine.run(request.replace(only_masked_padding=8)).images[0])
        unpainted = np.asarray(mask) == 0
        assert np.array_equal(out[unpainted], pixels(source)[unpainted])
        assert np.abs(out[np.asarray(mask) == 255] - pixels(source)[np.asarray(mask) == 255]).mean() > 5


@needs_builtin
def test_a_soft_gradient_changes_the_white_side_fully_and_the_dark_side_less(engine):
    source = shapes_picture("red", "circle", "white", "centre")
    ramp = np.tile(np.linspace(0, 255, 64), (64, 1)).astype(np.uint8)  # black at the left, white at the right
    gradient = Image.fromarray(ramp, "L")
    prompt = "a blue circle on a yellow background"
    soft = pixels(engine.run(inpaint(BUILTIN, source, gradient, prompt=prompt, soft_mask=True, steps=12)).images[0])
    full = pixels(
        engine.run(inpaint(BUILTIN, source, Image.new("L", (64, 64), 255), prompt=prompt, steps=12)).images[0]
    )
    src = pixels(source)
    change = [float(np.abs(soft[:, x : x + 16] - src[:, x : x + 16]).mean()) for x in (0, 16, 32, 48)]
    full_change = float(np.abs(full[:, 48:] - src[:, 48:]).mean())
    assert change[0] < change[1] < change[2] < change[3], change
    assert change[0] < 0.25 * change[3], change
    assert change[3] > 0.6 * full_change, (change, full_change)  # the white side is repainted nearly as fully


def test_the_step_hook_holds_low_grey_latents_to_the_source_longer(engine, tiny_model_dir, monkeypatch):
    """Differential diffusion's rule: after step i of N a latent pixel of grey m is set back unless m > 1 - (i+1)/N."""
    from desktop_app.engine import blending

    seen: list[tuple[int, int]] = []
    original = blending.SoftInpaint.on_step_end

    def recording(self, pipe, i, callback_kwargs):
        before = callback_kwargs["latents"].clone()
        out = original(self, pipe, i, callback_kwargs)
        changed = (out["latents"] != before).any(1)[0]  # (h, w): latent pixels set back at this step
        levels = self.levels(pipe, before.shape, before.device, before.dtype)[0, 0]
        held = levels <= 1 - (i + 1) / pipe.num_timesteps
        assert not bool(changed[~held].any())  # what follows the model is left as the model made it
        seen.append((int(held.sum()), int(changed.sum())))
        return out

    monkeypatch.setattr(blending.SoftInpaint, "on_step_end", recording)
    source = Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 64), (64, 1)).astype(np.uint8), "L")
    engine.run(inpaint(tiny_model_dir, source, ramp, prompt="x", soft_mask=True, steps=8))
    held = [n for n, _ in seen]
    assert held == [56, 48, 40, 32, 24, 16, 8, 0]  # 8 latent columns of greys 1/16, 3/16, ...: one freed per step
    assert seen[0][1] > 0  # grey pixels the pipeline alone would let change are set back


# -- blend band and colour match -----------------------------------------------------------------
def test_band_zero_and_no_match_is_the_plain_paste_back():
    rng = np.random.default_rng(6)
    result = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    source = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    feathered = feather_mask(box_mask((10, 10, 30, 30), (40, 48)), 4)
    expected = paste_back(result, source, feathered)
    assert np.array_equal(pixels(blend_back(result, source, feathered, feathered, 0, False)), pixels(expected))


def test_the_band_ramps_down_outside_the_mask_and_stops_at_its_width():
    mask = box_mask((20, 20, 40, 40))
    feathered = feather_mask(mask, 3)
    banded = np.asarray(band_mask(feathered, 10)).astype(int)
    assert np.array_equal(banded[20:40, 20:40], np.asarray(feathered)[20:40, 20:40])  # inside: as feathered
    row = banded[30, 40:52]  # going right from the mask's edge
    assert row[0] > 0 and all(a >= b for a, b in zip(row, row[1:])) and row[10] == 0 == row[11]
    assert np.count_nonzero(np.asarray(band_region(mask, 10)) == 0) > 0
    assert not (banded[np.asarray(band_region(mask, 10)) == 0]).any()  # never past the region tests check
    distance, _ = spread(np.asarray(mask), 5)
    assert distance[30, 30] == 0 and distance[30, 41] == 2 and distance[30, 50] == 6


def test_colour_match_undoes_a_drift_the_result_shows_around_the_mask():
    rng = np.random.default_rng(9)
    source = rng.integers(190, 211, (64, 64, 3)).astype(np.int16)  # a light, slightly textured picture
    drift = np.array([-20, -10, 15])
    result = source + drift  # the decode shifted every colour...
    result[20:44, 20:44] = np.array([100, 160, 60]) + drift  # ...of the surroundings and of the new green box
    mask = box_mask((20, 20, 44, 44))
    as_image = Image.fromarray(result.astype(np.uint8))
    matched = pixels(color_match(as_image, Image.fromarray(source.astype(np.uint8)), mask, band=4))
    assert np.abs(matched[20:44, 20:44] - np.array([100, 160, 60])).max() <= 1  # green as asked, drift undone
    distance, _ = spread(np.asarray(mask), 4)
    band = (distance >= 1) & (distance <= 4)  # the band the paste-back blends over (`band_mask`)
    assert np.abs(matched[band] - source[band]).max() <= 1  # the band shows the source again
    outside = np.asarray(band_region(mask, 4)) == 0
    assert np.array_equal(matched[outside], result[outside])


def test_colour_match_leaves_a_result_alone_where_the_ring_was_repainted():
    rng = np.random.default_rng(10)
    source = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    result = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))  # nothing of the source is left
    assert np.array_equal(pixels(color_match(result, source, box_mask((20, 20, 44, 44)), 4)), pixels(result))


@needs_builtin
def test_colour_match_brings_the_region_of_a_drifting_vae_back_to_its_surroundings(engine, monkeypatch):
    """A VAE that shifts colours (diffusers#5808) made the inpainted box bluer than the picture around it."""
    loaded = engine.models.get(str(BUILTIN))
    decode = loaded.pipe.vae.decode

    def drifting(*args, **kwargs):
        out = decode(*args, **kwargs)
        sample = out[0] if isinstance(out, tuple) else out.sample
        bias = sample.new_tensor([0.0, -0.1, 0.3]).view(1, 3, 1, 1)  # in [-1, 1]: about -13 green, +38 blue
        return (sample + bias, *out[1:]) if isinstance(out, tuple) else type(out)(sample=sample + bias)

    monkeypatch.setattr(loaded.pipe.vae, "decode", drifting)
    source = shapes_picture("red", "circle", "yellow", "left")
    mask = box_mask((36, 8, 60, 56))  # background only, right of the circle
    caption = "a red circle on a yellow background"
    plain = engine.run(inpaint(BUILTIN, source, mask, prompt=caption, blend_band=4))
    matched = engine.run(inpaint(BUILTIN, source, mask, prompt=caption, blend_band=4, color_match=True))
    ring = (np.asarray(band_region(mask, 20)) > 0) & (np.asarray(band_region(mask, 4)) == 0)
    surroundings = np.median(pixels(source)[ring], 0)  # the yellow background around the box
    inside = np.asarray(mask) == 255

    def distance(result):
        return float(np.abs(pixels(result.images[0])[inside].mean(0) - surroundings).sum())

    assert distance(plain) > 30  # the drift shows without the match
    assert distance(matched) < 0.3 * distance(plain), (distance(matched), distance(plain))
    assert matched.info["Colour match"] is True and matched.info["Blend band"] == 4
    # with a VAE that keeps colours, a box asked to differ from its surroundings keeps its colour
    monkeypatch.undo()
    green = "a red circle on a green background"
    asked = engine.run(inpaint(BUILTIN, source, mask, prompt=green, blend_band=4))
    kept = engine.run(inpaint(BUILTIN, source, mask, prompt=green, blend_band=4, color_match=True))
    assert distance(asked) > 60  # the box is another colour than the yellow around it
    moved = np.abs(pixels(kept.images[0])[inside].mean(0) - pixels(asked.images[0])[inside].mean(0))
    assert moved.max() < 8  # by the VAE's own small drift at most, not towards the yellow


def test_defaults_take_todays_paste_back_path_bit_for_bit(engine, tiny_model_dir, monkeypatch):
    """Soft off, band 0, no colour match: the result is the pipeline's picture pasted through today's inward
    feather, and the blending module is never called."""
    from desktop_app.engine import blending, sampling

    raw: list[Image.Image] = []
    run_pipeline = sampling.run_pipeline

    def capture(*args, **kwargs):
        images, trajectory, info = run_pipeline(*args, **kwargs)
        raw.extend(im.copy() for im in images)
        return images, trajectory, info

    def forbidden(*args, **kwargs):
        raise AssertionError("the seamless path ran with every option off")

    monkeypatch.setattr(engine_module, "run_pipeline", capture)
    monkeypatch.setattr(engine_module, "blend_back", forbidden)
    monkeypatch.setattr(blending.SoftInpaint, "__init__", forbidden)
    source = Image.fromarray(np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = box_mask((20, 12, 44, 52))
    result = engine.run(inpaint(tiny_model_dir, source, mask, prompt="x", mask_blur=3))
    expected = paste_back(raw[0], source, feather_mask(mask, 3))
    assert np.array_equal(pixels(result.images[0]), pixels(expected))
    assert not {"Soft inpainting", "Blend band", "Colour match"} & set(result.info)


def test_the_band_changes_pixels_next_to_the_mask_and_none_past_it(engine, tiny_model_dir):
    source = Image.fromarray(np.random.default_rng(8).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = box_mask((24, 24, 40, 40))
    plain = pixels(engine.run(inpaint(tiny_model_dir, source, mask, prompt="x")).images[0])
    banded = pixels(engine.run(inpaint(tiny_model_dir, source, mask, prompt="x", blend_band=6)).images[0])
    src = pixels(source)
    near = (np.asarray(band_region(mask, 6)) > 0) & (np.asarray(mask) == 0)
    assert np.array_equal(plain[near], src[near])  # without a band the painted edge is hard
    assert (banded[near] != src[near]).any(-1).mean() > 0.3  # with one the result reaches into the band
    past = np.asarray(band_region(mask, 6)) == 0
    assert np.array_equal(banded[past], src[past])


# -- in the window, as a user does it -------------------------------------------------------------
def test_the_window_inpaints_softly_with_a_band_and_keeps_the_rest_over_accepted_rounds(
    qtbot, qloop, tmp_path, tiny_model_dir, engine
):
    """Tick Soft inpainting and Colour match, type a blend band, paint a stroke, Generate, accept (Ctrl+Shift+A)
    the result as the next source, three times: the requests carry the options and every pixel past the band is
    still the first source's."""
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtWidgets import QCheckBox, QSpinBox

    from desktop_app.app.application import create_main_window

    window = create_main_window(model=str(tiny_model_dir), data_dir=tmp_path / "data", engine_factory=lambda: engine)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    panel = window.prompt_panel
    panel.steps_spin.setValue(4)
    panel.prompt_edit.setPlainText("a red circle")
    original = Image.fromarray(np.random.default_rng(11).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    window.set_source_image(original)
    panel.set_mode("inpaint")
    for name in ("softMaskCheck", "colorMatchCheck"):
        check = window.findChild(QCheckBox, name)
        assert check is not None, name
        qtbot.mouseClick(check, Qt.MouseButton.LeftButton, pos=QPoint(4, check.height() // 2))
        assert check.isChecked(), name
    band = window.findChild(QSpinBox, "blendBandSpin")
    assert band is not None
    band.setFocus()
    band.selectAll()
    qtbot.keyClicks(band, "6")
    assert band.value() == 6
    canvas = window.canvas
    canvas.set_brush_size(12)
    a, b = canvas.image_to_widget(20, 32), canvas.image_to_widget(44, 32)
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=QPoint(int(a.x()), int(a.y())))
    qtbot.mouseMove(canvas, pos=QPoint(int(b.x()), int(b.y())))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=QPoint(int(b.x()), int(b.y())))
    mask = canvas.mask_image()
    assert mask is not None and np.asarray(mask).max() > 0
    for _ in range(3):
        with qtbot.waitSignal(window.resultReady, timeout=60000) as blocker:
            qtbot.mouseClick(window.findChild(QWidget, "generateButton"), Qt.MouseButton.LeftButton)
        result = blocker.args[0]
        assert (result.request.soft_mask, result.request.color_match, result.request.blend_band) == (True, True, 6)
        assert result.info["Soft inpainting"] is True and result.info["Blend band"] == 6
        qtbot.keyClick(window, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        made = pixels(result.images[0])
        qtbot.waitUntil(lambda made=made: np.array_equal(pixels(window.source_image), made), timeout=5000)
    out, src = pixels(window.source_image), pixels(original)
    keep = np.asarray(band_region(mask, 6)) == 0
    assert np.array_equal(out[keep], src[keep])
    painted = np.asarray(mask) == 255
    assert np.abs(out[painted] - src[painted]).mean() > 5
    window.close()
