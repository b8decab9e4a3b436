"""Regional prompts: what a user notices (pixels, notices, errors) on tiny models, and the built-in model's halves."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
from PIL import Image

from desktop_app.core.errors import InvalidRequest, JobCancelled
from desktop_app.core.events import Notice, Progress
from desktop_app.core.requests import CROP_AND_RESIZE, EditRequest, GenerateRequest, Img2ImgRequest, RegionPrompt
from desktop_app.engine.regions import RegionalAttnProcessor

FULL = Image.new("L", (64, 64), 255)


def gen(model, prompt="a cat", **kw) -> GenerateRequest:
    kw.setdefault("seed", 3)
    return GenerateRequest(prompt=prompt, model=str(model), previews=False, trajectory=False, **kw)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(int)


def cross_processors(engine, model) -> list:
    from diffusers.models.attention_processor import Attention

    unet = engine.models.get(str(model)).pipe.unet
    return [m.processor for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]


def test_a_region_over_everything_is_the_same_as_its_prompt_as_the_base(engine, tiny_model_dir):
    region = engine.run(gen(tiny_model_dir, "zebra on ice", regions=(RegionPrompt("a red fox", FULL),)))
    plain = engine.run(gen(tiny_model_dir, "a red fox"))
    base = engine.run(gen(tiny_model_dir, "zebra on ice"))
    assert np.abs(pixels(region) - pixels(plain)).max() <= 2
    assert np.abs(pixels(region) - pixels(base)).mean() > 2  # the region did change the picture
    assert region.info["Regions"] == "1"


def test_half_weight_mixes_the_base_prompt_back_in(engine, tiny_model_dir):
    def run(weight):
        return pixels(
            engine.run(gen(tiny_model_dir, "zebra on ice", regions=(RegionPrompt("a red fox", FULL, weight),)))
        )

    full, half = run(1.0), run(0.5)
    base = pixels(engine.run(gen(tiny_model_dir, "zebra on ice")))
    assert np.abs(full - half).mean() > 0.5
    assert np.abs(half - base).mean() > 0.5
    assert engine.run(gen(tiny_model_dir, regions=(RegionPrompt("a fox", FULL, 0.5),))).info["Regions"] == (
        "1 (weights 0.5)"
    )


def test_without_regions_the_processors_are_untouched_and_the_pixels_bit_identical(engine, tiny_model_dir, monkeypatch):
    from desktop_app.engine import sampling

    before = cross_processors(engine, tiny_model_dir)
    seen = []
    result = engine.run(gen(tiny_model_dir), lambda e: seen.append(cross_processors(engine, tiny_model_dir)))
    assert all(p is q for step in seen for p, q in zip(step, before)) and seen
    monkeypatch.setattr(sampling, "regional_attention", lambda *a, **k: contextlib.nullcontext())
    bypassed = engine.run(gen(tiny_model_dir))
    assert np.array_equal(pixels(result), pixels(bypassed))
    assert "Regions" not in result.info


def test_processors_come_back_after_a_cancelled_run(engine, tiny_model_dir):
    before = cross_processors(engine, tiny_model_dir)
    cancel = threading.Event()
    during = []

    def on_event(event):
        if isinstance(event, Progress):
            during.append(cross_processors(engine, tiny_model_dir))
            cancel.set()

    with pytest.raises(JobCancelled):
        engine.run(gen(tiny_model_dir, steps=6, regions=(RegionPrompt("a fox", FULL),)), on_event, cancel)
    assert during and all(isinstance(p, RegionalAttnProcessor) for p in during[0])
    after = cross_processors(engine, tiny_model_dir)
    assert all(p is q for p, q in zip(after, before)) and len(after) == len(before)


def test_regions_that_change_nothing_are_left_out_with_a_notice(engine, tiny_model_dir):
    empty = Image.new("L", (64, 64), 0)
    notices = []
    result = engine.run(
        gen(tiny_model_dir, regions=(RegionPrompt("a fox", empty), RegionPrompt("  ", FULL))),
        lambda e: notices.append(e.message) if isinstance(e, Notice) else None,
    )
    assert any("Region 1" in n and "covers nothing" in n for n in notices)
    assert any("Region 2 has no prompt" in n for n in notices)
    assert set(notices) <= set(result.notices)
    assert "Regions" not in result.info
    assert np.array_equal(pixels(result), pixels(engine.run(gen(tiny_model_dir))))


def test_bad_region_requests_are_refused_with_a_hint(engine, tiny_model_dir):
    with pytest.raises(InvalidRequest) as many:
        engine.run(gen(tiny_model_dir, regions=tuple(RegionPrompt(f"r{i}", FULL) for i in range(9))))
    assert "at most 8" in many.value.message and many.value.hint
    with pytest.raises(InvalidRequest) as size:
        engine.run(gen(tiny_model_dir, regions=(RegionPrompt("a fox", Image.new("L", (32, 32), 255)),)))
    assert "Region 1's mask is 32x32" in size.value.message
    source = Image.new("RGB", (64, 64), (90, 120, 200))
    with pytest.raises(InvalidRequest) as edit:
        engine.run(
            EditRequest(
                prompt="a fox",
                source_prompt="blue",
                image=source,
                model=str(tiny_model_dir),
                seed=1,
                regions=(RegionPrompt("a fox", FULL),),
            )
        )
    assert "Edit" in edit.value.message and edit.value.hint


def test_img2img_maps_the_region_masks_like_the_source(engine, tiny_model_dir):
    from desktop_app.engine.engine import _work_request
    from desktop_app.engine.imaging import Placement

    source = Image.new("RGB", (128, 64), (200, 80, 40))
    mask = Image.new("L", (128, 64), 0)
    mask.paste(255, (64, 0, 128, 64))  # the right half of the source
    request = Img2ImgRequest(prompt="x", image=source, strength=0.6, regions=(RegionPrompt("a fox", mask),))
    work = _work_request(request.replace(width=64, height=64), source, Placement(CROP_AND_RESIZE, (128, 64), (64, 64)))
    inside = np.asarray(work.regions[0].mask)
    assert work.regions[0].mask.size == (64, 64)  # crop: the middle 64x64 of the source scaled to 64 high
    assert inside[:, :30].max() == 0 and inside[:, 34:].min() == 255
    result = engine.run(
        Img2ImgRequest(
            prompt="x",
            image=source,
            strength=0.6,
            model=str(tiny_model_dir),
            seed=1,
            previews=False,
            trajectory=False,
            regions=(RegionPrompt("a fox", mask),),
        )
    )
    assert result.images[0].size == (128, 64) and result.info["Regions"] == "1"


def test_sdxl_regions_use_both_text_encoders(engine, tmp_path):
    from test_models_tiny import build_tiny_sdxl

    folder = build_tiny_sdxl(tmp_path / "xl")
    same = engine.run(gen(folder, "zebra on ice", regions=(RegionPrompt("zebra on ice", FULL),)))
    base = engine.run(gen(folder, "zebra on ice"))
    other = engine.run(gen(folder, "zebra on ice", regions=(RegionPrompt("a red fox", FULL),)))
    assert np.abs(pixels(same) - pixels(base)).max() <= 2  # the pooled embeds stay the base prompt's
    assert np.abs(pixels(other) - pixels(base)).mean() > 1
    assert not any(isinstance(p, RegionalAttnProcessor) for p in cross_processors(engine, folder))


def test_on_the_built_in_model_a_region_sets_the_shape_where_it_lies(engine):
    """The built-in model takes its shape from cross-attention (its colour mostly from the pooled base prompt, so
    the region's colour mixes with the base's: see bench/regional_prompts.py for the two-region measure)."""
    from tools.shapes import classify

    base = "a blue square on a white background"
    for seed in range(2100, 2104):
        region = engine.run(
            GenerateRequest(
                prompt=base,
                seed=seed,
                previews=False,
                trajectory=False,
                regions=(RegionPrompt("a red circle on a white background", FULL),),
            )
        )
        plain = engine.run(GenerateRequest(prompt=base, seed=seed, previews=False, trajectory=False))
        assert classify(region.images[0])["shape"] == "circle", seed
        assert classify(plain.images[0])["shape"] == "square", seed
