"""Outpainting (core/outpaint.py), masked content (engine/masked_content.py) and `diffusion-desk outpaint`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from desktop_app.cli.main import main
from desktop_app.core.errors import InvalidRequest
from desktop_app.core.events import Failed, Notice
from desktop_app.core.infotext import read_png_metadata
from desktop_app.core.outpaint import fill_canvas, outpaint_masks, rounded_extend
from desktop_app.core.requests import InpaintRequest
from desktop_app.engine.masked_content import fill_masked

OVERLAP = 8


@pytest.fixture(scope="module")
def source() -> Image.Image:
    """Random colours: any resampled or regenerated pixel shows."""
    return Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _kept(result: Image.Image, source: Image.Image, extend: tuple[int, int, int, int], band: int) -> np.ndarray:
    """The result's pixels of the original, outside the overlap band on the extended sides (and the source's)."""
    left, top, right, bottom = extend
    crop = np.asarray(result)[top : top + source.height, left : left + source.width]
    x0, y0 = band if left else 0, band if top else 0
    x1, y1 = source.width - (band if right else 0), source.height - (band if bottom else 0)
    return np.stack([crop[y0:y1, x0:x1], np.asarray(source)[y0:y1, x0:x1]])


def _outpaint(model, source, extend, **kw) -> InpaintRequest:
    kw.setdefault("seed", 2)
    kw.setdefault("outpaint_overlap", OVERLAP)
    return InpaintRequest(prompt="a field", model=str(model), image=source, extend=extend, **kw)


# -- the canvas, its fill and its masks: pixels, no model ---------------------------------------------------------
def test_each_fill_keeps_the_original_and_fills_the_new_area_from_its_edge(source):
    extend = (16, 8, 0, 24)
    src = np.asarray(source).astype(int)
    for how in ("edge", "blur", "noise"):
        canvas = np.asarray(fill_canvas(source, extend, how, seed=1)).astype(int)
        assert canvas.shape == (8 + 64 + 24, 16 + 64, 3)
        assert np.array_equal(canvas[8:72, 16:80], src), how
        new_left = canvas[8:72, :16]
        if how == "edge":  # every new column on the left repeats the original's first column
            assert all(np.array_equal(new_left[:, i], src[:, 0]) for i in range(16))
        else:  # near the edge's colours, without its streaks
            assert abs(new_left.mean() - src[:, :8].mean()) < 25, how
        if how == "blur":
            assert new_left[:, 0].std(axis=0).mean() < src[:, 0].std(axis=0).mean() / 2  # no streaks left
        if how == "noise":
            assert new_left[:, :8].std() > 20  # texture, not a flat colour
            assert not np.array_equal(canvas, np.asarray(fill_canvas(source, extend, "blur")).astype(int))


def test_the_masks_cover_the_new_area_and_feather_only_inside_the_band():
    model, paste = (np.asarray(m).astype(int) for m in outpaint_masks((64, 64), (16, 0, 0, 8), OVERLAP))
    assert model.shape == paste.shape == (72, 80)
    assert (model[:, :16] == 255).all() and (paste[:, :16] == 255).all() and (paste[64:] == 255).all()
    band = paste[: 64 - OVERLAP, 16 : 16 + OVERLAP]  # the left band, away from the bottom one
    assert (model[:64, 16 : 16 + OVERLAP] == 255).all()  # the model repaints the whole band
    assert (band > 0).all() and (band < 255).all() and (np.diff(band, axis=1) < 0).all()  # a ramp down inward
    assert (paste[: 64 - OVERLAP, 16 + OVERLAP :] == 0).all() and (model[: 64 - OVERLAP, 16 + OVERLAP :] == 0).all()


def test_rounding_goes_to_the_extended_sides():
    assert rounded_extend((64, 64), (5, 0, 0, 0)) == (8, 0, 0, 0)
    assert rounded_extend((64, 60), (3, 2, 7, 0)) == (3, 4, 13, 0)  # 74 -> 80 on the right; 62 -> 64 on top
    assert rounded_extend((60, 64), (0, 8, 0, 0)) == (0, 8, 0, 0)  # an axis not extended is not touched


def test_fill_replaces_only_the_masked_pixels_with_the_surroundings():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:] = (200, 40, 40)
    image[20:44, 20:44] = (0, 255, 0)  # a green square to hide
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    out = np.asarray(fill_masked(Image.fromarray(image), mask)).astype(int)
    assert np.array_equal(out[np.asarray(mask) == 0], image[np.asarray(mask) == 0].astype(int))
    assert np.abs(out[28:36, 28:36] - (200, 40, 40)).max() < 6  # the surroundings' red, no green left


# -- through the engine, tiny models ----------------------------------------------------------------------------
def test_outpaint_keeps_the_original_exactly_and_generates_the_new_area(engine, tiny_model_dir, source):
    extend = (16, 8, 24, 0)
    events = []
    result = engine.run(_outpaint(tiny_model_dir, source, extend), events.append)
    image = result.images[0]
    assert image.size == (104, 72)
    kept = _kept(image, source, extend, OVERLAP)
    assert np.array_equal(kept[0], kept[1])
    out = np.asarray(image).astype(int)
    fill = np.asarray(fill_canvas(source, extend, "edge")).astype(int)
    assert np.abs(out[:, :16] - fill[:, :16]).mean() > 10  # generated, not the stretched edge
    assert np.abs(out[:8] - fill[:8]).mean() > 10
    band = out[8:72, 16 : 16 + OVERLAP]
    assert not np.array_equal(band, np.asarray(source)[:, :OVERLAP])  # the band blends in
    assert result.info["Outpaint"] == "left 16, top 8, right 24, edge"
    # the Result is of the extended picture and replays: the request is the one asked, with its seed
    assert result.request.extend == extend and result.request.image.size == (64, 64)
    again = engine.run(result.request)
    assert np.array_equal(np.asarray(again.images[0]), out)
    assert not [e for e in events if isinstance(e, Failed)]


def test_a_canvas_not_a_multiple_of_8_is_rounded_up_with_a_notice(engine, tiny_model_dir, source):
    events = []
    result = engine.run(_outpaint(tiny_model_dir, source, (5, 0, 0, 0)), events.append)
    assert result.images[0].size == (72, 64)
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("69x64" in n and "72x64" in n for n in notices), notices
    kept = _kept(result.images[0], source, (8, 0, 0, 0), OVERLAP)  # the original now sits at x = 8
    assert np.array_equal(kept[0], kept[1])


def test_a_painted_mask_is_repainted_too(engine, tiny_model_dir, source):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 32, 48, 48))
    result = engine.run(_outpaint(tiny_model_dir, source, (0, 0, 16, 0), mask=mask, mask_blur=0))
    out, src = np.asarray(result.images[0]).astype(int), np.asarray(source).astype(int)
    assert np.abs(out[32:48, 32:48] - src[32:48, 32:48]).mean() > 10
    keep = np.ones((64, 64), bool)
    keep[32:48, 32:48] = False
    keep[:, 64 - OVERLAP :] = False
    assert np.array_equal(out[:, :64][keep], src[keep])


def test_outpaint_on_a_9_channel_inpainting_unet(engine, tiny_inpaint_model_dir, source):
    extend = (0, 16, 0, 16)
    result = engine.run(_outpaint(tiny_inpaint_model_dir, source, extend))
    assert result.images[0].size == (64, 96)
    kept = _kept(result.images[0], source, extend, OVERLAP)
    assert np.array_equal(kept[0], kept[1])
    out = np.asarray(result.images[0]).astype(int)
    fill = np.asarray(fill_canvas(source, extend, "edge")).astype(int)
    assert np.abs(out[:16] - fill[:16]).mean() > 10


def test_only_masked_runs_the_unet_on_the_crop_not_the_canvas(engine, tiny_model_dir):
    wide = Image.fromarray(np.random.default_rng(4).integers(0, 255, (64, 192, 3), dtype=np.uint8))
    extend = (0, 0, 64, 0)
    full = engine.run(_outpaint(tiny_model_dir, wide, extend))
    crop = engine.run(_outpaint(tiny_model_dir, wide, extend, only_masked=True, only_masked_padding=8))
    assert full.images[0].size == crop.images[0].size == (256, 64)
    assert full.trajectory is not None and crop.trajectory is not None
    assert full.trajectory.xt[0].shape == (1, 4, 8, 32)  # the whole 256x64 canvas
    # the new 64 px + the 8 px band + 8 px padding: an 80x64 crop, at its own size
    assert crop.trajectory.xt[0].shape == (1, 4, 8, 10)
    out, src = np.asarray(crop.images[0]).astype(int), np.asarray(wide).astype(int)
    assert np.array_equal(out[:, : 192 - OVERLAP], src[:, : 192 - OVERLAP])
    assert np.abs(out[:, 192:] - src[:, -1:]).mean() > 10  # generated, not the stretched edge
    assert "Inpaint area: Only masked" in _infotext(crop)


def _infotext(result) -> str:
    from desktop_app.core.infotext import format_parameters

    return format_parameters(result)


def test_an_extension_past_2048_is_refused_naming_the_size(engine, tiny_model_dir, source):
    events = []
    with pytest.raises(InvalidRequest, match="2064x64"):
        engine.run(_outpaint(tiny_model_dir, source, (0, 0, 2000, 0)), events.append)
    assert [e for e in events if isinstance(e, Failed)] and "2048" in events[-1].message


# -- masked content -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def centre_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # latent cells 2..5
    return mask


def _start(engine, model, source, mask, mode, strength=0.5, **kw):
    request = InpaintRequest(
        prompt="x", model=str(model), image=source, mask=mask, seed=7, strength=strength, masked_content=mode, **kw
    )
    result = engine.run(request)
    assert result.trajectory is not None
    return result, result.trajectory.xt[0][0]  # (4, 8, 8): what the UNet's first step starts from


def test_each_masked_content_changes_what_the_model_starts_from(engine, tiny_model_dir, source, centre_mask):
    starts = {
        mode: _start(engine, tiny_model_dir, source, centre_mask, mode)[1]
        for mode in ("original", "fill", "latent_noise", "latent_nothing")
    }
    inside, outside = (slice(None), slice(2, 6), slice(2, 6)), (slice(None), slice(0, 1), slice(None))
    for mode in ("latent_noise", "latent_nothing"):
        assert np.abs(starts[mode][inside] - starts["original"][inside]).mean() > 0.1, mode
    assert not np.array_equal(starts["fill"], starts["original"])  # fill: the filled source's latent (see below)
    for mode in ("latent_noise", "latent_nothing"):  # the latent modes change the masked latent only
        assert np.array_equal(starts[mode][outside], starts["original"][outside])
    # A1111's rule: x0 := noise (latent noise) or 0 (latent nothing) inside, then noised to t with that same noise:
    # nothing = sqrt(1 - a) * noise and noise = (sqrt(a) + sqrt(1 - a)) * noise
    result, _ = _start(engine, tiny_model_dir, source, centre_mask, "latent_nothing")
    assert result.trajectory is not None
    t = result.trajectory.timesteps[0]
    a = float(engine.models.get(str(tiny_model_dir)).pipe.scheduler.alphas_cumprod[t])
    ratio = 1 + np.sqrt(a) / np.sqrt(1 - a)
    np.testing.assert_allclose(starts["latent_noise"][inside], starts["latent_nothing"][inside] * ratio, rtol=1e-4)
    assert result.info["Masked content"] == "latent nothing"


def test_on_a_9_channel_unet_masked_content_changes_only_the_start_latent(
    engine, tiny_inpaint_model_dir, source, centre_mask, monkeypatch
):
    """Its masked-image channels are greyed inside the mask by diffusers whatever the prefill: they stay the same."""
    unet = engine.models.get(str(tiny_inpaint_model_dir)).pipe.unet
    seen: list[torch.Tensor] = []
    forward = unet.forward

    def record(sample, *args, **kwargs):
        seen.append(sample.detach().clone())  # (2B, 9, h, w): latents, mask, masked-image latents
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", record)
    firsts = {}
    for mode in ("original", "fill", "latent_nothing"):
        seen.clear()
        _start(engine, tiny_inpaint_model_dir, source, centre_mask, mode)
        firsts[mode] = seen[0]
    for mode in ("fill", "latent_nothing"):
        assert torch.equal(firsts[mode][:, 4:], firsts["original"][:, 4:]), mode
        assert not torch.equal(firsts[mode][:, :4], firsts["original"][:, :4]), mode


def test_original_keeps_the_source_colours_more_than_latent_noise_and_fill_takes_the_surroundings(engine, centre_mask):
    """The built-in model at strength 0.5: "original" starts from the source, "latent noise" from noise and
    "fill" from the blue around the red square."""
    from tools.shapes import make_spec, render

    src = render(make_spec("square", "red", "blue", position="centre"), rng=np.random.default_rng(1))
    errors, notices, centres = {}, {}, {}
    for mode in ("original", "latent_noise", "fill"):
        events = []
        request = InpaintRequest(
            prompt="a red square on a blue background",
            image=src,
            mask=centre_mask,
            seed=0,
            steps=10,
            strength=0.5,
            masked_content=mode,
        )
        out = np.asarray(engine.run(request, events.append).images[0]).astype(int)
        errors[mode] = np.abs(out[16:48, 16:48] - np.asarray(src)[16:48, 16:48]).mean()
        notices[mode] = [e.message for e in events if isinstance(e, Notice)]
        centres[mode] = out[28:36, 28:36].reshape(-1, 3).mean(axis=0)  # (R, G, B)
    assert errors["original"] < errors["latent_noise"] / 2, errors
    red, blue = centres["original"], centres["fill"]
    # the square stays red from "original"; filled with the blue around it, it starts (and ends) far bluer
    assert red[0] - red[2] > 120 and blue[2] - red[2] > 50 and red[0] - blue[0] > 50, centres
    assert any("latent noise" in n and "strength 1" in n for n in notices["latent_noise"])
    assert not any("latent noise" in n for n in notices["original"])


def test_fill_at_strength_1_says_it_has_no_effect(engine, tiny_model_dir, source, centre_mask):
    events = []
    engine.run(
        InpaintRequest(prompt="x", model=str(tiny_model_dir), image=source, mask=centre_mask, masked_content="fill"),
        events.append,
    )
    assert any("no effect at strength 1" in e.message for e in events if isinstance(e, Notice))


# -- the command line -----------------------------------------------------------------------------------------------
def test_the_real_outpaint_command_end_to_end(tiny_model_dir, tmp_path, source):
    src_path, out = tmp_path / "in.png", tmp_path / "out.png"
    source.save(src_path)
    run = subprocess.run(
        [sys.executable, "-m", "desktop_app", "--data-dir", str(tmp_path / "data"), "outpaint"]
        + ["--image", str(src_path), "--extend", "left=16,top=8", "--prompt", "a field", "--overlap", "8"]
        + ["--model", str(tiny_model_dir), "--steps", "2", "--seed", "3", "--fill", "blur", "--strength", "0.8"]
        + ["--out", str(out), "--no-history"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    with Image.open(out) as written:
        image = written.convert("RGB")
    assert image.size == (80, 72)
    kept = _kept(image, source, (16, 8, 0, 0), 8)
    assert np.array_equal(kept[0], kept[1])
    with Image.open(out) as written:
        assert 'Outpaint: "left 16, top 8, blur"' in written.info["parameters"]
    info = read_png_metadata(out)  # our chunk: the request as asked, so the window and `replay` remake it
    assert isinstance(info.request, InpaintRequest) and info.request.extend == (16, 8, 0, 0)
    assert (info.request.outpaint_fill, info.request.outpaint_overlap, info.request.strength) == ("blur", 8, 0.8)


@pytest.mark.parametrize(
    "extend, message",
    [
        ("left=abc", "left='abc' is not a whole number"),
        ("sideways=8", "'sideways=8' is not SIDE=PIXELS"),
        ("left=0", "adds no pixels"),
    ],
)
def test_bad_extend_text_is_a_usage_error_naming_it(tmp_path, capsys, extend, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["outpaint", "--image", "in.png", "--extend", extend, "-p", "x", "--out", str(tmp_path / "o.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--extend" in err and message in err


def test_the_command_refuses_a_canvas_past_2048(tiny_model_dir, tmp_path, source, capsys):
    src_path = tmp_path / "in.png"
    source.save(src_path)
    code = main(
        ["outpaint", "--image", str(src_path), "--extend", "right=2000", "-p", "x", "--model", str(tiny_model_dir)]
        + ["--no-history", "--out", str(tmp_path / "o.png")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "2064x64" in err and "hint:" in err
    assert not (tmp_path / "o.png").exists()


def test_regional_prompts_follow_the_original_onto_the_canvas(engine, tiny_model_dir, source):
    from desktop_app.core.requests import RegionPrompt

    left = Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    request = _outpaint(tiny_model_dir, source, (16, 0, 0, 0), regions=(RegionPrompt("a tree", left),))
    result = engine.run(request)
    assert result.images[0].size == (80, 64)
    kept = _kept(result.images[0], source, (16, 0, 0, 0), OVERLAP)
    assert np.array_equal(kept[0], kept[1])
    assert result.request.regions[0].mask.size == (64, 64)  # as asked: on the original, for a replay


def test_only_masked_inpainting_works_on_the_masked_area_at_full_resolution(engine, tiny_model_dir):
    """A 512x512 picture on a model made for 64x64: 'only masked' cuts the mask's box (plus padding) from the
    picture at its own size, instead of cutting it from the picture scaled down to 64x64 (8 px of detail lost a px)."""
    big = Image.fromarray(np.random.default_rng(6).integers(0, 255, (512, 512, 3), dtype=np.uint8))
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (200, 200, 248, 248))
    asked = InpaintRequest(prompt="x", model=str(tiny_model_dir), steps=2, seed=1, image=big, mask=mask, mask_blur=0)
    crop = engine.run(asked.replace(only_masked=True, only_masked_padding=8))
    whole = engine.run(asked)
    assert crop.trajectory is not None and crop.trajectory.xt[0].shape == (1, 4, 8, 8)  # the 64x64 box, 1:1
    out, src = np.asarray(crop.images[0]).astype(int), np.asarray(big).astype(int)
    keep = np.asarray(mask) == 0
    assert out.shape == src.shape and np.array_equal(out[keep], src[keep])  # every unmasked pixel is the source's

    def detail(image) -> float:  # mean step between neighbouring pixels inside the mask
        inside = np.asarray(image).astype(int)[200:248, 200:248]
        return float(np.abs(np.diff(inside, axis=1)).mean())

    assert detail(crop.images[0]) > 2 * detail(whole.images[0])  # generated at full resolution, not upscaled 8x
    assert isinstance(crop.request, InpaintRequest) and crop.request.only_masked and crop.request.image is big
    assert "Inpaint area: Only masked" in _infotext(crop)
