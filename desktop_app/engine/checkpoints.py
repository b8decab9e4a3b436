"""Single-file checkpoints: which family a file is (from tensor names and shapes), and where its configs are.

A single `.safetensors` file in the original CompVis / SGM layout carries weights
only; diffusers needs a config for each component to build the models. We ship
those configs (`resources/configs/<family>/`), so loading needs no network.

Detection reads the header only (names, shapes, metadata): a multi-GB file is
never read to decide what it is.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from desktop_app.core.errors import ModelError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_SD1 = "cond_stage_model.transformer."
OPENCLIP_SD2 = "cond_stage_model.model."
CLIP_SDXL = "conditioner.embedders.0.transformer."
OPENCLIP_SDXL = "conditioner.embedders.1.model."
CONFIGS_ENV = "DIFFUSION_DESK_MODEL_CONFIGS"

# family -> (human name, diffusers pipeline class for generation, is inpainting)
FAMILIES: dict[str, tuple[str, str, bool]] = {
    "sd1": ("Stable Diffusion 1.x", "StableDiffusionPipeline", False),
    "sd1-inpaint": ("Stable Diffusion 1.x inpainting", "StableDiffusionPipeline", True),
    "sd2": ("Stable Diffusion 2.x (epsilon)", "StableDiffusionPipeline", False),
    "sd2-v": ("Stable Diffusion 2.x (v-prediction)", "StableDiffusionPipeline", False),
    "sd2-inpaint": ("Stable Diffusion 2.x inpainting", "StableDiffusionPipeline", True),
    "sdxl": ("Stable Diffusion XL", "StableDiffusionXLPipeline", False),
    "sdxl-inpaint": ("Stable Diffusion XL inpainting", "StableDiffusionXLPipeline", True),
}


@dataclass(frozen=True)
class Detection:
    """What a checkpoint is: its family, and what was seen to decide it."""

    family: str
    in_channels: int
    context_dim: int
    prediction_type: str  # epsilon | v_prediction
    evidence: tuple[str, ...] = field(default=())
    prediction_known: bool = True  # False: SD 2.x with no hint in the file; the loader probes the UNet

    @property
    def name(self) -> str:
        return FAMILIES[self.family][0]

    @property
    def is_xl(self) -> bool:
        return self.family.startswith("sdxl")

    @property
    def is_inpaint(self) -> bool:
        return FAMILIES[self.family][2]


# -- reading the header -------------------------------------------------------------------------
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")  # engine.models.PICKLE_SUFFIXES (no import cycle)


def _damaged(path: Path, why: str) -> ModelError:
    return ModelError(
        f"{path} is damaged or not a model: not a readable .safetensors file ({why}).",
        "Choose another file, or replace this one with an intact copy of the model.",
    )


def _what_it_is(path: Path, head: bytes) -> str | None:
    """A name for a file that is not a .safetensors file at all (read from its name and first bytes)."""
    if path.suffix.lower() in _PICKLE_SUFFIXES or head[:2] in (b"PK", b"\x80\x02") or head[:1] == b"\x80":
        return "a pickle checkpoint (PyTorch .ckpt/.pt/.bin)"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "a PNG image"
    if head[:4] == b"GGUF":
        return "a GGUF file"
    return None


def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor names -> shapes, and the metadata, of a .safetensors file, reading only its header.

    Anything else (a pickle, a header that is not a JSON object, a list as `__metadata__`, a shape that is not a
    list of whole numbers, 200,000 nested brackets) raises ModelError with what the file is and a hint; nothing
    else escapes."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            kind = _what_it_is(path, raw)
            if raw[:4] == b"GGUF":
                raise ModelError(
                    f"{path.name} is a GGUF file, not a .safetensors file.",
                    "Open it as a model: GGUF files of FLUX.1 and SD 3.x transformers load as models "
                    "(with the gguf package installed).",
                )
            if kind is not None and path.suffix.lower() != ".safetensors":
                raise ModelError(
                    f"{path.name} is {kind}, not a .safetensors file: only a .safetensors header can be read "
                    "without loading the file.",
                    "Pickles can hide code: load it with --allow-pickle ('Allow pickle checkpoints') only if you "
                    "trust its source; better, use a .safetensors version.",
                )
            if len(raw) != 8:
                raise _damaged(path, "file too short")
            (length,) = struct.unpack("<Q", raw)
            if length <= 1 or length > 100 * 1024 * 1024:
                raise _damaged(path, f"{kind}, not a .safetensors file" if kind else "bad header length")
            text = fh.read(length)
    except PermissionError as exc:
        raise ModelError(
            f"Cannot read {path}: permission denied.", "Give your user read permission on the file."
        ) from exc
    except IsADirectoryError as exc:
        raise ModelError(f"{path} is a folder, not a .safetensors file.", "Give the path of a model file.") from exc
    except OSError as exc:
        raise _damaged(path, exc.strerror or str(exc)) from exc
    if len(text) != length:
        raise _damaged(path, "the header is cut short")
    try:
        header = json.loads(text)
    except RecursionError as exc:  # json's C decoder counts its depth: 200,000 nested brackets end here
        raise _damaged(path, "the header nests too deep") from exc
    except (ValueError, UnicodeDecodeError, MemoryError) as exc:
        raise _damaged(path, f"{kind}, not a .safetensors file" if kind else "the header is not JSON") from exc
    if not isinstance(header, dict):
        raise _damaged(path, f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _damaged(path, f"__metadata__ is a JSON {type(metadata).__name__}, not an object")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise _damaged(path, f"the entry of tensor {name[:80]!r} is not an object")
        shape = info.get("shape", [])
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise _damaged(path, f"the shape of tensor {name[:80]!r} is not a list of whole numbers")
        shapes[name] = tuple(shape)
    return shapes, {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def shapes_of(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}


# -- detection ----------------------------------------------------------------------------------
def _strip_state_dict_prefix(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    # some trainers save {"state_dict": ...} flattened as "state_dict.model.diffusion_model..."
    if shapes and all(k.startswith("state_dict.") for k in shapes):
        return {k[len("state_dict.") :]: v for k, v in shapes.items()}
    return dict(shapes)


def _has(shapes: Mapping[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def _unsupported(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """A name for a checkpoint we recognise but do not run, else None."""
    keys = shapes.keys()

    def any_key(*names: str) -> bool:
        return any(n in shapes for n in names)

    def any_part(*parts: str) -> bool:
        return any(p in k for k in keys for p in parts)

    if any_key(
        "double_blocks.0.img_attn.norm.key_norm.scale",
        "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale",
    ):
        return "a FLUX.1 model"
    if any_part("single_stream_modulation.lin.weight", "early_stream_modulations.image.lin.weight"):
        return "a FLUX.2 model"
    if any_part("distilled_guidance_layer.in_proj"):
        return "a Chroma model"
    if any_part("joint_blocks.0.context_block"):
        return "a Stable Diffusion 3 / 3.5 model"
    if any_part("text_encoders.clip_l.", "text_encoders.t5xxl."):
        return "a Stable Diffusion 3 text-encoder bundle"
    if "edm_mean" in shapes:
        return "a Playground v2.5 model"
    if any_part("clip_txt_mapper.", "down_blocks.1.0.channelwise"):
        return "a Stable Cascade model"
    if any_part("control_model.", "controlnet_cond_embedding.", "input_hint_block."):
        return "a ControlNet (it guides a base model; it is not one)"
    if any_part("motion_modules."):
        return "an AnimateDiff motion module"
    if any_part("lora_unet_", "lora_te", ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", "lora.down"):
        return "a LoRA (add it to a base model as a LoRA)"
    if any_key("emb_params", "string_to_param.*", "clip_l", "clip_g") or any_part("string_to_param"):
        return "a textual-inversion embedding"
    if any_part(
        "patchify_proj.", "cap_embedder.", "x_embedder.", "adaLN_modulation", "img_in.weight", "head.modulation"
    ):
        return "a transformer (DiT) image or video model"
    if not _has(shapes, UNET) and (
        _has(shapes, "encoder.down.") or _has(shapes, "decoder.up.") or _has(shapes, "encoder.down_blocks.")
    ):
        return "a VAE only (choose it as a model's VAE, not as a model)"
    if _has(shapes, "down_blocks.") and _has(shapes, "conv_in.") and not _has(shapes, UNET):
        return "a UNet in diffusers layout without the rest of the pipeline"
    return None


def detect_family(
    shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None, filename: str = ""
) -> Detection:
    """SD 1.x / 2.x (eps or v) / XL, base or 9-channel inpainting, from names and shapes; ModelError otherwise."""
    shapes = _strip_state_dict_prefix(shapes)
    metadata = metadata or {}
    name = Path(filename).name or "This file"
    flow = detect_flow(shapes, metadata, filename)
    if flow is not None:  # engine.flow_files loads these; this is the SD 1.x / 2.x / XL reader
        raise ModelError(
            f"{name} is {flow.name} ({', '.join(flow.evidence)}), not a Stable Diffusion 1.x / 2.x / XL checkpoint.",
            "Open it as a model (Models dialog, --model): FLUX.1 and SD 3.x files load with their text encoders "
            "from the hub cache or a folder beside the file.",
        )
    if not _has(shapes, UNET):
        what = _unsupported(shapes)
        if what:
            raise ModelError(
                f"{name} is {what}, not a Stable Diffusion checkpoint.", "Choose an SD 1.x, 2.x or XL checkpoint."
            )
        raise ModelError(
            f"{name} has no Stable Diffusion UNet (no '{UNET}*' tensors): its family could not be recognised.",
            "Choose an SD 1.x, 2.x or XL checkpoint, or a diffusers folder.",
        )
    what = _unsupported(
        {k: v for k, v in shapes.items() if not k.startswith(UNET) or "joint_blocks" in k or "double_blocks" in k}
    )
    if what and not what.startswith(("a VAE", "a UNet")):
        raise ModelError(
            f"{name} is {what}, not a Stable Diffusion 1.x / 2.x / XL checkpoint.",
            "Choose an SD 1.x, 2.x or XL checkpoint.",
        )
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise ModelError(
            f"{name} is damaged or not a model: its UNet has no input convolution.",
            "Choose another file, or replace this one with an intact copy of the model.",
        )
    in_channels = int(conv_in[1])
    context = sorted({v[-1] for k, v in shapes.items() if k.startswith(UNET) and k.endswith("attn2.to_k.weight")})
    context_dim = int(context[0]) if len(context) == 1 else (int(context[-1]) if context else 0)
    adm = shapes.get(UNET + "label_emb.0.0.weight")
    has_clip_l = _has(shapes, CLIP_SD1)
    has_openclip = _has(shapes, OPENCLIP_SD2)
    has_xl_te = _has(shapes, CLIP_SDXL) and _has(shapes, OPENCLIP_SDXL)
    evidence = [f"UNet input channels {in_channels}", f"cross-attention width {context_dim}"]
    if adm is not None:
        evidence.append(f"added-conditioning input {adm[-1]}")
    if in_channels not in (4, 9):
        kind = {8: "an InstructPix2Pix model", 7: "an x4 upscaler", 5: "a depth-to-image model"}.get(
            in_channels, f"a model with a {in_channels}-channel UNet input"
        )
        raise ModelError(
            f"{name} is {kind} ({', '.join(evidence)}): not supported.",
            "Choose an SD 1.x, 2.x or XL text-to-image or inpainting checkpoint.",
        )
    inpaint = in_channels == 9
    if has_xl_te or (adm is not None and _has(shapes, "conditioner.embedders.")):
        if not has_xl_te:
            raise ModelError(
                f"{name} looks like the SDXL refiner ({', '.join(evidence)}): it only refines images of the SDXL base model.",
                "Choose an SDXL base checkpoint.",
            )
        evidence.append("two text encoders (CLIP ViT-L + OpenCLIP ViT-bigG)")
        return Detection("sdxl-inpaint" if inpaint else "sdxl", in_channels, context_dim, "epsilon", tuple(evidence))
    if adm is not None:
        raise ModelError(
            f"{name} has a class-conditioned UNet ({', '.join(evidence)}): likely Stable unCLIP, not supported.",
            "Choose an SD 1.x, 2.x or XL checkpoint.",
        )
    if has_openclip or (not has_clip_l and context_dim == 1024):
        evidence.append("OpenCLIP ViT-H text encoder")
        if inpaint:
            return Detection("sd2-inpaint", in_channels, context_dim, "epsilon", tuple(evidence))
        prediction, known = sd2_prediction_hint(shapes, metadata, filename)
        if known:
            evidence.append(f"prediction type {prediction} (from the file)")
        return Detection(
            "sd2-v" if prediction == "v_prediction" else "sd2",
            in_channels,
            context_dim,
            prediction,
            tuple(evidence),
            known,
        )
    if has_clip_l or context_dim == 768:
        evidence.append("CLIP ViT-L text encoder")
        return Detection("sd1-inpaint" if inpaint else "sd1", in_channels, context_dim, "epsilon", tuple(evidence))
    raise ModelError(
        f"{name}: a UNet was found ({', '.join(evidence)}) but no known text encoder.",
        "Choose an SD 1.x, 2.x or XL checkpoint.",
    )


def sd2_prediction_hint(shapes: Mapping[str, Any], metadata: Mapping[str, str], filename: str = "") -> tuple[str, bool]:
    """SD 2.x comes as epsilon (512-base) and v-prediction (768-v) with identical layouts: look for a hint.

    In order: a `v_pred` marker tensor (ComfyUI), the metadata (modelspec / kohya),
    a sidecar `<name>.yaml` (AUTOMATIC1111's convention), the file name. Without
    one the loader asks the UNet itself (see `probe_v_prediction`).
    """
    if "v_pred" in shapes:
        return "v_prediction", True
    spec = (metadata.get("modelspec.prediction_type") or "").lower()
    if spec:
        return ("v_prediction" if spec.startswith("v") else "epsilon"), True
    for key in ("ss_v_parameterization", "v_parameterization", "v_pred"):
        value = (metadata.get(key) or "").lower()
        if value in ("true", "1", "yes"):
            return "v_prediction", True
        if value in ("false", "0", "no"):
            return "epsilon", True
    if filename:
        yaml = Path(filename).with_suffix(".yaml")
        if yaml.is_file():
            try:
                text = yaml.read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            if re.search(r"parameterization:\s*[\"']?v[\"']?\s*$", text, re.M):
                return "v_prediction", True
            if text:
                return "epsilon", True
        stem = Path(filename).stem.lower()
        if re.search(r"(^|[-_.])768[-_]?v($|[-_.])|v[-_]?pred", stem):
            return "v_prediction", True
        if re.search(r"512[-_]?base|[-_]base[-_]?512|(^|[-_.])base($|[-_.])", stem):
            return "epsilon", True
    return "v_prediction", False


def probe_v_prediction(unet) -> bool:
    """AUTOMATIC1111's test: at t=999 on a flat latent, an epsilon model returns about the input, a v model far below it."""
    import torch

    param = next(unet.parameters())
    with torch.inference_mode():
        x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=param.device, dtype=param.dtype)
        context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=param.device, dtype=param.dtype)
        out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=context).sample
        diff = (out.float() - x[:, :4].float()).mean().item()
    return diff < -1.0


def detect_file(path: str | os.PathLike, state_dict: Mapping[str, Any] | None = None) -> Detection:
    """Family of a checkpoint file (header only for .safetensors; a loaded pickle's state dict otherwise)."""
    if state_dict is not None:
        return detect_family(shapes_of(state_dict), {}, str(path))
    shapes, metadata = read_header(path)
    return detect_family(shapes, metadata, str(path))


# -- flow-matching transformers (SD 3.x, FLUX.1) --------------------------------------------------
FLOW_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
FLOW_VAE_PREFIXES = ("first_stage_model.", "vae.")
FLOW_TEXT_ENCODER_PREFIXES = {
    "clip_l": ("text_encoders.clip_l.",),
    "clip_g": ("text_encoders.clip_g.",),
    "t5xxl": ("text_encoders.t5xxl.",),
}
# variant -> (family, human name, config subfolder of configs/<family>/ holding its transformer/ and diffusion_desk.json)
FLOW_VARIANTS: dict[str, tuple[str, str, str]] = {
    "flux-schnell": ("flux-schnell", "FLUX.1 [schnell]", ""),
    "flux-dev": ("flux-dev", "FLUX.1 [dev]", ""),
    "flux-fill": ("flux-fill", "FLUX.1 Fill [dev]", ""),
    "flux-kontext": ("flux-kontext", "FLUX.1 Kontext [dev]", ""),
    "sd3.5-medium": ("sd3", "Stable Diffusion 3.5 Medium", ""),
    "sd3.5-large": ("sd3", "Stable Diffusion 3.5 Large", "large"),
    "sd3-medium": ("sd3", "Stable Diffusion 3 Medium", "sd3-medium"),
}


@dataclass(frozen=True)
class FlowDetection:
    """What a flow-matching transformer file is: family (core.modelinfo.FLOW_FAMILIES), variant, and its layout."""

    variant: str  # a key of FLOW_VARIANTS
    layout: str  # "original" (BFL / Stability names) | "diffusers" (a transformer/ folder's weights)
    prefix: str  # the prefix before the transformer's names ("model.diffusion_model." in ComfyUI all-in-one files)
    width: int  # the transformer's hidden width: 3072 (Flux), 1536 / 2432 (SD 3.x medium / large)
    in_channels: int  # packed latent channels in: 64 (Flux), 384 (Fill), 16 (SD 3.x)
    has_vae: bool  # the file carries the VAE too (all-in-one)
    text_encoders: tuple[str, ...] = ()  # the text encoders the file carries (clip_l, clip_g, t5xxl)
    evidence: tuple[str, ...] = field(default=())
    scaled_fp8: bool = False  # ComfyUI's fp8_scaled: FP8 weights with a `<layer>.scale_weight` each

    @property
    def family(self) -> str:
        return FLOW_VARIANTS[self.variant][0]

    @property
    def name(self) -> str:
        return FLOW_VARIANTS[self.variant][1]

    @property
    def config_subfolder(self) -> str:
        """Where under configs/<family>/ this variant's transformer/ config and diffusion_desk.json are ("": there)."""
        return FLOW_VARIANTS[self.variant][2]


def _flow_prefix(shapes: Mapping[str, tuple[int, ...]], *names: str) -> str | None:
    """The prefix under which one of `names` is in the file ("" for none), or None if it is not."""
    for prefix in ("",) + FLOW_PREFIXES:
        if any(prefix + n in shapes for n in names):
            return prefix
    return None


def _count_blocks(shapes: Mapping[str, Any], stem: str) -> int:
    rx = re.compile(re.escape(stem) + r"(\d+)\.")
    found = {int(m[1]) for k in shapes if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def _kontext_named(filename: str, metadata: Mapping[str, str]) -> bool:
    text = " ".join([Path(filename).name] + [str(v)[:500] for k, v in metadata.items() if "tokenizer" not in k])
    return "kontext" in text.lower()


def detect_flow(
    shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None, filename: str = ""
) -> FlowDetection | None:
    """An SD 3.x or FLUX.1 transformer (original or diffusers layout, alone or in an all-in-one file), else None.

    The rules, from the tensors (header only):
    - FLUX.1: `double_blocks.*` / `single_blocks.*` (original) or `transformer_blocks.*` +
      `single_transformer_blocks.*` (diffusers); the image input `img_in` / `x_embedder` is 64 wide (384: Fill,
      128: Depth / Canny, refused); a guidance embedding (`guidance_in` / `time_text_embed.guidance_embedder`)
      means dev, none schnell.
    - FLUX.1 Kontext has exactly dev's tensors: it is told from dev by its name only (`kontext` in the file name or
      the metadata, as in `flux1-kontext-dev.safetensors`); a renamed Kontext file loads as dev.
    - SD 3.x: `joint_blocks.*` (original) or `transformer_blocks.*` with a 4-D `pos_embed.proj` (diffusers),
      16 latent channels; width 2432 is 3.5 Large, 1536 medium: 3.5 Medium when its blocks have the second image
      attention (`x_block.attn2` / `attn2`, MMDiT-X), else SD 3 Medium.

    diffusers' own `single_file_utils.infer_diffusers_model_type` answers for original-layout files but not for
    these: it does not know diffusers-layout transformer files, nor Kontext, and it matches exact real-model
    numbers (a 9216-wide modulation, block 37, a 147456-long position table) where these rules read widths; its
    answer agrees with these rules on the real models' shapes (tests/test_flow_files.py checks it).
    """
    shapes = _strip_state_dict_prefix(shapes)
    metadata = metadata or {}
    evidence: list[str] = []
    found = _detect_flow(shapes, metadata, filename, evidence)
    if found is None:
        return None
    prefix = found.prefix
    scaled = any(
        k.startswith(prefix) and k.endswith(".scale_weight") and not k.startswith("text_encoders.") for k in shapes
    )
    if scaled:
        evidence.append("scaled FP8 weights")
    return replace(found, scaled_fp8=scaled, evidence=tuple(evidence))


def _detect_flow(
    shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str], filename: str, evidence: list[str]
) -> FlowDetection | None:
    has_vae = any(k.startswith(FLOW_VAE_PREFIXES) for k in shapes)
    encoders = tuple(
        name for name, prefixes in FLOW_TEXT_ENCODER_PREFIXES.items() if any(k.startswith(prefixes) for k in shapes)
    )
    # FLUX.1, original layout
    prefix = _flow_prefix(shapes, "double_blocks.0.img_attn.qkv.weight")
    layout = "original"
    if prefix is None:
        prefix = _flow_prefix(shapes, "single_transformer_blocks.0.attn.to_q.weight")
        layout = "diffusers"
    if prefix is not None:
        if layout == "original":
            image_in = shapes.get(prefix + "img_in.weight", ())
            guidance = prefix + "guidance_in.in_layer.weight" in shapes
            flux2 = prefix + "single_stream_modulation.lin.weight" in shapes
            chroma = any(k.startswith(prefix + "distilled_guidance_layer.") for k in shapes)
            if flux2 or chroma:
                return None
        else:
            image_in = shapes.get(prefix + "x_embedder.weight", ())
            guidance = prefix + "time_text_embed.guidance_embedder.linear_1.weight" in shapes
            if any(k.startswith(prefix + "distilled_guidance_layer.") for k in shapes):
                return None  # Chroma
        if len(image_in) != 2:
            raise ModelError(
                f"{Path(filename).name or 'This file'} looks like a FLUX.1 transformer but has no image input layer "
                "(img_in / x_embedder): it is damaged or cut short.",
                "Download the file again.",
            )
        width, in_channels = int(image_in[0]), int(image_in[1])
        evidence += [f"FLUX.1 blocks ({layout} layout)", f"width {width}", f"image input {in_channels}"]
        if in_channels == 128:
            raise ModelError(
                f"{Path(filename).name or 'This file'} is FLUX.1 Depth / Canny (image input {in_channels}): "
                "it needs a control image, which Diffusion Desk does not give it.",
                "Use FLUX.1 [dev], [schnell], Fill or Kontext.",
            )
        if in_channels == 384:
            variant = "flux-fill"
        elif not guidance:
            variant = "flux-schnell"
        else:
            variant = "flux-kontext" if _kontext_named(filename, metadata) else "flux-dev"
        evidence.append("guidance embedding (dev)" if guidance else "no guidance embedding (schnell)")
        if variant == "flux-kontext":
            evidence.append("'kontext' in the name or metadata")
        return FlowDetection(variant, layout, prefix, width, in_channels, has_vae, encoders, tuple(evidence))
    # SD 3.x
    prefix = _flow_prefix(shapes, "joint_blocks.0.x_block.attn.qkv.weight", "x_embedder.proj.weight")
    layout = "original"
    if prefix is None:
        prefix = _flow_prefix(shapes, "pos_embed.proj.weight")
        layout = "diffusers"
        if prefix is not None and not (  # PixArt, Hunyuan-DiT and others patch-embed too
            prefix + "time_text_embed.text_embedder.linear_1.weight" in shapes
            and any(k.startswith(prefix + "transformer_blocks.") for k in shapes)
        ):
            prefix = None
    if prefix is None:
        return None
    if layout == "original":
        proj = shapes.get(prefix + "x_embedder.proj.weight", ())
        depth = _count_blocks(shapes, prefix + "joint_blocks.")
        dual = any(k.startswith(prefix + "joint_blocks.") and ".x_block.attn2." in k for k in shapes)
    else:
        proj = shapes.get(prefix + "pos_embed.proj.weight", ())
        depth = _count_blocks(shapes, prefix + "transformer_blocks.")
        dual = any(k.startswith(prefix + "transformer_blocks.") and ".attn2." in k for k in shapes)
    if len(proj) != 4:
        raise ModelError(
            f"{Path(filename).name or 'This file'} looks like an SD 3 transformer but has no patch embedding "
            "(x_embedder.proj): it is damaged or cut short.",
            "Download the file again.",
        )
    width, in_channels = int(proj[0]), int(proj[1])
    if in_channels != 16:
        return None
    variant = "sd3.5-medium" if dual else ("sd3-medium" if width == 1536 else "sd3.5-large")
    evidence += [f"MMDiT blocks ({layout} layout)", f"width {width}", f"{depth} blocks"]
    evidence.append("dual image attention (MMDiT-X, 3.5 Medium)" if dual else "single image attention")
    return FlowDetection(variant, layout, prefix, width, in_channels, has_vae, encoders, tuple(evidence))


# -- configs ------------------------------------------------------------------------------------
def configs_root() -> Path:
    """Where the per-family config folders are: the shipped ones, or DIFFUSION_DESK_MODEL_CONFIGS (tests, custom)."""
    override = os.environ.get(CONFIGS_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files("desktop_app.resources").joinpath("configs")))


def config_folder(family: str) -> Path:
    folder = configs_root() / family
    if not (folder / "model_index.json").is_file():
        raise ModelError(
            f"The configs for {FAMILIES.get(family, (family,))[0]} are missing from {folder.parent}.",
            "Reinstall the app.",
        )
    return folder


def shared_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP BPE tokenizer (SD 1.x / 2.x / XL all use it), built from the shipped vocab with no network."""
    from transformers import CLIPTokenizer

    folder = configs_root() / "clip_tokenizer"
    if not (folder / "vocab.json").is_file():
        folder = Path(str(resources.files("desktop_app.resources").joinpath("configs").joinpath("clip_tokenizer")))
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token, model_max_length=77
    )


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte -> printable character table, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_clip_tokenizer_files(bpe_gz: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """vocab.json + merges.txt (Hugging Face layout) from CLIP's `bpe_simple_vocab_16e6.txt.gz` (shipped in open-clip-torch)."""
    import gzip

    with gzip.open(bpe_gz) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = _bytes_to_unicode()
    vocab = (
        alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return out


# -- diffusers -> original layout (export; the tests build their single files with it) ---------
def _unet_map(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(original prefix, diffusers prefix) pairs for a UNet2DConditionModel config of any depth."""
    pairs: list[tuple[str, str]] = []
    levels = len(config["block_out_channels"])
    per = config["layers_per_block"]
    per = per if isinstance(per, int) else per[0]
    down_types = config["down_block_types"]
    up_types = config["up_block_types"]
    for i in range(levels):
        for j in range(per):
            pairs.append((f"input_blocks.{i * (per + 1) + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if "CrossAttn" in down_types[i]:
                pairs.append((f"input_blocks.{i * (per + 1) + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(per + 1):
            pairs.append((f"output_blocks.{i * (per + 1) + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if "CrossAttn" in up_types[i]:
                pairs.append((f"output_blocks.{i * (per + 1) + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"input_blocks.{(i + 1) * (per + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            slot = 2 if "CrossAttn" in up_types[i] else 1
            pairs.append((f"output_blocks.{i * (per + 1) + per}.{slot}.", f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    pairs += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    return pairs


_UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]


def unet_to_original(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    pairs = _unet_map(config)
    out = {}
    for key, value in state_dict.items():
        new = None
        for hf, sd in _UNET_FIXED.items():
            if key.startswith(hf):
                new = sd + key[len(hf) :]
        if new is None:
            for sd_prefix, hf_prefix in pairs:
                if key.startswith(hf_prefix):
                    rest = key[len(hf_prefix) :]
                    if "resnets" in hf_prefix:
                        for sd_name, hf_name in _RESNET:
                            if rest.startswith(hf_name + "."):
                                rest = sd_name + rest[len(hf_name) :]
                    new = sd_prefix + rest
                    break
        if new is None:
            raise KeyError(f"no original name for UNet key {key}")
        out[UNET + new] = value
    return out


def vae_to_original(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    levels = len(config["block_out_channels"])
    per = config["layers_per_block"]
    pairs: list[tuple[str, str]] = []
    for i in range(levels):
        for j in range(per):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        pairs.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
        for j in range(per + 1):
            pairs.append((f"decoder.up.{levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
        pairs.append((f"decoder.up.{levels - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
    for part in ("encoder", "decoder"):
        for j in range(2):
            pairs.append((f"{part}.mid.block_{j + 1}.", f"{part}.mid_block.resnets.{j}."))
        pairs.append((f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0."))
        pairs.append((f"{part}.norm_out.", f"{part}.conv_norm_out."))
    attn = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for key, value in state_dict.items():
        new = key
        for sd_prefix, hf_prefix in pairs:
            if key.startswith(hf_prefix):
                rest = key[len(hf_prefix) :].replace("conv_shortcut", "nin_shortcut")
                if "attn_1" in sd_prefix:
                    for hf_name, sd_name in attn.items():
                        if rest.startswith(hf_name):
                            rest = sd_name + rest[len(hf_name) :]
                    if value.ndim == 2:
                        value = value.reshape(*value.shape, 1, 1)
                new = sd_prefix + rest
                break
        out[VAE + new] = value
    return out


def clip_to_original(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Hugging Face CLIPTextModel keys as SD 1.x / SDXL store them (`<prefix>text_model....`)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("text_projection"):
            continue
        out[prefix + (key if key.startswith("text_model.") else "text_model." + key)] = value
    return out


def openclip_to_original(state_dict: Mapping[str, Any], prefix: str, hidden: int) -> dict[str, Any]:
    """Hugging Face CLIP text keys in OpenCLIP's layout (SD 2.x, SDXL's second encoder): fused qkv, transposed projection."""
    import torch

    sd = {(k[len("text_model.") :] if k.startswith("text_model.") else k): v for k, v in state_dict.items()}
    out = {
        prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["final_layer_norm.bias"],
    }
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        src = f"encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"], 0)
            out[dst + f"attn.out_proj.{kind}"] = sd[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = sd[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = sd[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = sd[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = sd[src + f"mlp.fc2.{kind}"]
    if prefix + "text_projection" not in out:  # SD 2.x files carry one (unused by diffusers)
        out[prefix + "text_projection"] = torch.eye(hidden)
    return out


def pipeline_to_original(pipe) -> dict[str, Any]:
    """A diffusers SD / SDXL pipeline's weights in the original single-file layout."""
    sd: dict[str, Any] = {}
    sd.update(unet_to_original(pipe.unet.state_dict(), pipe.unet.config))
    sd.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    if getattr(pipe, "text_encoder_2", None) is not None:
        sd.update(clip_to_original(pipe.text_encoder.state_dict(), CLIP_SDXL))
        sd.update(
            openclip_to_original(
                pipe.text_encoder_2.state_dict(), OPENCLIP_SDXL, pipe.text_encoder_2.config.hidden_size
            )
        )
    elif pipe.text_encoder.config.hidden_act == "gelu":  # OpenCLIP (SD 2.x); OpenAI CLIP uses quick_gelu
        sd.update(
            openclip_to_original(pipe.text_encoder.state_dict(), OPENCLIP_SD2, pipe.text_encoder.config.hidden_size)
        )
    else:
        sd.update(clip_to_original(pipe.text_encoder.state_dict(), CLIP_SD1))
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_original_checkpoint(pipe, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    save_file(pipeline_to_original(pipe), str(path), metadata=metadata or {})
    return path


if __name__ == "__main__":  # python -m desktop_app.engine.checkpoints BPE_GZ OUT_DIR
    import sys

    print(build_clip_tokenizer_files(sys.argv[1], sys.argv[2]))


def read_pickle(path: Path) -> dict[str, Any]:
    """An opted-in pickle checkpoint: tensors only (weights_only=True), never arbitrary objects."""
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # UnpicklingError for anything that is not plain tensors
        import pickle

        if not isinstance(exc, pickle.UnpicklingError):
            raise ModelError(
                f"{path.name} is not a readable PyTorch checkpoint ({type(exc).__name__}): it is damaged or not a model.",
                "Choose another file, or replace this one with an intact copy (a .safetensors version is best).",
            ) from exc
        raise ModelError(
            f"{path.name} could not be read as tensors only ({type(exc).__name__}): it holds Python objects that a safe load refuses.",
            "Use a .safetensors version of the model.",
        ) from exc
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelError(f"{path.name} does not hold a state dict.", "Use a .safetensors version of the model.")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
