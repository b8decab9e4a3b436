"""Editing by DDIM inversion on the tiny model: reconstruction, exactness of direct inversion, masks,
the exact shortcut for the app's own results, suggested masks, events, cancel and bad input."""

from __future__ import annotations

import math
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from desktop_app.core.errors import InvalidRequest, JobCancelled, UserError
from desktop_app.core.events import Cancelled, Failed, Finished, Notice, Preview, Progress
from desktop_app.core.requests import EditRequest, GenerateRequest
from desktop_app.engine import inversion
from desktop_app.engine.encoding import decode_images, encode_image
from desktop_app.engine.engine import Engine

SOURCE = "a red circle on a blue background"
TARGET = "a green square on a blue background"


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def edit(model, **kw) -> EditRequest:
    kw.setdefault("prompt", SOURCE)
    kw.setdefault("source_prompt", SOURCE)
    return EditRequest(model=str(model), **kw)


def vae_round_trip(engine: Engine, model, image: Image.Image) -> Image.Image:
    loaded = engine.models.get(str(model))
    return decode_images(loaded, encode_image(loaded, image))[0]


@pytest.fixture(scope="module")
def source_image() -> Image.Image:
    """Blocky colours: an image the tiny VAE round-trips tolerably."""
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8)))


@pytest.fixture(scope="module")
def square_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


@pytest.fixture(scope="module")
def smooth_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its UNet output scaled down 20x.

    Random weights make a far rougher denoiser than a trained one (its noise prediction
    moves ~6x as fast as the latent it sees, on latents of scale 0.05), so DDIM
    inversion's one approximation, eps(x_{t-dt}, t) for eps(x_t, t), is large there. A
    smoother copy stands in for a trained model; the built-in model's figures come from
    bench/inversion_eval.py.
    """
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp("models") / "tiny-smooth"
    shutil.copytree(tiny_model_dir, folder)
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"))
    with torch.no_grad():
        assert unet.conv_out.bias is not None
        unet.conv_out.weight.mul_(0.05)
        unet.conv_out.bias.mul_(0.05)
    unet.save_pretrained(str(folder / "unet"))
    return folder


@pytest.fixture(scope="module")
def smooth_engine():
    return Engine(device="cpu")


# -- reconstruction ---------------------------------------------------------------


def test_inversion_then_reconstruction_at_guidance_1_matches_the_vae_round_trip(
    smooth_engine, smooth_model_dir, source_image
):
    reference = vae_round_trip(smooth_engine, smooth_model_dir, source_image)
    result = smooth_engine.run(
        edit(smooth_model_dir, image=source_image, method="ddim", guidance=1.0, steps=10, t0=600)
    )
    assert psnr(result.images[0], reference) >= 33.0


def test_at_guidance_7_5_direct_beats_negative_prompt_beats_plain_ddim(smooth_engine, smooth_model_dir, source_image):
    reference = vae_round_trip(smooth_engine, smooth_model_dir, source_image)
    scores = {
        method: psnr(
            smooth_engine.run(
                edit(smooth_model_dir, image=source_image, method=method, guidance=7.5, steps=6, t0=600)
            ).images[0],
            reference,
        )
        for method in ("ddim", "negative-prompt", "direct")
    }
    assert scores["direct"] >= 50.0
    assert scores["direct"] >= scores["negative-prompt"] >= scores["ddim"] + 10.0


def test_negative_prompt_inversion_ignores_guidance_when_target_is_source(
    smooth_engine, smooth_model_dir, source_image
):
    at_1 = smooth_engine.run(
        edit(smooth_model_dir, image=source_image, method="negative-prompt", guidance=1.0, steps=6, t0=600)
    )
    at_7 = smooth_engine.run(
        edit(smooth_model_dir, image=source_image, method="negative-prompt", guidance=7.5, steps=6, t0=600)
    )
    assert psnr(at_1.images[0], at_7.images[0]) >= 45.0


@pytest.mark.parametrize("t0", [300, 999])
def test_direct_inversion_reconstructs_exactly_at_guidance_7_5(engine, tiny_model_dir, source_image, t0):
    """Even on the rough random model, the source branch is pinned to the inversion trajectory."""
    reference = vae_round_trip(engine, tiny_model_dir, source_image)
    result = engine.run(edit(tiny_model_dir, image=source_image, method="direct", guidance=7.5, steps=8, t0=t0))
    assert psnr(result.images[0], reference) >= 50.0
    plain = engine.run(edit(tiny_model_dir, image=source_image, method="ddim", guidance=7.5, steps=8, t0=t0))
    assert psnr(plain.images[0], reference) < psnr(result.images[0], reference)


def test_an_edit_changes_the_image(engine, tiny_model_dir, source_image):
    same = engine.run(edit(tiny_model_dir, image=source_image, guidance=7.5, steps=4, t0=800))
    changed = engine.run(edit(tiny_model_dir, image=source_image, prompt=TARGET, guidance=7.5, steps=4, t0=800))
    assert changed.info["Edit method"] == "direct" and changed.info["Source prompt"] == SOURCE
    assert psnr(same.images[0], changed.images[0]) < 45.0


# -- masks -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["direct", "ddim"])
def test_masked_edit_leaves_pixels_outside_the_mask_identical(
    engine, tiny_model_dir, source_image, square_mask, method
):
    result = engine.run(
        edit(
            tiny_model_dir,
            image=source_image,
            mask=square_mask,
            prompt=TARGET,
            method=method,
            guidance=7.5,
            steps=4,
            t0=900,
        )
    )
    out = np.asarray(result.images[0]).astype(np.int16)
    src = np.asarray(source_image).astype(np.int16)
    outside = np.asarray(square_mask) == 0
    assert np.array_equal(out[outside], src[outside])
    assert np.abs(out[~outside] - src[~outside]).mean() > 1.0  # the inside did change
    assert result.info["Mask blur"] == 4


def test_feathering_stays_inside_the_painted_mask(square_mask):
    feathered = np.asarray(inversion.feather_mask(square_mask, 6))
    painted = np.asarray(square_mask)
    assert (feathered[painted == 0] == 0).all()
    assert 0 < feathered[32, 16] < 255 and feathered[32, 32] == 255


# -- the exact shortcut for the app's own results ------------------------------------


def test_a_result_of_the_app_is_replayed_exactly(engine, tiny_model_dir):
    made = engine.run(
        GenerateRequest(prompt=SOURCE, model=str(tiny_model_dir), seed=11, steps=6, guidance=5.0, scheduler="ddim")
    )
    loaded = engine.models.get(str(tiny_model_dir))
    request = edit(
        tiny_model_dir, image=made.images[0], method="ddim", guidance=5.0, steps=6, t0=700, width=64, height=64, seed=0
    )
    request.validate()
    for source, how in ((made, "stored trajectory"), (made.request, "replayed trajectory")):
        events = []
        images, trajectory, info = inversion.run_edit(loaded, request, [0], events.append, None, source=source)
        assert np.abs(np.asarray(images[0]).astype(np.int16) - np.asarray(made.images[0]).astype(np.int16)).max() <= 1
        assert info["Edit source"] == how
        progress = [e for e in events if isinstance(e, Progress)]
        assert [p.step for p in progress] == list(range(1, progress[-1].total + 1))
        replayed = (
            6 if how == "replayed trajectory" else 0
        )  # a replay regenerates all 6 steps, then 5 steps below t0 700
        assert [p.phase for p in progress] == ["invert"] * replayed + ["denoise"] * 5
    # a source that is not the stored result's image is inverted instead, with a notice
    other = Image.fromarray(255 - np.asarray(made.images[0]))
    events = []
    other_request = request.replace(image=other)
    assert isinstance(other_request, EditRequest)
    images, _, info = inversion.run_edit(loaded, other_request, [0], events.append, None, source=made)
    assert "Edit source" not in info
    assert any(isinstance(e, Notice) and "does not match" in e.message for e in events)


# -- suggested mask --------------------------------------------------------------------


def test_suggested_mask_is_a_binary_l_mask_of_the_image_size(engine, tiny_model_dir):
    loaded = engine.models.get(str(tiny_model_dir))
    image = Image.new("RGB", (72, 64), (30, 60, 220))
    mask = inversion.suggest_mask(loaded, image, SOURCE, TARGET)
    assert mask.mode == "L" and mask.size == image.size
    values = set(np.unique(np.asarray(mask)).tolist())
    assert values <= {0, 255} and 255 in values
    same = inversion.suggest_mask(loaded, image, SOURCE, SOURCE)
    assert np.asarray(same).max() == 0


# -- events, cancel --------------------------------------------------------------------


def test_events_show_inversion_then_denoising(engine, tiny_model_dir, source_image):
    events = []
    result = engine.run(edit(tiny_model_dir, image=source_image, prompt=TARGET, steps=4, t0=600), events.append)
    progress = [e for e in events if isinstance(e, Progress)]
    phases = [p.phase for p in progress]
    assert phases == ["invert"] * 3 + ["denoise"] * 3  # 4 steps: timesteps 751 501 251 1, t0 600 -> 3 each
    assert [p.step for p in progress] == list(range(1, 7)) and all(p.total == 6 for p in progress)
    assert [p.timestep for p in progress] == [1, 251, 501, 501, 251, 1]
    assert any(isinstance(e, Preview) for e in events)
    assert isinstance(events[-1], Finished) and events[-1].result is result
    assert result.info["t0"] == 501
    assert len(result.trajectory) == 3 and result.trajectory.timesteps == [501, 251, 1]


def test_cancel_during_inversion_stops_and_a_later_job_works(engine, tiny_model_dir, source_image):
    cancel = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, Progress) and event.phase == "invert":
            cancel.set()

    with pytest.raises(JobCancelled):
        engine.run(edit(tiny_model_dir, image=source_image, steps=8, t0=900), on_event, cancel)
    assert isinstance(events[-1], Cancelled)
    assert not any(isinstance(e, Progress) and e.phase == "denoise" for e in events)
    assert sum(isinstance(e, Progress) for e in events) == 1
    assert engine.run(edit(tiny_model_dir, image=source_image, steps=4)).images


# -- bad input ---------------------------------------------------------------------


def test_t0_and_strength_resolve_on_the_schedule():
    assert inversion.resolve_t0(EditRequest(t0=250)) == 250
    assert inversion.resolve_t0(EditRequest(strength=0.45)) == 450
    assert inversion.resolve_t0(EditRequest(strength=1.0)) == 999  # the deepest timestep of the schedule, not 1000
    assert inversion.resolve_t0(EditRequest(strength=1.0), 500) == 499  # T is the model's
    assert inversion.resolve_t0(EditRequest()) == inversion.DEFAULT_T0
    from diffusers import DDIMScheduler

    sd = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    linear = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear").alphas_cumprod
    # the default depth follows the schedule: the same signal share, deeper on SD's gentler schedule
    assert inversion.resolve_t0(EditRequest(), 1000, sd) == 700
    assert inversion.resolve_t0(EditRequest(), 1000, sd) > inversion.resolve_t0(EditRequest(), 1000, linear) >= 400
    assert inversion.resolve_t0(EditRequest(t0=250), 1000, sd) == 250
    with pytest.raises(InvalidRequest):
        inversion.resolve_t0(EditRequest(strength=0.0))
    with pytest.raises(InvalidRequest):
        inversion.resolve_t0(EditRequest(t0=700), num_train_timesteps=500)


@pytest.mark.parametrize("changes", [dict(t0=1000), dict(t0=0), dict(strength=0.0), dict(strength=1.5)])
def test_t0_outside_the_schedule_is_a_user_error(engine, tiny_model_dir, source_image, changes):
    events = []
    with pytest.raises(UserError) as caught:
        engine.run(edit(tiny_model_dir, image=source_image, **changes), events.append)
    assert caught.value.hint
    assert isinstance(events[-1], Failed)
    assert engine.run(edit(tiny_model_dir, image=source_image, steps=4)).images


def test_empty_mask_and_mask_of_another_size_are_user_errors(engine, tiny_model_dir, source_image):
    with pytest.raises(UserError, match="empty"):
        engine.run(edit(tiny_model_dir, image=source_image, mask=Image.new("L", (64, 64), 0)))
    with pytest.raises(UserError, match="mask is 32x32"):
        engine.run(edit(tiny_model_dir, image=source_image, mask=Image.new("L", (32, 32), 255)))
    assert engine.run(edit(tiny_model_dir, image=source_image, steps=4)).images


def test_image_not_a_multiple_of_8_is_edited_at_the_rounded_size_and_scaled_back(engine, tiny_model_dir):
    image = Image.new("RGB", (75, 67), (220, 30, 30))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (20, 20, 50, 50))
    events = []
    result = engine.run(edit(tiny_model_dir, image=image, mask=mask, prompt=TARGET, steps=4), events.append)
    assert result.images[0].size == (75, 67)
    assert (result.request.width, result.request.height) == (72, 64)
    assert any(isinstance(e, Notice) and "not a multiple of 8" in e.message for e in events)
    out, src = np.asarray(result.images[0]), np.asarray(image)
    assert np.array_equal(out[np.asarray(mask) == 0], src[np.asarray(mask) == 0])


# -- cost: what direct inversion reuses ----------------------------------------------------


def _count_rows(unet):
    """A forward pre-hook counting the rows (batch entries) the UNet sees; returns (counts, handle)."""
    counts = []
    handle = unet.register_forward_pre_hook(lambda module, args: counts.append(int(args[0].shape[0])))
    return counts, handle


def test_direct_inversion_runs_4n_unet_rows_not_5n(engine, tiny_model_dir, source_image):
    """n inversion passes, then 3 rows a step: from the second step both unconditional rows and the target's
    conditional one (the source's conditional pass is the inversion's own); at the first step the two branches
    share the latent, so one unconditional row, and the source's and the target's conditional rows."""
    loaded = engine.models.get(str(tiny_model_dir))
    counts, handle = _count_rows(loaded.pipe.unet)
    try:
        engine.run(
            edit(tiny_model_dir, image=source_image, prompt=TARGET, method="direct", guidance=7.5, steps=8, t0=999)
        )
    finally:
        handle.remove()
    n = 8
    assert counts[:n] == [1] * n  # the inversion
    assert counts[n:] == [3] * n
    assert sum(counts) == 4 * n  # a generation is 2n: 2.0x in UNet rows (it was 5n - 1)


def test_kept_attention_maps_give_the_same_edit_as_running_the_source_rows(
    engine, tiny_model_dir, source_image, monkeypatch
):
    from desktop_app.engine import attention_control

    request = edit(
        tiny_model_dir,
        image=source_image,
        prompt=TARGET,
        method="direct",
        guidance=7.5,
        steps=6,
        t0=900,
        attention_control="p2p",
        local_blend=True,
    )
    kept = engine.run(request)
    monkeypatch.setattr(attention_control, "RECORD_BUDGET", 0)  # nothing kept: the source rows run again
    ran = engine.run(request)
    a, b = np.asarray(kept.images[0]).astype(int), np.asarray(ran.images[0]).astype(int)
    assert np.abs(a - b).max() <= 1
