"""The one VAE encode, VAE decode and prompt embedding that sampling, inversion and the engine's services share.

Kept in one place so every caller gets the same scaling, shift and fp16 upcast (copies of them drifted before).
"""

from __future__ import annotations

import torch
from PIL import Image

from desktop_app.engine.device import vae_precision
from desktop_app.engine.models import LoadedModel


def text_conditioning(
    loaded: LoadedModel, prompts: list[str], height: int, width: int
) -> tuple[torch.Tensor, dict | None]:
    """What a direct UNet call needs for these prompts: encoder_hidden_states, and for SDXL the added_cond_kwargs.

    SD 1.x / 2.x: (embeds (B, L, D), None). SDXL: both text encoders' penultimate states joined,
    plus {"text_embeds": pooled, "time_ids": (orig size, crop 0,0, target size)},
    as the SDXL pipelines build them. For code (DDIM inversion) that calls
    `unet(x, t, encoder_hidden_states=e, added_cond_kwargs=c)` itself.
    """
    pipe = loaded.pipe
    device = loaded.device
    if not loaded.is_xl:
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return embeds, None
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    time_ids = pipe._get_add_time_ids(
        (height, width),
        (0, 0),
        (height, width),
        dtype=embeds.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    return embeds, {"text_embeds": pooled, "time_ids": time_ids.to(device).repeat(len(prompts), 1)}


def embed_prompt(loaded: LoadedModel, text: str) -> torch.Tensor:
    """(1, L, D) text-encoder hidden states of one prompt ("" gives the unconditional embedding)."""
    embeds, _ = text_conditioning(loaded, [text], 64, 64)
    return embeds


def vae_decode(loaded: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, C, h, w) -> pixels (B, 3, H, W) in [-1, 1], upcast to fp32 when the VAE asks for it."""
    vae = loaded.pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with vae_precision(vae) as dtype:
        latents = latents.to(vae.device, dtype) / vae.config.scaling_factor + shift
        return vae.decode(latents, return_dict=False)[0]


def vae_encode(loaded: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, h, w) (posterior mean), upcast like vae_decode."""
    vae = loaded.pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with vae_precision(vae) as dtype:
        mean = vae.encode(pixels.to(vae.device, dtype)).latent_dist.mean
        return ((mean - shift) * vae.config.scaling_factor).to(loaded.dtype)


def encode_image(loaded: LoadedModel, image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Scaled latent (1, C, h, w) of an image at `size` (default: its own, rounded down to a multiple of 8):
    the deterministic posterior mean that inversion, the forward process and mask suggestion need."""
    pipe = loaded.pipe
    width, height = size or (max(64, image.width - image.width % 8), max(64, image.height - image.height % 8))
    pixels = pipe.image_processor.preprocess(image, height=height, width=width).to(loaded.device)
    with torch.inference_mode():
        return vae_encode(loaded, pixels)


def decode_images(loaded: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """Scaled latents (B, C, h, w) -> B RGB images."""
    with torch.inference_mode():
        pixels = vae_decode(loaded, latents)
    return loaded.pipe.image_processor.postprocess(pixels, output_type="pil")
