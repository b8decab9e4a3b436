"""DDIM inversion and inversion-based editing of real images.

An edit runs in two phases on the loaded model's own components:

1. **Invert** (phase "invert"): the source image's latent z_0 (VAE posterior mean)
   is walked *up* the DDIM schedule, from t = 0 to t0, with the source prompt at
   guidance 1 (`DDIMInverseScheduler`). Every level x_t is kept: the inversion
   trajectory ``levels``.
2. **Denoise** (phase "denoise"): from x_t0 back down to 0 with the target prompt
   (`DDIMScheduler`, eta = 0), with classifier-free guidance, by one of three methods:

   - ``ddim``: plain; uncond = the negative prompt. Drifts at guidance > 1.
   - ``negative-prompt`` (Miyake et al. 2023): the *source* prompt's embedding
     replaces the unconditional one, so at target == source the guided noise is
     exactly the one inversion used. No extra cost.
   - ``direct`` (Ju et al. 2023, "PnP Inversion"): a source branch is denoised
     beside the target one; after every step the gap between the inversion level
     and the source branch is added to both, so the source branch lands on the
     inversion trajectory exactly and the target branch gets the same correction.
     The source branch's conditional pass is the inversion's own (`Reuse`): 4n UNet rows in all, a generation's 2n.

With Prompt-to-Prompt attention control (`attention_control="p2p"`, engine/attention_control.py: word swap,
refinement, re-weighting, local blend, self-attention injection) every method denoises a source branch beside the
target in the same UNet call, and the target's attention follows the source's.

SDXL: the UNet calls carry SDXL's added conditioning (each prompt's pooled embeds and the time ids, `Text`); an
empty negative prompt is zeros, as in StableDiffusionXLPipeline. A refiner is refused (`check_editable`).

Optional mask (255 = may change): after every step the target latent outside the
feathered mask is replaced by the inversion level (latent resolution), and the final
image gets the source pixels pasted back outside the mask: identical to the source there.

Exact shortcut: when the source image is a DDIM result of this app (a `Result` with
its trajectory, or a generate request with its seed), its own latents are the
trajectory, no inversion needed, and reconstruction is exact (`source=` keyword).

Also: `suggest_mask` (DiffEdit's idea: where the noise predicted under the source and target prompts differ; or
the changed words' cross-attention, how="attention") and `replay_latents` (regenerate a stored DDIM request's
trajectory deterministically).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from PIL import Image, ImageFilter

from desktop_app.core.errors import InvalidRequest, ModelError
from desktop_app.core.events import Notice
from desktop_app.core.imaging import feather_mask, paste_back
from desktop_app.core.latents import Trajectory
from desktop_app.core.requests import EditRequest, GenerateRequest, parse_reweight
from desktop_app.engine.attention_control import (
    DEFAULT_CROSS_REPLACE,
    DEFAULT_SELF_REPLACE,
    PromptToPrompt,
    WordMaps,
    align,
    controlled_attention,
    cross_grids,
    map_grid,
    normalise,
    prompt_tokens,
    reweight_vector,
)
from desktop_app.engine.encoding import decode_images, encode_image, text_conditioning
from desktop_app.engine.models import LoadedModel
from desktop_app.engine.sampling import StepHooks, generators, make_scheduler

if TYPE_CHECKING:
    from diffusers import DDIMInverseScheduler, DDIMScheduler
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

Emit = Callable[[Any], None]

DEFAULT_T0 = 700  # timestep an edit starts from when the request gives neither t0 nor strength (schedule unknown)
# With the schedule known, the default depth is where the signal share alpha_bar_t falls to this level:
# t = 700 on SD's scaled-linear schedule, which the built-in model uses too (tuned there with
# bench/inversion_eval.py, direct inversion, guidance 4, 16 held-out colour edits: t0 600 / 700 / 800 /
# 960 gave 94 / 100 / 100 / 100% success with the background at 29.2 / 28.6 / 27.1 / 25.8 dB);
# t = 494 on a linear (DDPM) schedule.
DEFAULT_SIGNAL = 0.0827
DEFAULT_METHOD = "direct"
# When neither the request nor the model's "edit" settings name them: the built-in model's measured edit defaults
# (resources/models/shapes/diffusion_desk.json "edit", chosen with bench/inversion_eval.py --table: direct inversion
# + Prompt-to-Prompt word swap, cross 0.8, self 0.4, no local blend, guidance 3, t0 700), which are also P2P's
# published word-swap settings (cross 0.8, self 0.4).
DEFAULT_ATTENTION_CONTROL = "p2p"
DEFAULT_LOCAL_BLEND = False  # local blend cost one colour edit in 8 on the built-in model (its mask is loose)
DIFFEDIT_THRESHOLD = 0.5  # suggest_mask's thresholds on the max-normalised map
ATTENTION_THRESHOLD = 0.5  # tuned on 48 held-out built-in pictures (not the bench's 16): 0.3 / 0.4 / 0.5 / 0.6
REUSE_INVERSION = True  # direct inversion's source branch reuses the inversion's UNet passes (see `Reuse`)
INVERSION_REFINE = 0  # fixed-point refinements per inversion step (each one more UNet pass)
SHORTCUT_MIN_PSNR = 35.0  # the replayed latent must decode to the given source image at least this well

__all__ = [
    "DEFAULT_T0",
    "SourceLatents",
    "Reuse",
    "Text",
    "check_editable",
    "prompt_texts",
    "default_t0",
    "edit_timesteps",
    "denoise",
    "invert",
    "replay_latents",
    "resolve_t0",
    "run_edit",
    "source_latents_from_result",
    "suggest_mask",
]


# ----------------------------------------------------------------- schedule ---


def _scheduler_config(loaded: LoadedModel) -> dict:
    """The model's scheduler config with a spacing both DDIM schedulers support ("linspace" -> "leading")."""
    config = dict(loaded.scheduler_config)
    if config.get("timestep_spacing", "leading") not in ("leading", "trailing"):
        config["timestep_spacing"] = "leading"
    return config


def _ddim(loaded: LoadedModel, steps: int) -> DDIMScheduler:
    from diffusers import DDIMScheduler

    scheduler = cast("DDIMScheduler", DDIMScheduler.from_config(_scheduler_config(loaded)))
    scheduler.set_timesteps(steps, device="cpu")
    return scheduler


def _ddim_inverse(loaded: LoadedModel, steps: int) -> DDIMInverseScheduler:
    from diffusers import DDIMInverseScheduler

    scheduler = cast("DDIMInverseScheduler", DDIMInverseScheduler.from_config(_scheduler_config(loaded)))
    scheduler.set_timesteps(steps, device="cpu")
    return scheduler


def _step(scheduler: DDIMScheduler | DDIMInverseScheduler, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    """`scheduler.step(eps, t, x).prev_sample`: diffusers types step()'s result as output-or-tuple; it is the output."""
    return cast("DDIMSchedulerOutput", scheduler.step(eps, t, x)).prev_sample


def default_t0(alphas_cumprod=None, num_train_timesteps: int = 1000) -> int:
    """The start timestep of an edit that names none: where alpha_bar_t falls to DEFAULT_SIGNAL.

    Schedules differ (at t = 600 SD keeps 16% of the signal, a linear DDPM schedule 3%), so the
    default depth follows the schedule; the UI can start its t0 slider here.
    """
    if alphas_cumprod is None:
        return int(round(DEFAULT_T0 * num_train_timesteps / 1000))
    alphas = np.asarray(alphas_cumprod, dtype=np.float64)
    below = np.nonzero(alphas <= DEFAULT_SIGNAL)[0]
    return int(below[0]) if len(below) else len(alphas) - 1


def resolve_t0(request: EditRequest, num_train_timesteps: int = 1000, alphas_cumprod=None) -> int:
    """The timestep the edit starts from: request.t0, else strength * T (strength 1 is the deepest timestep of the
    model's schedule, T - 1, as the window's slider maps it), else `default_t0`."""
    if request.t0 is not None:
        t0 = int(request.t0)
    elif request.strength is not None:
        t0 = min(num_train_timesteps - 1, int(round(request.strength * num_train_timesteps)))
    else:
        t0 = default_t0(alphas_cumprod, num_train_timesteps)
    if not 1 <= t0 <= num_train_timesteps - 1:
        what = f"t0 {t0}" if request.t0 is not None else f"Strength {request.strength} (t0 {t0})"
        raise InvalidRequest(
            f"{what} is outside this model's schedule of timesteps 1 to {num_train_timesteps - 1}.",
            "Pick a start timestep inside the schedule: shallow (200) keeps more of the image, deep (800) changes more.",
        )
    return t0


def edit_timesteps(scheduler, t0: int) -> list[int]:
    """Descending DDIM timesteps at or below t0: the denoising steps of an edit (the inversion runs them reversed)."""
    timesteps = [int(t) for t in scheduler.timesteps if int(t) <= t0]
    if not timesteps:
        first = int(min(int(t) for t in scheduler.timesteps))
        raise InvalidRequest(
            f"t0 {t0} is below the first step of the schedule (timestep {first} with {len(scheduler.timesteps)} steps).",
            f"Use t0 of at least {first}, or more steps.",
        )
    return timesteps


# ------------------------------------------------------------- UNet helpers ---


@dataclass
class Text:
    """Prompts' conditioning for direct UNet calls, one row per branch: embeds (B, L, D); for SDXL also the pooled
    embeds (B, P) and time ids (B, 6) of `added_cond_kwargs` (as StableDiffusionXLPipeline builds them)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def row(self, index: int) -> Text:
        """Row `index` as a one-row Text."""

        def pick(x):
            return None if x is None else x[index : index + 1]

        return Text(self.embeds[index : index + 1], pick(self.pooled), pick(self.time_ids))

    def zeros(self) -> Text:
        """SDXL's unconditional conditioning for an empty negative prompt (force_zeros_for_empty_prompt)."""

        def zero(x):
            return None if x is None else torch.zeros_like(x)

        return Text(torch.zeros_like(self.embeds), zero(self.pooled), self.time_ids)


def _text(x: Text | torch.Tensor) -> Text:
    return x if isinstance(x, Text) else Text(x)


def _cat(texts: list[Text]) -> Text:
    """Rows of several Texts stacked (B1 + B2 + ..., ...)."""
    embeds = torch.cat([t.embeds for t in texts])
    if any(t.pooled is None or t.time_ids is None for t in texts):
        return Text(embeds)
    return Text(
        embeds,
        torch.cat([cast(torch.Tensor, t.pooled) for t in texts]),
        torch.cat([cast(torch.Tensor, t.time_ids) for t in texts]),
    )


def prompt_texts(
    loaded: LoadedModel, prompts: list[str], width: int, height: int, clip_skip: int | None = None
) -> list[Text]:
    """Each prompt's one-row Text (one L for all: a long prompt's chunks, the others padded; A1111's meaning).

    On SDXL the pooled embeds and the time ids (original and target size = the work size, no crop) come along."""
    embeds, added = text_conditioning(loaded, prompts, height, width, clip_skip)
    text = Text(embeds) if added is None else Text(embeds, added["text_embeds"], added["time_ids"])
    return [text.row(i) for i in range(len(prompts))]


def _unet(pipe, latents: torch.Tensor, t: int, text: Text | torch.Tensor) -> torch.Tensor:
    """The UNet's prediction (B, C, h, w) as float32 (noise, or velocity for a v-prediction model: the
    schedulers convert), for latents (B, C, h, w) and a B-row Text (or embeds (B, L, D))."""
    unet = pipe.unet
    text = _text(text)
    added = None
    if text.pooled is not None and text.time_ids is not None:
        added = {"text_embeds": text.pooled.to(unet.dtype), "time_ids": text.time_ids.to(unet.dtype)}
    out = unet(
        latents.to(unet.dtype),
        t,
        encoder_hidden_states=text.embeds.to(unet.dtype),
        added_cond_kwargs=added,
        return_dict=False,
    )[0]
    return out.float()


def _guided(
    pipe, latents: torch.Tensor, t: int, cond: Text | torch.Tensor, uncond: Text | torch.Tensor, guidance: float
) -> torch.Tensor:
    """Classifier-free guided noise for several branches in one UNet call.

    latents: (B, C, h, w); cond, uncond: B rows each, one per branch. Returns (B, C, h, w).
    At guidance 1 the unconditional pass is skipped.
    """
    if guidance == 1.0:
        return _unet(pipe, latents, t, cond)
    batch = latents.shape[0]
    eps = _unet(pipe, torch.cat([latents, latents]), t, _cat([_text(uncond), _text(cond)]))  # (2B, C, h, w)
    eps_uncond, eps_cond = eps[:batch], eps[batch:]
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def _two_branches(
    pipe,
    t: int,
    x_src: torch.Tensor,
    x: torch.Tensor,
    cond_src: Text,
    cond_tgt: Text,
    neg_src: Text,
    neg_tgt: Text,
    guidance: float,
    control: PromptToPrompt | None = None,
    step: int = 0,
    known_src: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided noise of the source branch (x_src under cond_src, neg_src) and the target branch (x under cond_tgt,
    neg_tgt) in one UNet call. Returns (eps_src, eps_tgt), each (B, C, h, w).

    Rows: the unconditional rows that are needed, then the conditional rows [source, target] (Prompt-to-Prompt
    edits the last 2B rows). An unconditional row is left out where it is provably another row: the source's when
    its negative is its own prompt (negative-prompt inversion: guidance changes nothing there), the target's when
    both branches sit on the same latent with the same negative (the first step) or with the source prompt as
    negative."""
    b = x.shape[0]
    same_latent = torch.equal(x_src, x)
    latents: list[torch.Tensor] = []
    texts: list[Text] = []

    def row(latent: torch.Tensor, text: Text) -> int:
        latents.append(latent)
        texts.append(text)
        return len(latents) - 1

    u_src = u_tgt = None  # index of the unconditional block, None for "the source's conditional block"
    if guidance != 1.0:
        if neg_src is not cond_src:
            u_src = row(x_src, neg_src)
        if not (same_latent and neg_tgt is neg_src):
            u_tgt = None if (same_latent and neg_tgt is cond_src) else row(x, neg_tgt)
        else:
            u_tgt = u_src
    c_src = row(x_src, cond_src) if known_src is None else None
    c_tgt = row(x, cond_tgt)
    if control is not None:
        control.step, control.active, control.with_source = step, True, known_src is None
    try:
        out = _unet(pipe, torch.cat(latents), t, _cat(texts))  # (rows * B, C, h, w)
    finally:
        if control is not None:
            control.active, control.with_source = False, True
    blocks = list(out.split(b))
    eps_c_src = blocks[c_src] if c_src is not None else cast(torch.Tensor, known_src)
    eps_c_tgt = blocks[c_tgt]
    if guidance == 1.0:
        return eps_c_src, eps_c_tgt
    eps_u_src = eps_c_src if u_src is None else blocks[u_src]
    eps_u_tgt = eps_c_src if u_tgt is None else blocks[u_tgt]
    return (
        eps_u_src + guidance * (eps_c_src - eps_u_src),
        eps_u_tgt + guidance * (eps_c_tgt - eps_u_tgt),
    )


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


# ---------------------------------------------------------------- inversion ---


@dataclass
class Reuse:
    """What the inversion computed that direct inversion's source branch reuses (Reuse(control=...) in, filled).

    Direct inversion pins its source branch to the trajectory, so its conditional pass at denoising step i is the
    UNet on level n - i at that level's timestep. An inversion asked to reuse evaluates every level k >= 1 there
    (the first-order Euler step of the inverse ODE, DDIM's own encoding, instead of the level's next timestep) and
    keeps the prediction (and, with Prompt-to-Prompt, the attention maps the controller will read): the denoising
    then skips the source's conditional rows on every step but the first."""

    control: PromptToPrompt | None = None
    eps: dict[int, torch.Tensor] = field(default_factory=dict)  # level k -> prediction (B, C, h, w)


def invert(
    loaded: LoadedModel,
    z0: torch.Tensor,
    cond: Text | torch.Tensor,
    timesteps: list[int],
    steps: int,
    hooks: StepHooks | None = None,
    refine: int = 0,
    reuse: Reuse | None = None,
) -> list[torch.Tensor]:
    """DDIM inversion of a clean latent up the schedule, conditioned on `cond`, at guidance 1.

    z0: (B, C, h, w) scaled latents; cond: B rows (Text, or embeds (B, L, D)); timesteps: the edit's descending
    denoising timesteps (from `edit_timesteps`). Returns the levels, float32 on the device:
    levels[0] = z0 and levels[k] = x at timesteps[-k] (ascending), so levels[-1] is x_t0 and
    denoising step i (from timesteps[i]) should land on levels[n - 1 - i]. `reuse`: see `Reuse`.
    """
    pipe = loaded.pipe
    inverse = _ddim_inverse(loaded, steps)
    if hooks is not None:
        hooks.attach(inverse)
    levels = [z0.float()]
    x = levels[0]
    n = len(timesteps)
    ascending = list(reversed(timesteps))
    control = reuse.control if reuse is not None else None
    attention = controlled_attention(pipe.unet, control) if control is not None else nullcontext()
    try:
        with torch.inference_mode(), attention:
            for i, t in enumerate(ascending):
                own = reuse is not None and i >= 1
                if own:  # eps(x_k, t_k): level k at its own timestep, the source branch's pass of step n - k
                    assert reuse is not None
                    if control is not None:
                        control.record(n - i)
                    eps = _unet(pipe, x, ascending[i - 1], cond)  # (B, C, h, w)
                    if control is not None:
                        control.recorded_step(n - i)
                    reuse.eps[i] = eps
                else:  # eps(x_{t-dt}, t): the usual approximation, the level below evaluated at the next timestep
                    eps = _unet(pipe, x, t, cond)  # (B, C, h, w)
                below = x
                x = _step(inverse, eps, t, below)  # (B, C, h, w) at alpha_bar_t
                for _ in range(refine):  # fixed point: x_t whose own DDIM step lands on the level below
                    eps = _unet(pipe, x, t, cond)
                    x = _step(inverse, eps, t, below)
                levels.append(x)
                if hooks is not None:
                    hooks.on_step_end(pipe, i, t, {})
    finally:
        if hooks is not None:
            hooks.detach()
    return levels


def denoise(
    loaded: LoadedModel,
    levels: list[torch.Tensor],
    timesteps: list[int],
    steps: int,
    method: str,
    guidance: float,
    cond_src: Text | torch.Tensor,
    cond_tgt: Text | torch.Tensor,
    uncond: Text | torch.Tensor,
    *,
    latent_mask: torch.Tensor | None = None,
    hooks: StepHooks | None = None,
    control: PromptToPrompt | None = None,
    reuse: Reuse | None = None,
) -> torch.Tensor:
    """Denoise from levels[-1] (x_t0) to a clean latent under the target prompt, by `method`.

    levels: `invert`'s layout, each (B, C, h, w); cond_src, cond_tgt, uncond: B rows (Text, or embeds (B, L, D));
    latent_mask: (B or 1, 1, h, w), 1 where the latent may change, else None. Batched over B images (the benchmark
    uses that; an edit job has B = 1). `control`: Prompt-to-Prompt; with it every method denoises a source branch
    beside the target in the same UNet call (direct inversion always does: its source branch is pinned to the
    trajectory; ddim and negative-prompt run theirs freely from x_t0). `hooks` (progress, previews, cancel,
    trajectory) sees the target branch. `reuse`: the inversion's predictions for direct inversion's source branch
    (from `invert(..., reuse=...)` on these levels). Returns the latent (B, C, h, w).
    """
    pipe = loaded.pipe
    n = len(timesteps)
    text_src, text_tgt, text_neg = _text(cond_src), _text(cond_tgt), _text(uncond)
    same_prompt = cond_tgt is cond_src or torch.equal(text_tgt.embeds, text_src.embeds)
    control = None if same_prompt else control
    negative = text_src if method == "negative-prompt" else text_neg  # both branches' unconditional
    scheduler = _ddim(loaded, steps)  # the target branch (hooked)
    source_scheduler = _ddim(loaded, steps)  # the source branch, unhooked
    if hooks is not None:
        hooks.attach(scheduler)
    x = levels[-1].clone()  # (B, C, h, w) target branch at x_t0
    x_src = levels[-1].clone()  # the source branch
    attention = controlled_attention(pipe.unet, control) if control is not None else nullcontext()
    try:
        with torch.inference_mode(), attention:
            for i, t in enumerate(timesteps):
                target_level = levels[n - 1 - i]  # where the inversion says this step lands
                if method == "direct":
                    x_src = levels[n - i]  # the source branch, corrected onto the trajectory
                if method == "direct" and same_prompt:  # the target branch is the source branch: one pass
                    eps = _guided(pipe, x_src, t, text_src, text_neg, guidance)
                    x = _step(scheduler, eps, t, x) + (target_level - _step(source_scheduler, eps, t, x_src))
                    src_next = target_level
                elif method == "direct" or control is not None:  # both branches in one UNet call
                    known = reuse.eps.get(n - i) if reuse is not None and method == "direct" else None
                    if known is not None and control is not None and control.needs_source(i):
                        known = known if i in control.recorded else None  # its maps are needed and not kept
                    eps_src, eps = _two_branches(
                        pipe, t, x_src, x, text_src, text_tgt, negative, negative, guidance, control, i, known
                    )
                    src_next = _step(source_scheduler, eps_src, t, x_src)
                    x = _step(scheduler, eps, t, x)
                    if method == "direct":  # the source branch's gap to the trajectory, added to both
                        x = x + (target_level - src_next)
                        src_next = target_level
                else:
                    eps = _guided(pipe, x, t, text_tgt, negative, guidance)  # (B, C, h, w)
                    x = _step(scheduler, eps, t, x)
                    src_next = target_level
                if control is not None:
                    x = control.blend(x, src_next)
                x_src = src_next
                if latent_mask is not None:
                    x = latent_mask * x + (1.0 - latent_mask) * target_level
                if hooks is not None:
                    hooks.on_step_end(pipe, i, t, {})
    finally:
        if hooks is not None:
            hooks.detach()
    return x


# --------------------------------------------------------- source latents ---


@dataclass
class SourceLatents:
    """A generated image's own DDIM trajectory: the latent entering each step, and the final latent."""

    timesteps: list[int]  # descending, one per step
    xt: list[torch.Tensor]  # (1, C, h, w) latent entering each step
    final: torch.Tensor  # (1, C, h, w) latent after the last step: the image's latent
    prompt: str = ""
    negative_prompt: str = ""
    guidance: float | None = None
    extra: dict = field(default_factory=dict)

    def levels(self, timesteps: list[int]) -> list[torch.Tensor] | None:
        """Levels in `invert`'s layout for these edit timesteps, or None when the schedules differ."""
        index = {t: i for i, t in enumerate(self.timesteps)}
        if any(t not in index for t in timesteps):
            return None
        # edit timesteps are a suffix of the source's: the step after the last is the final latent
        if self.timesteps[-len(timesteps) :] != timesteps:
            return None
        return [self.final.float()] + [self.xt[index[t]].float() for t in reversed(timesteps)]


def _final_from_last_step(loaded: LoadedModel, steps: int, t: int, xt: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """DDIM (eta 0) step from the last recorded (x_t, x0_hat) pair: the latent the run ended on."""
    scheduler = _ddim(loaded, steps)
    alphas = scheduler.alphas_cumprod
    a_t = alphas[t].double()
    prev = t - scheduler.config["num_train_timesteps"] // steps
    a_prev = alphas[prev].double() if prev >= 0 else scheduler.final_alpha_cumprod.double()
    xt, x0 = xt.double(), x0.double()
    eps = (xt - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    return (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).float()


def source_latents_from_result(loaded: LoadedModel, result, index: int = 0) -> SourceLatents | None:
    """The trajectory a finished DDIM generate job recorded (engine Result), or None if it has none usable."""
    request = getattr(result, "request", None)
    trajectory: Trajectory | None = getattr(result, "trajectory", None)
    if request is None or request.kind != "generate" or (request.scheduler or "ddim") != "ddim":
        return None
    if trajectory is None or len(trajectory) != request.steps or not trajectory.xt:
        return None
    # the recorded steps are numpy (B, C, h, w) float32: back to tensors on the device, row `index`
    xt = [torch.from_numpy(x[index : index + 1]).to(loaded.device) for x in trajectory.xt]
    x0_last = torch.from_numpy(trajectory.x0[-1][index : index + 1]).to(loaded.device)
    final = _final_from_last_step(loaded, request.steps, trajectory.timesteps[-1], xt[-1], x0_last)
    return SourceLatents(
        timesteps=list(trajectory.timesteps),
        xt=xt,
        final=final,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        guidance=request.guidance,
    )


def replay_latents(
    loaded: LoadedModel,
    source_request: GenerateRequest,
    seed: int | None = None,
    hooks: StepHooks | None = None,
) -> SourceLatents:
    """Regenerate a stored generate request's DDIM trajectory, deterministically, with the pipeline that made it.

    `source_request` must have its defaults filled in (steps, guidance, size; as stored in
    the history); `seed` is the image's own seed (request.seed + batch index), default
    request.seed. Costs one generation. Its final latent decodes to the stored image when
    the request was run with the DDIM scheduler. `hooks` (progress, previews, cancel) must
    record a trajectory; by default a silent one is made.
    """
    pipe = loaded.pipe
    seed = source_request.seed if seed is None else seed
    assert source_request.steps is not None and seed is not None  # the stored request has its defaults filled
    if hooks is None or hooks.trajectory is None:
        hooks = StepHooks(
            loaded,
            lambda event: None,
            None,
            source_request.steps,
            source_request.replace(trajectory=True, previews=False),
        )
    assert hooks.trajectory is not None  # made with trajectory=True
    start = len(hooks.trajectory)
    scheduler = make_scheduler("ddim", None, loaded.scheduler_config)
    pipe.scheduler = scheduler
    hooks.attach(scheduler)
    try:
        with torch.inference_mode():
            final = pipe(
                prompt=[source_request.prompt],
                negative_prompt=[source_request.negative_prompt] if source_request.negative_prompt else None,
                num_inference_steps=source_request.steps,
                guidance_scale=source_request.guidance,
                generator=generators([seed]),
                height=source_request.height,
                width=source_request.width,
                output_type="latent",
                callback_on_step_end=hooks.on_step_end,
            ).images  # (1, C, h, w)
    finally:
        hooks.detach()
    trajectory = hooks.trajectory
    return SourceLatents(
        timesteps=list(trajectory.timesteps[start:]),
        xt=[torch.from_numpy(x).to(loaded.device) for x in trajectory.xt[start:]],
        final=final.float(),
        prompt=source_request.prompt,
        negative_prompt=source_request.negative_prompt,
        guidance=source_request.guidance,
    )


def _shortcut_levels(
    loaded, request: EditRequest, source, timesteps: list[int], work_image: Image.Image, hooks: StepHooks, emit: Emit
):
    """Levels from the source's own trajectory when it is a known DDIM result of this app; else None (with a notice)."""
    src_request = getattr(source, "request", source)
    if not isinstance(src_request, GenerateRequest) or src_request.kind != "generate":
        return None, None
    reason = None
    if src_request.model != request.model:
        reason = "it was made with another model"
    elif (src_request.scheduler or "ddim") != "ddim":
        reason = f"it was made with the {src_request.scheduler} scheduler, not DDIM"
    elif src_request.steps != request.steps:
        reason = f"it was made with {src_request.steps} steps and this edit uses {request.steps}"
    elif (src_request.width, src_request.height) != (request.width, request.height):
        reason = "its size differs"
    elif src_request.seed is None:
        reason = "its seed is unknown"
    if reason is not None:
        emit(Notice(f"The source is a past result but {reason}: inverted it instead of replaying its trajectory."))
        return None, None
    latents = source_latents_from_result(loaded, source) if source is not src_request else None
    how = "stored trajectory"
    if latents is None:
        assert src_request.steps is not None  # equal to request.steps, filled by the engine
        hooks.total = src_request.steps + len(timesteps)
        replaying = StepHooks(
            loaded, hooks.emit, hooks.cancel, hooks.total, request.replace(trajectory=True), phase="invert"
        )
        replaying.step, replaying.started = hooks.step, hooks.started
        latents = replay_latents(loaded, src_request, hooks=replaying)
        hooks.step = replaying.step
        how = "replayed trajectory"
    levels = latents.levels(timesteps)
    if levels is None:
        return None, None
    if _psnr(decode_images(loaded, latents.final)[0], work_image) < SHORTCUT_MIN_PSNR:
        emit(Notice("The source image does not match its stored request (edited since?): inverted it instead."))
        return None, None
    return levels, how


# --------------------------------------------------------------------- masks ---


def _latent_mask(mask: Image.Image, width: int, height: int, factor: int, device) -> torch.Tensor:
    """(1, 1, h, w) float mask at latent resolution (area average of the work-size mask)."""
    small = mask.resize((width, height), Image.Resampling.BILINEAR).resize(
        (width // factor, height // factor), Image.Resampling.BOX
    )
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)[None, None].to(device)


# ---------------------------------------------------------------- the edit ---


def check_editable(loaded: LoadedModel) -> None:
    """An SDXL refiner (only the OpenCLIP-G text encoder, aesthetic-score conditioning) cannot run these edits."""
    pipe = loaded.pipe
    config = getattr(pipe, "config", {}) or {}
    if loaded.is_xl and (getattr(pipe, "text_encoder", None) is None or config.get("requires_aesthetics_score")):
        raise ModelError(
            f"{loaded.model_id} is an SDXL refiner: it has no CLIP-L text encoder and is conditioned on an aesthetic "
            "score, so inversion edits (and their attention control) cannot run on it.",
            "Edit with the SDXL base model (stabilityai/stable-diffusion-xl-base-1.0); the refiner can polish the "
            "result afterwards with img2img at a low strength.",
        )


def _prompt_to_prompt(
    loaded: LoadedModel, request: EditRequest, length: int, n: int, emit: Emit, same_prompt: bool
) -> tuple[PromptToPrompt | None, dict[str, Any]]:
    """The edit's Prompt-to-Prompt controller and its infotext fields, or (None, {}) when attention control is off.

    Re-weighting a word the target prompt lacks is an InvalidRequest here, before any step runs."""
    pairs = parse_reweight(request.reweight)
    if (request.attention_control or DEFAULT_ATTENTION_CONTROL) != "p2p":
        if pairs:
            emit(Notice("Re-weighting works with Prompt-to-Prompt attention control, which is off: ignored."))
        return None, {}
    cross = DEFAULT_CROSS_REPLACE if request.cross_replace is None else float(request.cross_replace)
    self_share = DEFAULT_SELF_REPLACE if request.self_replace is None else float(request.self_replace)
    blend = DEFAULT_LOCAL_BLEND if request.local_blend is None else bool(request.local_blend)
    src = prompt_tokens(loaded, request.source_prompt)
    tgt = prompt_tokens(loaded, request.prompt)
    alignment = align(src, tgt, length)
    reweight = reweight_vector(loaded, tgt, pairs, length)
    if not same_prompt:
        for message in alignment.notices:
            emit(Notice(message))
    assert request.width is not None and request.height is not None  # the work size, filled by the engine
    latent = (request.height // loaded.latent_factor, request.width // loaded.latent_factor)
    control = PromptToPrompt(
        alignment,
        steps=n,
        batch=1,
        latent=latent,
        cross_grids=cross_grids(loaded, latent),
        cross_replace=cross,
        self_replace=self_share,
        local_blend=blend,
        reweight=reweight,
    )
    info: dict[str, Any] = {
        "Attention control": "Prompt-to-Prompt",
        "Cross replace": cross,
        "Self replace": self_share,
        "Local blend": str(blend),
    }
    if request.reweight.strip():
        info["Re-weight"] = request.reweight.strip()
    return control, info


def run_edit(
    loaded: LoadedModel,
    request: EditRequest,
    seeds: list[int],
    emit: Emit,
    cancel,
    *,
    source=None,
    refine: int | None = None,
) -> tuple[list[Image.Image], Trajectory | None, dict]:
    """Invert request.image to t0 under the source prompt, then denoise under the target prompt.

    `request` is validated with its defaults filled (width/height the work size, a multiple
    of 8). `source`: optionally the engine `Result` the image came from, or its
    `GenerateRequest` with the seed filled: a DDIM result is then replayed from its own
    trajectory instead of inverted (exact). `refine`: fixed-point iterations per inversion
    step (default INVERSION_REFINE). Returns (images at the source image's size,
    the denoising trajectory, infotext fields). An edit is deterministic: a batch gets copies.
    """
    device = loaded.device
    assert request.steps is not None and request.guidance is not None  # filled by the engine
    assert request.width is not None and request.height is not None and request.image is not None
    steps, guidance = int(request.steps), float(request.guidance)
    width, height = int(request.width), int(request.height)
    source_image = request.image.convert("RGB")
    work_image = (
        source_image
        if source_image.size == (width, height)
        else source_image.resize((width, height), Image.Resampling.LANCZOS)
    )

    check_editable(loaded)
    scheduler = _ddim(loaded, steps)
    t0 = resolve_t0(request, scheduler.config["num_train_timesteps"], scheduler.alphas_cumprod)
    timesteps = edit_timesteps(scheduler, t0)
    n = len(timesteps)
    method = request.method or DEFAULT_METHOD
    same_prompt = request.prompt == request.source_prompt

    hooks = StepHooks(loaded, emit, cancel, 2 * n, request, phase="invert")
    with torch.inference_mode():
        # A1111's prompt meaning, one L for the three (a long prompt's chunks, the others padded)
        cond_src, cond_tgt, uncond = prompt_texts(
            loaded, [request.source_prompt, request.prompt, request.negative_prompt], width, height, request.clip_skip
        )  # one row each
        cond_tgt = cond_src if same_prompt else cond_tgt
        if (
            loaded.is_xl
            and not request.negative_prompt.strip()
            and loaded.pipe.config.get("force_zeros_for_empty_prompt", True)
        ):
            uncond = uncond.zeros()  # as StableDiffusionXLPipeline does for an empty negative prompt
    control, control_info = _prompt_to_prompt(loaded, request, cond_src.embeds.shape[1], n, emit, same_prompt)

    # -- phase 1: the inversion trajectory (or the source's own) ----------------------
    levels, how = (None, None)
    reuse = None
    if source is not None:
        levels, how = _shortcut_levels(loaded, request, source, timesteps, work_image, hooks, emit)
        hooks.total = hooks.step + (n if levels is not None else 2 * n)
    if levels is None:
        z0 = encode_image(loaded, work_image, (width, height)).float()  # (1, C, h, w)
        if method == "direct" and not same_prompt and REUSE_INVERSION:  # the source branch reuses its passes
            reuse = Reuse(control=control)
        refine = INVERSION_REFINE if refine is None else refine
        levels = invert(loaded, z0, cond_src, timesteps, steps, hooks, refine, reuse)
        how = None

    # -- phase 2: denoise from t0 under the target prompt -----------------------------
    inverting, hooks = hooks, StepHooks(loaded, emit, cancel, hooks.total, request, phase="denoise")
    hooks.step, hooks.started = inverting.step, inverting.started  # one progress count over both phases
    latent_mask = None
    feathered = None
    if request.mask is not None:
        feathered = feather_mask(request.mask, request.mask_blur)
        latent_mask = _latent_mask(feathered, width, height, loaded.latent_factor, device)  # (1, 1, h, w)

    x = denoise(
        loaded,
        levels,
        timesteps,
        steps,
        method,
        guidance,
        cond_src,
        cond_tgt,
        uncond,
        latent_mask=latent_mask,
        hooks=hooks,
        control=control,
        reuse=reuse,
    )
    trajectory = hooks.trajectory
    image = decode_images(loaded, x)[0]
    if image.size != source_image.size:
        image = image.resize(source_image.size, Image.Resampling.LANCZOS)
    if feathered is not None:
        image = paste_back(image, source_image, feathered)
    info: dict[str, Any] = {"Edit method": method, "t0": timesteps[0], "Source prompt": request.source_prompt}
    info.update(control_info)
    if request.mask is not None:
        info["Mask blur"] = request.mask_blur
    if how is not None:
        info["Edit source"] = how
    if len(seeds) > 1:
        emit(Notice(f"An edit is deterministic: the {len(seeds)} images of the batch are the same."))
    return [image.copy() for _ in seeds], trajectory, info


# ------------------------------------------------------------ suggested mask ---


def _remove_specks(binary: np.ndarray, min_cells: int) -> np.ndarray:
    """Drop 4-connected components smaller than min_cells (latent resolution, so small arrays)."""
    out = binary.copy()
    seen = np.zeros_like(binary, dtype=bool)
    h, w = binary.shape
    for y0, x0 in zip(*np.nonzero(binary)):
        if seen[y0, x0]:
            continue
        stack, cells = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            cells.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(cells) < min_cells:
            ys, xs = zip(*cells)
            out[list(ys), list(xs)] = False
    return out


def token_change(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(L,) how much each token's text embedding changes between two prompts' embeds (L, D): the weight of its
    cross-attention in the attention mask (0 for the start token and the words before the first change)."""
    return (target.float() - source.float()).norm(dim=-1)


def _mask_grid(loaded: LoadedModel, latent: tuple[int, int]) -> tuple[int, int]:
    """The cross-attention grid the attention mask reads: the level `map_grid` picks at the UNet's own sample size
    (16x16 of SD's 64x64 latent), taken at this latent's size. By cell count alone a bigger picture moves to a
    deeper level: the built-in model (trained at 16x16 latents) read its bottleneck at 512x384 and the mask of
    a red circle on blue covered the background (IoU 0.15; 0.87 at the same level as at 64x64)."""
    size = loaded.pipe.unet.config.sample_size
    here = cross_grids(loaded, latent)
    if isinstance(size, int):
        native = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        native = (int(size[0]), int(size[1]))
    else:
        return map_grid(here)
    levels = cross_grids(loaded, native)
    return here[min(levels.index(map_grid(levels)), len(here) - 1)]


def suggest_mask(
    loaded: LoadedModel,
    image: Image.Image,
    source_prompt: str,
    target_prompt: str,
    *,
    t: int = 500,
    draws: int = 4,
    seed: int = 0,
    threshold: float | None = None,
    min_area: float = 0.01,
    how: str = "diffedit",
) -> Image.Image:
    """Where the edit should happen: a mode 'L' mask (0 / 255) of the image's size. Identical prompts give an empty
    mask. Engine-free: the worker or `Engine.suggest_mask` calls it with a loaded model.

    The image is noised to timestep t with `draws` noise draws, and the UNet sees it under each prompt:

    - how="diffedit" (DiffEdit, Couairon et al. 2022): |eps_target - eps_source|, averaged over draws and channels;
    - how="attention": each query's cross-attention to the prompt's tokens, every token weighted by how much its
      embedding changes from the source prompt to the target (`token_change`: the changed words and, the text
      encoder being causal, every token after them; the start token and the words before weigh 0), in the last
      decoder layer at the level nearest 16x16 at the UNet's own size (`_mask_grid`), under both prompts,
      averaged over heads, rows and draws, upsampled to the latent grid and stretched to 0..1. On the built-in
      model only that layer follows the shape (the layer before it attends to the colour word on the
      background), and the later tokens localise the shape better than the colour word itself.

    The map is smoothed, normalised, thresholded (`threshold`, default DIFFEDIT_THRESHOLD / ATTENTION_THRESHOLD),
    cleaned of specks smaller than `min_area` of the image and upsampled.
    """
    if how not in ("diffedit", "attention"):
        raise InvalidRequest(f"Unknown way to suggest a mask: {how!r}.", "Use diffedit or attention.")
    check_editable(loaded)
    image = image.convert("RGB")
    width, height = max(64, image.width - image.width % 8), max(64, image.height - image.height % 8)
    scheduler = _ddim(loaded, 50)
    t = int(min(max(t, 1), scheduler.config["num_train_timesteps"] - 1))
    with torch.inference_mode():
        z0 = encode_image(loaded, image, (width, height)).float()  # (1, C, h, w)
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((draws,) + tuple(z0.shape[1:]), generator=generator).to(loaded.device)  # (D, C, h, w)
        xt = scheduler.add_noise(
            z0.expand(draws, -1, -1, -1), noise, cast("torch.IntTensor", torch.full((draws,), t, dtype=torch.long))
        )
        texts = prompt_texts(loaded, [source_prompt, target_prompt], width, height)
        rows = _cat([texts[0]] * draws + [texts[1]] * draws)  # (2D rows)
        if how == "diffedit":
            eps = _unet(loaded.pipe, torch.cat([xt, xt]), t, rows)  # (2D, C, h, w)
            diff = (eps[draws:] - eps[:draws]).abs().mean(dim=(0, 1))  # (h, w)
            reference = float(eps.abs().mean()) + 1e-12
            if float(diff.max()) <= 1e-4 * reference:  # the prompts do not differ where the model looks
                return Image.new("L", image.size, 0)
            return _mask_from_map(diff.cpu().numpy().astype(np.float64), image.size, width, threshold, min_area)
        change = token_change(texts[0].embeds[0], texts[1].embeds[0])  # (L,)
        if source_prompt == target_prompt or float(change.max()) <= 1e-6:
            return Image.new("L", image.size, 0)
        latent = (int(z0.shape[2]), int(z0.shape[3]))
        collector = WordMaps(change.expand(2 * draws, -1), latent, _mask_grid(loaded, latent))
        with controlled_attention(loaded.pipe.unet, collector):
            _unet(loaded.pipe, torch.cat([xt, xt]), t, rows)
        assert collector.maps  # the UNet has cross-attention in the decoder
        last = list(collector.maps.values())[-1]  # (2D, h, w) the layer nearest the output
        combined = normalise(last.mean(0))  # both prompts' rows: where the changed tokens are read
    return _mask_from_map(
        combined.cpu().numpy().astype(np.float64),
        image.size,
        width,
        ATTENTION_THRESHOLD if threshold is None else threshold,
        min_area,
    )


def _mask_from_map(
    diff: np.ndarray, size: tuple[int, int], width: int, threshold: float | None, min_area: float
) -> Image.Image:
    """A latent-resolution map (h, w) -> the crisp mode 'L' mask of `size`: smoothed, normalised, thresholded,
    specks removed, upsampled with soft edges and thresholded again (a mask the brush can correct)."""
    threshold = DIFFEDIT_THRESHOLD if threshold is None else threshold
    padded = np.pad(diff, 1, mode="edge")  # 3x3 box smoothing at latent resolution
    smooth = cast(
        np.ndarray,
        sum(padded[dy : dy + diff.shape[0], dx : dx + diff.shape[1]] for dy in range(3) for dx in range(3)) / 9.0,
    )
    smooth = smooth / max(float(smooth.max()), 1e-12)
    binary = smooth >= threshold
    binary = _remove_specks(binary, max(1, int(round(min_area * binary.size))))
    small = Image.fromarray((binary * 255).astype(np.uint8), "L")
    factor = max(1, width // binary.shape[1])
    big = small.resize(size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(factor / 2))

    def crisp(v: int) -> int:
        return 255 if v >= 128 else 0

    return big.point(crisp)
