"""Tiny random-weight SD 1.x, SD 2.x (v-prediction) and SDXL models, built offline, as diffusers folders and as
single files in the original (CompVis / SGM) key layout. Builders only: the tests are in test_models.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from tiny_model import build_tiny_sd, write_tokenizer

SETTINGS = {"name": "Tiny test model", "steps": 3, "guidance": 5.0, "width": 64, "height": 64, "scheduler": "ddim"}


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
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


def _text_config(tokenizer, hidden: int, act: str, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_sd2(
    folder: str | Path,
    *,
    seed: int = 0,
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "v_prediction",
    inpaint_unet: bool = False,
) -> Path:
    """SD 2.x layout: OpenCLIP-style text encoder (gelu), linear projections in the transformers, v-prediction."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9 if inpaint_unet else 4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48,
        norm_num_groups=8,
        # diffusers annotates the per-block tuple as tuple[int] (one element); one entry per block is meant
        attention_head_dim=(2, 4),  # pyright: ignore[reportArgumentType]
        use_linear_projection=True,
    )
    write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    text_encoder = CLIPTextModel(_text_config(tokenizer, 48, "gelu"))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(),
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
    (folder / "diffusion_desk.json").write_text(json.dumps(SETTINGS), encoding="utf-8")
    return folder


def build_tiny_sdxl(folder: str | Path, *, seed: int = 0, inpaint_unet: bool = False) -> Path:
    """SDXL layout: two text encoders (CLIP-L-like 32 wide, bigG-like 48 wide with projection), text_time added embeddings."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    te1_width, te2_width, time_dim = 32, 48, 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9 if inpaint_unet else 4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        # diffusers annotates the per-block tuples as tuple[int] (one element); one entry per block is meant
        transformer_layers_per_block=(1, 2),  # pyright: ignore[reportArgumentType]
        cross_attention_dim=te1_width + te2_width,
        norm_num_groups=8,
        attention_head_dim=(2, 4),  # pyright: ignore[reportArgumentType]
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + te2_width,
    )
    write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"))
    text_encoder = CLIPTextModel(_text_config(tokenizer, te1_width, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, te2_width, "gelu", te2_width))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    vae = _vae()
    vae.register_to_config(scaling_factor=0.13025)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        # diffusers annotates scheduler with the KarrasDiffusionSchedulers enum; a scheduler instance is what it takes
        scheduler=scheduler,  # pyright: ignore[reportArgumentType]
    )
    pipe.save_pretrained(str(folder))
    (folder / "diffusion_desk.json").write_text(json.dumps(SETTINGS), encoding="utf-8")
    return folder


def build_family(root: Path, family: str) -> Path:
    """root/<family>: a tiny diffusers folder that also serves as that family's config folder."""
    folder = root / family
    if (folder / "model_index.json").is_file():
        return folder
    if family in ("sd1", "sd1-inpaint"):
        build_tiny_sd(folder, inpaint_unet=family.endswith("inpaint"))
        data = json.loads((folder / "diffusion_desk.json").read_text())
        data["steps"] = 3
        (folder / "diffusion_desk.json").write_text(json.dumps(data))
    elif family.startswith("sd2"):
        build_tiny_sd2(
            folder,
            prediction_type="v_prediction" if family == "sd2-v" else "epsilon",
            inpaint_unet=family.endswith("inpaint"),
        )
    else:
        build_tiny_sdxl(folder, inpaint_unet=family.endswith("inpaint"))
    return folder


def save_single_file(folder: Path, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """The folder's weights as one .safetensors file in the original key layout."""
    import diffusers

    from desktop_app.engine.checkpoints import save_original_checkpoint

    index = json.loads((folder / "model_index.json").read_text())
    cls = getattr(diffusers, index["_class_name"])
    pipe = cls.from_pretrained(str(folder), local_files_only=True)
    return save_original_checkpoint(pipe, path, metadata)
