"""Latents as plain numpy data: what crosses from the engine's thread to the window (no torch here).

The engine picks a `LatentPreviewer` for its VAE at load (engine.preview.previewer_for: the family's known
projection, or a fit cached per model); projecting with it is a tiny matrix product, cheap enough for the GUI
thread while a slider is dragged. A previewer with a TAESD decoder (engine.preview.TaesdPreviewer) has such a map
as its `.linear`: `Trajectory.previews` uses that one.

Two time axes: DDPM-family models (SD 1.x, 2.x, XL) have t in 0..T-1 (`ForwardProcess`, axis "t"); flow models
(SD 3.x, Flux) have sigma in 0..1, shown on the same 0..1000 slider as t = 1000 sigma (`FlowForwardProcess`,
axis "sigma").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

FLOW_TRAIN_TIMESTEPS = 1000  # diffusers' FlowMatch schedulers: timestep = sigma * num_train_timesteps


class Previewer(Protocol):
    """What a trajectory or a forward process projects with: (C, h, w) scaled latent -> uint8 RGB (H, W, 3)."""

    def project(self, latents: np.ndarray) -> np.ndarray: ...


def cheap(previewer: Previewer | None) -> Previewer | None:
    """The numpy-only map of a previewer (a TAESD one carries one as `.linear`): safe on the GUI thread."""
    return getattr(previewer, "linear", None) or previewer


class LatentPreviewer:
    """Projects (C, h, w) latents, in the pipeline's scaled space, to uint8 RGB (h, w, 3)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)  # (C + 1, 3): the last row is the bias

    def project(self, latents: np.ndarray) -> np.ndarray:
        latents = np.asarray(latents, dtype=np.float32)
        c = latents.shape[0]
        flat = latents.reshape(c, -1).T  # (h*w, C)
        rgb = flat @ self.weights[:c] + self.weights[c]  # (h*w, 3) in [-1, 1]
        rgb = rgb.reshape(latents.shape[1], latents.shape[2], 3)
        return np.clip((rgb + 1.0) * 127.5, 0, 255).astype(np.uint8)


@dataclass
class ForwardProcess:
    """q(x_t | x_0) of a source image in closed form: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps."""

    axis: ClassVar[str] = "t"
    x0: np.ndarray  # (C, h, w) scaled latent of the source
    noise: np.ndarray  # (C, h, w) fixed noise, so dragging shows one consistent path
    alphas_cumprod: np.ndarray  # (T,)
    previewer: Previewer
    model_id: str

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def latent(self, t: int) -> np.ndarray:
        """(C, h, w) float32 latent at timestep t (clamped to the schedule)."""
        t = int(np.clip(t, 0, self.num_train_timesteps - 1))
        a = float(self.alphas_cumprod[t])
        return (np.sqrt(a) * self.x0 + np.sqrt(1.0 - a) * self.noise).astype(np.float32)

    def preview(self, t: int) -> np.ndarray:
        """uint8 RGB (h, w, 3) at latent resolution (the cheap map: the slider drags on the GUI thread)."""
        previewer = cheap(self.previewer)
        assert previewer is not None  # a forward process always comes with its model's previewer
        return previewer.project(self.latent(t))


def flow_shift(scheduler_config: Mapping[str, Any], latent_size: tuple[int, int], patch: int = 2) -> float:
    """The timestep shift a FlowMatchEulerDiscreteScheduler applies to a run whose latents are (h, w): its static
    `shift` (SD 3.x: 3.0), or with `use_dynamic_shifting` (Flux) exp(mu), mu interpolated from the image's token count
    (h / patch) (w / patch) as diffusers' `calculate_shift` does (FluxPipeline, StableDiffusion3Pipeline)."""
    config = scheduler_config
    if not config.get("use_dynamic_shifting"):
        return float(config.get("shift", 1.0) or 1.0)
    tokens = (latent_size[0] // patch) * (latent_size[1] // patch)
    base_len, max_len = float(config.get("base_image_seq_len", 256)), float(config.get("max_image_seq_len", 4096))
    base_shift, max_shift = float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.15))
    slope = (max_shift - base_shift) / (max_len - base_len)
    mu = tokens * slope + base_shift - slope * base_len
    return math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu


@dataclass
class FlowForwardProcess:
    """A flow model's path from the source to noise in closed form: x_sigma = (1 - sigma) x0 + sigma noise.

    The slider's t in 0..999 stands for s = t / 1000 (the strength, as a flow img2img pipeline takes it). `shift`
    is the model's timestep shift, applied as diffusers' FlowMatchEulerDiscreteScheduler does to its sigmas:
    sigma = shift s / (1 + (shift - 1) s) (`flow_shift`: SD 3.x's static 3.0; Flux's exp(mu) for the image's size),
    so the preview at strength s shows the noise level the run starts from. shift 1 is the plain linear path."""

    axis: ClassVar[str] = "sigma"
    x0: np.ndarray  # (C, h, w) scaled latent of the source
    noise: np.ndarray  # (C, h, w) fixed noise, so dragging shows one consistent path
    previewer: Previewer
    model_id: str
    shift: float = 1.0
    num_train_timesteps: int = FLOW_TRAIN_TIMESTEPS

    def sigma(self, t: int) -> float:
        """The noise level at slider position t (clamped to 0..T-1), after the model's shift."""
        s = float(np.clip(t, 0, self.num_train_timesteps - 1)) / self.num_train_timesteps
        return self.shift * s / (1.0 + (self.shift - 1.0) * s)

    def latent(self, t: int) -> np.ndarray:
        """(C, h, w) float32 latent at slider position t."""
        sigma = self.sigma(t)
        return ((1.0 - sigma) * self.x0 + sigma * self.noise).astype(np.float32)

    def preview(self, t: int) -> np.ndarray:
        """uint8 RGB (h, w, 3) at latent resolution (the cheap map: the slider drags on the GUI thread)."""
        previewer = cheap(self.previewer)
        assert previewer is not None  # a forward process always comes with its model's previewer
        return previewer.project(self.latent(t))


@dataclass
class Trajectory:
    """Per step of a run: its timestep, the latent x_t and the predicted clean latent x0_hat.

    xt[i] and x0[i] are float32 arrays (B, C, h, w), one row per image of the batch; `model`
    is the request's model source, so a full decode uses the VAE that made them. `axis` is "t" for DDPM-family
    runs and "sigma" for flow runs (set by the recorder): then timesteps[i] is the flow scheduler's timestep,
    sigma * 1000, and x0[i] = x_t - sigma v."""

    timesteps: list[int] = field(default_factory=list)
    xt: list[np.ndarray] = field(default_factory=list)
    x0: list[np.ndarray] = field(default_factory=list)
    previewer: Previewer | None = None
    model: str = ""
    # (index, which, batch_index) -> uint8 RGB the engine already decoded (its per-step previews with a small VAE,
    # whose colours no linear map reproduces): the slider shows these instead of the projection
    frames: dict[tuple[int, str, int], np.ndarray] = field(default_factory=dict)
    axis: str = "t"

    def __len__(self) -> int:
        return len(self.timesteps)

    def sigma(self, index: int) -> float:
        """A flow run's noise level at step `index` (its timestep / 1000)."""
        return float(self.timesteps[index]) / FLOW_TRAIN_TIMESTEPS

    def latent(self, index: int, which: str = "x0", batch_index: int = 0) -> np.ndarray:
        """(C, h, w) float32 latent of step `index`: "x0" the predicted clean latent, "xt" the noisy one."""
        if which not in ("x0", "xt"):
            raise ValueError(f"which must be 'x0' or 'xt', not {which!r}")
        return (self.x0 if which == "x0" else self.xt)[index][batch_index]

    def previews(self, index: int, which: str = "x0", batch_index: int = 0) -> np.ndarray:
        """Cheap uint8 RGB (h, w, 3) of a step: the engine's own decode when it kept one, else the latent-resolution
        projection (a TAESD previewer's linear map: this runs on the GUI thread while the slider is dragged); grey
        when no previewer came with it."""
        frame = self.frames.get((index, which, batch_index))
        if frame is not None:
            return frame
        latent = self.latent(index, which, batch_index)
        previewer = cheap(self.previewer)
        if previewer is None:
            return np.full((latent.shape[1], latent.shape[2], 3), 128, dtype=np.uint8)
        return previewer.project(latent)
