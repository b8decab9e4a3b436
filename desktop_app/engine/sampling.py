"""Generation, img2img and inpainting on diffusers pipelines, with cancel, per-step previews and trajectory capture.

The denoising loops are diffusers' own; we hook two places: `scheduler.step`
(to see x_t and the predicted clean latent x0_hat of every step) and
`callback_on_step_end` (progress, preview, cancel). Raising from the callback
stops the loop before the final decode, so a cancelled job decodes nothing.

The same hooks serve the flow models (SD 3.x, Flux; engine/flow_sampling.py): their FlowMatchEulerDiscreteScheduler
predicts a velocity v, so x0_hat = x_t - sigma v with the step's own sigma, x_t is kept as is (no input scaling),
the timesteps are the scheduler's sigma * 1000 and the trajectory's axis is "sigma". Flux packs its latents 2x2
into tokens; `StepHooks.unpack` gives them back as (B, 16, h, w) for the trajectory and the previews.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from desktop_app.core.errors import JobCancelled
from desktop_app.core.events import Preview, Progress
from desktop_app.core.latents import Trajectory
from desktop_app.core.requests import GenerateRequest, Img2ImgRequest, InpaintRequest
from desktop_app.engine.blending import SoftInpaint, pipeline_mask
from desktop_app.engine.encoding import PromptPlan, decode_images, plan_prompts
from desktop_app.engine.masked_content import latent_masked_content
from desktop_app.engine.models import LoadedModel
from desktop_app.engine.regions import regional_attention, regional_latents

Emit = Callable[[Any], None]


def make_scheduler(name: str | None, schedule: str | None, base_config):
    """A fresh scheduler of the chosen sampler and schedule type (core.samplers ids) from the model's own config
    (cheap, no disk). None for the sampler: the model's own scheduler class; None for the schedule: the config's.

    A1111's "DPM++ SDE" is k-diffusion's two-stage singlestep SDE solver. diffusers' DPMSolverSDEScheduler needs
    torchsde (not a dependency here); DPMSolverSinglestepScheduler with `algorithm_type="sde-dpmsolver++"` is the
    same second-order singlestep SDE DPM-Solver++ without it, so the result does not depend on what is installed."""
    import diffusers

    from desktop_app.core.errors import InvalidRequest
    from desktop_app.core.samplers import SCHEDULES, check_pair

    kinds: dict[str, tuple[str, dict[str, Any]]] = {
        "ddim": ("DDIMScheduler", {}),
        "euler": ("EulerDiscreteScheduler", {}),
        "euler_a": ("EulerAncestralDiscreteScheduler", {}),
        "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        "dpmpp_sde": ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        "unipc": ("UniPCMultistepScheduler", {}),
        "lcm": ("LCMScheduler", {}),
    }
    if name is None:
        class_name, extra = str(dict(base_config).get("_class_name") or "DDIMScheduler"), {}
    elif name in kinds:
        check_pair(name, schedule)  # InvalidRequest naming both, e.g. "Euler a has no Karras schedule"
        class_name, extra = kinds[name]
    else:
        raise InvalidRequest(f"Unknown sampler {name!r}.", "Choose one of: " + ", ".join(kinds))
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise InvalidRequest(f"The model's scheduler {class_name} is not in diffusers.", "Choose a sampler.")
    if schedule is not None:
        accepts = inspect.signature(cls.__init__).parameters
        flags = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas"}
        if schedule in flags and flags[schedule] not in accepts:
            raise InvalidRequest(
                f"The scheduler {class_name} has no {SCHEDULES.get(schedule, schedule)} schedule.",
                "Choose a sampler such as DPM++ 2M, Euler or UniPC for it, or the Normal schedule.",
            )
        for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if flag in accepts:
                extra[flag] = flag == flags.get(schedule)
    return cls.from_config(base_config, **extra)


class StepHooks:
    """Records each scheduler step and reports progress; one per run."""

    def __init__(
        self, loaded: LoadedModel, emit: Emit, cancel, total: int, request: GenerateRequest, phase: str = "denoise"
    ) -> None:
        self.loaded = loaded
        self.emit = emit
        self.cancel = cancel
        self.total = total
        self.request = request
        self.phase = phase
        self.flow = loaded.is_flow  # velocity prediction in sigma time
        self.trajectory = (
            Trajectory(previewer=loaded.previewer, model=request.model, axis="sigma" if self.flow else "t")
            if request.trajectory
            else None
        )
        # the scheduler's sample layout -> (B, C, h, w): Flux's packed tokens (B, h/2 * w/2, 4C) are unpacked
        self.unpack: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.step = 0
        self.started = time.perf_counter()
        self._original_step: Callable[..., Any] | None = None
        self._scheduler: Any = None
        self._last_x0: np.ndarray | None = None  # (B, C, h, w) float32
        self.prompts: PromptPlan | None = None  # prompt editing: the conditioning swapped in at its step
        self.soft: SoftInpaint | None = None  # soft masks: grey levels as per-pixel strength (differential diffusion)

    # -- scheduler.step wrapper: sees x_t, the model output and x0_hat ------------
    def attach(self, scheduler) -> None:
        self._scheduler = scheduler
        self._original_step = scheduler.step

        # wraps() keeps the signature visible: pipelines pass `generator`/`eta` only if step() declares them
        def step(*args, **kwargs):
            return self._scheduler_step(*args, **kwargs)

        step.__signature__ = inspect.signature(scheduler.step)  # type: ignore[attr-defined]
        scheduler.step = step

    def detach(self) -> None:
        if self._scheduler is not None and self._original_step is not None:
            del self._scheduler.step  # drop the instance attribute; the class method shows again

    def _scheduler_step(self, model_output, timestep, sample, *args, **kwargs):
        if self.flow:
            return self._flow_step(model_output, timestep, sample, *args, **kwargs)
        sched = self._scheduler
        sigma = None
        if getattr(sched, "init_noise_sigma", 1.0) != 1.0 and hasattr(sched, "sigmas"):
            index = sched.step_index if sched.step_index is not None else 0
            sigma = float(sched.sigmas[index])
        assert self._original_step is not None  # set by attach()
        if self.soft is not None and self.step == 0:
            self.soft.see_first_sample(sample)
        out = self._original_step(model_output, timestep, sample, *args, **kwargs)
        x0 = (
            getattr(out, "pred_original_sample", None)
            if not isinstance(out, tuple)
            else (out[1] if len(out) > 1 else None)
        )
        if x0 is None:
            x0 = self._x0_from_output(sched, model_output, timestep, sample)
        xt = sample / math.sqrt(sigma * sigma + 1.0) if sigma is not None else sample
        # one device -> CPU copy per step, shared by the trajectory and the preview (numpy: zero copy on the CPU)
        self._last_x0 = to_numpy(x0) if (self.trajectory is not None or self.request.previews) else None
        if self.trajectory is not None:
            self.trajectory.timesteps.append(int(timestep))
            self.trajectory.xt.append(to_numpy(xt))
            assert self._last_x0 is not None  # computed above when there is a trajectory
            self.trajectory.x0.append(self._last_x0)
        return out

    def _flow_step(self, model_output, timestep, sample, *args, **kwargs):
        """A flow-matching Euler step: x_t as is, x0_hat = x_t - sigma v (sigma the step's own, before the update)."""
        sched = self._scheduler
        assert self._original_step is not None  # set by attach()
        out = self._original_step(model_output, timestep, sample, *args, **kwargs)
        if self.trajectory is None and not self.request.previews:
            return out
        sigma = float(sched.sigmas[sched.step_index - 1])  # step() has moved the index past this step's sigma
        x0 = sample.float() - sigma * model_output.float()  # (B, C, h, w), or Flux's (B, L, 4C)
        xt = sample
        if self.unpack is not None:
            x0, xt = self.unpack(x0), self.unpack(xt)
        self._last_x0 = to_numpy(x0)
        if self.trajectory is not None:
            self.trajectory.timesteps.append(int(round(float(timestep))))  # sigma * 1000
            self.trajectory.xt.append(to_numpy(xt))
            self.trajectory.x0.append(self._last_x0)
        return out

    @staticmethod
    def _x0_from_output(sched, model_output, timestep, sample) -> torch.Tensor:
        if (
            hasattr(sched, "model_outputs")
            and getattr(sched.config, "algorithm_type", "").startswith("dpmsolver")
            and sched.model_outputs[-1] is not None
        ):
            return sched.model_outputs[-1]  # DPM-Solver++ keeps its x0 prediction here
        alpha = sched.alphas_cumprod[int(timestep)].to(sample.device, sample.dtype)
        if sched.config.prediction_type == "v_prediction":
            return alpha.sqrt() * sample - (1 - alpha).sqrt() * model_output
        return (sample - (1 - alpha).sqrt() * model_output) / alpha.sqrt()

    # -- callback_on_step_end: progress, preview, cancel --------------------------
    def on_step_end(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        self.step += 1
        self.report(int(t))
        if self.cancel is not None and self.cancel.is_set():
            raise JobCancelled()
        if self.prompts is not None:
            callback_kwargs = self.prompts.on_step(pipe, i + 1, callback_kwargs)
        if self.soft is not None:
            callback_kwargs = self.soft.on_step_end(pipe, i, callback_kwargs)
        return callback_kwargs

    def report(self, timestep: int) -> None:
        elapsed = time.perf_counter() - self.started
        rate = self.step / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.step) / rate if rate > 0 else 0.0
        self.emit(Progress(self.step, self.total, timestep, rate, eta, self.phase))
        if self.request.previews and self._last_x0 is not None:
            if self.loaded.decode_previews:  # a small VAE: the real decode, in the image's true colours
                image = decode_images(self.loaded, torch.from_numpy(self._last_x0[:1]))[0]
                if self.trajectory is not None and len(self.trajectory):  # the slider shows it too, at no cost
                    self.trajectory.frames[(len(self.trajectory) - 1, "x0", 0)] = np.asarray(image)
            else:
                image = Image.fromarray(self.loaded.previewer.project(self._last_x0[0]))
            self.emit(Preview(self.step, image))


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float32 CPU copy as numpy: plain data that can cross to the GUI thread."""
    return tensor.detach().float().cpu().numpy()


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: image i of a batch is reproducible alone from seed + i, on any device."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def denoising_steps(steps: int, strength: float) -> tuple[int, float]:
    """(num_inference_steps, strength) that run at least one step: diffusers runs int(steps * strength) steps and
    fails on none, so a small strength gets a finer schedule (ceil(1 / strength) steps, at most the model's 1000)."""
    if int(steps * strength) >= 1 or strength <= 0:
        return steps, strength
    fine = min(1000, math.ceil(1.0 / strength))
    while int(fine * strength) < 1 and fine < 1000:
        fine += 1
    return fine, max(strength, 1.0 / fine)


def run_pipeline(
    loaded: LoadedModel, request: GenerateRequest, seeds: list[int], emit: Emit, cancel
) -> tuple[list[Image.Image], Trajectory | None, dict]:
    """Run generate / img2img / inpaint for a validated request with its defaults filled in.

    The request's image (and mask: the region the model may repaint, 255 = repaint) are at the work size
    (request.width x request.height); the images come back at that size, unpasted: the engine maps them
    back to the source and pastes the source back outside the painted mask."""
    mode = request.kind
    pipe = loaded.pipeline(mode)
    scheduler = make_scheduler(request.scheduler, request.schedule, loaded.scheduler_config)
    pipe.scheduler = scheduler
    # A1111's prompt meaning (engine/encoding.py): embeddings for step 0, swapped by the step hook when edited
    prompts = plan_prompts(
        loaded,
        request.prompt,
        request.negative_prompt,
        int(request.steps or 1),
        clip_skip=request.clip_skip,
        batch=len(seeds),
    )
    kwargs: dict[str, Any] = dict(
        **prompts.kwargs(),
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        generator=generators(seeds),
        height=request.height,
        width=request.width,
    )
    info: dict[str, Any] = {}
    soft: SoftInpaint | None = None
    assert request.width and request.height and request.steps  # filled by the engine
    total = request.steps
    size = (request.width, request.height)
    if isinstance(request, (Img2ImgRequest, InpaintRequest)):
        assert request.image is not None
        steps, strength = denoising_steps(request.steps, request.strength)
        image = request.image if request.image.size == size else request.image.resize(size, Image.Resampling.LANCZOS)
        kwargs.update(image=image, strength=strength, num_inference_steps=steps)
        total = min(int(steps * strength), steps)
        info["Denoising strength"] = request.strength
        if isinstance(request, InpaintRequest):
            assert request.mask is not None
            mask = request.mask.convert("L")
            kwargs["mask_image"] = mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)
            if request.only_masked:
                kwargs["padding_mask_crop"] = request.only_masked_padding
                info["Inpaint area"] = "Only masked"
            info["Mask blur"] = request.mask_blur
            if request.mask_grow:
                info["Mask grow"] = request.mask_grow
            if request.soft_mask:  # the grey levels act in the step hook; the pipeline opens every grey pixel
                padding = request.only_masked_padding if request.only_masked else None
                soft = SoftInpaint(loaded, kwargs["mask_image"], image, padding)
                kwargs["mask_image"] = pipeline_mask(kwargs["mask_image"])
                info["Soft inpainting"] = True
            if request.blend_band:  # the engine's paste-back (engine/blending.py) blends over the band
                info["Blend band"] = request.blend_band
            if request.color_match:
                info["Colour match"] = True
        elif loaded.inpaint_unet:
            # a 9-channel UNet runs img2img as inpainting of the whole image (as AUTOMATIC1111 does)
            kwargs["mask_image"] = Image.new("L", size, 255)
        else:
            kwargs.pop("height")
            kwargs.pop("width")
    elif mode == "generate" and loaded.inpaint_unet:
        # text-to-image on an inpainting UNet: inpaint everything (full white mask) from pure noise
        kwargs.update(image=Image.new("RGB", size, (127, 127, 127)), mask_image=Image.new("L", size, 255), strength=1.0)
    hooks = StepHooks(loaded, emit, cancel, max(total, 1), request)
    hooks.prompts = prompts
    hooks.soft = soft
    kwargs["callback_on_step_end_tensor_inputs"] = ["latents", *prompts.callback_inputs()]
    hooks.attach(scheduler)
    if soft is not None:
        soft.attach(scheduler)
    try:
        regional = regional_latents if request.region_mode == "latent" else regional_attention
        with (
            torch.inference_mode(),
            regional(loaded, request, len(seeds), info),
            latent_masked_content(pipe, request, kwargs),  # "latent noise" / "latent nothing": the start latent
        ):
            images = pipe(callback_on_step_end=hooks.on_step_end, **kwargs).images
    finally:
        hooks.detach()
        if soft is not None:
            soft.detach()
    images = [im if im.size == size else im.resize(size, Image.Resampling.LANCZOS) for im in images]
    return images, hooks.trajectory, info
