"""Generation, img2img, inpainting and Kontext instruction edits on SD 3.x and FLUX.1, through diffusers' pipelines.

The same job shape as the SD path (engine/sampling.py): progress, previews, cancel and the trajectory come from
`StepHooks` on the pipeline's FlowMatchEulerDiscreteScheduler (x0 = x_t - sigma v, Flux's packed latents unpacked to
(B, 16, h, w)); images come back at the work size and the engine pastes the source back outside a mask.

What the guidance means differs by family:
- SD 3.x: classifier-free guidance, with the negative prompt.
- FLUX.1 dev / Fill / Kontext: the distilled guidance the transformer embeds (FluxPipeline's `guidance_scale`),
  one model call per step. The negative prompt is not used: true CFG (`true_cfg_scale`) would double every step's
  cost on a model trained without it, so a negative prompt only brings a notice.
- FLUX.1 schnell: timestep-distilled, no guidance at all; guidance > 0 is refused with a hint (the engine fills the
  model's default, 0, when the user gave none).
A1111 prompt syntax, clip skip, samplers, regional prompts, soft inpainting and latent masked content are Stable
Diffusion features: on these models they bring a notice (`flow_option_notices`), never a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from desktop_app.core.errors import InvalidRequest, ModelError
from desktop_app.core.imaging import feather_mask, paste_back
from desktop_app.core.latents import Trajectory
from desktop_app.core.requests import EditRequest, GenerateRequest, Img2ImgRequest, InpaintRequest
from desktop_app.engine.encoding import flow_prompt
from desktop_app.engine.models import LoadedModel
from desktop_app.engine.sampling import StepHooks, denoising_steps, generators

Emit = Callable[[Any], None]
FAMILY_NAMES = {
    "sd3": "SD 3.x",
    "flux-dev": "FLUX.1 dev",
    "flux-schnell": "FLUX.1 schnell",
    "flux-fill": "FLUX.1 Fill",
    "flux-kontext": "FLUX.1 Kontext",
}
SCHNELL_HINT = "FLUX.1 schnell is distilled: use guidance 0 (and 4 steps)"


def family_name(loaded: LoadedModel) -> str:
    return FAMILY_NAMES.get(loaded.family, loaded.family or "this flow model")


def check_guidance(loaded: LoadedModel, request: GenerateRequest) -> None:
    """schnell has no guidance input: a guidance above 0 is a mistake worth saying, not silently dropped."""
    if loaded.family == "flux-schnell" and (request.guidance or 0.0) > 0:
        raise InvalidRequest(f"Guidance {request.guidance:g} does nothing on FLUX.1 schnell.", SCHNELL_HINT + ".")


def flow_denoising_count(steps: int, strength: float) -> int:
    """How many steps a flow img2img / inpaint pipeline runs: diffusers' `get_timesteps` skips
    int(steps - steps * strength) of them (not steps - int(steps * strength): 17 of 28 at strength 0.6, not 16)."""
    return steps - int(max(steps - steps * strength, 0))


def flow_option_notices(loaded: LoadedModel, request: GenerateRequest) -> list[str]:
    """The request's Stable Diffusion-only options that this flow model does not apply."""
    name = family_name(loaded)
    notices: list[str] = []
    if request.clip_skip is not None and request.clip_skip > 1:
        notices.append(f"Clip skip {request.clip_skip} is not applied: {name} has no CLIP layer choice.")
    default_sampler = loaded.defaults.get("scheduler")
    if request.scheduler not in (None, "euler", default_sampler) or request.schedule not in (None, "normal"):
        notices.append(f"Samplers and schedule types are Stable Diffusion's: {name} runs its flow-matching Euler.")
    if request.regions:
        notices.append(f"Regional prompts are not applied on {name}: the base prompt is used for the whole image.")
    if loaded.family.startswith("flux") and (request.negative_prompt or "").strip():
        notices.append(
            f"The negative prompt is not used: {name} is guidance-distilled (its guidance is not CFG). "
            "Describe what you want instead."
        )
    if isinstance(request, InpaintRequest):
        if request.soft_mask:
            notices.append(f"Soft inpainting is not applied on {name}: the mask is used as painted (hard).")
        if request.masked_content in ("latent_noise", "latent_nothing"):
            notices.append(
                f"Masked content {request.masked_content.replace('_', ' ')} is not applied on {name}: the masked "
                "area starts from the original (use fill for a different start)."
            )
    if isinstance(request, Img2ImgRequest) and loaded.family == "flux-fill":
        notices.append("FLUX.1 Fill runs image to image as an inpaint of the whole image.")
    if request.width and request.height:
        run = _run_size(loaded, int(request.width), int(request.height))
        if run != (request.width, request.height):
            notices.append(
                f"{name} works in multiples of {2 * loaded.latent_factor} pixels: ran at {run[0]}x{run[1]} and "
                f"scaled to {request.width}x{request.height}."
            )
    return notices


def _run_size(loaded: LoadedModel, width: int, height: int) -> tuple[int, int]:
    """The size the pipeline runs at: a multiple of 16 (the VAE's 8 x Flux's 2x2 packing or SD 3's patch 2)."""
    step = 2 * loaded.latent_factor
    return max(step, width - width % step), max(step, height - height % step)


def _hard(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The mask at the run size, every painted pixel repainted (the pipelines binarise at 0.5 otherwise)."""
    mask = mask.convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    return mask.point(lambda v: 255 if v else 0)


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def _scheduler(loaded: LoadedModel):
    """A fresh copy of the model's flow scheduler: the hooks wrap its step, set_timesteps changes its state."""
    return type(loaded.pipe.scheduler).from_config(loaded.scheduler_config)


def _text_kwargs(loaded: LoadedModel, request: GenerateRequest) -> dict[str, Any]:
    """The prompt as plain text; SD 3's negative prompt too (its guidance is CFG)."""
    steps = int(request.steps or 1)
    kwargs: dict[str, Any] = {"prompt": flow_prompt(request.prompt, steps)[0]}
    if loaded.family.startswith("sd3"):
        kwargs["negative_prompt"] = flow_prompt(request.negative_prompt, steps, "Negative prompt")[0]
    return kwargs


def _call(
    loaded: LoadedModel,
    pipe,
    request: GenerateRequest,
    kwargs: dict[str, Any],
    emit: Emit,
    cancel,
    total: int,
    size: tuple[int, int],
) -> tuple[list[Image.Image], Trajectory | None]:
    """One pipeline call with the step hooks on a fresh scheduler; images resized to `size` (the work size)."""
    scheduler = _scheduler(loaded)
    pipe.scheduler = scheduler
    hooks = StepHooks(loaded, emit, cancel, max(total, 1), request)
    if hasattr(pipe, "_unpack_latents"):  # Flux: (B, h/2 * w/2, 64) tokens -> (B, 16, h, w)
        height, width = int(kwargs["height"]), int(kwargs["width"])
        hooks.unpack = lambda x: pipe._unpack_latents(x, height, width, pipe.vae_scale_factor)
    hooks.attach(scheduler)
    try:
        with torch.inference_mode():
            images = pipe(
                callback_on_step_end=hooks.on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                output_type="pil",
                **kwargs,
            ).images
    finally:
        hooks.detach()
    images = [im if im.size == size else im.resize(size, Image.Resampling.LANCZOS) for im in images]
    return images, hooks.trajectory


def run_flow_pipeline(
    loaded: LoadedModel, request: GenerateRequest, seeds: list[int], emit: Emit, cancel
) -> tuple[list[Image.Image], Trajectory | None, dict]:
    """Generate / img2img / inpaint (an outpaint arrives as the inpaint of its extended canvas) on SD 3.x or Flux.

    `request` is validated with its defaults filled; its image and mask are at the work size (request.width x
    request.height). Returns (images at the work size, the trajectory or None, infotext fields)."""
    check_guidance(loaded, request)
    assert request.width and request.height and request.steps and request.guidance is not None  # engine-filled
    size = (int(request.width), int(request.height))
    run = _run_size(loaded, *size)
    mode = request.kind
    pipe = loaded.pipeline(mode)
    kwargs: dict[str, Any] = dict(
        **_text_kwargs(loaded, request),
        num_inference_steps=int(request.steps),
        guidance_scale=float(request.guidance),
        generator=generators(seeds),
        num_images_per_prompt=len(seeds),
        width=run[0],
        height=run[1],
    )
    info: dict[str, Any] = {}
    total = int(request.steps)
    fill = loaded.family == "flux-fill"
    if isinstance(request, (Img2ImgRequest, InpaintRequest)):
        assert request.image is not None
        steps, strength = denoising_steps(int(request.steps), float(request.strength))
        kwargs.update(image=_fit(request.image, run), strength=strength, num_inference_steps=steps)
        total = flow_denoising_count(steps, strength)
        info["Denoising strength"] = request.strength
        if isinstance(request, InpaintRequest):
            assert request.mask is not None
            kwargs["mask_image"] = _hard(request.mask, run)
            if request.only_masked:
                kwargs["padding_mask_crop"] = request.only_masked_padding
                info["Inpaint area"] = "Only masked"
            info["Mask blur"] = request.mask_blur
            if request.mask_grow:
                info["Mask grow"] = request.mask_grow
            if request.blend_band:  # the engine's paste-back (engine/blending.py) blends over the band
                info["Blend band"] = request.blend_band
            if request.color_match:
                info["Colour match"] = True
        elif fill:  # Fill's one pipeline: image to image is the inpaint of everything, from the noised source
            kwargs["mask_image"] = Image.new("L", run, 255)
    elif fill:  # text to image on Fill: inpaint everything from pure noise
        kwargs.update(image=Image.new("RGB", run, (127, 127, 127)), mask_image=Image.new("L", run, 255), strength=1.0)
    images, trajectory = _call(loaded, pipe, request, kwargs, emit, cancel, total, size)
    return images, trajectory, info


def run_kontext(
    loaded: LoadedModel, request: EditRequest, seeds: list[int], emit: Emit, cancel
) -> tuple[list[Image.Image], Trajectory | None, dict]:
    """A FLUX.1 Kontext instruction edit: the prompt is the instruction ("make the circle blue"), the source image
    the reference. With a mask, FluxKontextInpaintPipeline repaints only the masked area and the source is pasted
    back through the feathered mask, so every pixel outside it is the source's.

    `request.strength` (default 1) is how far the masked area is re-noised; without a mask the whole image is
    generated anew from noise beside the reference, as Kontext is trained. Images at the work size."""
    if "kontext" not in loaded.family:
        raise ModelError(
            f"A Kontext edit needs a FLUX.1 Kontext model; {loaded.model_id} is not one.",
            "Load FLUX.1 Kontext (black-forest-labs/FLUX.1-Kontext-dev).",
        )
    if not (request.prompt or "").strip():
        raise InvalidRequest(
            "A Kontext edit needs an instruction in the prompt.", "Say what to change, e.g. 'make the circle blue'."
        )
    assert request.width and request.height and request.steps and request.guidance is not None  # engine-filled
    assert request.image is not None
    size = (int(request.width), int(request.height))
    run = _run_size(loaded, *size)
    source = _fit(request.image, size)
    kwargs: dict[str, Any] = dict(
        **_text_kwargs(loaded, request),
        image=_fit(request.image, run),
        num_inference_steps=int(request.steps),
        guidance_scale=float(request.guidance),
        generator=generators(seeds),
        num_images_per_prompt=len(seeds),
        width=run[0],
        height=run[1],
        max_area=run[0] * run[1],  # with _auto_resize off: exactly the run size, not Kontext's preferred ones
        _auto_resize=False,
    )
    info: dict[str, Any] = {"Edit method": "kontext"}
    total = int(request.steps)
    if request.mask is not None:
        pipe = loaded.pipeline("kontext_inpaint")
        strength = 1.0 if request.strength is None else float(request.strength)
        steps, strength = denoising_steps(int(request.steps), strength)
        kwargs.update(mask_image=_hard(request.mask, run), strength=strength, num_inference_steps=steps)
        total = flow_denoising_count(steps, strength)
        info.update({"Denoising strength": strength, "Mask blur": request.mask_blur})
    else:
        pipe = loaded.pipeline("kontext")
    images, trajectory = _call(loaded, pipe, request, kwargs, emit, cancel, total, size)
    if request.mask is not None:
        feathered = feather_mask(request.mask.convert("L"), int(request.mask_blur or 0))
        if feathered.size != size:
            feathered = feathered.resize(size, Image.Resampling.BILINEAR)
        images = [paste_back(im, source, feathered) for im in images]
    return images, trajectory, info
