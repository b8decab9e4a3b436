"""A tiny random-weight Stable Diffusion folder, built offline, for plumbing tests (not quality)."""

from __future__ import annotations

import json
from pathlib import Path


def write_tokenizer(folder: Path, max_length: int = 77) -> None:
    """A byte-level CLIP tokenizer with no merges: every prompt tokenizes, one token per character."""
    from desktop_app.engine.checkpoints import _bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(str(folder))


def build_tiny_sd(folder: str | Path, *, seed: int = 0, inpaint_unet: bool = False, max_length: int = 77) -> Path:
    """Save a ~1M-parameter SD-layout pipeline (64x64 images, 8x8x4 latents) to `folder`."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9 if inpaint_unet else 4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # diffusers annotates these tuples as tuple[int] / tuple[str] (one element); any length is meant
        block_out_channels=(16, 16, 32, 32),  # pyright: ignore[reportArgumentType]
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    )
    write_tokenizer(folder / "tokenizer", max_length)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        # diffusers annotates scheduler with the KarrasDiffusionSchedulers enum and these two as required; a
        # scheduler instance and None (with requires_safety_checker=False) are what it takes
        scheduler=scheduler,  # pyright: ignore[reportArgumentType]
        safety_checker=None,  # pyright: ignore[reportArgumentType]
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    (folder / "diffusion_desk.json").write_text(
        json.dumps(
            {"name": "Tiny test model", "steps": 4, "guidance": 5.0, "width": 64, "height": 64, "scheduler": "ddim"}
        ),
        encoding="utf-8",
    )
    return folder


def builtin_or_tiny(model: str | None = None) -> str:
    """For scripts (benches, screenshot): the given model, else the built-in one, else a tiny random one built now."""
    if model:
        return model
    import tempfile

    from desktop_app.core.modelinfo import builtin_model_path

    if (builtin_model_path() / "model_index.json").is_file():
        return "builtin"
    return str(build_tiny_sd(Path(tempfile.mkdtemp()) / "tiny-sd"))
