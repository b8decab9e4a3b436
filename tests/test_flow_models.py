"""SD 3.5 and FLUX.1 through Engine.run, on tiny random folders built offline (tests/tiny_flow.py): every mode, Fill,
Kontext, the events, cancel, the sigma trajectory, guidance rules and the notices for Stable Diffusion-only options."""

from __future__ import annotations

import json
import math
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from desktop_app.core.errors import InvalidRequest, JobCancelled, ModelError
from desktop_app.core.events import Cancelled, Failed, Finished, Notice, Preview, Progress
from desktop_app.core.requests import EditRequest, GenerateRequest, Img2ImgRequest, InpaintRequest

PROMPT = "a red circle on a blue background"
FAMILIES = {
    "sd3": "sd3",
    "flux-dev": "flux-dev",
    "flux-schnell": "flux-schnell",
    "flux-fill": "flux-fill",
    "flux-kontext": "flux-kontext",
}


@pytest.fixture(scope="session")
def flow_dirs(tmp_path_factory) -> dict:
    """name -> folder, each built on first use (a tiny folder takes ~0.2 s to write)."""
    from tiny_flow import tiny_flow_dir

    class Folders(dict):
        def __missing__(self, name):
            self[name] = tiny_flow_dir(tmp_path_factory, name)
            return self[name]

    return Folders()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def source_image() -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def square_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def outside(mask: Image.Image) -> np.ndarray:
    """Pixels the paste-back keeps: the feather lies inside the mask, so all unpainted pixels."""
    return np.asarray(mask.convert("L")) == 0


# -- loading -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_and_recommended_settings_come_from_the_folder(engine, flow_dirs, name):
    info = engine.preload(str(flow_dirs[name]))
    assert info.family == FAMILIES[name]
    settings = json.loads((flow_dirs[name] / "diffusion_desk.json").read_text(encoding="utf-8"))
    assert (info.defaults["steps"], info.defaults["guidance"]) == (settings["steps"], settings["guidance"])
    loaded = engine.models.loaded
    assert loaded.is_flow and not loaded.is_xl and not loaded.inpaint_unet and loaded.prediction_type == "flow"


def test_a_flow_folder_without_settings_gets_its_family_defaults(engine, flow_dirs, tmp_path):
    folder = tmp_path / "schnell-no-settings"
    shutil.copytree(flow_dirs["flux-schnell"], folder)
    (folder / "diffusion_desk.json").unlink()
    info = engine.preload(str(folder))
    assert info.family == "flux-schnell"
    assert (info.defaults["steps"], info.defaults["guidance"], info.defaults["width"]) == (4, 0.0, 1024)


def test_modes_share_one_set_of_modules(engine, flow_dirs, source_image, square_mask):
    model = str(flow_dirs["flux-dev"])
    engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=2, seed=1))
    loads = engine.models.loads
    engine.run(Img2ImgRequest(prompt=PROMPT, model=model, steps=2, seed=1, image=source_image))
    engine.run(InpaintRequest(prompt=PROMPT, model=model, steps=2, seed=1, image=source_image, mask=square_mask))
    loaded = engine.models.loaded
    assert engine.models.loads == loads
    for mode in ("img2img", "inpaint"):
        derived = loaded.pipeline(mode)
        assert type(derived).__name__ == {"img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"}[mode]
        assert derived.transformer is loaded.pipe.transformer and derived.vae is loaded.pipe.vae


# -- generation, the events and the trajectory ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd3", "flux-dev", "flux-schnell"])
def test_generation_is_deterministic_with_a_sigma_trajectory_whose_last_x0_is_the_image(engine, flow_dirs, name):
    model = str(flow_dirs[name])
    events: list = []
    first = engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=3, seed=7), events.append)
    again = engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=3, seed=7))
    other = engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=3, seed=8))
    assert first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    assert not np.array_equal(pixels(first.images[0]), pixels(other.images[0]))
    trajectory = first.trajectory
    assert trajectory is not None and len(trajectory) == 3 and trajectory.axis == "sigma"
    assert trajectory.timesteps[0] == 1000 and trajectory.timesteps == sorted(trajectory.timesteps, reverse=True)
    assert trajectory.xt[0].shape == trajectory.x0[0].shape == (1, 16, 8, 8)  # unpacked, even for Flux
    # x0 = x_t - sigma v: the Euler step x_t' = x_t + (sigma' - sigma) v is then x_t + (sigma' / sigma - 1)(x_t - x0)
    sigmas = [t / 1000 for t in trajectory.timesteps]
    for i in range(len(trajectory) - 1):
        euler = trajectory.xt[i] + (sigmas[i + 1] / sigmas[i] - 1) * (trajectory.xt[i] - trajectory.x0[i])
        assert np.allclose(euler, trajectory.xt[i + 1], atol=2e-2)
    # the last step goes to sigma 0: its x0 is the final latent, decoded it is the image
    decoded = engine.decode_trajectory(trajectory, len(trajectory) - 1, "x0")
    assert np.abs(pixels(decoded) - pixels(first.images[0])).mean() < 1.0
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.step for p in progress] == [1, 2, 3] and all(p.total == 3 and p.phase == "denoise" for p in progress)
    previews = [e for e in events if isinstance(e, Preview)]
    assert len(previews) == 3 and all(p.image.mode == "RGB" for p in previews)
    assert isinstance(events[-1], Finished) and sum(isinstance(e, (Finished, Failed, Cancelled)) for e in events) == 1


def test_batch_images_are_reproducible_alone_from_their_seed(engine, flow_dirs):
    model = str(flow_dirs["flux-dev"])
    batch = engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=2, seed=3, batch=2))
    alone = engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=2, seed=4))
    assert batch.seeds == [3, 4]
    assert np.abs(pixels(batch.images[1]) - pixels(alone.images[0])).max() <= 2
    assert batch.trajectory is not None and batch.trajectory.x0[0].shape[0] == 2


def test_flux_guidance_is_the_distilled_one_and_sd3_uses_the_negative_prompt(engine, flow_dirs):
    flux = str(flow_dirs["flux-dev"])
    low = engine.run(GenerateRequest(prompt=PROMPT, model=flux, steps=2, seed=1, guidance=1.0))
    high = engine.run(GenerateRequest(prompt=PROMPT, model=flux, steps=2, seed=1, guidance=6.0))
    assert not np.array_equal(pixels(low.images[0]), pixels(high.images[0]))  # the transformer embeds guidance
    sd3 = str(flow_dirs["sd3"])
    plain = engine.run(GenerateRequest(prompt=PROMPT, model=sd3, steps=2, seed=1, guidance=5.0))
    negative = engine.run(
        GenerateRequest(prompt=PROMPT, model=sd3, steps=2, seed=1, guidance=5.0, negative_prompt="green square")
    )
    assert not np.array_equal(pixels(plain.images[0]), pixels(negative.images[0]))


def test_cancel_stops_within_a_step_without_decoding_and_the_next_job_runs(engine, flow_dirs, monkeypatch):
    model = str(flow_dirs["flux-dev"])
    engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=2, seed=1))
    vae = engine.models.loaded.pipe.vae
    decodes = []
    original = vae.decode
    monkeypatch.setattr(vae, "decode", lambda *a, **k: decodes.append(1) or original(*a, **k))
    cancel = threading.Event()
    events: list = []

    def on_event(event):
        events.append(event)
        if isinstance(event, Progress) and event.step == 2:
            cancel.set()

    with pytest.raises(JobCancelled):
        engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=8, seed=1, previews=False), on_event, cancel)
    assert max(e.step for e in events if isinstance(e, Progress)) == 2
    assert isinstance(events[-1], Cancelled) and not decodes
    assert engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=2, seed=1)).images


# -- guidance rules and notices -------------------------------------------------------------------------------------
def test_guidance_on_schnell_is_refused_with_a_hint_and_the_next_job_runs(engine, flow_dirs):
    model = str(flow_dirs["flux-schnell"])
    events: list = []
    with pytest.raises(InvalidRequest) as caught:
        engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=2, seed=1, guidance=3.5), events.append)
    assert "guidance 0" in caught.value.hint and "4 steps" in caught.value.hint
    assert isinstance(events[-1], Failed) and "guidance 0" in events[-1].hint
    result = engine.run(GenerateRequest(prompt=PROMPT, model=model, seed=1))  # the model's own: 4 steps, 0
    assert (result.request.steps, result.request.guidance) == (4, 0.0) and len(result.trajectory or []) == 4


def test_stable_diffusion_only_options_bring_notices_not_crashes(engine, flow_dirs):
    events: list = []
    result = engine.run(
        GenerateRequest(
            prompt="a (red:1.3) circle BREAK [blue] background",
            negative_prompt="blurry",
            model=str(flow_dirs["flux-dev"]),
            steps=2,
            seed=1,
            scheduler="dpmpp_2m",
            clip_skip=2,
        ),
        events.append,
    )
    notices = " | ".join(e.message for e in events if isinstance(e, Notice))
    for words in ("prompt weights", "BREAK", "negative prompt is not used", "Samplers", "Clip skip 2"):
        assert words in notices
    assert result.notices and result.images[0].size == (64, 64)


def test_a_prompt_past_t5s_length_says_how_much_was_dropped(engine, flow_dirs):
    events: list = []
    engine.run(GenerateRequest(prompt="red " * 300, model=str(flow_dirs["sd3"]), steps=1, seed=1), events.append)
    assert any(isinstance(e, Notice) and "T5 tokens were dropped" in e.message for e in events)


# -- img2img, inpaint, outpaint, Fill ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd3", "flux-dev"])
def test_img2img_runs_the_strengths_share_of_the_steps(engine, flow_dirs, source_image, name):
    request = Img2ImgRequest(prompt=PROMPT, model=str(flow_dirs[name]), steps=4, seed=1, image=source_image)
    result = engine.run(request.replace(strength=0.5))
    assert result.images[0].size == source_image.size and result.info["Denoising strength"] == 0.5
    assert result.trajectory is not None and len(result.trajectory) == 2
    assert result.trajectory.timesteps[0] < 1000  # it starts part way, from the noised source
    assert not np.array_equal(pixels(result.images[0]), pixels(source_image))


@pytest.mark.parametrize("name", ["sd3", "flux-dev", "flux-fill", "flux-kontext"])
def test_inpaint_keeps_every_pixel_outside_the_mask(engine, flow_dirs, source_image, square_mask, name):
    result = engine.run(
        InpaintRequest(prompt=PROMPT, model=str(flow_dirs[name]), steps=2, seed=1, image=source_image, mask=square_mask)
    )
    keep = outside(square_mask)
    out, src = pixels(result.images[0]), pixels(source_image)
    assert np.array_equal(out[keep], src[keep])
    assert np.abs(out[~keep] - src[~keep]).mean() > 5  # the masked square was repainted
    assert result.info["Mask blur"] == 4


def test_outpaint_extends_the_canvas_and_keeps_the_source_beyond_the_overlap(engine, flow_dirs, source_image):
    result = engine.run(
        InpaintRequest(
            prompt=PROMPT, model=str(flow_dirs["flux-fill"]), steps=2, seed=1, image=source_image, extend=(16, 0, 0, 16)
        )
    )
    image = pixels(result.images[0])
    assert image.shape[:2] == (80, 80)
    overlap = result.request.outpaint_overlap  # the band into the source that is repainted and blended
    kept = image[: 64 - overlap, 16 + overlap :]
    assert np.array_equal(kept, pixels(source_image)[: 64 - overlap, overlap:])
    assert "Outpaint" in result.info


def test_fill_generates_and_runs_image_to_image_as_a_whole_image_inpaint(engine, flow_dirs, source_image):
    model = str(flow_dirs["flux-fill"])
    generated = engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=2, seed=1))
    assert generated.images[0].size == (64, 64) and len(generated.trajectory or []) == 2
    events: list = []
    changed = engine.run(
        Img2ImgRequest(prompt=PROMPT, model=model, steps=4, seed=1, image=source_image, strength=0.5), events.append
    )
    assert len(changed.trajectory or []) == 2
    assert any(isinstance(e, Notice) and "inpaint of the whole image" in e.message for e in events)


# -- Kontext -----------------------------------------------------------------------------------------------------------
def test_kontext_edit_follows_the_instruction_with_the_source_as_reference(engine, flow_dirs, source_image):
    model = str(flow_dirs["flux-kontext"])
    request = EditRequest(prompt="make the circle blue", model=model, steps=2, seed=1, image=source_image)
    result = engine.run(request)
    assert result.request.method == "kontext" and result.info["Edit method"] == "kontext"
    assert result.images[0].size == source_image.size and len(result.trajectory or []) == 2
    other = engine.run(request.replace(image=Image.new("RGB", (64, 64), (0, 200, 0))))
    assert not np.array_equal(pixels(result.images[0]), pixels(other.images[0]))  # the reference is seen


def test_masked_kontext_edit_keeps_every_pixel_outside_the_mask(engine, flow_dirs, source_image, square_mask):
    result = engine.run(
        EditRequest(
            prompt="make the circle blue",
            model=str(flow_dirs["flux-kontext"]),
            steps=2,
            seed=1,
            image=source_image,
            mask=square_mask,
            method="kontext",
        )
    )
    keep = outside(square_mask)
    out, src = pixels(result.images[0]), pixels(source_image)
    assert np.array_equal(out[keep], src[keep])
    assert np.abs(out[~keep] - src[~keep]).mean() > 5
    assert type(engine.models.loaded.pipeline("kontext_inpaint")).__name__ == "FluxKontextInpaintPipeline"


def test_a_kontext_edit_on_another_flux_model_is_a_model_error_and_the_next_job_runs(engine, flow_dirs, source_image):
    model = str(flow_dirs["flux-dev"])
    events: list = []
    with pytest.raises(ModelError, match="Kontext") as caught:
        engine.run(
            EditRequest(prompt="make it blue", model=model, steps=2, seed=1, image=source_image, method="kontext"),
            events.append,
        )
    assert "FLUX.1-Kontext" in caught.value.hint and isinstance(events[-1], Failed)
    assert engine.run(GenerateRequest(prompt=PROMPT, model=model, steps=2, seed=1)).images


def test_a_size_off_the_16_pixel_grid_runs_rounded_with_a_notice_and_keeps_the_source(engine, flow_dirs):
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 255, (64, 72, 3), dtype=np.uint8))  # 72 wide: a multiple of 8, not 16
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (20, 20, 50, 50))
    events: list = []
    result = engine.run(
        InpaintRequest(prompt=PROMPT, model=str(flow_dirs["sd3"]), steps=2, seed=1, image=image, mask=mask),
        events.append,
    )
    assert result.images[0].size == (72, 64)
    assert any(isinstance(e, Notice) and "ran at 64x64 and scaled to 72x64" in e.message for e in events)
    keep = outside(mask)
    assert np.array_equal(pixels(result.images[0])[keep], pixels(image)[keep])


def test_the_forward_process_runs_from_the_source_to_noise_with_the_models_shift(engine, flow_dirs, source_image):
    from desktop_app.core.latents import flow_shift
    from desktop_app.engine.sampling import make_scheduler

    process = engine.forward_process(source_image, str(flow_dirs["sd3"]))
    assert process.axis == "sigma" and process.shift == 3.0 and process.x0.shape == (16, 8, 8)
    assert np.allclose(process.latent(0), process.x0) and process.sigma(500) == pytest.approx(0.75)
    assert process.preview(999).shape[:2] == (8, 8)
    engine.preload(str(flow_dirs["flux-dev"]))
    flux = engine.models.loaded
    # the shift is what the Flux pipeline's own schedule does at this size: its first sigma at strength s
    shift = flow_shift(flux.scheduler_config, (8, 8))  # 64x64 pixels: 8x8 latents, 16 tokens
    assert engine.forward_process(source_image, str(flow_dirs["flux-dev"])).shift == pytest.approx(shift)
    scheduler = make_scheduler(None, None, flux.scheduler_config)
    scheduler.set_timesteps(sigmas=[0.5], mu=math.log(shift))
    assert float(scheduler.sigmas[0]) == pytest.approx(shift * 0.5 / (1 + (shift - 1) * 0.5), abs=1e-5)
    assert 1.0 < shift < math.exp(0.5)  # 16 tokens: below Flux's base shift at 256 tokens
    engine.preload(str(flow_dirs["flux-schnell"]))
    assert flow_shift(engine.models.loaded.scheduler_config, (128, 128)) == 1.0


def test_memory_options_apply_to_flow_pipelines(flow_dirs):
    from desktop_app.engine.device import MemoryOptions
    from desktop_app.engine.engine import Engine

    frugal = Engine(device="cpu", memory=MemoryOptions(attention_slicing=True, vae_tiling=True))
    result = frugal.run(GenerateRequest(prompt=PROMPT, model=str(flow_dirs["sd3"]), steps=2, seed=1))
    loaded = frugal.models.loaded
    assert result.images[0].size == (64, 64) and loaded is not None and loaded.pipe.vae.use_tiling


def test_a_flux_transformer_file_runs_through_the_engine_with_its_parts_and_the_shipped_settings(
    engine, flow_dirs, tmp_path, monkeypatch
):
    from desktop_app.engine import checkpoints, flow_files

    tiny = flow_dirs["flux-dev"]
    configs = tmp_path / "configs"  # the shipped FLUX.1 dev configs, the tiny model's sizes in place of the real ones
    shutil.copytree(checkpoints.configs_root() / "flux-dev", configs / "flux-dev")
    for part in ("transformer", "vae"):
        shutil.copy(tiny / part / "config.json", configs / "flux-dev" / part / "config.json")
    monkeypatch.setenv(checkpoints.CONFIGS_ENV, str(configs))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv(flow_files.COMPONENTS_ENV, str(tiny))  # the text encoders, tokenizers and VAE
    file = tmp_path / "models" / "flux1-dev.safetensors"
    file.parent.mkdir()
    shutil.copy(tiny / "transformer" / "diffusion_pytorch_model.safetensors", file)
    result = engine.run(GenerateRequest(prompt=PROMPT, model=str(file), steps=2, width=64, height=64, seed=1))
    assert engine.models.loaded is not None and engine.models.loaded.family == "flux-dev"
    assert result.request.guidance == 3.5  # the shipped FLUX.1 dev settings (distilled guidance)
    assert result.images[0].size == (64, 64) and len(result.trajectory or []) == 2
    folder = engine.run(GenerateRequest(prompt=PROMPT, model=str(tiny), steps=2, width=64, height=64, seed=1))
    assert np.abs(pixels(result.images[0]) - pixels(folder.images[0])).max() <= 1  # the same model as the folder


def test_flow_models_load_in_bf16_on_a_gpu_unless_a_precision_is_asked(flow_dirs, tiny_model_dir, monkeypatch):
    """SD 3.x / Flux were trained in bf16 and their T5 overflows fp16: with no precision asked a GPU loads them in
    bf16 (where it has it), SD models stay in the engine's fp16; a precision the user asked is kept for both."""
    import torch

    from desktop_app.engine import device as device_module
    from desktop_app.engine.models import ModelManager, ModelSource

    monkeypatch.setattr(device_module, "_bf16_supported", lambda device: True)
    gpu = ModelManager(torch.device("cuda"), torch.float16)
    assert gpu._dtype_for(ModelSource.parse(str(flow_dirs["flux-dev"]))) == torch.bfloat16
    assert gpu._dtype_for(ModelSource.parse(str(flow_dirs["sd3"]))) == torch.bfloat16
    assert gpu._dtype_for(ModelSource.parse(str(tiny_model_dir))) == torch.float16
    assert gpu._dtype_for(ModelSource.parse("black-forest-labs/FLUX.1-schnell")) == torch.bfloat16
    asked = ModelManager(torch.device("cuda"), torch.float16, requested_dtype="fp16")
    assert asked._dtype_for(ModelSource.parse(str(flow_dirs["flux-dev"]))) == torch.float16
    cpu = ModelManager(torch.device("cpu"), torch.float32)
    assert cpu._dtype_for(ModelSource.parse(str(flow_dirs["flux-dev"]))) == torch.float32


def test_out_of_memory_on_a_flow_model_names_the_option_that_helps(engine, flow_dirs, monkeypatch):
    """The transformer is what does not fit: the hint is CPU offload, not attention slicing; the next job runs."""
    import torch

    from desktop_app.core.errors import OutOfMemory
    from desktop_app.core.events import Failed

    request = GenerateRequest(model=str(flow_dirs["flux-schnell"]), prompt="a red circle", seed=1, steps=2)
    engine.run(request)
    transformer = engine.models.loaded.pipe.transformer

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(transformer, "forward", oom)
    events = []
    with pytest.raises(OutOfMemory):
        engine.run(request, events.append)
    assert isinstance(events[-1], Failed) and "CPU offload" in events[-1].hint and "slicing" not in events[-1].hint
    monkeypatch.undo()
    assert engine.run(request).images


@pytest.mark.parametrize(
    "repo",
    ["black-forest-labs/FLUX.1-schnell", "stabilityai/stable-diffusion-3.5-medium", "black-forest-labs/FLUX.1-dev"],
)
def test_hub_ids_with_a_version_in_their_name_are_hub_ids_not_file_paths(repo):
    """ "FLUX.1-schnell" has a dot: it is a version, not a file extension (a typo'd path still says it is missing)."""
    from desktop_app.engine.models import ModelSource

    assert ModelSource.parse(repo) == ModelSource("hub", repo)
    with pytest.raises(ModelError, match="No model folder"):
        ModelSource.parse("pictures/not-a-model.png")


def test_flux_dev_results_say_their_guidance_is_distilled(engine, flow_dirs):
    """The PNG's parameters read as Forge's: CFG scale 1 and the distilled guidance apart; SD 3 keeps CFG."""
    from desktop_app.core.infotext import format_parameters

    flux = engine.run(GenerateRequest(model=str(flow_dirs["flux-dev"]), prompt="a red circle", seed=1, steps=2))
    assert flux.info["Distilled CFG Scale"] == flux.request.guidance == 3.5
    assert "CFG scale: 1, Distilled CFG Scale: 3.5" in format_parameters(flux.request, extra=flux.info)
    sd3 = engine.run(GenerateRequest(model=str(flow_dirs["sd3"]), prompt="a red circle", seed=1, steps=2))
    assert "Distilled CFG Scale" not in sd3.info
