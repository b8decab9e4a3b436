"""The shipped model: loads offline in the diffusers layout, is small, and makes what the prompt says."""

from __future__ import annotations

import numpy as np
import pytest

from desktop_app.core.modelinfo import builtin_model_path, model_defaults
from desktop_app.core.requests import GenerateRequest, InpaintRequest
from tools.shapes import caption, classify, heldout_specs, make_spec, render, train_specs

MODEL = builtin_model_path()


def test_it_ships_inside_the_package_and_is_small():
    assert (MODEL / "model_index.json").is_file()
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size <= 20 * 1024 * 1024
    assert not list(MODEL.rglob("*.bin")) and list(MODEL.rglob("*.safetensors"))


def test_diffusers_pipelines_load_it_offline():
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL), local_files_only=True)
    assert pipe.unet.config.in_channels == 4 and pipe.tokenizer.model_max_length <= 77
    assert pipe.scheduler.config.clip_sample is False  # DDIM inversion needs it
    StableDiffusionInpaintPipeline.from_pretrained(str(MODEL), local_files_only=True)


def test_the_pixel_classifier_reads_renders_correctly():
    rng = np.random.default_rng(0)
    specs = list(train_specs()[:: max(1, len(train_specs()) // 60)])
    for spec in specs:
        got = classify(render(spec, rng=rng))
        assert (got["shape"], got["colour"], got["background"]) == (
            spec["shape"],
            spec["colour"],
            spec["background"],
        ), caption(spec)


def test_held_out_captions_are_never_trained_on():
    trained = {caption(s) for s in train_specs()}
    held = {caption(s) for s in heldout_specs()}
    assert held and not trained & held


def test_it_is_the_default_model_and_draws_a_red_square_on_white(engine):
    defaults = model_defaults(None)
    result = engine.run(GenerateRequest(prompt="a red square on a white background", seed=0))
    assert result.model_id == "builtin"
    assert (result.request.steps, result.request.guidance) == (defaults["steps"], defaults["guidance"])
    got = classify(result.images[0])
    assert (got["colour"], got["background"], got["shape"]) == ("red", "white", "square")


def test_inpainting_with_it_repaints_only_the_masked_shape(engine):
    from PIL import Image

    source = render(make_spec("circle", "red", "blue", position="centre"), rng=np.random.default_rng(1))
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (12, 12, 52, 52))
    result = engine.run(
        InpaintRequest(prompt="a yellow circle on a blue background", image=source, mask=mask, seed=0, mask_blur=2)
    )
    out, src = np.asarray(result.images[0]).astype(int), np.asarray(source).astype(int)
    assert np.array_equal(out[:4], src[:4])  # far outside the mask: the source's own pixels
    centre = out[28:36, 28:36].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 150 and centre[1] > 150 and centre[2] < 120  # yellow now, where red was


@pytest.mark.parametrize("where", ["left", "right", "top", "bottom"])
def test_a_position_word_moves_the_shape_at_the_same_seed(engine, where):
    result = engine.run(GenerateRequest(prompt=f"a blue circle at the {where} on a yellow background", seed=0))
    assert classify(result.images[0])["position"] == where


def _hue(rgb) -> float:
    import colorsys

    return colorsys.rgb_to_hsv(*(np.clip(np.asarray(rgb, float), 0, 255) / 255))[0] * 360


def _hue_gap(a: float, b: float) -> float:
    return min(abs(a - b), 360 - abs(a - b))


def test_the_last_steps_preview_has_the_decoded_images_colours(engine):
    """Defect 11: red on blue used to preview as magenta on green (the map was fitted to colours the VAE cannot make)."""
    from PIL import Image

    from desktop_app.core.events import Preview

    previews = []
    result = engine.run(GenerateRequest(prompt="a red circle on a blue background", seed=0), previews.append)
    last = [e for e in previews if isinstance(e, Preview)][-1].image
    assert last.size == result.images[0].size  # the built-in VAE is cheap: its previews are real decodes
    decoded = np.asarray(result.images[0].convert("RGB").resize(last.size, Image.Resampling.BOX), float)
    preview = np.asarray(last.convert("RGB"), float)
    corner = decoded[:2, :2].reshape(-1, 3).mean(axis=0)
    distance = np.abs(decoded - corner).sum(axis=-1)
    background, shape = distance < 60, distance > 200  # the blue field and the red disc of the decoded image
    assert background.sum() > 20 and shape.sum() > 4
    for region in (background, shape):
        want, got = decoded[region].mean(axis=0), preview[region].mean(axis=0)
        assert _hue_gap(_hue(want), _hue(got)) < 30, (want, got)
    # the slider shows the same decoded frames while it is dragged (kept in the trajectory: no second decode)
    n = len(result.trajectory)
    assert all((i, "x0", 0) in result.trajectory.frames for i in range(n))
    cheap = result.trajectory.previews(n - 1).astype(float)
    assert cheap.shape[1::-1] == last.size
    for region in (background, shape):
        want, got = decoded[region].mean(axis=0), cheap[region].mean(axis=0)
        assert _hue_gap(_hue(want), _hue(got)) < 30, (want, got)


def test_default_inpaint_and_masked_edit_change_no_unpainted_pixel(engine):
    """Defect 12: with the default 4 px blur the feather went outward and changed 947 unpainted pixels."""
    from PIL import Image

    from desktop_app.core.requests import EditRequest

    source = render(make_spec("circle", "red", "blue", position="centre"), rng=np.random.default_rng(1))
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (16, 16, 48, 48))
    src, unpainted = np.asarray(source), np.asarray(mask) == 0
    for request in (
        InpaintRequest(prompt="a yellow circle on a blue background", image=source, mask=mask, seed=0),
        EditRequest(
            prompt="a yellow circle on a blue background",
            source_prompt="a red circle on a blue background",
            image=source,
            mask=mask,
            seed=0,
        ),
    ):
        out = np.asarray(engine.run(request).images[0])
        assert out.shape == src.shape
        assert np.count_nonzero((out != src).any(axis=-1) & unpainted) == 0, request.kind
        assert np.abs(out[~unpainted].astype(int) - src[~unpainted]).mean() > 5  # the painted part did change


def test_a_wide_source_works_at_the_models_size_and_comes_back_at_its_own(engine):
    """Defect 9: a 320x200 edit ran at 320x200 (77 s, garbage)."""
    from PIL import Image

    from desktop_app.core.events import Notice
    from desktop_app.core.requests import EditRequest

    source = render(make_spec("circle", "red", "blue", position="centre"), rng=np.random.default_rng(1)).resize(
        (320, 200), Image.Resampling.LANCZOS
    )
    events = []
    result = engine.run(
        EditRequest(
            prompt="a yellow circle on a blue background",
            source_prompt="a red circle on a blue background",
            image=source,
            seed=0,
        ),
        events.append,
    )
    assert result.images[0].size == (320, 200)
    assert (result.request.width, result.request.height) == (96, 64)
    assert result.trajectory.x0[0].shape[-2:] == (16, 24)  # the UNet ran at 96x64
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert (
        "The image is 320x200; the built-in model works at 64x64: worked at 96x64 and scaled back to 320x200."
        in notices
    )
