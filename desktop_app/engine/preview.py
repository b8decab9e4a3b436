"""Cheap latent -> RGB previews: a linear map fitted to the model's own VAE once at load.

A fitted 4x3 map works for any VAE (SD, XL, the built-in one) with no hand-kept
tables, and a per-step preview is a tiny matrix product (microseconds at 64x64).
"""

from __future__ import annotations

import numpy as np


class LatentPreviewer:
    """Projects (C, h, w) latents, in the pipeline's scaled space, to uint8 RGB (h, w, 3)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights.astype(np.float32)  # (C + 1, 3): last row is the bias

    def project(self, latents: np.ndarray) -> np.ndarray:
        c = latents.shape[0]
        flat = latents.reshape(c, -1).T  # (h*w, C)
        rgb = flat @ self.weights[:c] + self.weights[c]
        rgb = rgb.reshape(latents.shape[1], latents.shape[2], 3)
        return np.clip((rgb + 1.0) * 127.5, 0, 255).astype(np.uint8)

    @classmethod
    def fit(cls, vae, scaling_factor: float, shift_factor: float = 0.0, size: int = 64, count: int = 12) -> "LatentPreviewer":
        """Encode synthetic colour fields and solve least squares from latents to downsampled RGB."""
        import torch

        rng = np.random.default_rng(0)
        images = np.empty((count, 3, size, size), dtype=np.float32)
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
        for i in range(count):
            a, b, c = rng.uniform(-1, 1, (3, 3))
            images[i] = (a[:, None, None] + b[:, None, None] * xx + c[:, None, None] * yy).clip(-1, 1)
            x0, y0 = rng.integers(0, size // 2, 2)
            images[i, :, y0 : y0 + size // 3, x0 : x0 + size // 3] = rng.uniform(-1, 1, (3, 1, 1))
        param = next(vae.parameters())
        with torch.no_grad():
            pixels = torch.from_numpy(images).to(param.device, param.dtype)
            latents = vae.encode(pixels).latent_dist.mean.float()
            latents = ((latents - shift_factor) * scaling_factor).cpu().numpy()
        _, c, h, w = latents.shape
        factor = size // h
        target = images.reshape(count, 3, h, factor, w, factor).mean(axis=(3, 5))
        x = np.concatenate([latents.transpose(0, 2, 3, 1).reshape(-1, c), np.ones((count * h * w, 1), np.float32)], axis=1)
        y = target.transpose(0, 2, 3, 1).reshape(-1, 3)
        weights, *_ = np.linalg.lstsq(x, y, rcond=None)
        return cls(weights)


def upscale_nearest(rgb: np.ndarray, factor: int) -> np.ndarray:
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else rgb
