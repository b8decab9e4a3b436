"""Prompt-to-Prompt attention control in inversion edits: word alignment, word swap on the built-in model (the
colour changes, the background keeps better than without), local blend, re-weighting, bad input, SDXL editing
(tiny random SDXL) and the refiner's refusal, the attention-based suggested mask."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from desktop_app.core.errors import InvalidRequest, ModelError
from desktop_app.core.events import Failed, Notice
from desktop_app.core.requests import EditRequest
from desktop_app.engine import attention_control as ac
from desktop_app.engine import inversion
from desktop_app.engine.encoding import decode_images, encode_image
from tools import shapes

STEPS = 20


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(radius):
        g = out.copy()
        g[1:] |= out[:-1]
        g[:-1] |= out[1:]
        g[:, 1:] |= out[:, :-1]
        g[:, :-1] |= out[:, 1:]
        out = g
    return out


def shape_of(image: Image.Image, spec: dict) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    return np.abs(pixels - np.array(shapes.PALETTE[spec["background"]], dtype=np.float32)).max(-1) > 24


@pytest.fixture(scope="module")
def builtin(engine):
    return engine.models.get(None)


@pytest.fixture(scope="module")
def picture():
    """A held-out built-in picture (a red circle) and its colour edit to yellow."""
    rng = random.Random(0)  # rendered as bench/inversion_eval.py renders its held-out pictures: one stream
    specs = shapes.heldout_specs()[:4]
    images = [shapes.render(spec, 64, rng) for spec in specs]
    spec, image = specs[3], images[3]
    assert (spec["shape"], spec["colour"]) == ("circle", "red")
    return spec, image, shapes.caption(spec), shapes.caption(dict(spec, colour="yellow")), "yellow"


def colour_edit(picture, **fields) -> EditRequest:
    _, image, source, target, _ = picture
    settings = dict(prompt=target, source_prompt=source, image=image, steps=STEPS, guidance=7.5, method="direct")
    return EditRequest(seed=0, **{**settings, **fields})


# -- alignment -------------------------------------------------------------------------


def test_word_swap_maps_each_target_token_to_its_source_token(builtin):
    src = ac.prompt_tokens(builtin, "a red circle on a blue background")
    tgt = ac.prompt_tokens(builtin, "a green circle on a blue background")
    assert src.texts == ["a", "red", "circle", "on", "a", "blue", "background"]
    length = len(src.ids)
    alignment = ac.align(src, tgt, length)
    red, green = src.words[1][1], tgt.words[1][1]
    assert alignment.src_changed == red and alignment.tgt_changed == green
    assert bool(alignment.alpha.all())  # every target token takes a source map: a pure word swap
    assert alignment.mapper[red[0], green[0]] == 1.0
    assert alignment.mapper[src.words[2][1][0], tgt.words[2][1][0]] == 1.0  # "circle" -> "circle"
    assert torch.allclose(alignment.mapper.sum(0), torch.ones(length))  # each target token: one unit of map


def test_refinement_keeps_new_words_own_maps_and_unrelated_prompts_get_a_notice(builtin):
    src = ac.prompt_tokens(builtin, "a red circle on a blue background")
    tgt = ac.prompt_tokens(builtin, "a large red circle on a blue background")
    alignment = ac.align(src, tgt, len(src.ids))
    large = tgt.words[1][1]
    assert alignment.tgt_changed == large and alignment.src_changed == []
    assert float(alignment.alpha[large].sum()) == 0  # the added word keeps its own map
    assert alignment.mapper[src.words[1][1][0], tgt.words[2][1][0]] == 1.0  # "red" still maps to "red"
    assert not alignment.notices
    other = ac.align(src, ac.prompt_tokens(builtin, "yellow triangles"), len(src.ids))
    assert other.aligned and any("no words in common" in m for m in other.notices)


def test_prompts_of_different_chunk_counts_are_not_aligned(engine, tiny_model_dir):
    loaded = engine.models.get(str(tiny_model_dir))  # a character tokenizer: 75 characters a chunk
    src = ac.prompt_tokens(loaded, "a red circle")
    tgt = ac.prompt_tokens(loaded, "a blue circle, " + "very " * 20)
    assert (src.chunks, tgt.chunks) == (1, 2)
    alignment = ac.align(src, tgt, len(tgt.ids))
    assert not alignment.aligned and "chunks" in alignment.notices[0]
    assert float(alignment.alpha.sum()) == 0


def test_a_long_target_prompt_edits_without_word_alignment_and_says_so(engine, tiny_model_dir):
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    events = []
    result = engine.run(
        EditRequest(
            prompt="a blue circle, " + "very " * 20,
            source_prompt="a red circle",
            model=str(tiny_model_dir),
            image=image,
            steps=3,
            attention_control="p2p",
            local_blend=True,
            reweight="blue:2",
        ),
        events.append,
    )
    assert result.images[0].size == (64, 64) and result.info["Re-weight"] == "blue:2"
    assert any(isinstance(e, Notice) and "without word alignment" in e.message for e in events)


# -- edits on the built-in model --------------------------------------------------------


def test_p2p_word_swap_changes_the_colour_and_keeps_the_background_better(engine, picture):
    spec, image, _, _, colour = picture
    background = ~grow(shape_of(image, spec), 3)
    plain = engine.run(colour_edit(picture, attention_control="off"))
    p2p = engine.run(colour_edit(picture, attention_control="p2p", local_blend=False))
    out_plain, out_p2p, src = (np.asarray(x.convert("RGB")) for x in (plain.images[0], p2p.images[0], image))
    assert shapes.classify(p2p.images[0])["colour"] == colour
    assert psnr(out_p2p[background], src[background]) > psnr(out_plain[background], src[background]) + 1.0
    assert p2p.info["Attention control"] == "Prompt-to-Prompt" and p2p.info["Cross replace"] == 0.8
    assert p2p.info["Local blend"] == "False"
    assert "Attention control" not in plain.info


def test_local_blend_keeps_pixels_far_from_the_shape(engine, builtin, picture):
    spec, image, _, _, colour = picture
    far = ~grow(shape_of(image, spec), 10)
    result = engine.run(colour_edit(picture, attention_control="p2p", local_blend=True))
    assert shapes.classify(result.images[0])["colour"] == colour
    with torch.inference_mode():
        round_trip = decode_images(builtin, encode_image(builtin, image))[0]  # what the unchanged latent decodes to
    out, ref = np.asarray(result.images[0].convert("RGB")), np.asarray(round_trip.convert("RGB"))
    unblended = np.asarray(engine.run(colour_edit(picture, attention_control="p2p")).images[0].convert("RGB"))
    error = np.abs(out[far].astype(int) - ref[far].astype(int)).mean()
    assert error < 6.0 and psnr(out[far], ref[far]) > 30.0
    assert error < np.abs(unblended[far].astype(int) - ref[far].astype(int)).mean()


def test_reweighting_changes_the_result_and_a_missing_word_is_refused_before_any_step(engine, picture):
    _, _, _, _, colour = picture
    base = engine.run(colour_edit(picture, attention_control="p2p"))
    heavier = engine.run(colour_edit(picture, attention_control="p2p", reweight=f"{colour}:3"))
    assert heavier.info["Re-weight"] == f"{colour}:3"
    assert psnr(np.asarray(base.images[0]), np.asarray(heavier.images[0])) < 45
    events = []
    with pytest.raises(InvalidRequest, match="'hexagon'") as caught:
        engine.run(colour_edit(picture, attention_control="p2p", reweight="hexagon:2"), events.append)
    assert caught.value.hint and isinstance(events[-1], Failed)
    assert not any(getattr(e, "phase", None) for e in events)  # no progress: refused before the inversion
    assert engine.run(colour_edit(picture, attention_control="p2p")).images


@pytest.mark.parametrize("method", ["ddim", "negative-prompt"])
def test_p2p_runs_a_source_branch_for_ddim_and_negative_prompt(engine, picture, method):
    plain = engine.run(colour_edit(picture, method=method, attention_control="off"))
    p2p = engine.run(colour_edit(picture, method=method, attention_control="p2p"))
    assert p2p.info["Edit method"] == method and p2p.info["Attention control"] == "Prompt-to-Prompt"
    assert psnr(np.asarray(plain.images[0]), np.asarray(p2p.images[0])) < 45  # the control changed the run


def test_unrelated_target_prompt_still_runs_with_a_notice(engine, picture):
    events = []
    result = engine.run(colour_edit(picture, prompt="yellow triangles", attention_control="p2p"), events.append)
    assert result.images[0].size == (64, 64)
    assert any(isinstance(e, Notice) and "no words in common" in e.message for e in events)


def other_colour(spec: dict) -> str:
    """The bench's deterministic new colour (bench/inversion_eval.py new_colour): not the shape's or background's."""
    order = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
    start = order.index(spec["colour"])
    colours = [order[(start + 3 * k) % len(order)] for k in range(1, len(order))]
    return next(c for c in colours if c not in (spec["colour"], spec["background"]))


def test_attention_mask_covers_the_shape_not_the_background(builtin):
    """On the bench's first 8 held-out colour edits the cross-attention mask lies on the shape: mean IoU 0.64 with
    the shape (grown 2 px, as the bench scores it; 0.21 when the mask covered the background), above
    DiffEdit's on the same pictures, and most of each mask inside the shape."""
    rng = random.Random(0)  # rendered as the bench renders its held-out pictures: one stream
    specs = shapes.heldout_specs()[:8]
    items = [(spec, shapes.render(spec, 64, rng)) for spec in specs]
    ious: dict[str, list[float]] = {"attention": [], "diffedit": []}
    inside_more = 0
    for spec, image in items:
        truth = grow(shape_of(image, spec), 2)
        source, target = shapes.caption(spec), shapes.caption(dict(spec, colour=other_colour(spec)))
        for how in ious:
            mask = np.asarray(inversion.suggest_mask(builtin, image, source, target, how=how)) > 0
            ious[how].append((mask & truth).sum() / max((mask | truth).sum(), 1))
            if how == "attention":
                inside_more += int((mask & truth).sum() > (mask & ~truth).sum())
    attention, diffedit = float(np.mean(ious["attention"])), float(np.mean(ious["diffedit"]))
    assert attention > 0.55, ious["attention"]
    assert attention > diffedit, (attention, diffedit)
    assert inside_more >= 7, ious["attention"]  # red -> yellow on orange spills onto the background


def test_attention_mask_of_a_bigger_picture_still_covers_the_shape(builtin):
    """At 256x256 (a 64x64 latent; the model's own is 16x16) the mask reads the same UNet level as at 64x64: by
    cell count it read a deeper one and covered the background (IoU 0.23, 37096 pixels outside; now 0.64, 0)."""
    spec = {"shape": "circle", "colour": "red", "background": "blue", "position": "right", "size": None}
    image = shapes.render(spec, 256, random.Random(0))
    truth = shape_of(image, spec)
    target = shapes.caption(dict(spec, colour="green"))
    mask = np.asarray(inversion.suggest_mask(builtin, image, shapes.caption(spec), target, how="attention")) > 0
    assert mask.shape == (256, 256)
    assert (mask & truth).sum() / (mask | truth).sum() > 0.5
    assert (mask & ~truth).sum() < 0.1 * (mask & truth).sum()


def test_attention_mask_is_empty_for_identical_prompts_and_an_unknown_way_is_refused(builtin, picture):
    _, image, source, target, _ = picture
    assert not np.asarray(inversion.suggest_mask(builtin, image, source, source, how="attention")).any()
    assert not np.asarray(inversion.suggest_mask(builtin, image, source, source + " ", how="attention")).any()
    with pytest.raises(InvalidRequest):
        inversion.suggest_mask(builtin, image, source, target, how="magic")


# -- SDXL ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory):
    from test_models_tiny import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="module")
def blocks() -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(np.kron(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8)))


def test_sdxl_edits_and_reconstructs_at_target_equal_source(engine, tiny_sdxl_dir, blocks):
    loaded = engine.models.get(str(tiny_sdxl_dir))
    assert loaded.is_xl
    with torch.inference_mode():
        reference = np.asarray(decode_images(loaded, encode_image(loaded, blocks))[0])
    same = engine.run(
        EditRequest(
            prompt="a red circle",
            source_prompt="a red circle",
            model=str(tiny_sdxl_dir),
            image=blocks,
            steps=4,
            guidance=7.5,
            method="direct",
            t0=600,
        )
    )
    assert same.images[0].size == blocks.size
    assert psnr(np.asarray(same.images[0]), reference) >= 45.0  # direct inversion: the source branch is exact
    edited = engine.run(
        EditRequest(
            prompt="a blue square",
            source_prompt="a red circle",
            model=str(tiny_sdxl_dir),
            image=blocks,
            steps=4,
            guidance=7.5,
            method="direct",
            t0=600,
            attention_control="p2p",
            local_blend=True,
        )
    )
    assert edited.images[0].size == blocks.size and edited.info["Attention control"] == "Prompt-to-Prompt"
    assert psnr(np.asarray(edited.images[0]), np.asarray(same.images[0])) < 45.0


def test_an_sdxl_refiner_is_refused_with_a_hint(engine, tiny_sdxl_dir, blocks):
    loaded = engine.models.get(str(tiny_sdxl_dir))
    pipe = loaded.pipe  # the base model seen as a refiner: no CLIP-L text encoder
    encoder = pipe.text_encoder
    pipe.text_encoder = None
    try:
        request = EditRequest(prompt="a", source_prompt="a", image=blocks, steps=2, guidance=5.0, width=64, height=64)
        with pytest.raises(ModelError, match="refiner") as caught:
            inversion.run_edit(loaded, request, [0], lambda e: None, None)
        assert "base model" in caught.value.hint
    finally:
        pipe.text_encoder = encoder
    assert engine.run(EditRequest(prompt="a", source_prompt="a", model=str(tiny_sdxl_dir), image=blocks, steps=2))


# -- defaults ------------------------------------------------------------------------------


def test_an_edit_at_the_built_in_defaults_uses_the_measured_settings(engine, picture):
    _, image, source, target, colour = picture
    result = engine.run(EditRequest(prompt=target, source_prompt=source, image=image))
    request = result.request
    assert (request.method, request.attention_control, request.guidance, request.t0) == ("direct", "p2p", 3.0, 700)
    assert (request.cross_replace, request.self_replace, request.local_blend) == (0.8, 0.4, False)
    assert result.info["Attention control"] == "Prompt-to-Prompt" and result.info["t0"] <= 700
    assert shapes.classify(result.images[0])["colour"] == colour
    assert inversion.DEFAULT_ATTENTION_CONTROL == "p2p" and inversion.DEFAULT_METHOD == "direct"
    assert (ac.DEFAULT_CROSS_REPLACE, ac.DEFAULT_SELF_REPLACE, inversion.DEFAULT_LOCAL_BLEND) == (0.8, 0.4, False)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2-v", "sdxl"])
def test_sd_configs_carry_the_papers_edit_settings(family):
    from desktop_app.core.modelinfo import builtin_model_path, model_defaults

    edit = model_defaults(str(builtin_model_path().parents[1] / "configs" / family))["edit"]
    assert edit == {
        "method": "direct",
        "attention_control": "p2p",
        "cross_replace": 0.8,
        "self_replace": 0.4,
        "local_blend": False,
        "guidance": 7.5,
        "steps": 50,
        "strength": 1.0,
    }
