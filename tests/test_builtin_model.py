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
    specs = [s for s in train_specs()[:: max(1, len(train_specs()) // 60)]]
    for spec in specs:
        got = classify(render(spec, rng=rng))
        assert (got["shape"], got["colour"], got["background"]) == (spec["shape"], spec["colour"], spec["background"]), caption(spec)


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
    result = engine.run(InpaintRequest(prompt="a yellow circle on a blue background", image=source, mask=mask, seed=0, mask_blur=2))
    out, src = np.asarray(result.images[0]).astype(int), np.asarray(source).astype(int)
    assert np.array_equal(out[:4], src[:4])  # far outside the mask: the source's own pixels
    centre = out[28:36, 28:36].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 150 and centre[1] > 150 and centre[2] < 120  # yellow now, where red was


@pytest.mark.parametrize("where", ["left", "right", "top", "bottom"])
def test_a_position_word_moves_the_shape_at_the_same_seed(engine, where):
    result = engine.run(GenerateRequest(prompt=f"a blue circle at the {where} on a yellow background", seed=0))
    assert classify(result.images[0])["position"] == where
