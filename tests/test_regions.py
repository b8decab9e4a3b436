"""Regional prompts: what a user notices (pixels, notices, errors) on tiny models, and the built-in model's halves."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch
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
    from desktop_app.core.imaging import Placement
    from desktop_app.engine.engine import _work_request

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


# -- the latent mode ----------------------------------------------------------------------------------------------
def halves(width=128, height=64) -> tuple[Image.Image, Image.Image]:
    left, right = Image.new("L", (width, height), 0), Image.new("L", (width, height), 0)
    left.paste(255, (0, 0, width // 2, height))
    right.paste(255, (width // 2, 0, width, height))
    return left, right


@contextlib.contextmanager
def unet_calls(monkeypatch):
    """Every call of the UNet class's forward (what the latent mode wraps): (sample shape, its kwargs)."""
    from diffusers import UNet2DConditionModel

    calls: list[tuple[tuple, dict]] = []
    original = UNet2DConditionModel.forward

    def spy(self, sample, timestep, *args, **kwargs):
        calls.append((tuple(sample.shape), kwargs))
        return original(self, sample, timestep, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    yield calls


def test_latent_a_region_over_everything_is_its_prompt_as_the_base(engine, tiny_model_dir):
    region = engine.run(
        gen(tiny_model_dir, "zebra on ice", region_mode="latent", regions=(RegionPrompt("a red fox", FULL),))
    )
    plain = engine.run(gen(tiny_model_dir, "a red fox"))
    base = engine.run(gen(tiny_model_dir, "zebra on ice"))
    assert np.abs(pixels(region) - pixels(plain)).max() <= 1
    assert np.abs(pixels(region) - pixels(base)).mean() > 2
    assert region.info["Regions"] == "1, latent"


def test_latent_without_regions_leaves_the_unet_alone_bit_identical(engine, tiny_model_dir, monkeypatch):
    from desktop_app.engine import sampling

    unet = engine.models.get(str(tiny_model_dir)).pipe.unet
    own = []
    result = engine.run(gen(tiny_model_dir, region_mode="latent"), lambda e: own.append("forward" in vars(unet)))
    assert own and not any(own)  # no instance forward was put on the UNet at any step
    monkeypatch.setattr(sampling, "regional_latents", lambda *a, **k: contextlib.nullcontext())
    assert np.array_equal(pixels(result), pixels(engine.run(gen(tiny_model_dir, region_mode="latent"))))
    assert "Regions" not in result.info


def test_latent_forward_comes_back_after_a_cancelled_run(engine, tiny_model_dir):
    from desktop_app.engine.regions import RegionalLatentForward

    unet = engine.models.get(str(tiny_model_dir)).pipe.unet
    cancel = threading.Event()
    during = []

    def on_event(event):
        if isinstance(event, Progress):
            during.append(vars(unet).get("forward"))
            cancel.set()

    left, _ = halves(64, 64)
    with pytest.raises(JobCancelled):
        engine.run(
            gen(tiny_model_dir, steps=6, region_mode="latent", regions=(RegionPrompt("a fox", left),)), on_event, cancel
        )
    assert during and isinstance(during[0], RegionalLatentForward)
    assert "forward" not in vars(unet)
    after = engine.run(gen(tiny_model_dir))  # and the model runs as before
    assert np.array_equal(pixels(after), pixels(engine.run(gen(tiny_model_dir))))


def test_latent_half_regions_run_on_their_crops_and_skip_the_base(engine, tiny_model_dir, monkeypatch):
    """Two halves of a 128x64 canvas (16x8 latents, native 8x8): one batched call per step on two 8x8 crops, both
    CFG branches, no whole-canvas call; a region on one half runs the base too."""
    left, right = halves()
    request = gen(
        tiny_model_dir,
        "zebra on ice",
        width=128,
        height=64,
        steps=4,
        region_mode="latent",
        regions=(RegionPrompt("a red fox", left), RegionPrompt("a blue jay", right)),
    )
    with unet_calls(monkeypatch) as calls:
        both = engine.run(request)
    assert [shape for shape, _ in calls] == [(4, 4, 8, 8)] * 4  # [uncond, cond] x 2 regions, each 8x8
    with unet_calls(monkeypatch) as calls:
        one = engine.run(request.replace(regions=request.regions[:1]))
    assert sorted(shape for shape, _ in calls[:2]) == [(2, 4, 8, 8), (2, 4, 8, 16)]  # the crop, the whole canvas
    base = pixels(engine.run(request.replace(regions=())))
    assert np.abs(pixels(one)[:, 64:] - base[:, 64:]).mean() < np.abs(pixels(one)[:, :64] - base[:, :64]).mean()
    assert np.abs(pixels(both) - base).mean() > 2


def test_latent_a_longer_negative_prompt_than_the_regions_still_guides_each_crop(engine, tiny_model_dir):
    """A negative prompt of two 77-token chunks and a one-chunk region prompt: the region's is padded with the empty
    prompt's chunk as the pipeline pads its own, so the result is the plain run of the region's prompt."""
    negative = "blurry, " * 12  # 96 characters: two chunks with the tiny one-token-per-character tokenizer
    region = engine.run(
        gen(
            tiny_model_dir,
            "zebra on ice",
            negative_prompt=negative,
            region_mode="latent",
            regions=(RegionPrompt("a red fox", FULL),),
        )
    )
    plain = engine.run(gen(tiny_model_dir, "a red fox", negative_prompt=negative))
    assert np.abs(pixels(region) - pixels(plain)).max() <= 1


def test_latent_paint_too_faint_for_the_latent_grid_changes_nothing(engine, tiny_model_dir):
    faint = Image.new("L", (64, 64), 0)
    faint.putpixel((30, 30), 1)  # a stray brush speck: 1/64 of one latent cell's mean rounds to 0
    result = engine.run(gen(tiny_model_dir, region_mode="latent", regions=(RegionPrompt("a fox", faint),)))
    assert np.array_equal(pixels(result), pixels(engine.run(gen(tiny_model_dir))))


def test_latent_crops_are_rounded_out_to_the_native_size_inside_the_canvas():
    from desktop_app.engine.regions import crop_span

    assert crop_span(0, 16, 32, 16) == (0, 16) and crop_span(16, 32, 32, 16) == (16, 16)  # the halves
    assert crop_span(20, 22, 64, 16) == (16, 16)  # a small region: the native size, on the 8-grid
    assert crop_span(60, 63, 64, 16) == (48, 16)  # at the edge: clamped inside
    assert crop_span(6, 23, 64, 16) == (0, 24)  # rounded out to a multiple of 8
    assert crop_span(2, 5, 12, 16) == (0, 12)  # a canvas smaller than the native size: all of it


def test_latent_sdxl_regions_get_their_own_pooled_embeds_and_time_ids(engine, tmp_path, monkeypatch):
    from test_models_tiny import build_tiny_sdxl

    folder = build_tiny_sdxl(tmp_path / "xl")
    full = engine.run(gen(folder, "zebra on ice", region_mode="latent", regions=(RegionPrompt("a red fox", FULL),)))
    plain = engine.run(gen(folder, "a red fox"))
    assert np.abs(pixels(full) - pixels(plain)).max() <= 1  # its pooled embeds too, unlike the attention mode
    _, right = halves()
    with unet_calls(monkeypatch) as calls:
        engine.run(
            gen(
                folder,
                "zebra on ice",
                width=128,
                height=64,
                steps=2,
                region_mode="latent",
                regions=(RegionPrompt("a red fox", right),),
            )
        )
    crops = [kw["added_cond_kwargs"] for shape, kw in calls if shape[-1] == 8]
    whole = [kw["added_cond_kwargs"] for shape, kw in calls if shape[-1] == 16]
    assert crops and whole
    # original size 64x128, crop top-left (0, 64): the right half in pixels, target 64x64
    assert crops[0]["time_ids"][-1].tolist() == [64, 128, 0, 64, 64, 64]
    assert whole[0]["time_ids"][-1].tolist() == [64, 128, 0, 0, 64, 128]
    assert not torch.equal(crops[0]["text_embeds"][-1], whole[0]["text_embeds"][-1])  # the region's own pooled
    assert torch.equal(crops[0]["text_embeds"][0], whole[0]["text_embeds"][0])  # the negative prompt's


def test_latent_inpainting_unet_crops_its_mask_and_masked_image_channels(engine, tmp_path, monkeypatch):
    from tiny_model import build_tiny_sd

    from desktop_app.core.requests import InpaintRequest

    folder = build_tiny_sd(tmp_path / "inpaint9", inpaint_unet=True)
    source = Image.new("RGB", (128, 64), (200, 80, 40))
    mask = Image.new("L", (128, 64), 255)
    _, right = halves()
    request = InpaintRequest(
        prompt="zebra on ice",
        image=source,
        mask=mask,
        strength=1.0,
        model=str(folder),
        seed=1,
        steps=3,
        previews=False,
        trajectory=False,
        region_mode="latent",
        regions=(RegionPrompt("a red fox", right),),
    )
    with unet_calls(monkeypatch) as calls:
        result = engine.run(request)
    assert (2, 9, 8, 8) in [shape for shape, _ in calls]  # latents, mask and masked image: one 8x8 crop
    plain = engine.run(request.replace(regions=()))
    assert result.info["Regions"] == "1, latent" and result.images[0].size == (128, 64)
    assert np.abs(pixels(result)[:, 64:] - pixels(plain)[:, 64:]).mean() > 1


def test_a_request_read_back_without_its_masks_keeps_its_region_mode():
    """Our PNG chunk and history rows store requests without images: the regions (masks) cannot come back, the
    mode does, and the rest of the request still reads."""
    request = GenerateRequest(prompt="x", region_mode="latent", regions=(RegionPrompt("a fox", FULL),))
    back = GenerateRequest.from_dict(request.to_dict(include_images=False))
    assert back.region_mode == "latent" and back.regions == () and back.prompt == "x"
    assert GenerateRequest.from_dict(request.to_dict()).regions[0].prompt == "a fox"


def test_on_the_built_in_model_latent_regions_draw_each_half_as_named(engine):
    """The issue's measure: "a red circle" left, "a blue square" right, 30 held-out seeds (2000-2029; settings tried
    on 1000-1009 only), the built-in model's defaults (20 DDIM steps, guidance 3). The figure: both halves right."""
    from tools.shapes import classify

    left, right = halves()
    both = 0
    for first in range(2000, 2030, 10):  # image i of a batch has seed first + i
        result = engine.run(
            GenerateRequest(
                prompt="on a white background",
                width=128,
                height=64,
                seed=first,
                batch=10,
                previews=False,
                trajectory=False,
                region_mode="latent",
                regions=(
                    RegionPrompt("a red circle on a white background", left),
                    RegionPrompt("a blue square on a white background", right),
                ),
            )
        )
        for image in result.images:
            a, b = classify(image.crop((0, 0, 64, 64))), classify(image.crop((64, 0, 128, 64)))
            both += (a["colour"], a["shape"], b["colour"], b["shape"]) == ("red", "circle", "blue", "square")
    assert both >= 24, f"{both}/30 with both regions right"
