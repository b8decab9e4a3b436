"""Tiny random-weight SD 3.5 and Flux.1 folders, built offline, for plumbing tests of the flow-matching paths.

Each saves a diffusers folder (model_index.json + components) with the real pipeline classes and the real models'
layout: 16 latent channels, an 8x downscaling VAE with `shift_factor`, T5 + CLIP text encoders, the real
scheduler configs. 64x64 images make 8x8x16 latents (Flux packs them into 4x4 tokens of 64). The T5 tokenizer is
a Unigram model trained here on shape/colour captions (no sentencepiece, no hub); CLIP uses the byte-level one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FLUX_VARIANTS = ("dev", "schnell", "fill", "kontext")
SIZE = 64
# The real models' recommended settings, at a tiny size.
FLUX_SETTINGS: dict[str, dict[str, Any]] = {
    "dev": {"name": "Tiny FLUX.1 dev", "steps": 28, "guidance": 3.5},
    "schnell": {"name": "Tiny FLUX.1 schnell", "steps": 4, "guidance": 0.0},
    "fill": {"name": "Tiny FLUX.1 Fill dev", "steps": 28, "guidance": 30.0},
    "kontext": {"name": "Tiny FLUX.1 Kontext dev", "steps": 28, "guidance": 2.5},
}
SD3_SETTINGS: dict[str, Any] = {"name": "Tiny SD 3.5 medium", "steps": 28, "guidance": 4.5}

_COLOURS = [
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "white",
    "black",
    "grey",
    "brown",
    "cyan",
    "magenta",
    "gold",
    "silver",
]
_SHAPES = [
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "ring",
    "cross",
    "diamond",
    "hexagon",
    "moon",
    "cloud",
    "line",
    "dot",
    "spiral",
    "box",
]
_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "make",
    "turn",
    "into",
    "big",
    "small",
    "bright",
    "dark",
    "background",
    "sky",
    "sea",
    "grass",
    "floor",
    "wall",
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "photo",
    "painting",
    "drawing",
    "image",
    "picture",
    "remove",
    "add",
    "change",
    "colour",
    "color",
    "replace",
]


def _captions() -> list[str]:
    """A few hundred captions of shapes and colours: what the tests prompt with."""
    out = []
    for i, colour in enumerate(_COLOURS):
        for j, shape in enumerate(_SHAPES):
            other = _COLOURS[(i + j + 3) % len(_COLOURS)]
            word = _WORDS[(i * 7 + j) % len(_WORDS)]
            out.append(f"a {colour} {shape} on a {other} background")
            out.append(f"make the {shape} {other} {word}")
    out.append(" ".join(_WORDS))
    return out


def write_t5_tokenizer(folder: Path, model_max_length: int = 512) -> None:
    """A T5 tokenizer (Unigram, `<pad>`=0 `</s>`=1 `<unk>`=2) trained on the captions, saved to `folder`.

    transformers 5's T5Tokenizer is the tokenizers-backed one (T5TokenizerFast is an alias of it)."""
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(_captions(), trainer=trainer)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(str(Path(tmp) / "unigram.json"))
        data = json.loads((Path(tmp) / "unigram.json").read_text(encoding="utf-8"))
    vocab = [(str(piece), float(score)) for piece, score in data["model"]["vocab"]]  # [(piece, log prob)]
    t5 = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    t5.save_pretrained(str(folder))


def _clip(tokenizer_vocab: int, *, hidden: int, projection: bool, bos: int, eos: int, pad: int):
    """A 2-layer CLIP text encoder; SD3 needs the projection head (pooled `text_embeds`), Flux the plain one."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=tokenizer_vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act="gelu",
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5(vocab: int, d_model: int):
    """A 2-layer T5 encoder (gated-GELU feed-forward like T5 v1.1 / t5-xxl)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab,
            d_model=d_model,
            d_kv=8,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _vae(*, shift_factor: float, scaling_factor: float):
    """An 8x downscaling VAE with 16 latent channels and no quant convs (the Flux / SD3 layout)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # diffusers annotates these tuples as tuple[int] / tuple[str] (one element); any length is meant
        block_out_channels=(16, 16, 32, 32),  # pyright: ignore[reportArgumentType]
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        latent_channels=16,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=SIZE,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _tokenizers(folder: Path, names: tuple[str, ...]):
    """Byte-level CLIP tokenizers saved under each of `names`, loaded back."""
    from tiny_model import write_tokenizer
    from transformers import CLIPTokenizer

    out = []
    for name in names:
        write_tokenizer(folder / name, 77)
        out.append(CLIPTokenizer.from_pretrained(str(folder / name)))
    return out


def _write_settings(folder: Path, settings: dict[str, Any]) -> None:
    data = {**settings, "width": SIZE, "height": SIZE, "scheduler": "euler"}
    (folder / "diffusion_desk.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def build_tiny_flux(folder: str | Path, *, variant: str = "dev", seed: int = 0) -> Path:
    """Save a tiny FLUX.1 folder: `dev` / `schnell` (FluxPipeline), `fill` (FluxFillPipeline, 384 input channels),
    `kontext` (FluxKontextPipeline). schnell has no guidance embedding and an unshifted schedule, like the real one."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxFillPipeline,
        FluxKontextPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import T5Tokenizer

    if variant not in FLUX_VARIANTS:
        raise ValueError(f"variant must be one of {FLUX_VARIANTS}, not {variant!r}")
    folder = Path(folder)
    torch.manual_seed(seed)
    # (16 latent channels) x 2x2 packing = 64; Fill adds the masked image's 64 and the 8x8 pixel mask x 2x2 = 256
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=384 if variant == "fill" else 64,
        out_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # the T5 width
        pooled_projection_dim=32,  # the CLIP width
        guidance_embeds=variant != "schnell",
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )
    vae = _vae(shift_factor=0.1159, scaling_factor=0.3611)  # the FLUX.1 VAE's
    (tokenizer,) = _tokenizers(folder, ("tokenizer",))
    text_encoder = _clip(
        len(tokenizer),
        hidden=32,
        projection=False,
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )
    write_t5_tokenizer(folder / "tokenizer_2")
    tokenizer_2 = T5Tokenizer.from_pretrained(str(folder / "tokenizer_2"))
    text_encoder_2 = _t5(len(tokenizer_2), 32)
    if variant == "schnell":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    cls = {"fill": FluxFillPipeline, "kontext": FluxKontextPipeline}.get(variant, FluxPipeline)
    pipe = cls(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(str(folder))
    _write_settings(folder, FLUX_SETTINGS[variant])
    return folder


def build_tiny_sd3(folder: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny SD 3.5-medium-layout folder (StableDiffusion3Pipeline): MMDiT-X with a dual-attention layer and
    RMS qk-norm, two CLIPs with projection + T5, shift-3 flow schedule."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Tokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # the T5 width (the two CLIPs' 32 + 32 are padded to it)
        caption_projection_dim=32,
        pooled_projection_dim=64,  # both CLIPs' pooled 32 + 32
        pos_embed_max_size=16,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = _vae(shift_factor=0.0609, scaling_factor=1.5305)  # the SD 3.x VAE's
    tokenizer, tokenizer_2 = _tokenizers(folder, ("tokenizer", "tokenizer_2"))
    encoders = [
        _clip(
            len(tok),
            hidden=32,
            projection=True,
            bos=tok.bos_token_id,
            eos=tok.eos_token_id,
            pad=tok.pad_token_id,
        )
        for tok in (tokenizer, tokenizer_2)
    ]
    write_t5_tokenizer(folder / "tokenizer_3", model_max_length=256)
    tokenizer_3 = T5Tokenizer.from_pretrained(str(folder / "tokenizer_3"))
    text_encoder_3 = _t5(len(tokenizer_3), 64)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=encoders[0],  # pyright: ignore[reportArgumentType]
        tokenizer=tokenizer,
        text_encoder_2=encoders[1],  # pyright: ignore[reportArgumentType]
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(str(folder))
    _write_settings(folder, SD3_SETTINGS)
    return folder


def tiny_flow_dir(tmp_path_factory, name: str) -> Path:
    """For session fixtures: build `name` ("sd3" or "flux-<variant>") once under a fresh temporary folder."""
    base = tmp_path_factory.mktemp("flow-models") / f"tiny-{name}"
    if name == "sd3":
        return build_tiny_sd3(base)
    return build_tiny_flux(base, variant=name.removeprefix("flux-"))
