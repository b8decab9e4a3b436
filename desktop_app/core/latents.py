"""Latents as plain numpy data: what crosses from the engine's thread to the window (no torch here).

The engine fits a `LatentPreviewer` to its VAE once at load (engine.preview.fit_previewer);
projecting with it is a tiny matrix product, cheap enough for the GUI thread while a slider is dragged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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

    x0: np.ndarray  # (C, h, w) scaled latent of the source
    noise: np.ndarray  # (C, h, w) fixed noise, so dragging shows one consistent path
    alphas_cumprod: np.ndarray  # (T,)
    previewer: LatentPreviewer
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
        """uint8 RGB (h, w, 3) at latent resolution."""
        return self.previewer.project(self.latent(t))


@dataclass
class Trajectory:
    """Per step of a run: its timestep, the latent x_t and the predicted clean latent x0_hat.

    xt[i] and x0[i] are float32 arrays (B, C, h, w), one row per image of the batch; `model`
    is the request's model source, so a full decode uses the VAE that made them."""

    timesteps: list[int] = field(default_factory=list)
    xt: list[np.ndarray] = field(default_factory=list)
    x0: list[np.ndarray] = field(default_factory=list)
    previewer: LatentPreviewer | None = None
    model: str = ""
    # (index, which, batch_index) -> uint8 RGB the engine already decoded (its per-step previews with a small VAE,
    # whose colours no linear map reproduces): the slider shows these instead of the projection
    frames: dict[tuple[int, str, int], np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.timesteps)

    def latent(self, index: int, which: str = "x0", batch_index: int = 0) -> np.ndarray:
        """(C, h, w) float32 latent of step `index`: "x0" the predicted clean latent, "xt" the noisy one."""
        if which not in ("x0", "xt"):
            raise ValueError(f"which must be 'x0' or 'xt', not {which!r}")
        return (self.x0 if which == "x0" else self.xt)[index][batch_index]

    def previews(self, index: int, which: str = "x0", batch_index: int = 0) -> np.ndarray:
        """Cheap uint8 RGB (h, w, 3) of a step: the engine's own decode when it kept one, else the latent-resolution
        projection; grey when no previewer came with it."""
        frame = self.frames.get((index, which, batch_index))
        if frame is not None:
            return frame
        latent = self.latent(index, which, batch_index)
        if self.previewer is None:
            return np.full((latent.shape[1], latent.shape[2], 3), 128, dtype=np.uint8)
        return self.previewer.project(latent)
