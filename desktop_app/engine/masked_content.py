"""What the masked area starts from (A1111's "Masked content"): original, fill, latent noise, latent nothing.

- "original": the source's pixels, as diffusers does by default.
- "fill": a pixel-space prefill before the call: the hole is filled with the surroundings' colours (A1111's
  iterated blur of the unmasked pixels into the hole), so the encoded image latent there is their colour.
- "latent noise" / "latent nothing": a latent-space prefill. A1111 replaces the image latent x0 inside the mask
  by the seed's noise or by zeros before it is noised to the start timestep. diffusers has no hook between its
  VAE encode and `scheduler.add_noise` in `StableDiffusionInpaintPipeline.prepare_latents`, and neither of the two
  public ways fits: `latents=` is taken as pure noise (scaled by `init_noise_sigma`, the image never mixed in,
  and reused as the noise that re-noises the kept area each step), and `callback_on_step_end` runs after the
  UNet's first step. So `latent_masked_content` wraps `pipe.prepare_latents` for the one call (an instance
  attribute, removed afterwards): the start x_t inside the mask becomes add_noise(x0', noise, t) with
  x0' = noise (the same seeded noise, as A1111's `create_random_tensors(seeds)`) or 0.

At strength 1 diffusers starts the whole latent from noise alone (x_T = noise * init_noise_sigma), so the four
modes start alike there; "latent noise" is meant for strength 1 (below it part of that noise stays in the result)
and "fill" / "latent nothing" show below 1. `masked_content_notice` says so.

A 9-channel inpainting UNet also sees the masked image, and diffusers greys the masked area there
(`init_image * (mask < 0.5)`) whatever we prefill; masked content changes only its start latent x_t, like a
4-channel UNet's, and leaves those conditioning channels as diffusers makes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image, ImageFilter, ImageOps

from desktop_app.core.requests import MASKED_CONTENT, InpaintRequest

LATENT_MODES = ("latent_noise", "latent_nothing")
# (blur radius, times composited): coarse to fine, as AUTOMATIC1111's modules/masking.py `fill`
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The masked pixels replaced by the surroundings' colours; unmasked pixels (mask 0) stay exactly the source's.

    Premultiplied alpha: a blur of the unmasked pixels (alpha = 1 - mask) divided by its own alpha is the mean
    colour of the nearby unmasked pixels; composited coarse to fine it reaches into a hole of any size."""
    mask = mask.convert("L")
    if mask.size != image.size:
        mask = mask.resize(image.size, Image.Resampling.BILINEAR)
    rgb = image.convert("RGB")
    known = Image.new("RGBa", rgb.size)
    known.paste(rgb.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask))
    filled = Image.new("RGBA", rgb.size)
    for radius, repeats in _FILL_PASSES:
        blurred = (known.filter(ImageFilter.GaussianBlur(radius)) if radius else known).convert("RGBA")
        for _ in range(repeats):
            filled.alpha_composite(blurred)
    # grey mask values blend the fill with the source; 0 keeps the source bit for bit
    return Image.composite(filled.convert("RGB"), rgb, mask)


def masked_content_notice(request: InpaintRequest) -> str | None:
    """Why the chosen masked content will not show as asked, or None."""
    mode, strength = request.masked_content, request.strength
    if mode == "latent_noise" and strength < 1:
        return (
            f"Masked content latent noise at strength {strength:g} leaves part of that noise in the result; "
            "it is meant for strength 1."
        )
    if mode in ("fill", "latent_nothing") and strength >= 1:
        return (
            f"Masked content {MASKED_CONTENT[mode]} has no effect at strength 1: the masked area starts from pure "
            "noise. Use a strength below 1 (0.7 to 0.9) for it to show."
        )
    return None


def _latent_mask(pipe: Any, mask_image: Image.Image, width: int, height: int, crop_padding: int | None) -> torch.Tensor:
    """The mask as the pipeline sees it at latent size (1, 1, h/8, w/8): the same crop, binarisation and
    nearest-neighbour downsampling as `StableDiffusionInpaintPipeline.__call__` / `prepare_mask_latents`."""
    crops, resize_mode = None, "default"
    if crop_padding is not None:
        crops = pipe.mask_processor.get_crop_region(mask_image, width, height, pad=crop_padding)
        resize_mode = "fill"
    mask = pipe.mask_processor.preprocess(
        mask_image, height=height, width=width, resize_mode=resize_mode, crops_coords=crops
    )  # (1, 1, H, W) in {0, 1}
    size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return torch.nn.functional.interpolate(mask.float(), size=size)


@contextmanager
def latent_masked_content(pipe: Any, request: Any, kwargs: dict[str, Any]) -> Iterator[None]:
    """Around one inpaint pipeline call: replace the start latent inside the mask as "latent noise" / "latent
    nothing" ask (see the module docstring). A no-op for other modes, other requests and strength 1."""
    mode = getattr(request, "masked_content", "original")
    if not isinstance(request, InpaintRequest) or mode not in LATENT_MODES or "mask_image" not in kwargs:
        yield
        return
    own = "prepare_latents" in vars(pipe)
    original = pipe.prepare_latents
    mask_image, width, height = kwargs["mask_image"], int(kwargs["width"]), int(kwargs["height"])
    crop_padding = kwargs.get("padding_mask_crop")

    def prepare_latents(*args: Any, **kw: Any):
        names = ("batch_size", "num_channels_latents", "height", "width", "dtype", "device", "generator")
        kw.update(zip(names, args))
        if kw.get("latents") is not None or kw.get("is_strength_max", True):
            return original(**kw)  # strength 1: the start is noise alone, whatever the image latent
        want_noise, want_image = kw.get("return_noise", False), kw.get("return_image_latents", False)
        x_t, noise, x0 = original(**{**kw, "return_noise": True, "return_image_latents": True})  # (B, 4, h, w)
        m = _latent_mask(pipe, mask_image, width, height, crop_padding).to(x0.device, x0.dtype)  # (1, 1, h, w)
        fill = noise if mode == "latent_noise" else torch.zeros_like(x0)
        start = pipe.scheduler.add_noise(x0 * (1 - m) + fill * m, noise, kw["timestep"])
        x_t = x_t * (1 - m) + start * m  # outside the mask: exactly diffusers' own start
        out = (x_t,)
        if want_noise:
            out += (noise,)
        if want_image:
            out += (x0,)  # the kept area is re-noised from the source's own latent, as without this
        return out

    pipe.prepare_latents = prepare_latents
    try:
        yield
    finally:
        if own:
            pipe.prepare_latents = original
        else:
            del pipe.prepare_latents  # the class's method shows again
