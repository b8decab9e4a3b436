"""Inversion editing on flow-matching models (SD 3.x, Flux): RF-Solver, FireFlow and RF-Inversion.

A flow model predicts the velocity v = dx/dsigma of x_sigma = (1 - sigma) x0 + sigma noise; an edit walks that
ODE twice on the loaded model's own components, with the latents kept in the unpacked (B, C, h, w) layout (Flux
packs them into 2x2 tokens only for the transformer call):

1. **Invert** (phase "invert"): the source's latent (VAE posterior mean, `shift_factor` / `scaling_factor`) is
   carried from sigma 0 up to sigma_0 (the depth) under the source prompt, without guidance (Flux: distilled
   guidance 1, as RF-Solver and FireFlow invert; SD 3.x: the conditional velocity alone). Every level is kept.
2. **Denoise** (phase "denoise"): from the top level back to sigma 0 under the target prompt, at the request's
   guidance (Flux: the distilled guidance embedding; SD 3.x: classifier-free guidance with the negative prompt).

Solvers (the edit method), both directions:

- ``rf-solver`` (Wang et al. 2024, "Taming Rectified Flow for Inversion and Editing"): the second-order Taylor
  step x + h v + h^2/2 v', v' estimated from the velocity at the half step: two transformer calls per step.
- ``fireflow`` (Deng et al. 2024): the same midpoint step, but the velocity at the start of a step is the
  previous step's midpoint velocity, reused: one call per step (plus one to start each direction).
- ``rf-inversion`` (Rout et al. 2024, as diffusers' community `pipeline_flux_rf_inversion.py`): first-order
  steps of a controlled ODE: forward towards a fixed noise draw (gamma), reverse towards the source latent (eta,
  over the first share of the steps).

Structure of the source in the edit (the flow analogue of the SD edits' direct inversion):

- After an inversion (rf-solver, fireflow), as both papers do: the self-attention *values* of the source,
  recorded while inverting the first denoising steps' intervals, replace the target's in those steps (Flux: the
  second half of the single-stream blocks, RF-Solver-Edit's `id > 19`; SD 3.x: the second half of the joint
  blocks' image-token values). Reconstruction (target == source) is then as exact as the solver is.
- On exact replay (the source is this app's own flow result): its stored trajectory *is* the model's ODE under
  its prompt, so a source branch runs beside the target one (one batched call), corrected after every step onto
  the stored levels, the correction added to the target too (as `inversion.denoise`'s "direct"); its values are
  shared with the target in the first steps. Target == source then lands exactly on the stored final latent.
- rf-inversion's own controller (eta towards the source latent) is its structure term; on replay it runs with
  the source branch too.

Optional mask (255 = may change): after every step the target latent outside the feathered mask is replaced by
the level the step lands on, and the final image gets the source pixels pasted back outside the mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from PIL import Image

from desktop_app.core.errors import InvalidRequest, JobCancelled
from desktop_app.core.events import Notice
from desktop_app.core.imaging import feather_mask, paste_back
from desktop_app.core.latents import Trajectory
from desktop_app.core.requests import EDIT_METHOD_NAMES, EditRequest, GenerateRequest
from desktop_app.engine.encoding import decode_images, encode_image, flow_prompt
from desktop_app.engine.inversion import _latent_mask, _psnr
from desktop_app.engine.models import LoadedModel
from desktop_app.engine.sampling import StepHooks, to_numpy

if TYPE_CHECKING:
    from diffusers import FlowMatchEulerDiscreteScheduler

Emit = Callable[[Any], None]

FLOW_METHODS = ("rf-solver", "fireflow", "rf-inversion")
DEFAULT_SIGMA = 1.0  # depth of an edit that names none: the papers invert to pure noise
INJECT_SHARE = 0.1  # share of the denoising steps (at least one) that take the source's attention values
RF_GAMMA = 0.5  # RF-Inversion's forward controller (community pipeline default)
RF_ETA = 0.9  # RF-Inversion's reverse controller (community example)
RF_STOP = 0.38  # share of the denoising steps the reverse controller acts in (community example stop_timestep)
RF_SOURCE_GUIDANCE = 0.0  # Flux distilled guidance while RF-Inversion inverts (community pipeline default)
SHORTCUT_MIN_PSNR = 35.0  # a stored trajectory must decode to the given source image at least this well

__all__ = ["FLOW_METHODS", "FlowModel", "flow_sigmas", "resolve_sigma", "run_flow_edit"]


# ------------------------------------------------------------------ the model ---


@dataclass
class FlowText:
    """Prompts as the transformer takes them: embeds (B, L, D), pooled (B, P); Flux's text ids (L, 3)."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor | None = None

    def rows(self, index: list[int]) -> FlowText:
        return FlowText(self.embeds[index], self.pooled[index], self.text_ids)


class FlowModel:
    """v(x, sigma) of a Flux or SD 3.x transformer on unpacked latents (B, C, h, w), float32 out.

    Checks `cancel` before every transformer call, so a job stops within a step."""

    def __init__(self, loaded: LoadedModel, width: int, height: int, cancel=None) -> None:
        self.loaded = loaded
        self.pipe = pipe = loaded.pipe
        self.transformer = pipe.transformer
        self.is_flux = type(self.transformer).__name__.startswith("Flux")
        self.width, self.height = width, height  # pixels, multiples of 16
        self.factor = int(getattr(pipe, "vae_scale_factor", 8))
        self.shape = (int(pipe.vae.config.latent_channels), height // self.factor, width // self.factor)  # (C, h, w)
        self.device = pipe._execution_device
        self.cancel = cancel
        self.img_ids = None
        if self.is_flux:  # (h/2 * w/2, 3) token positions of the packed latent
            _, h, w = self.shape
            self.img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.transformer.dtype)

    @property
    def guidance_embeds(self) -> bool:
        return self.is_flux and bool(getattr(self.transformer.config, "guidance_embeds", False))

    @property
    def uses_cfg(self) -> bool:
        """SD 3.x guides with classifier-free guidance; Flux's guidance is an input of the transformer."""
        return not self.is_flux

    def encode(self, texts: list[str]) -> FlowText:
        """One row per text, through the pipeline's own encode_prompt (CLIP pooled + T5 sequence)."""
        pipe = self.pipe
        with torch.inference_mode():
            if self.is_flux:
                embeds, pooled, text_ids = pipe.encode_prompt(prompt=texts, prompt_2=None, device=self.device)
                return FlowText(embeds, pooled, text_ids)
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=texts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=False
            )
            return FlowText(embeds, pooled)

    def velocity(
        self, x: torch.Tensor, sigma: float, text: FlowText, guidance: float, uncond: FlowText | None = None
    ) -> torch.Tensor:
        """Velocity (B, C, h, w) at noise level sigma for x (B, C, h, w); text has B rows (uncond too, SD 3.x)."""
        if self.cancel is not None and self.cancel.is_set():
            raise JobCancelled()
        transformer, dtype = self.transformer, self.transformer.dtype
        batch = x.shape[0]
        if self.is_flux:
            C, h, w = self.shape
            packed = self.pipe._pack_latents(x.to(dtype), batch, C, h, w)  # (B, h/2 * w/2, 4C)
            flux_guidance = None
            if self.guidance_embeds:
                flux_guidance = torch.full((batch,), float(guidance), device=self.device, dtype=torch.float32)
            out = transformer(
                hidden_states=packed,
                timestep=torch.full((batch,), sigma * 1000.0, device=self.device).to(dtype) / 1000,  # as FluxPipeline
                guidance=flux_guidance,
                pooled_projections=text.pooled.to(dtype),
                encoder_hidden_states=text.embeds.to(dtype),
                txt_ids=text.text_ids,
                img_ids=self.img_ids,
                return_dict=False,
            )[0]
            return self.pipe._unpack_latents(out, self.height, self.width, self.factor).float()  # (B, C, h, w)
        cfg = uncond is not None and guidance != 1.0
        latents = torch.cat([x, x]) if cfg else x  # (2B or B, C, h, w): unconditional rows first
        embeds = torch.cat([uncond.embeds, text.embeds]) if cfg and uncond is not None else text.embeds
        pooled = torch.cat([uncond.pooled, text.pooled]) if cfg and uncond is not None else text.pooled
        out = transformer(
            hidden_states=latents.to(dtype),
            timestep=torch.full((latents.shape[0],), sigma * 1000.0, device=self.device),  # float32, as SD 3 passes it
            encoder_hidden_states=embeds.to(dtype),
            pooled_projections=pooled.to(dtype),
            return_dict=False,
        )[0].float()
        if not cfg:
            return out
        v_uncond, v_cond = out[:batch], out[batch:]
        return v_uncond + guidance * (v_cond - v_uncond)


# --------------------------------------------------------------- the schedule ---


def flow_sigmas(loaded: LoadedModel, steps: int, width: int, height: int) -> np.ndarray:
    """The descending sigmas (steps + 1, ending at 0) the model's own pipeline would sample with at this size."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipe = loaded.pipe
    scheduler = cast(
        "FlowMatchEulerDiscreteScheduler", FlowMatchEulerDiscreteScheduler.from_config(loaded.scheduler_config)
    )
    config = scheduler.config
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    tokens = (height // factor // 2) * (width // factor // 2)  # Flux's packed tokens = SD 3's 2x2 patches
    kwargs: dict[str, Any] = {}
    if config.get("use_dynamic_shifting", False):
        flux = type(pipe.transformer).__name__.startswith("Flux")
        kwargs["mu"] = calculate_shift(
            tokens,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15 if flux else 1.16),
        )
    if type(pipe.transformer).__name__.startswith("Flux") and not config.get("use_flow_sigmas", False):
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)  # as FluxPipeline passes them
        scheduler.set_timesteps(device="cpu", **kwargs)
    else:
        scheduler.set_timesteps(steps, device="cpu", **kwargs)
    return torch.as_tensor(scheduler.sigmas).double().cpu().numpy()


def resolve_sigma(request: EditRequest) -> float:
    """The depth sigma_0 of the edit: t0 / 1000, else the strength (0, 1], else DEFAULT_SIGMA (as inversion's
    resolve_t0 reads them on SD)."""
    if request.t0 is not None:
        sigma = int(request.t0) / 1000.0
    elif request.strength is not None:
        sigma = float(request.strength)
    else:
        sigma = DEFAULT_SIGMA
    if not 0.0 < sigma <= 1.0:
        raise InvalidRequest(
            f"Strength {request.strength} asks for no inversion at all.",
            "Use a strength between 0.1 (keeps most of the image) and 1 (inverts to noise).",
        )
    return sigma


def edit_sigmas(all_sigmas: np.ndarray, sigma0: float) -> np.ndarray:
    """The schedule's suffix that starts at or below sigma_0: (n + 1,) descending, ending at 0."""
    start = int(np.searchsorted(-all_sigmas[:-1], -sigma0 - 1e-6))  # first sigma <= sigma_0
    if start >= len(all_sigmas) - 1:
        first = float(all_sigmas[-2])
        raise InvalidRequest(
            f"The edit's depth (sigma {sigma0:.3f}) is below the first step of the schedule (sigma {first:.3f} "
            f"with {len(all_sigmas) - 1} steps).",
            f"Use a strength of at least {first:.2f} (t0 {_timestep(first)}), or more steps.",
        )
    return all_sigmas[start:]


def _timestep(sigma: float) -> int:
    """A sigma as the scheduler's timestep (sigma * 1000, float32), rounded as the step hooks record it."""
    return int(round(float(np.float32(sigma) * np.float32(1000.0))))


# ------------------------------------------------------------ value injection ---


class ValueInjection:
    """The papers' feature sharing: self-attention values of the source replace the target's in the first steps.

    Forward hooks on `attn.to_v` of the later blocks: "record" keeps each output under the current key (step,
    substep) on the CPU; "inject" returns the recorded one instead (broadcast over a guidance batch); "share"
    copies each even row (a source branch) onto the odd row after it (its target branch). `key = None`: off."""

    def __init__(self, model: FlowModel) -> None:
        transformer = model.transformer
        if model.is_flux:
            blocks = list(transformer.single_transformer_blocks)
        else:
            blocks = list(transformer.transformer_blocks)
        self.mode = "record"
        self.key: tuple[int, int] | None = None
        self.store: dict[tuple[int, int, int], torch.Tensor] = {}
        self._handles = [
            block.attn.to_v.register_forward_hook(self._hook(index))
            for index, block in enumerate(blocks[len(blocks) // 2 :])
        ]

    def _hook(self, index: int):
        def hook(module, args, output):
            if self.key is None:
                return None
            key = (*self.key, index)
            if self.mode == "record":
                self.store[key] = output.detach().to("cpu", copy=True)  # (1, L, D)
                return None
            if self.mode == "inject":
                stored = self.store.get(key)
                return None if stored is None else stored.to(output).expand_as(output).contiguous()
            shared = output.clone()  # "share": (2k, L, D) rows [source, target, source, target ...]
            shared[1::2] = output[0::2]
            return shared

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.store.clear()


# ------------------------------------------------------------------- solvers ---


Velocity = Callable[[torch.Tensor, float, int], torch.Tensor]  # (x, sigma, substep) -> v


def solver_step(
    method: str, velocity: Velocity, x: torch.Tensor, s_from: float, s_to: float, carry: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One step of the method's solver from s_from to s_to (either direction).

    Returns (x at s_to, the velocity at x for x0 = x - sigma v, FireFlow's reusable velocity)."""
    h = s_to - s_from
    if method == "rf-solver":
        v = velocity(x, s_from, 0)
        v_mid = velocity(x + 0.5 * h * v, s_from + 0.5 * h, 1)
        dv = (v_mid - v) / (0.5 * h)  # dv/dsigma from the half step
        return x + h * v + 0.5 * h * h * dv, v, None
    if method == "fireflow":
        v = carry if carry is not None else velocity(x, s_from, 0)
        v_mid = velocity(x + 0.5 * h * v, s_from + 0.5 * h, 1)
        return x + h * v_mid, v, v_mid
    raise ValueError(f"unknown flow solver {method!r}")


# ------------------------------------------------------------------ the edit ---


@dataclass
class _Phase:
    """Progress, previews and the trajectory of one phase (StepHooks without a scheduler to wrap)."""

    hooks: StepHooks
    pipe: Any

    def step_end(self, i: int, sigma: float, xt: torch.Tensor | None, x0: torch.Tensor) -> None:
        hooks = self.hooks
        if hooks.trajectory is not None or hooks.request.previews:
            hooks._last_x0 = to_numpy(x0)  # the preview (and the slider's x0) of this step
        if hooks.trajectory is not None and xt is not None:
            hooks.trajectory.timesteps.append(_timestep(sigma))
            hooks.trajectory.xt.append(to_numpy(xt))
            assert hooks._last_x0 is not None
            hooks.trajectory.x0.append(hooks._last_x0)
        hooks.on_step_end(self.pipe, i, _timestep(sigma), {})


def invert(
    model: FlowModel,
    method: str,
    z0: torch.Tensor,
    sigmas: np.ndarray,
    text: FlowText,
    guidance: float,
    *,
    values: ValueInjection | None = None,
    inject_steps: int = 0,
    noise: torch.Tensor | None = None,
    phase: _Phase | None = None,
) -> list[torch.Tensor]:
    """Carry z0 (1, C, h, w) from sigma 0 up the edit's sigmas (n + 1, descending) with the method's solver.

    Returns the levels: levels[0] = z0, levels[k] = x at sigmas[n - k], so levels[-1] is x at sigma_0 and
    denoising step i (sigmas[i] -> sigmas[i + 1]) should land on levels[n - 1 - i]. rf-inversion steers towards
    `noise` (1, C, h, w) with gamma. With `values`, the first `inject_steps` intervals' values are recorded."""
    n = len(sigmas) - 1
    levels = [z0.float()]
    x, carry = levels[0], None
    for j in range(n):
        i = n - 1 - j  # the denoising interval this step inverts
        s_from, s_to = float(sigmas[i + 1]), float(sigmas[i])

        def velocity(x_in: torch.Tensor, sigma: float, substep: int, i: int = i) -> torch.Tensor:
            if values is not None:
                values.key = (i, substep) if i < inject_steps else None
            return model.velocity(x_in, sigma, text, guidance)

        if method == "rf-inversion":
            assert noise is not None  # drawn by the caller from the seed
            v = velocity(x, s_from, 0)
            u = v + RF_GAMMA * ((noise - x) / (1.0 - s_from) - v)  # Eq. 8: towards the noise draw
            x_next = x + (s_to - s_from) * u
        else:
            x_next, v, carry = solver_step(method, velocity, x, s_from, s_to, carry)
        if phase is not None:
            phase.step_end(j, s_to, None, x - s_from * v)
        x = x_next
        levels.append(x)
    if values is not None:
        values.key = None
    return levels


def denoise(
    model: FlowModel,
    method: str,
    levels: list[torch.Tensor],
    sigmas: np.ndarray,
    text_tgt: FlowText,
    guidance: float,
    *,
    uncond: FlowText | None = None,
    text_src: FlowText | None = None,
    values: ValueInjection | None = None,
    inject_steps: int = 0,
    latent_mask: torch.Tensor | None = None,
    phase: _Phase | None = None,
) -> torch.Tensor:
    """From levels[-1] (x at sigma_0) down to sigma 0 under the target prompt; returns the latent (1, C, h, w).

    `text_src` given: a source branch beside the target, corrected onto the levels after every step (replay);
    its values shared with the target in the first `inject_steps`. Else `values` injects the recorded ones.
    latent_mask: (1, 1, h, w), 1 where the latent may change. rf-inversion steers towards levels[0] (eta)."""
    n = len(sigmas) - 1
    branch = text_src is not None
    if branch:
        assert text_src is not None
        text = FlowText(torch.cat([text_src.embeds, text_tgt.embeds]), torch.cat([text_src.pooled, text_tgt.pooled]))
        text.text_ids = text_tgt.text_ids
        unconds = None if uncond is None else FlowText(torch.cat([uncond.embeds] * 2), torch.cat([uncond.pooled] * 2))
        if values is not None:
            values.mode = "share"
    else:
        text, unconds = text_tgt, uncond
        if values is not None:
            values.mode = "inject"
    y0 = levels[0]
    x = levels[-1].clone()  # (1, C, h, w) target branch at sigma_0
    carry = None
    stop = int(RF_STOP * n)
    for i in range(n):
        s_from, s_to = float(sigmas[i]), float(sigmas[i + 1])
        level_from, level_to = levels[n - i], levels[n - 1 - i]
        state = torch.cat([level_from, x]) if branch else x  # (2 or 1, C, h, w)

        def velocity(x_in: torch.Tensor, sigma: float, substep: int, i: int = i) -> torch.Tensor:
            if values is not None:
                values.key = (i, substep) if i < inject_steps else None
            return model.velocity(x_in, sigma, text, guidance, unconds)

        if method == "rf-inversion":
            v = velocity(state, s_from, 0)
            v_hat = -v
            if i < stop:  # Algorithm 2: the controlled reverse field towards the source latent
                v_hat = v_hat + RF_ETA * ((y0 - state) / s_from - v_hat)
            state_next = state + (s_from - s_to) * v_hat
        else:
            state_next, v, carry = solver_step(method, velocity, state, s_from, s_to, carry)
        x_entering, v_tgt = state[-1:], v[-1:]
        if branch:  # direct inversion: the source branch lands on the stored level, the target gets the same nudge
            x = state_next[1:] + (level_to - state_next[:1])
        else:
            x = state_next
        if latent_mask is not None:
            x = latent_mask * x + (1.0 - latent_mask) * level_to
        if phase is not None:
            phase.step_end(i, s_from, x_entering, x_entering - s_from * v_tgt)
    if values is not None:
        values.key = None
    return x


def _stored_levels(
    model: FlowModel,
    request: EditRequest,
    source,
    sigmas: np.ndarray,
    work_image: Image.Image,
    emit: Emit,
) -> list[torch.Tensor] | None:
    """The levels from a flow Result's own trajectory (exact replay), or None (with a notice why) to invert."""
    src_request = getattr(source, "request", None)
    trajectory: Trajectory | None = getattr(source, "trajectory", None)
    if not isinstance(src_request, GenerateRequest) or src_request.kind != "generate":
        return None
    reason = None
    if src_request.model != request.model:
        reason = "it was made with another model"
    elif src_request.steps != request.steps:
        reason = f"it was made with {src_request.steps} steps and this edit uses {request.steps}"
    elif (src_request.width, src_request.height) != (request.width, request.height):
        reason = "its size differs"
    elif src_request.seed is None:
        reason = "its seed is unknown"
    elif trajectory is None or len(trajectory) != src_request.steps or not trajectory.xt:
        reason = "it kept no trajectory"
    if reason is not None:
        emit(Notice(f"The source is a past result but {reason}: inverted it instead of replaying its trajectory."))
        return None
    assert trajectory is not None
    n = len(sigmas) - 1
    wanted = [_timestep(float(s)) for s in sigmas[:-1]]  # descending: the edit's steps, a suffix of the source's
    stored = list(trajectory.timesteps[-n:])
    if len(stored) != n or any(abs(int(a) - b) > 1 for a, b in zip(stored, wanted)):
        emit(Notice("The source's schedule differs from this edit's: inverted it instead of replaying it."))
        return None

    def latent(array: np.ndarray, row: int) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array[row : row + 1])).to(model.device).float()
        if tensor.ndim == 3:  # packed Flux tokens (1, L, 4C)
            tensor = model.pipe._unpack_latents(tensor, model.height, model.width, model.factor)
        return tensor  # (1, C, h, w)

    # the last step lands on sigma 0, so its x0 = x - sigma v is the final latent; the row is the batch image the
    # source is (the one that decodes to it)
    for row in range(int(trajectory.x0[-1].shape[0])):
        final = latent(trajectory.x0[-1], row)
        if tuple(final.shape[1:]) != model.shape:
            emit(Notice("The source's latents have another shape: inverted it instead of replaying its trajectory."))
            return None
        if _psnr(decode_images(model.loaded, final)[0], work_image) >= SHORTCUT_MIN_PSNR:
            first = len(trajectory) - n  # denoising step i of the edit is step first + i of the source
            return [final] + [latent(trajectory.xt[first + i], row) for i in reversed(range(n))]
    emit(Notice("The source image does not match its stored result (edited since?): inverted it instead."))
    return None


def _phase(loaded: LoadedModel, emit: Emit, cancel, total: int, request: EditRequest, name: str, before=None):
    hooks = StepHooks(loaded, emit, cancel, total, request, phase=name)
    if before is not None:  # one progress count over both phases
        hooks.step, hooks.started = before.hooks.step, before.hooks.started
    return _Phase(hooks, loaded.pipe)


def run_flow_edit(
    loaded: LoadedModel,
    request: EditRequest,
    seeds: list[int],
    emit: Emit,
    cancel,
    *,
    source=None,
) -> tuple[list[Image.Image], Trajectory | None, dict]:
    """Invert request.image to sigma_0 under the source prompt with the method's solver, then denoise under the
    target prompt (engine.run_any_edit calls this for "fireflow", "rf-solver" and "rf-inversion").

    `request` is validated with its defaults filled (width / height the work size); `source`: optionally the
    engine Result the image came from: a flow result with its trajectory is replayed instead of inverted.
    Returns (images at the work size, the denoising trajectory, infotext fields); a batch gets copies."""
    method = request.method or "fireflow"
    if method not in FLOW_METHODS:
        raise InvalidRequest(f"{method} is not a flow inversion method.", "Choose FireFlow, RF-Solver or RF-Inversion.")
    assert request.steps is not None and request.guidance is not None  # filled by the engine
    assert request.width is not None and request.height is not None and request.image is not None
    steps, guidance = int(request.steps), float(request.guidance)
    width, height = int(request.width), int(request.height)
    source_image = request.image.convert("RGB")
    # Flux packs 2x2 latents and SD 3 patches them 2x2: the model works at a multiple of 16 pixels
    flow_w, flow_h = max(16, width - width % 16), max(16, height - height % 16)
    work_image = (
        source_image
        if source_image.size == (flow_w, flow_h)
        else source_image.resize((flow_w, flow_h), Image.Resampling.LANCZOS)
    )
    model = FlowModel(loaded, flow_w, flow_h, cancel)
    sigmas = edit_sigmas(flow_sigmas(loaded, steps, flow_w, flow_h), resolve_sigma(request))  # (n + 1,)
    n = len(sigmas) - 1
    inject_steps = 0 if method == "rf-inversion" or INJECT_SHARE <= 0 else max(1, int(round(INJECT_SHARE * n)))
    same = request.prompt == request.source_prompt
    # the text a flow pipeline gets (as generation on these models): tags out, SD's prompt syntax as plain words
    plain = [flow_prompt(t or "", steps)[0] for t in (request.source_prompt, request.prompt, request.negative_prompt)]
    texts = model.encode(plain)  # 3 rows: source, target, negative
    text_src, text_neg = texts.rows([0]), texts.rows([2])
    text_tgt = text_src if same else texts.rows([1])
    uncond = text_neg if model.uses_cfg else None

    values = ValueInjection(model) if inject_steps else None
    try:
        with torch.inference_mode():
            first = _phase(loaded, emit, cancel, 2 * n, request, "invert")
            levels = None
            if source is not None:
                levels = _stored_levels(model, request, source, sigmas, work_image, emit)
            replay = levels is not None
            if levels is None:
                z0 = encode_image(loaded, work_image, (flow_w, flow_h)).float()  # (1, C, h, w)
                noise = None
                if method == "rf-inversion":  # the forward controller's target: one noise draw from the seed
                    generator = torch.Generator("cpu").manual_seed(int(seeds[0]))
                    noise = torch.randn((1, *model.shape), generator=generator).to(z0.device)
                source_guidance = RF_SOURCE_GUIDANCE if method == "rf-inversion" else 1.0
                levels = invert(
                    model,
                    method,
                    z0,
                    sigmas,
                    text_src,
                    source_guidance,
                    values=values,
                    inject_steps=inject_steps,
                    noise=noise,
                    phase=first,
                )
            else:
                first.hooks.total = n

            feathered = latent_mask = None
            if request.mask is not None:
                feathered = feather_mask(request.mask, request.mask_blur)
                latent_mask = _latent_mask(feathered, flow_w, flow_h, model.factor, levels[0].device)  # (1, 1, h, w)
            second = _phase(loaded, emit, cancel, first.hooks.total, request, "denoise", before=first)
            x = denoise(
                model,
                method,
                levels,
                sigmas,
                text_tgt,
                guidance,
                uncond=uncond,
                text_src=text_src if replay else None,
                values=values,
                inject_steps=inject_steps,
                latent_mask=latent_mask,
                phase=second,
            )
    finally:
        if values is not None:
            values.remove()
    image = decode_images(loaded, x)[0]
    if image.size != source_image.size:
        image = image.resize(source_image.size, Image.Resampling.LANCZOS)
    if feathered is not None:
        image = paste_back(image, source_image, feathered)
    info: dict[str, Any] = {
        "Edit method": method,
        "t0": _timestep(float(sigmas[0])),
        "Source prompt": request.source_prompt,
        "Flow solver": EDIT_METHOD_NAMES[method],  # as core.infotext writes and reads it
    }
    if request.mask is not None:
        info["Mask blur"] = request.mask_blur
    if replay:
        info["Edit source"] = "stored trajectory"
    if len(seeds) > 1:
        emit(Notice(f"An edit is deterministic: the {len(seeds)} images of the batch are the same."))
    return [image.copy() for _ in seeds], second.hooks.trajectory, info
