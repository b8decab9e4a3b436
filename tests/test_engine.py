"""Engine behaviour a user notices: same seed same pixels, masks respected, cancel, previews, one model for all modes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from desktop_app.core.errors import JobCancelled, ModelError, UserError
from desktop_app.core.events import Cancelled, Failed, Finished, Notice, Preview, Progress
from desktop_app.core.requests import GenerateRequest, Img2ImgRequest, InpaintRequest


def gen(model, **kw) -> GenerateRequest:
    return GenerateRequest(prompt=kw.pop("prompt", "a red circle on a blue background"), model=str(model), **kw)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def source_image() -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def square_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    return mask


def test_same_request_and_seed_give_identical_pixels(engine, tiny_model_dir):
    first = engine.run(gen(tiny_model_dir, seed=42, batch=2))
    second = engine.run(gen(tiny_model_dir, seed=42, batch=2))
    assert first.seeds == [42, 43]
    for a, b in zip(first.images, second.images):
        assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(first.images[0]), pixels(first.images[1]))


def test_batch_image_is_reproducible_alone_from_its_seed(engine, tiny_model_dir):
    batch = engine.run(gen(tiny_model_dir, seed=7, batch=3))
    alone = engine.run(gen(tiny_model_dir, seed=9))
    # batched matmuls round differently in the last bit, so equal up to a level or two
    assert np.abs(pixels(batch.images[2]) - pixels(alone.images[0])).max() <= 2


def test_missing_seed_is_drawn_and_recorded(engine, tiny_model_dir):
    result = engine.run(gen(tiny_model_dir))
    assert result.request.seed is not None and 0 <= result.request.seed < 2**32
    again = engine.run(gen(tiny_model_dir, seed=result.request.seed))
    assert np.array_equal(pixels(result.images[0]), pixels(again.images[0]))


def test_defaults_come_from_the_model(engine, tiny_model_dir):
    result = engine.run(gen(tiny_model_dir, seed=1))
    assert (result.request.steps, result.request.width, result.request.height, result.request.scheduler) == (
        4,
        64,
        64,
        "ddim",
    )


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpmpp_2m"])
def test_each_scheduler_runs_and_is_deterministic(engine, tiny_model_dir, scheduler):
    a = engine.run(gen(tiny_model_dir, seed=3, scheduler=scheduler, steps=3))
    b = engine.run(gen(tiny_model_dir, seed=3, scheduler=scheduler, steps=3))
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert len(a.trajectory) == 3


def test_negative_prompt_changes_the_image(engine, tiny_model_dir):
    plain = engine.run(gen(tiny_model_dir, seed=5))
    negative = engine.run(gen(tiny_model_dir, seed=5, negative_prompt="green triangle"))
    assert not np.array_equal(pixels(plain.images[0]), pixels(negative.images[0]))


def test_events_progress_each_step_then_finished(engine, tiny_model_dir):
    events = []
    engine.run(gen(tiny_model_dir, seed=1, steps=5), events.append)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.step for p in progress] == [1, 2, 3, 4, 5]
    assert all(p.total == 5 for p in progress) and progress[-1].eta_seconds == 0
    assert [p.timestep for p in progress] == sorted((p.timestep for p in progress), reverse=True)
    previews = [e for e in events if isinstance(e, Preview)]
    assert len(previews) == 5 and previews[0].image.mode == "RGB"
    assert isinstance(events[-1], Finished)


def test_trajectory_keeps_xt_and_x0_per_step_and_decodes(engine, tiny_model_dir):
    result = engine.run(gen(tiny_model_dir, seed=1, steps=4))
    traj = result.trajectory
    assert len(traj) == 4 and traj.timesteps[0] > traj.timesteps[-1]
    assert traj.xt[0].shape == traj.x0[0].shape == (1, 4, 8, 8)
    # a VAE this small decodes each step's preview; the slider shows that decode (image size) for x0_hat...
    assert traj.previews(2, "x0").shape == (64, 64, 3)
    # ...and the latent-resolution projection where no decode was kept
    assert traj.previews(2, "xt").shape == (8, 8, 3)
    decoded = engine.decode_trajectory(traj, 3, "x0")
    assert decoded.size == (64, 64)
    # the last step's x0_hat is the final latent, so its decode is the result
    assert np.abs(pixels(decoded) - pixels(result.images[0])).mean() < 2


def test_modes_share_one_unet_and_switching_loads_nothing(
    engine, tiny_model_dir, source_image, square_mask, monkeypatch
):
    engine.run(gen(tiny_model_dir, seed=1))
    loaded = engine.models.loaded
    import diffusers

    def forbidden(*args, **kwargs):
        raise AssertionError("switching mode read a model from disk")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", forbidden)
    loads = engine.models.loads
    engine.run(Img2ImgRequest(prompt="x", model=str(tiny_model_dir), image=source_image, seed=1))
    engine.run(InpaintRequest(prompt="x", model=str(tiny_model_dir), image=source_image, mask=square_mask, seed=1))
    assert engine.models.loads == loads
    assert loaded.pipeline("img2img").unet is loaded.pipe.unet
    assert loaded.pipeline("inpaint").unet is loaded.pipe.unet
    assert loaded.pipeline("inpaint").vae is loaded.pipe.vae


def test_img2img_strength_controls_how_much_changes(engine, tiny_model_dir, source_image):
    low = engine.run(
        Img2ImgRequest(prompt="x", model=str(tiny_model_dir), image=source_image, strength=0.2, steps=10, seed=1)
    )
    high = engine.run(
        Img2ImgRequest(prompt="x", model=str(tiny_model_dir), image=source_image, strength=0.9, steps=10, seed=1)
    )
    assert len(low.trajectory) == 2 and len(high.trajectory) == 9
    src = pixels(source_image)
    assert np.abs(pixels(low.images[0]) - src).mean() < np.abs(pixels(high.images[0]) - src).mean()


def _outside_feather(mask: Image.Image, blur: int) -> np.ndarray:
    from diffusers.image_processor import VaeImageProcessor

    return np.asarray(VaeImageProcessor.blur(mask, blur)) == 0


@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_keeps_pixels_outside_the_mask_exactly(engine, tiny_model_dir, source_image, square_mask, only_masked):
    result = engine.run(
        InpaintRequest(
            prompt="x",
            model=str(tiny_model_dir),
            image=source_image,
            mask=square_mask,
            seed=2,
            only_masked=only_masked,
            only_masked_padding=8,
        )
    )
    out, src = pixels(result.images[0]), pixels(source_image)
    keep = _outside_feather(square_mask, 4)
    assert keep.sum() > 0.5 * keep.size
    assert np.array_equal(out[keep], src[keep])
    assert np.abs(out[28:36, 28:36] - src[28:36, 28:36]).mean() > 5


def test_inpaint_with_a_9_channel_inpainting_unet(engine, tiny_inpaint_model_dir, source_image, square_mask):
    result = engine.run(
        InpaintRequest(prompt="x", model=str(tiny_inpaint_model_dir), image=source_image, mask=square_mask, seed=2)
    )
    assert engine.models.loaded.pipe.unet.config.in_channels == 9
    keep = _outside_feather(square_mask, 4)
    assert np.array_equal(pixels(result.images[0])[keep], pixels(source_image)[keep])


def test_inpaint_on_an_image_that_is_not_a_multiple_of_8(engine, tiny_model_dir):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 255, (70, 77, 3), dtype=np.uint8))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (30, 30, 45, 45))
    events = []
    result = engine.run(
        InpaintRequest(prompt="x", model=str(tiny_model_dir), image=image, mask=mask, seed=1), events.append
    )
    assert result.images[0].size == image.size
    assert any(isinstance(e, Notice) and "multiple of 8" in e.message for e in events)
    keep = _outside_feather(mask, 4)
    assert np.array_equal(pixels(result.images[0])[keep], pixels(image)[keep])


def test_cancel_stops_within_one_step_without_decoding(engine, tiny_model_dir, monkeypatch):
    engine.run(gen(tiny_model_dir, seed=1))
    vae = engine.models.loaded.pipe.vae
    decodes = []
    original = vae.decode
    monkeypatch.setattr(vae, "decode", lambda *a, **k: decodes.append(1) or original(*a, **k))
    cancel = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, Progress) and event.step == 2:
            cancel.set()

    with pytest.raises(JobCancelled):
        engine.run(gen(tiny_model_dir, seed=1, steps=10, previews=False), on_event, cancel)  # previews may decode: off
    assert max(e.step for e in events if isinstance(e, Progress)) == 2
    assert isinstance(events[-1], Cancelled) and not decodes
    loads = engine.models.loads
    assert engine.run(gen(tiny_model_dir, seed=1)).images
    assert engine.models.loads == loads


def test_too_long_prompt_is_truncated_with_a_notice(engine, tiny_model_dir):
    events = []
    engine.run(gen(tiny_model_dir, seed=1, prompt="red " * 900), events.append)
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert notices and "dropped" in notices[0]


def test_missing_model_folder_is_a_user_error_and_next_job_runs(engine, tiny_model_dir, tmp_path):
    events = []
    with pytest.raises(ModelError, match="No model folder"):
        engine.run(gen(tmp_path / "nope" / "model"), events.append)
    assert isinstance(events[-1], Failed) and events[-1].hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="model_index.json"):
        engine.run(gen(tmp_path / "empty"))
    assert engine.run(gen(tiny_model_dir, seed=1)).images


def test_pickle_checkpoint_is_refused(engine, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    with pytest.raises(UserError, match="pickle"):
        engine.run(gen(ckpt))


def test_engine_exception_becomes_failed_and_engine_lives_on(engine, tiny_model_dir, monkeypatch):
    engine.run(gen(tiny_model_dir, seed=1))
    unet = engine.models.loaded.pipe.unet

    def broken(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(unet, "forward", broken)
    events = []
    with pytest.raises(RuntimeError):
        engine.run(gen(tiny_model_dir, seed=1), events.append)
    assert isinstance(events[-1], Failed) and "kaboom" in events[-1].message
    monkeypatch.undo()
    assert engine.run(gen(tiny_model_dir, seed=1)).images


def test_forward_process_preview_is_closed_form(engine, tiny_model_dir, source_image):
    fp = engine.forward_process(source_image, str(tiny_model_dir))
    assert fp.num_train_timesteps == 1000
    assert fp.preview(0).shape == (8, 8, 3)
    assert np.allclose(
        fp.latent(0), fp.x0 * np.sqrt(fp.alphas_cumprod[0]) + fp.noise * np.sqrt(1 - fp.alphas_cumprod[0]), atol=1e-5
    )
    # deep in the schedule the latent is nearly the noise
    assert np.corrcoef(fp.latent(999).ravel(), fp.noise.ravel())[0, 1] > 0.99


def test_out_of_memory_names_the_option_that_would_help(engine, tiny_model_dir, monkeypatch):
    import torch

    from desktop_app.core.errors import OutOfMemory
    from desktop_app.engine.device import MemoryOptions
    from desktop_app.engine.engine import memory_hint

    engine.run(gen(tiny_model_dir, seed=1))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(engine.models.loaded.pipe.unet, "forward", oom)
    events = []
    with pytest.raises(OutOfMemory):
        engine.run(gen(tiny_model_dir, seed=1), events.append)
    assert isinstance(events[-1], Failed) and "attention slicing" in events[-1].hint
    monkeypatch.undo()
    assert engine.run(gen(tiny_model_dir, seed=1)).images  # the next job runs
    big = GenerateRequest(width=2048, height=2048)
    assert "VAE tiling" in memory_hint(MemoryOptions(), big)
    assert "CPU offload" in memory_hint(MemoryOptions(attention_slicing=True, vae_tiling=True), GenerateRequest())
    assert "batch 1" in memory_hint(MemoryOptions(), GenerateRequest(batch=4))


# -- masks: the feather lies inside the painted mask (defect 12) -------------------------


def _changed(out: Image.Image, src: Image.Image) -> np.ndarray:
    return (pixels(out) != pixels(src)).any(axis=-1)


def test_default_inpaint_changes_no_pixel_outside_the_painted_mask(engine, tiny_model_dir, source_image, square_mask):
    result = engine.run(
        InpaintRequest(prompt="x", model=str(tiny_model_dir), image=source_image, mask=square_mask, seed=1, steps=3)
    )
    changed, painted = _changed(result.images[0], source_image), np.asarray(square_mask) > 0
    assert not (changed & ~painted).any() and changed[painted].mean() > 0.5


def test_mask_grow_lets_the_change_spill_over_by_that_many_pixels_only(
    engine, tiny_model_dir, source_image, square_mask
):
    request = InpaintRequest(
        prompt="x",
        model=str(tiny_model_dir),
        image=source_image,
        mask=square_mask,
        seed=1,
        steps=3,
        mask_grow=6,
        mask_blur=0,
    )
    changed = _changed(engine.run(request).images[0], source_image)
    grown = np.zeros((64, 64), bool)
    grown[18:46, 18:46] = True  # the 16 px square (24..40) grown by 6 px
    assert not (changed & ~grown).any() and (changed & grown & ~(np.asarray(square_mask) > 0)).any()
    restored = InpaintRequest.from_dict(request.to_dict())
    assert isinstance(restored, InpaintRequest) and restored.mask_grow == 6
    with pytest.raises(UserError, match="Mask grow"):
        request.replace(mask_grow=-1).validate()


# -- sources of another size than the model's (defect 9) ---------------------------------


def _bands(size=(200, 100)) -> Image.Image:
    """Green | red | blue columns: 50, 100 and 50 px of a 200 px wide image."""
    image = Image.new("RGB", size, (220, 20, 20))
    image.paste((20, 200, 20), (0, 0, 50, size[1]))
    image.paste((20, 20, 220), (150, 0, 200, size[1]))
    return image


def test_resize_modes_map_the_source_onto_the_work_size_and_back():
    from desktop_app.core.imaging import Placement, from_work, to_work
    from desktop_app.core.requests import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL

    source = _bands()
    stretched = np.asarray(to_work(source, Placement(JUST_RESIZE, source.size, (64, 64))))
    assert (
        stretched.shape == (64, 64, 3) and stretched[32, 4, 1] > 150 and stretched[32, 60, 2] > 150
    )  # all three bands
    cropped = to_work(source, Placement(CROP_AND_RESIZE, source.size, (64, 64)))
    assert (np.asarray(cropped)[:, :, 0] > 150).all()  # the middle square only: red
    placement = Placement(CROP_AND_RESIZE, source.size, (64, 64))
    back = np.asarray(from_work(Image.new("RGB", (64, 64), (255, 255, 255)), source, placement))
    assert back.shape == (100, 200, 3)
    assert np.array_equal(back[:, :48], np.asarray(source)[:, :48]) and np.array_equal(
        back[:, 152:], np.asarray(source)[:, 152:]
    )
    assert (back[:, 56:144] >= 245).all()  # what the model made lands where the model saw the source
    filled = Placement(RESIZE_AND_FILL, source.size, (64, 64))
    assert filled.scaled_size == (64, 32) and filled.offset == (0, 16)
    work = np.asarray(to_work(source, filled))
    assert work[20, 4, 1] > 150 and work[20, 60, 2] > 150  # the whole source, letterboxed
    result = Image.new("RGB", (64, 64), (0, 0, 0))
    result.paste((255, 255, 255), (0, 16, 64, 48))
    assert (np.asarray(from_work(result, source, filled)) == 255).all()  # the bands are dropped


@pytest.mark.parametrize("mode", ["just_resize", "crop_and_resize", "resize_and_fill"])
def test_a_large_source_runs_at_the_models_area_and_returns_at_its_size(engine, tiny_model_dir, mode):
    source = _bands((400, 240))
    events = []
    request = Img2ImgRequest(
        prompt="x", model=str(tiny_model_dir), image=source, seed=1, steps=2, strength=0.5, resize_mode=mode
    )
    result = engine.run(request, events.append)
    assert result.images[0].size == (400, 240) and (result.request.width, result.request.height) == (104, 64)
    assert result.trajectory.xt[0].shape[-2:] == (8, 13)  # the UNet ran at 104x64, not 400x240
    label = {"just_resize": "", "crop_and_resize": " (Crop and resize)", "resize_and_fill": " (Resize and fill)"}[mode]
    assert f"The image is 400x240; tiny-sd works at 64x64: worked at 104x64{label} and scaled back to 400x240." in [
        e.message for e in events if isinstance(e, Notice)
    ]
    restored = Img2ImgRequest.from_dict(result.request.to_dict())
    assert isinstance(restored, Img2ImgRequest) and restored.resize_mode == mode


def test_a_large_inpaint_keeps_every_unpainted_pixel(engine, tiny_model_dir):
    source = _bands((400, 240))
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (150, 80, 250, 160))
    result = engine.run(InpaintRequest(prompt="x", model=str(tiny_model_dir), image=source, mask=mask, seed=1, steps=2))
    changed = _changed(result.images[0], source)
    assert result.images[0].size == (400, 240) and not (changed & (np.asarray(mask) == 0)).any() and changed.any()


def test_an_unknown_resize_mode_is_refused():
    with pytest.raises(UserError, match="resize mode"):
        Img2ImgRequest(image=Image.new("RGB", (64, 64)), resize_mode="zoom").validate()


# -- strength x steps below one step (issue 17, item 4) ----------------------------------


@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
def test_strength_zero_returns_the_source_and_a_tiny_strength_runs_one_step(
    engine, tiny_model_dir, source_image, square_mask, kind
):
    def request(strength):
        if kind == "img2img":
            return Img2ImgRequest(
                prompt="x", model=str(tiny_model_dir), image=source_image, seed=1, steps=20, strength=strength
            )
        return InpaintRequest(
            prompt="x",
            model=str(tiny_model_dir),
            image=source_image,
            mask=square_mask,
            seed=1,
            steps=20,
            strength=strength,
        )

    kept = engine.run(request(0.0))
    assert np.array_equal(pixels(kept.images[0]), pixels(source_image))
    events = []
    light = engine.run(request(0.04), events.append)  # 20 x 0.04 = 0.8 steps: diffusers used to crash on none
    assert light.images[0].size == source_image.size
    assert [e.step for e in events if isinstance(e, Progress)] == [1]
