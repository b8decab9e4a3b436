"""Seamless inpainting: soft masks (differential diffusion), a blend band outside the mask and a colour match.

Soft masks: a grey level m in [0, 1] is a per-pixel strength. After denoising step i of the N the run takes
(i from 0), a latent pixel keeps the model's value only where m > 1 - (i + 1) / N; elsewhere it is set back to
the source latent noised to the next timestep with the run's own noise (the clean source after the last step).
A pixel of grey m is thus denoised freely over the last m * N steps: img2img at strength m * strength, per pixel.
This is Differential Diffusion's rule (Levin & Fried 2023, Alg. 1; diffusers' community
`pipeline_stable_diffusion_xl_differential_img2img.py` with its `1 - map`); m = 1 is never set back, so an
all-white soft mask runs exactly as a hard one.

Blend band and colour match act on pixels at the source's size in the paste-back: every pixel farther than the
band from the painted mask is the source's, bit for bit, whatever was generated (and after any number of rounds).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

MAX_BAND = 64
RING = 16  # px just outside the mask and band where the colour match compares the result with the source
MAX_DRIFT = 40  # levels: a ring pixel further than this from the source was repainted, not drifted
MIN_HELD = 0.5  # the share of the ring that must show the source for a drift to be measured


# -- distances on the pixel grid --------------------------------------------------------------
def _shifts(array: np.ndarray, diagonal: bool) -> list[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """(target, source) slice pairs moving `array` one pixel in each of 4 (or 8) directions."""
    a, b, c = slice(1, None), slice(None, -1), slice(None)
    moves = [((a, c), (b, c)), ((b, c), (a, c)), ((c, a), (c, b)), ((c, b), (c, a))]
    if diagonal:
        moves += [((a, a), (b, b)), ((b, b), (a, a)), ((a, b), (b, a)), ((b, a), (a, b))]
    return moves


def spread(values: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(distance, nearest value) of every pixel to the pixels where `values` > 0, up to `limit` px.

    `values` (H, W) uint8. Distance is 0 inside, 1..limit outside, limit + 1 beyond; rings grow by 4- and
    8-neighbour steps in turn (an octagon, near a Euclidean disc). The distance is never less than the Chebyshev
    one, so the pixels it reaches lie inside `grow_mask(mask, limit)`. The nearest value is the largest value of
    the inside pixels that reached the pixel first (0 beyond the limit)."""
    reached = values > 0
    distance = np.where(reached, 0, limit + 1).astype(np.int32)
    nearest = np.where(reached, values, 0).astype(np.uint8)
    for k in range(1, limit + 1):
        candidate = nearest.copy()
        for (ty, tx), (sy, sx) in _shifts(values, diagonal=k % 2 == 0):
            np.maximum(candidate[ty, tx], nearest[sy, sx], out=candidate[ty, tx])
        new = ~reached & (candidate > 0)
        if not new.any():
            break
        distance[new] = k
        nearest[new] = candidate[new]
        reached |= new
    return distance, nearest


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The bounding box of mask > 0 grown by `margin` px, clipped to the image; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    h, w = mask.shape
    return (
        slice(max(0, int(ys.min()) - margin), min(h, int(ys.max()) + margin + 1)),
        slice(max(0, int(xs.min()) - margin), min(w, int(xs.max()) + margin + 1)),
    )


# -- the blend band -----------------------------------------------------------------------------
def band_mask(feathered: Image.Image, band: int) -> Image.Image:
    """The paste-back mask with a blend band: `feathered` (the inward-feathered painted mask, "L") inside, and
    outside it a smoothstep ramp over `band` px from the edge's own value down to 0. Beyond the band: 0."""
    feathered = feathered.convert("L")
    band = max(0, min(MAX_BAND, int(band)))
    if band == 0:
        return feathered
    values = np.asarray(feathered, dtype=np.uint8)
    box = _box(values, band)
    if box is None:
        return feathered
    distance, nearest = spread(values[box], band)
    t = np.clip((band + 1 - distance) / (band + 1), 0.0, 1.0)  # 1 at the edge, 0 past the band
    ramp = nearest * (t * t * (3 - 2 * t))
    out = values.copy()
    inner = out[box]
    outside = distance > 0
    inner[outside] = np.rint(ramp[outside]).astype(np.uint8)
    return Image.fromarray(out, "L")


def band_region(mask: Image.Image, band: int) -> Image.Image:
    """Where the paste-back may change pixels: the painted mask grown by the band (a square, so it holds the
    octagonal band of `band_mask`); 255 there, 0 elsewhere. Tests and the bench check the rest is untouched."""
    from desktop_app.core.imaging import grow_mask

    painted = mask.convert("L").point(lambda v: 255 if v else 0)
    return grow_mask(painted, max(0, min(MAX_BAND, int(band))))


# -- the colour match ---------------------------------------------------------------------------
def color_match(result: Image.Image, source: Image.Image, mask: Image.Image, band: int = 0) -> Image.Image:
    """The result with the generated region's colour drift undone.

    In the ring just outside mask + band the result should show the source (the pipeline held it to the source;
    a 9-channel UNet repaints it too), so any difference there is the drift of the VAE round trip and of the model
    (diffusers#5808). The per-channel mean difference over those pixels is added to mask + band; ring pixels
    the model repainted (off by more than MAX_DRIFT) are left out, and with under half the ring left (a job the
    model ran at a smaller size repaints the ring as well) nothing is changed.
    Comparing the same pixels, not the inside with the outside, keeps what the prompt asked for (a green box stays
    green) and works whatever the surroundings hold. Only the mean (an offset is the same in RGB and in any linear
    space such as YCbCr): the std of a ring holding other things than the region (a shape next to a background)
    would stretch the region's colours away. Pixels outside mask + band are the result's as given (the paste-back
    takes the source there anyway)."""
    result, source = result.convert("RGB"), source.convert("RGB")
    values = np.asarray(mask.convert("L"), dtype=np.uint8)
    band = max(0, min(MAX_BAND, int(band)))
    reach = band + RING
    box = _box(values, reach)
    if box is None:
        return result
    distance, _ = spread(values[box], reach)
    ring = (distance > band) & (distance <= reach)  # just past the band: the result should be the source here
    if not ring.any():  # the mask and band cover the picture: nothing to compare with
        return result
    res = np.asarray(result, dtype=np.float64)[box]  # (h, w, 3)
    src = np.asarray(source, dtype=np.float64)[box]
    differences = src[ring] - res[ring]  # (N, 3)
    held = np.abs(differences).max(-1) <= MAX_DRIFT  # where the result shows the source, give or take a drift
    if held.mean() < MIN_HELD:  # the model repainted the ring too (a job scaled to the model's size): no measure
        return result
    drift = differences[held].mean(0)  # (3,)
    region = distance <= band  # mask + band
    out = np.asarray(result, dtype=np.uint8).copy()
    patch = out[box]
    patch[region] = np.clip(np.rint(res[region] + drift), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")


# -- the paste-back -----------------------------------------------------------------------------
def blend_back(
    result: Image.Image,
    source: Image.Image,
    mask: Image.Image,
    feathered: Image.Image,
    band: int = 0,
    match: bool = False,
) -> Image.Image:
    """`paste_back` with the seamless options: the result colour-matched (when `match`), then composited over
    the source through the feathered mask extended by the blend band. With band 0 and no match it is exactly
    `paste_back(result, source, feathered)`. `mask` is the painted (grown) mask, `feathered` its inward feather."""
    from desktop_app.core.imaging import paste_back

    if match:
        result = color_match(result, source, mask, band)
    return paste_back(result, source, band_mask(feathered, band))


# -- soft masks: the differential diffusion step hook -----------------------------------------------
def pipeline_mask(mask: Image.Image) -> Image.Image:
    """The mask the pipeline gets for a soft run: every pixel with any grey is open to the model (diffusers
    binarises at 0.5, which would keep pixels under 50% from ever changing); the grey levels act in the hook."""
    return mask.convert("L").point(lambda v: 255 if v else 0)


class SoftInpaint:
    """Differential diffusion through `callback_on_step_end` (one per run; see the module docstring).

    The run's noise and source latent are taken from the pipeline's own `scheduler.add_noise(source, noise, t)`
    call (made before the first step when strength < 1, and after each step by 4-channel UNets); a 9-channel UNet
    at strength 1 makes none, so the noise is the first latent / init_noise_sigma and the source is encoded here."""

    def __init__(self, loaded: Any, mask: Image.Image, image: Image.Image, crop_padding: int | None = None) -> None:
        self.loaded = loaded
        self.mask = mask.convert("L")  # work size, grey = strength
        self.image = image.convert("RGB")  # work size
        self.crop_padding = crop_padding  # "only masked": the pipeline works on a crop around the mask
        self.noise: torch.Tensor | None = None  # (B, C, h, w)
        self.source: torch.Tensor | None = None  # (B or 1, C, h, w), scaled latent
        self._levels: torch.Tensor | None = None  # (1, 1, h, w) in [0, 1]
        self._scheduler: Any = None
        self._captured = False  # the pipeline's own add_noise has been seen
        self.resets = 0  # latent pixels set back to the source over the run (B * pixels summed per step)

    def attach(self, scheduler) -> None:
        self._scheduler = scheduler
        original = scheduler.add_noise

        def add_noise(original_samples, noise, timesteps):
            if not self._captured:  # the pipeline's first call: its source latent and noise, as it uses them
                self.source, self.noise, self._captured = original_samples, noise, True
            return original(original_samples, noise, timesteps)

        scheduler.add_noise = add_noise

    def detach(self) -> None:
        if self._scheduler is not None and "add_noise" in vars(self._scheduler):
            del self._scheduler.add_noise

    def see_first_sample(self, sample: torch.Tensor) -> None:
        """Called with the latents of step 0 before the scheduler steps: pure noise at strength 1 (a fallback:
        the pipeline's own noise replaces it when it calls add_noise before the first step end)."""
        if self.noise is None:
            sigma = float(getattr(self._scheduler, "init_noise_sigma", 1.0) or 1.0)
            self.noise = sample / sigma

    def levels(self, pipe, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        """The grey mask at the latent size (1, 1, h, w), cropped as the pipeline crops for "only masked"."""
        if self._levels is None:
            from diffusers.image_processor import VaeImageProcessor

            height, width = self.mask.height, self.mask.width
            processor = VaeImageProcessor(
                vae_scale_factor=pipe.vae_scale_factor, do_normalize=False, do_binarize=False, do_convert_grayscale=True
            )
            crops, mode = None, "default"
            if self.crop_padding is not None:
                crops = pipe.mask_processor.get_crop_region(pipeline_mask(self.mask), width, height, self.crop_padding)
                mode = "fill"
            pixels = processor.preprocess(self.mask, height=height, width=width, crops_coords=crops, resize_mode=mode)
            levels = torch.nn.functional.interpolate(pixels.float(), size=tuple(shape[-2:]), mode="area")
            self._levels = levels.clamp(0, 1).to(device)
        return self._levels

    def _source(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        if self.source is None:
            from desktop_app.engine.encoding import encode_image

            size = (latents.shape[-1] * pipe.vae_scale_factor, latents.shape[-2] * pipe.vae_scale_factor)
            self.source = encode_image(self.loaded, self.image, size)
        return self.source

    def on_step_end(self, pipe, i: int, callback_kwargs: dict) -> dict:
        latents = callback_kwargs.get("latents")
        if latents is None or self.noise is None:
            return callback_kwargs
        total = int(getattr(pipe, "num_timesteps", 0) or 0) or 1
        threshold = 1.0 - (i + 1) / total
        levels = self.levels(pipe, latents.shape, latents.device, latents.dtype)
        follow = levels > threshold  # (1, 1, h, w): these pixels keep what the model made
        if bool(follow.all()):
            return callback_kwargs
        source = self._source(pipe, latents).to(latents.device, latents.dtype)
        if i + 1 < total:
            timesteps = pipe.scheduler.timesteps[-total:]
            target = pipe.scheduler.add_noise(source, self.noise.to(latents.dtype), timesteps[i + 1 : i + 2])
        else:
            target = source
        self.resets += int((~follow).sum()) * latents.shape[0]
        callback_kwargs["latents"] = torch.where(follow, latents, target.to(latents.dtype))
        return callback_kwargs
