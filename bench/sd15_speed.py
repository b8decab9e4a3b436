"""Engine it/s beside plain diffusers it/s on the Stable Diffusion 1.5 architecture with random weights (no download).

On a CUDA GPU: 512x512, 20 steps, fp16. On a CPU: 256x256, 2 steps, fp32, so that it stays runnable everywhere.
    python bench/sd15_speed.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import median


def build_sd15(folder: Path, dtype) -> Path:
    """The SD 1.5 component shapes (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M), random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tiny_model import write_tokenizer  # pyright: ignore[reportMissingImports] - tests/ is on sys.path
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),  # pyright: ignore[reportArgumentType] - diffusers types it tuple[int]
        latent_channels=4,
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        sample_size=512,
    )
    write_tokenizer(folder / "tokenizer", 77)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
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
        scheduler=scheduler,  # pyright: ignore[reportArgumentType] - diffusers types it as an enum
        safety_checker=None,  # pyright: ignore[reportArgumentType] - None is documented
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )
    pipe.to(dtype=dtype).save_pretrained(str(folder))
    return folder


def main() -> None:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from desktop_app.core.requests import GenerateRequest
    from desktop_app.engine.engine import Engine

    cuda = torch.cuda.is_available()
    size, steps, runs = (512, 20, 5) if cuda else (256, 2, 3)
    engine = Engine()
    folder = build_sd15(Path(tempfile.mkdtemp()) / "sd15-random", engine.dtype)
    plain = StableDiffusionPipeline.from_pretrained(
        str(folder), dtype=engine.dtype, safety_checker=None, requires_safety_checker=False
    ).to(engine.device)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    request = GenerateRequest(
        prompt="a photo of a cat",
        model=str(folder),
        steps=steps,
        guidance=7.5,
        width=size,
        height=size,
        seed=1,
        scheduler="ddim",
    )

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    def run_engine():
        return engine.run(request)

    def run_plain():
        return plain(
            "a photo of a cat",
            num_inference_steps=steps,
            guidance_scale=7.5,
            width=size,
            height=size,
            generator=[torch.Generator("cpu").manual_seed(1)],
        )

    timed(run_engine)  # warm-up
    timed(run_plain)
    engine_times, plain_times = [], []
    for _ in range(runs):
        engine_times.append(timed(run_engine))
        plain_times.append(timed(run_plain))
    e, p = median(engine_times), median(plain_times)
    print(f"SD 1.5 architecture, random weights, {size}x{size}, {steps} steps, {engine.device}, {engine.dtype}")
    print(f"engine {steps / e:.2f} it/s, diffusers {steps / p:.2f} it/s (whole call incl. text encoder and VAE decode)")
    print(f"engine/diffusers time ratio: {e / p:.3f}")


if __name__ == "__main__":
    main()
