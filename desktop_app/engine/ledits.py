"""LEDITS++ edits (Brack et al., CVPR 2024) on the loaded model's own components.

diffusers' `LEditsPPPipelineStableDiffusion` / `LEditsPPPipelineStableDiffusionXL` is built once per model on the very
modules of `loaded.pipe` (no weights copied) and cached in `loaded._derived["ledits"]`. A job runs in two phases:

1. **Invert** (phase "invert"): edit-friendly DDPM inversion (Huberman-Spiegelglas et al.) with DPM-Solver++ 2M SDE,
   the scheduler diffusers' docs name for LEDITS++ (its DDIM path assumes epsilon prediction and cannot serve
   v-prediction models such as the built-in one). The noise maps of every step are kept, so denoising them back
   with no edit concept returns the source.
2. **Denoise** (phase "denoise"): the same noise maps under the edit concepts, each with its own guidance,
   direction (add, or remove with `reverse_editing_direction`) and threshold; each concept acts only inside its
   implicit mask, the intersection of its cross-attention mask and the top of its noise guidance (the LEDITS++
   paper's M1 x M2, diffusers' `use_intersect_mask`).

What a user gets from the request's fields:
- depth: `t0` / `strength` as for the inversion methods (`inversion.resolve_t0`; strength 1 is the whole schedule).
  diffusers takes it as `skip`, the share of `steps * (1 + skip)` leading timesteps dropped; `skip` is chosen so the
  edit's first timestep is the deepest one at or below t0 (1 - depth would start deeper than asked). `invert` forces
  DPM-Solver's "leading" spacing, so strength 1 starts at that schedule's first step (941 with 20 steps).
- `prompt`: LEDITS++ has no target prompt. A non-empty prompt that differs from the source prompt and from every
  concept is added as one more "+" concept at the default guidance: typing the picture wanted still edits toward it.
- `source_prompt`: recorded in the infotext; the inversion runs unconditioned (diffusers' `source_prompt=""`).
  LEDITS++'s denoising has no source branch, so an inversion guided by the source prompt does not come back even
  with no concept (built-in model: 11 dB against 26 dB for the empty-edit reconstruction).
- `negative_prompt`: not used (the unconditional branch must stay the inversion's); a Notice says so.
- `mask`: the concepts' guidance acts only inside it (`user_mask`), and the source is pasted back outside it, so
  every pixel there is the source's, bit for bit.
- batch: one edit (with the first seed: the inversion draws noise); the batch gets copies, with a Notice.
- a UNet with no cross-attention at a quarter of the latent's size (tiny models: diffusers fails with
  "torch.cat(): expected a non-empty list of Tensors") runs with the noise-guidance masks only, with a Notice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from PIL import Image

from desktop_app.core.errors import JobCancelled, ModelError
from desktop_app.core.events import Notice
from desktop_app.core.imaging import feather_mask, paste_back
from desktop_app.core.latents import Trajectory
from desktop_app.core.requests import EditConcept, EditRequest, format_edit_concepts
from desktop_app.engine.encoding import decode_images
from desktop_app.engine.inversion import resolve_t0
from desktop_app.engine.models import LoadedModel, _share_components
from desktop_app.engine.sampling import StepHooks

if TYPE_CHECKING:
    from diffusers import DPMSolverMultistepScheduler

Emit = Callable[[Any], None]

PIPELINES = {False: "LEditsPPPipelineStableDiffusion", True: "LEditsPPPipelineStableDiffusionXL"}
ATTENTION_FACTOR = 4  # diffusers aggregates the concepts' cross-attention maps at 1/4 of the latent's size
SIZE_MULTIPLE = 32  # diffusers' LEDITS++ encodes images whose sides are multiples of 32
# what diffusers' invert and edit leave on the pipeline (noise maps, start latent, attention store, masks)
_RUN_STATE = ("inversion_steps", "zs", "init_latents", "attention_store", "sem_guidance", "activation_mask")
SOURCE_GUIDANCE = 3.5  # diffusers' default; unused while the inversion is unconditioned (source_prompt="")

__all__ = ["attention_masks_available", "check_ledits_model", "inversion_skip", "ledits_pipeline", "run_ledits"]


# ------------------------------------------------------------------ checks ---


def check_ledits_model(loaded: LoadedModel) -> None:
    """ModelError for the models LEDITS++ cannot edit: an SDXL refiner, an inpainting (9-channel) UNet."""
    pipe = loaded.pipe
    if loaded.is_xl and (
        getattr(pipe, "text_encoder", None) is None or bool(dict(pipe.config).get("requires_aesthetics_score"))
    ):
        raise ModelError(
            f"{loaded.model_id} is an SDXL refiner: LEDITS++ needs a base model (two text encoders, no aesthetic score).",
            "Load the SDXL base model (stabilityai/stable-diffusion-xl-base-1.0 or a fine-tune of it) for LEDITS++.",
        )
    if loaded.inpaint_unet:
        raise ModelError(
            f"{loaded.model_id} is an inpainting model (a 9-channel UNet): LEDITS++ edits with a plain 4-channel UNet.",
            "Load the same model's base (non-inpainting) version for LEDITS++, or paint a mask and use Inpaint.",
        )


def attention_masks_available(unet, latent_size: tuple[int, int]) -> bool:
    """Whether diffusers can build LEDITS++'s cross-attention masks for a latent of (h, w): it averages the maps
    of the down and up blocks' cross-attention layers that run at exactly 1/4 of the latent's size.

    Down block i runs at 1/2^i of the latent, up block j at 1/2^(n - 1 - j) (UNet2DConditionModel halves the size
    at the end of every down block but the last)."""
    height, width = latent_size
    if height % ATTENTION_FACTOR or width % ATTENTION_FACTOR:
        return False
    ups = len(unet.config.up_block_types)
    for name in unet.attn_processors:
        parts = name.split(".")
        if "attn2" not in parts or len(parts) < 2 or not parts[1].isdigit():
            continue
        if parts[0] == "down_blocks":
            factor = 2 ** int(parts[1])
        elif parts[0] == "up_blocks":
            factor = 2 ** (ups - 1 - int(parts[1]))
        else:  # the mid block's maps are not used
            continue
        if factor == ATTENTION_FACTOR:
            return True
    return False


# --------------------------------------------------------------- pipeline ---


class _StepCounter:
    """What `progress_bar` returns: counts the loop's steps (as a context with update(), or wrapping an iterable)
    and reports each one, so diffusers' `invert` (which has no step callback) shows progress and can be cancelled."""

    def __init__(self, iterable: Iterable | None, report: Callable[[int], None] | None) -> None:
        self.iterable, self.report, self.count = iterable, report, 0

    def __enter__(self) -> _StepCounter:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        for _ in range(n):
            self.count += 1
            if self.report is not None:
                self.report(self.count - 1)

    def __iter__(self) -> Iterator:
        for item in () if self.iterable is None else self.iterable:
            yield item
            self.update()  # the loop's body for `item` has run


class _Reporting:
    """Mixin over a diffusers pipeline: `progress_bar` reports each step to `on_progress(step_index)`."""

    on_progress: Callable[[int], None] | None = None

    def progress_bar(self, iterable=None, total=None):
        return _StepCounter(iterable, self.on_progress)


@functools.cache
def _pipeline_class(xl: bool) -> type:
    import diffusers

    base = getattr(diffusers, PIPELINES[xl])
    return type(f"Reporting{base.__name__}", (_Reporting, base), {})


def ledits_pipeline(loaded: LoadedModel):
    """The LEDITS++ pipeline on the loaded model's very modules (cached); its scheduler is set per run."""
    pipe = loaded._derived.get("ledits")
    if pipe is None:
        cls = _pipeline_class(loaded.is_xl)
        if getattr(loaded.pipe, "_all_hooks", None) or getattr(loaded.pipe, "_offload_device", None) is not None:
            pipe = cls.from_pipe(loaded.pipe)  # CPU offload: from_pipe carries the hooks over
        else:
            pipe = _share_components(cls, loaded.pipe)
        pipe.set_progress_bar_config(disable=True)
        loaded._derived["ledits"] = pipe
    return pipe


def _scheduler(loaded: LoadedModel) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ 2M SDE from the model's config, with the leading spacing diffusers' `invert` sets."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler.from_config(
        loaded.scheduler_config,
        algorithm_type="sde-dpmsolver++",
        solver_order=2,
        timestep_spacing="leading",
        # the plain schedule: LEDITS++ indexes its noise maps by the timesteps of set_timesteps
        use_karras_sigmas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
        use_lu_lambdas=False,
        use_flow_sigmas=False,
        final_sigmas_type="zero",
    )
    return cast("DPMSolverMultistepScheduler", scheduler)


def inversion_skip(scheduler, steps: int, t0: int) -> tuple[int, float, int]:
    """(num_inversion_steps, skip, first timestep) for diffusers' `invert`, so that the edit runs `steps` steps
    from the deepest timestep at or below t0.

    `invert` sets `int(steps * (1 + skip))` timesteps and keeps the last `steps`; the smallest such count whose
    kept steps start at or below t0 is found by trying (set_timesteps is cheap)."""
    train = int(scheduler.config["num_train_timesteps"])
    steps = max(1, min(steps, t0))
    start = max(steps, int(steps * train / (t0 + 1)) - 2)
    first = train
    for total in range(start, train + 1):
        scheduler.set_timesteps(total)
        first = int(scheduler.timesteps[-steps])
        if first <= t0:
            return steps, (total + 0.5) / steps - 1.0, first
    return steps, (train + 0.5) / steps - 1.0, first


# ----------------------------------------------------------------- the edit ---


def _concepts(request: EditRequest) -> tuple[tuple[EditConcept, ...], str | None]:
    """The concepts to run: the request's own. LEDITS++ has no target prompt, and the window says so; a target
    prompt left over from another method is not used (a notice says how to use it). Returns (concepts, notice)."""
    concepts = tuple(request.edit_concepts)
    prompt = request.prompt.strip()
    if prompt and prompt != request.source_prompt.strip() and all(c.prompt.strip() != prompt for c in concepts):
        note = (
            f"LEDITS++ edits by its concepts: the target prompt {prompt!r} is not used "
            f"(add it as a concept, '+ {prompt}', to use it)."
        )
        return concepts, note
    return concepts, None


def _multiple(value: int) -> int:
    return max(SIZE_MULTIPLE, int(round(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def _latent_mask(mask: Image.Image, size: tuple[int, int], factor: int, device, dtype) -> torch.Tensor:
    """(1, 1, h, w) soft mask at latent resolution (area average of the work-size mask)."""
    small = mask.convert("L").resize(size, Image.Resampling.BILINEAR)
    small = small.resize((size[0] // factor, size[1] // factor), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)[None, None].to(device, dtype)


def run_ledits(
    loaded: LoadedModel, request: EditRequest, seeds: list[int], emit: Emit, cancel
) -> tuple[list[Image.Image], Trajectory | None, dict]:
    """Invert request.image, then denoise it under the request's edit concepts (see the module's docstring).

    `request` is validated with its defaults filled (width/height the work size, image and mask at that size).
    Returns (images at the work size, the denoising trajectory, infotext fields), like `inversion.run_edit`."""
    check_ledits_model(loaded)
    assert request.steps is not None and request.width is not None and request.height is not None
    assert request.image is not None
    concepts, prompt_note = _concepts(request)
    if prompt_note:
        emit(Notice(prompt_note))
    if request.negative_prompt.strip():
        emit(Notice("LEDITS++ does not use the negative prompt: write what to take away as a '-' edit concept."))
    if len(seeds) > 1:
        emit(
            Notice(f"LEDITS++ edits the image once (seed {seeds[0]}): the {len(seeds)} images of the batch are copies.")
        )
    if cancel is not None and cancel.is_set():
        raise JobCancelled()

    source_image = request.image.convert("RGB")
    width, height = int(request.width), int(request.height)
    size = (_multiple(width), _multiple(height))
    if size != (width, height):
        emit(
            Notice(
                f"LEDITS++ works on sides that are multiples of {SIZE_MULTIPLE}: edited at {size[0]}x{size[1]} "
                f"and scaled back to {width}x{height}."
            )
        )
    work_image = source_image if source_image.size == size else source_image.resize(size, Image.Resampling.LANCZOS)
    factor = loaded.latent_factor
    masks = attention_masks_available(loaded.pipe.unet, (size[1] // factor, size[0] // factor))
    if not masks:
        emit(
            Notice(
                f"The UNet of {loaded.model_id} has no cross-attention layer at a quarter of the latent's size, where "
                "LEDITS++ reads its cross-attention masks: the edit ran without them (each concept still acts only "
                "where its noise guidance is strongest)."
            )
        )

    pipe = ledits_pipeline(loaded)
    scheduler = _scheduler(loaded)
    pipe.scheduler = scheduler
    t0 = resolve_t0(request, int(scheduler.config["num_train_timesteps"]), scheduler.alphas_cumprod)
    steps, skip, first = inversion_skip(scheduler, int(request.steps), t0)
    total = 2 * steps  # one count over both phases
    inverting = StepHooks(loaded, emit, cancel, total, request.replace(trajectory=False), phase="invert")

    def inverted(index: int) -> None:
        timesteps = pipe.inversion_steps
        inverting.on_step_end(pipe, index, int(timesteps[index]) if timesteps is not None else first, {})

    feathered = feather_mask(request.mask, request.mask_blur) if request.mask is not None else None
    user_mask = None
    if feathered is not None:
        user_mask = _latent_mask(feathered, size, factor, loaded.device, loaded.pipe.unet.dtype)  # (1, 1, h, w)
    unet = loaded.pipe.unet
    processors = dict(unet.attn_processors)  # LEDITS++ replaces the shared UNet's processors: put them back
    denoising = StepHooks(loaded, emit, cancel, total, request, phase="denoise")
    clip_skip = None
    if request.clip_skip and request.clip_skip > 1 and not loaded.is_xl and not loaded.family.startswith("sd2"):
        clip_skip = request.clip_skip - 1  # A1111's clip skip 2 is diffusers' 1
    extra: dict[str, Any] = {"clip_skip": clip_skip} if not loaded.is_xl else {}
    try:
        pipe.on_progress = inverted
        with torch.inference_mode():
            pipe.invert(
                image=work_image,
                source_prompt="",
                source_guidance_scale=SOURCE_GUIDANCE,
                num_inversion_steps=steps,
                skip=skip,
                generator=torch.Generator("cpu").manual_seed(int(seeds[0])),
                height=size[1],
                width=size[0],
                **extra,
            )
            pipe.on_progress = None
            denoising.step, denoising.started = inverting.step, inverting.started
            denoising.attach(scheduler)
            latents = pipe(
                editing_prompt=[c.prompt for c in concepts],
                edit_guidance_scale=[float(c.guidance) for c in concepts],
                reverse_editing_direction=[bool(c.remove) for c in concepts],
                edit_threshold=[float(c.threshold) for c in concepts],
                use_cross_attn_mask=masks,
                use_intersect_mask=masks,
                user_mask=user_mask,
                output_type="latent",
                callback_on_step_end=denoising.on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                **extra,
            ).images  # (1, C, h, w)
    finally:
        pipe.on_progress = None
        denoising.detach()
        unet.set_attn_processor(processors)
        for name in _RUN_STATE:  # this image's noise maps and masks: not kept, nor edited again by mistake
            setattr(pipe, name, None)
    image = decode_images(loaded, latents.float())[0]
    if image.size != source_image.size:
        image = image.resize(source_image.size, Image.Resampling.LANCZOS)
    if feathered is not None:
        image = paste_back(image, source_image, feathered)
    info: dict[str, Any] = {
        "Edit method": "ledits",
        "Edit concepts": format_edit_concepts(concepts).replace("\n", "; "),
        "t0": first,
        "Source prompt": request.source_prompt,
    }
    if feathered is not None:
        info["Mask blur"] = request.mask_blur
    return [image.copy() for _ in seeds], denoising.trajectory, info
