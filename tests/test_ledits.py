"""LEDITS++ edits (engine/ledits.py) through Engine.run with real events: the built-in model edits a held-out picture's
colour as asked, a painted mask keeps every other pixel, progress runs over both phases, cancel stops within a step,
tiny SD / SDXL (no cross-attention at a quarter of the latent) edit with a notice, and bad models are refused."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from desktop_app.core.errors import InvalidRequest, JobCancelled, ModelError
from desktop_app.core.events import Cancelled, Failed, Finished, Notice, Preview, Progress
from desktop_app.core.requests import EditRequest, GenerateRequest, parse_edit_concepts
from desktop_app.engine import ledits
from desktop_app.engine.engine import Engine
from tools import shapes

SPEC = shapes.make_spec("circle", "red", "orange")  # a held-out caption: the model never saw this sentence
SOURCE_PROMPT = shapes.caption(SPEC)
GREEN = np.array(shapes.PALETTE["green"], dtype=np.float64)


@pytest.fixture(scope="module")
def builtin() -> Engine:
    return Engine(device="cpu")


@pytest.fixture(scope="module")
def source() -> Image.Image:
    return shapes.render(SPEC, rng=random.Random(0))


@pytest.fixture(scope="module")
def shape_mask(source) -> np.ndarray:
    """(64, 64) bool: the red circle's pixels in the source."""
    pixels = np.asarray(source, dtype=np.float64)
    return np.abs(pixels - np.array(shapes.PALETTE["red"])).sum(-1) < 60


def colour_edit(**changes) -> EditRequest:
    fields: dict = dict(
        model="builtin",
        source_prompt=SOURCE_PROMPT,
        edit_concepts=parse_edit_concepts("+ a green circle\n- a red circle @ 1"),
        method="ledits",
        seed=0,  # the default depth, t0 700
    )
    fields.update(changes)
    return EditRequest(**fields)


@pytest.fixture(scope="module")
def colour_run(builtin, source):
    """One red-to-green edit on the built-in model, with its events (trajectory and previews on)."""
    events: list = []
    result = builtin.run(colour_edit(image=source, trajectory=True, previews=True), events.append)
    return result, events


# -- the built-in model ----------------------------------------------------------------------------------------------


def test_a_remove_and_add_pair_turns_the_red_circle_green(colour_run, source, shape_mask):
    assert shapes.is_heldout(SPEC)
    result, _ = colour_run
    before = np.asarray(source, dtype=np.float64)
    after = np.asarray(result.images[0], dtype=np.float64)
    distance_before = np.linalg.norm(before[shape_mask] - GREEN, axis=-1).mean()
    distance_after = np.linalg.norm(after[shape_mask] - GREEN, axis=-1).mean()
    assert distance_after < distance_before - 120  # the circle's pixels moved well toward green (237 -> 62)
    red, green = after[shape_mask][:, 0].mean(), after[shape_mask][:, 1].mean()
    assert green > red + 50  # and are green now, not red
    change = np.abs(after - before).sum(-1)  # (64, 64)
    assert change[shape_mask].mean() > 3 * change[~shape_mask].mean()  # it changed where the concepts point


def test_progress_runs_over_inversion_then_denoising_with_previews_and_a_trajectory(colour_run):
    result, events = colour_run
    progress = [e for e in events if isinstance(e, Progress)]
    steps = len(progress) // 2
    assert steps == 20  # the model's 20 steps, from t0
    assert [p.phase for p in progress] == ["invert"] * steps + ["denoise"] * steps
    assert [p.step for p in progress] == list(range(1, 2 * steps + 1))
    assert {p.total for p in progress} == {2 * steps}
    denoise_timesteps = [p.timestep for p in progress if p.phase == "denoise"]
    assert denoise_timesteps == sorted(denoise_timesteps, reverse=True)
    assert 650 < denoise_timesteps[0] == result.info["t0"] <= 700  # the default depth: at or below t0 700
    assert sum(isinstance(e, Preview) for e in events) == steps
    assert isinstance(events[-1], Finished)
    assert result.trajectory is not None and list(result.trajectory.timesteps) == denoise_timesteps
    assert result.info == {
        "Edit method": "ledits",
        "Edit concepts": "+ a green circle @ 7; - a red circle @ 1",
        "t0": denoise_timesteps[0],
        "Source prompt": SOURCE_PROMPT,
    }
    assert parse_edit_concepts(result.info["Edit concepts"]) == result.request.edit_concepts  # reads back


def test_a_masked_edit_keeps_every_pixel_outside_the_mask(builtin, source, shape_mask):
    mask = Image.new("L", source.size, 0)
    ImageDraw.Draw(mask).rectangle((32, 0, 63, 63), fill=255)  # the right half, where the circle is
    result = builtin.run(colour_edit(image=source, mask=mask, mask_blur=2))
    before = np.asarray(source)
    after = np.asarray(result.images[0])
    outside = np.asarray(mask) == 0
    assert np.array_equal(after[outside], before[outside])
    inside = shape_mask & ~outside
    assert inside.sum() > 200  # the circle is inside the mask
    green_before = np.linalg.norm(before[inside].astype(np.float64) - GREEN, axis=-1).mean()
    green_after = np.linalg.norm(after[inside].astype(np.float64) - GREEN, axis=-1).mean()
    assert green_after < green_before - 100
    assert result.info["Mask blur"] == 2


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean((x - y) ** 2)))


def test_a_concept_at_guidance_0_gives_the_source_back_as_well_as_the_vae_can(builtin, source):
    from desktop_app.engine.encoding import decode_images, encode_image

    loaded = builtin.models.get("builtin")
    round_trip = decode_images(loaded, encode_image(loaded, source))[0]  # the best any latent edit can do
    result = builtin.run(colour_edit(image=source, edit_concepts=parse_edit_concepts("+ a green circle @ 0")))
    assert psnr(result.images[0], source) > psnr(round_trip, source) - 1.5  # 30.1 against 31.0 dB


# -- tiny models: no cross-attention at a quarter of the latent, cancel, options -------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Engine:
    return Engine(device="cpu")


@pytest.fixture(scope="module")
def red() -> Image.Image:
    image = Image.new("RGB", (64, 64), (30, 60, 220))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    return image


def tiny_edit(model_dir, image, **changes) -> EditRequest:
    fields: dict = dict(
        model=str(model_dir),
        image=image,
        source_prompt="a red circle",
        edit_concepts=parse_edit_concepts("+ blue\n- red @ 5 / 0.8"),
        method="ledits",
        steps=4,
        seed=1,
    )
    fields.update(changes)
    return EditRequest(**fields)


def test_a_unet_without_quarter_size_cross_attention_edits_without_those_masks(tiny, tiny_model_dir, red):
    loaded = tiny.models.get(str(tiny_model_dir))
    assert not ledits.attention_masks_available(loaded.pipe.unet, (8, 8))  # diffusers would fail in torch.cat
    events: list = []
    result = tiny.run(tiny_edit(tiny_model_dir, red, strength=1.0), events.append)
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("without them" in m and "cross-attention" in m for m in notices)
    assert result.images[0].size == red.size
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(red))
    assert result.info["t0"] == 801  # strength 1: the whole leading 4-step schedule (801, 601, 401, 201)


def test_the_built_in_unet_has_the_masks_at_its_size(builtin):
    loaded = builtin.models.get("builtin")
    assert ledits.attention_masks_available(loaded.pipe.unet, (16, 16))
    assert not ledits.attention_masks_available(loaded.pipe.unet, (18, 16))  # 18 / 4 is no whole size


def test_a_left_over_target_prompt_is_not_used_and_a_batch_gets_copies(tiny, tiny_model_dir, red):
    events: list = []
    result = tiny.run(
        tiny_edit(tiny_model_dir, red, prompt="a blue circle", negative_prompt="blurry", batch=2), events.append
    )
    notices = " ".join(e.message for e in events if isinstance(e, Notice))
    assert "target prompt 'a blue circle' is not used" in notices and "negative prompt" in notices
    assert "copies" in notices
    assert result.info["Edit concepts"] == "+ blue @ 7; - red @ 5 / 0.8"  # the concepts alone, as the window says
    assert len(result.images) == 2
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[1]))


def test_a_size_off_the_32_grid_is_edited_on_it_and_scaled_back(tiny, tiny_model_dir):
    image = Image.new("RGB", (80, 80), (220, 30, 30))
    events: list = []
    result = tiny.run(tiny_edit(tiny_model_dir, image, width=80, height=80), events.append)
    assert result.images[0].size == (80, 80)
    assert any("multiples of 32" in e.message for e in events if isinstance(e, Notice))


@pytest.mark.parametrize("phase", ["invert", "denoise"])
def test_cancel_stops_within_a_step_and_the_model_runs_as_before(tiny, tiny_model_dir, red, phase):
    generate = GenerateRequest(model=str(tiny_model_dir), prompt="a red circle", steps=3, seed=5)
    before = tiny.run(generate).images[0]
    unet = tiny.models.get(str(tiny_model_dir)).pipe.unet
    processors = {name: type(p) for name, p in unet.attn_processors.items()}
    cancel = threading.Event()
    events: list = []

    def on_event(event):
        events.append(event)
        if isinstance(event, Progress) and event.phase == phase:
            cancel.set()

    with pytest.raises(JobCancelled):
        tiny.run(tiny_edit(tiny_model_dir, red, steps=6, strength=1.0), on_event, cancel)
    progress = [e for e in events if isinstance(e, Progress)]
    assert isinstance(events[-1], Cancelled)
    assert progress[-1].phase == phase and len(progress) == (1 if phase == "invert" else 7)  # stopped at once
    # LEDITS++ swapped the shared UNet's attention processors: they are back, and a generation is as before
    assert {name: type(p) for name, p in unet.attn_processors.items()} == processors
    assert np.array_equal(np.asarray(tiny.run(generate).images[0]), np.asarray(before))


# -- SDXL ------------------------------------------------------------------------------------------------------------


def build_tiny_sdxl(folder: Path, *, refiner: bool = False) -> Path:
    """A random SDXL-layout folder (64x64 images, 8x8 latents); `refiner`: one text encoder and aesthetic scores."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from tiny_model import write_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    width_1, width_2, time_dim = 32, 48, 8
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width_2 if refiner else width_1 + width_2,
        norm_num_groups=8,
        attention_head_dim=4,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=(5 if refiner else 6) * time_dim + width_2,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),  # pyright: ignore[reportArgumentType]
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        norm_num_groups=8,
        sample_size=64,
    )

    def text_config(tokenizer, hidden: int, projection: int = 512) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=projection,
        )

    write_tokenizer(folder / "tokenizer_2")
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer_2, width_2, width_2))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    common = dict(vae=vae, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    if refiner:
        pipe = StableDiffusionXLImg2ImgPipeline(
            text_encoder=None,  # pyright: ignore[reportArgumentType]
            tokenizer=None,  # pyright: ignore[reportArgumentType]
            requires_aesthetics_score=True,
            **common,  # pyright: ignore[reportArgumentType]
        )
    else:
        write_tokenizer(folder / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        text_encoder = CLIPTextModel(text_config(tokenizer, width_1))
        pipe = StableDiffusionXLPipeline(
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            **common,  # pyright: ignore[reportArgumentType]
        )
    pipe.save_pretrained(str(folder))
    settings = {"name": "Tiny SDXL", "steps": 3, "guidance": 5.0, "width": 64, "height": 64}
    (folder / "diffusion_desk.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


def test_a_tiny_sdxl_edits_and_a_mask_keeps_the_rest(tiny, sdxl_dir, red):
    loaded = tiny.models.get(str(sdxl_dir))
    assert loaded.is_xl
    events: list = []
    mask = Image.new("L", red.size, 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    result = tiny.run(tiny_edit(sdxl_dir, red, mask=mask, mask_blur=0, trajectory=True), events.append)
    assert isinstance(events[-1], Finished)
    assert [p.phase for p in events if isinstance(p, Progress)] == ["invert"] * 4 + ["denoise"] * 4
    after, before = np.asarray(result.images[0]), np.asarray(red)
    outside = np.asarray(mask) == 0
    assert np.array_equal(after[outside], before[outside])
    assert not np.array_equal(after[~outside], before[~outside])
    assert result.trajectory is not None and len(result.trajectory) == 4
    assert result.info["Edit method"] == "ledits"


# -- bad input -------------------------------------------------------------------------------------------------------


def test_an_edit_without_concepts_is_refused_and_the_next_job_runs(tiny, tiny_model_dir, red):
    events: list = []
    with pytest.raises(InvalidRequest):
        tiny.run(tiny_edit(tiny_model_dir, red, edit_concepts=()), events.append)
    assert isinstance(events[-1], Failed) and "edit concept" in events[-1].message and events[-1].hint
    assert tiny.run(tiny_edit(tiny_model_dir, red)).images


def test_an_inpainting_unet_is_refused_with_a_hint(tiny, tiny_inpaint_model_dir, tiny_model_dir, red):
    events: list = []
    with pytest.raises(ModelError):
        tiny.run(tiny_edit(tiny_inpaint_model_dir, red), events.append)
    failed = events[-1]
    assert isinstance(failed, Failed) and "inpainting" in failed.message and "non-inpainting" in failed.hint
    assert tiny.run(tiny_edit(tiny_model_dir, red)).images


def test_an_sdxl_refiner_is_refused(tiny, tmp_path, tiny_model_dir, red):
    folder = build_tiny_sdxl(tmp_path / "tiny-refiner", refiner=True)
    events: list = []
    with pytest.raises(ModelError):
        tiny.run(tiny_edit(folder, red), events.append)
    failed = events[-1]
    assert isinstance(failed, Failed) and "refiner" in failed.message and "base model" in failed.hint
    assert tiny.run(tiny_edit(tiny_model_dir, red)).images


# -- the depth -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t0", [999, 770, 400, 60])
def test_the_edit_starts_at_the_deepest_timestep_at_or_below_t0(t0):
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", algorithm_type="sde-dpmsolver++", timestep_spacing="leading", steps_offset=1
    )
    steps, skip, first = ledits.inversion_skip(scheduler, 20, t0)
    assert steps == 20 and first <= t0
    total = int(steps * (1 + skip))  # what diffusers' invert sets
    scheduler.set_timesteps(total)
    assert int(scheduler.timesteps[-steps]) == first
    if t0 == 999:
        assert total == steps and first == 941  # the whole schedule
    else:  # one timestep fewer (a coarser schedule) would start above t0
        scheduler.set_timesteps(total - 1)
        assert int(scheduler.timesteps[-steps]) > t0


def test_the_pipeline_is_built_once_on_the_loaded_modules(builtin, colour_run):
    loaded = builtin.models.get("builtin")
    pipe = ledits.ledits_pipeline(loaded)
    assert loaded._derived["ledits"] is pipe is ledits.ledits_pipeline(loaded)
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        assert getattr(pipe, name) is getattr(loaded.pipe, name)  # no copies of the weights
    assert type(loaded.pipe.scheduler).__name__ == "DDIMScheduler"  # the model's own scheduler is left alone
    assert pipe.zs is None and pipe.init_latents is None  # the last image's noise maps are not kept
