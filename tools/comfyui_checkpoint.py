"""The smallest Stable Diffusion 1.x checkpoint ComfyUI accepts, with random weights, for tests and benches.

ComfyUI detects SD 1.x only for a UNet with model_channels 320 and context_dim 768 and builds full-size VAE and
CLIP-L configs whatever the file holds, so this is a one-level UNet (320 channels, one res block, one transformer)
beside full-size random VAE and text-encoder weights, in the original LDM layout, fp16 (about 465 MB). The local
engine loads the same file (single-file load), so a bench can run one job both ways.

    .venv/bin/python -m tools.comfyui_checkpoint OUT.safetensors
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def build(out: Path, seed: int = 0) -> Path:
    """Write the checkpoint to `out` (atomically)."""
    from desktop_app.engine.checkpoints import save_original_checkpoint

    pipe = build_pipeline(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_original_checkpoint(pipe, partial)
    os.replace(partial, out)  # a run killed half-way leaves no file that looks complete
    return out


def build_pipeline(seed: int = 0):
    """The fp16 diffusers pipeline the checkpoint holds: the same seed gives the same weights (the bench loads it
    as a diffusers folder into the local engine, which knows no one-level UNet in a single file)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from desktop_app.engine.checkpoints import config_folder, shared_tokenizer

    torch.manual_seed(seed)
    sd1 = config_folder("sd1")
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320,),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(sd1 / "vae")))  # pyright: ignore[reportArgumentType]
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(sd1 / "text_encoder")))
    pipe = StableDiffusionPipeline(
        vae=vae,  # pyright: ignore[reportArgumentType]
        text_encoder=text_encoder,
        tokenizer=shared_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler.from_pretrained(str(sd1 / "scheduler")),  # pyright: ignore[reportArgumentType]
        safety_checker=None,  # pyright: ignore[reportArgumentType]
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )
    pipe.to(torch.float16)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.out, args.seed))


if __name__ == "__main__":
    main()
