"""Fitting the cheap latent -> RGB preview map to a model's own VAE, once at load.

A fitted (C + 1) x 3 linear map works for any VAE (SD, XL, the built-in one) with no hand-kept
tables; projecting with it (core.latents.LatentPreviewer) is a tiny matrix product.

The map is fitted to what the *decoder* shows for a latent, not to the colours of the images
that were encoded: a VAE trained on a narrow set of images (the built-in shapes model) cannot
reconstruct the synthetic fit images, and a map fitted to their colours then previews red on
blue as magenta on green.
"""

from __future__ import annotations

import numpy as np
import torch

from desktop_app.core.latents import LatentPreviewer


def _fit_images(size: int, count: int) -> np.ndarray:
    """(count, 3, size, size) in [-1, 1]: flat fields and gradients, each with a flat block of another colour."""
    rng = np.random.default_rng(0)
    images = np.empty((count, 3, size, size), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for i in range(count):
        if i % 2:
            a, b, c = rng.uniform(-1, 1, (3, 3))
            images[i] = (a[:, None, None] + b[:, None, None] * xx + c[:, None, None] * yy).clip(-1, 1)
        else:
            images[i] = rng.uniform(-1, 1, (3, 1, 1))
        side = int(rng.integers(size // 6, size // 2))
        x0, y0 = rng.integers(0, size - side, 2)
        images[i, :, y0 : y0 + side, x0 : x0 + side] = rng.uniform(-1, 1, (3, 1, 1))
    return images


def fit_previewer(
    vae, scaling_factor: float, shift_factor: float = 0.0, size: int = 64, count: int = 32
) -> LatentPreviewer:
    """Least squares from scaled latents (N, C) to the decoder's output, area-averaged to latent resolution."""
    images = _fit_images(size, count)
    param = next(vae.parameters())
    with torch.no_grad():
        pixels = torch.from_numpy(images).to(param.device, param.dtype)
        raw = vae.encode(pixels).latent_dist.mean  # (N, C, h, w), unscaled
        decoded = vae.decode(raw, return_dict=False)[0].float().clamp(-1, 1).cpu().numpy()  # (N, 3, size, size)
        latents = ((raw.float() - shift_factor) * scaling_factor).cpu().numpy()
    _, c, h, w = latents.shape
    factor = size // h
    target = decoded.reshape(count, 3, h, factor, w, factor).mean(axis=(3, 5))  # (N, 3, h, w)
    x = np.concatenate([latents.transpose(0, 2, 3, 1).reshape(-1, c), np.ones((count * h * w, 1), np.float32)], axis=1)
    y = target.transpose(0, 2, 3, 1).reshape(-1, 3)
    weights, *_ = np.linalg.lstsq(x, y, rcond=None)
    return LatentPreviewer(weights)
