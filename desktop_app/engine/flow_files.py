"""SD 3.x and FLUX.1 model files as users have them: a transformer `.safetensors` or `.gguf` (or an all-in-one file),
its text encoders, tokenizers and VAE found in a folder or the hub cache.

Flux and SD 3.5 are mostly passed around as the transformer alone (`flux1-dev.safetensors`, city96's GGUF
quantisations) or as ComfyUI's all-in-one files: the 10 GB T5 encoder, the CLIPs and the VAE are the same for
every file of a family, so users keep one copy. This module finds that copy (in the file itself; in a folder the
user names, the DIFFUSION_DESK_FLOW_COMPONENTS folder, next to the file, or the hub cache of any base model of the
family, local files only: no network), as diffusers subfolders or as ComfyUI / Stability single files
(`clip_l.safetensors`, `t5xxl_fp16.safetensors`, BFL's `ae.safetensors`), and builds the family's pipeline around
the file's transformer with the shipped configs (`resources/configs/<family>/`). What is missing is named with
every place looked in.

GGUF files are read through diffusers' GGUF support (`GGUFQuantizationConfig`), which needs the optional `gguf`
package; their header is parsed here, so detection works without it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from desktop_app.backend import parts_for
from desktop_app.core.errors import JobCancelled, ModelError
from desktop_app.core.modelinfo import model_defaults
from desktop_app.engine import checkpoints, hub
from desktop_app.engine.checkpoints import FlowDetection

log = logging.getLogger(__name__)

COMPONENTS_ENV = "DIFFUSION_DESK_FLOW_COMPONENTS"  # a folder with text_encoder*/, tokenizer*/ and vae/ subfolders
FLOW_SUFFIXES = (".safetensors", ".sft", ".gguf")

_FLUX_REPOS = (
    "black-forest-labs/FLUX.1-schnell",
    "black-forest-labs/FLUX.1-dev",
    "black-forest-labs/FLUX.1-Fill-dev",
    "black-forest-labs/FLUX.1-Kontext-dev",
)
_SD3_REPOS = (
    "stabilityai/stable-diffusion-3.5-medium",
    "stabilityai/stable-diffusion-3.5-large",
    "stabilityai/stable-diffusion-3-medium-diffusers",
)
# variant -> its own base repo first, then the others whose text encoders and VAE are the same
BASE_REPOS: dict[str, tuple[str, ...]] = {
    "flux-schnell": _FLUX_REPOS,
    "flux-dev": (_FLUX_REPOS[1], _FLUX_REPOS[0], *_FLUX_REPOS[2:]),
    "flux-fill": (_FLUX_REPOS[2], _FLUX_REPOS[1], _FLUX_REPOS[0], _FLUX_REPOS[3]),
    "flux-kontext": (_FLUX_REPOS[3], _FLUX_REPOS[1], _FLUX_REPOS[0], _FLUX_REPOS[2]),
    "sd3.5-medium": _SD3_REPOS,
    "sd3.5-large": (_SD3_REPOS[1], _SD3_REPOS[0], _SD3_REPOS[2]),
    "sd3-medium": (_SD3_REPOS[2], _SD3_REPOS[0], _SD3_REPOS[1]),
}
# what to download for the parts: FLUX.1 schnell is not gated (Apache 2.0) and its parts serve every FLUX.1 file
COMPONENTS_REPO = {"flux": _FLUX_REPOS[0], "sd3": _SD3_REPOS[0]}
_BFL_VAE_FILES = ("ae.safetensors", "ae.sft")  # FLUX.1's VAE as Black Forest Labs ship it, beside the transformer
# Text encoders as ComfyUI and Stability ship them: one file each (Hugging Face names inside), in a folder or an
# all-in-one checkpoint under `text_encoders.<name>.`. part -> encoder name, per family.
PART_ENCODERS = {
    "flux": {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"},
    "sd3": {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"},
}
ENCODER_FILES = {
    "clip_l": ("clip_l.safetensors",),
    "clip_g": ("clip_g.safetensors",),
    "t5xxl": (
        "t5xxl_fp16.safetensors",
        "t5xxl_fp8_e4m3fn.safetensors",
        "t5xxl_fp8_e4m3fn_scaled.safetensors",
        "t5xxl.safetensors",
    ),
}
_ENCODER_MARKERS = {  # a tensor every file of the class has: what comes before it is the file's prefix
    "CLIPTextModel": "embeddings.token_embedding.weight",
    "CLIPTextModelWithProjection": "embeddings.token_embedding.weight",
    "T5EncoderModel": "encoder.block.0.layer.0.SelfAttention.q.weight",
}


# -- reading a file's header ----------------------------------------------------------------------
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_MAX_COUNT = 50_000_000  # more tensors / entries / bytes than any real file has: a damaged count


class _GGUFHeader:
    """A sequential reader of a GGUF file's header (little-endian, versions 2 and 3)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise EOFError
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self) -> int:
        n = self.unpack("<Q")
        if n > _MAX_COUNT:
            raise ValueError(f"a count of {n}")
        return n

    def string(self) -> str:
        return self.take(self.count()).decode("utf-8")

    def value(self, kind: int, keep: bool = True) -> Any:
        if kind in _GGUF_SCALARS:
            return self.unpack(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return self.string()
        if kind == _GGUF_ARRAY:
            item, n = self.unpack("<I"), self.count()
            if item in _GGUF_SCALARS:  # skipped: vocabularies of LLM files are long
                self.fh.seek(n * struct.calcsize(_GGUF_SCALARS[item]), os.SEEK_CUR)
            else:
                for _ in range(n):
                    self.value(item, keep=False)
            return None
        raise ValueError(f"value type {kind}")


def read_gguf_header(path: str | os.PathLike) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor names -> shapes (torch order) and the scalar metadata of a GGUF file, reading only its header.

    GGUF stores dimensions innermost first (ggml's `ne`); they are reversed here, as diffusers' loader does, so the
    shapes read like a .safetensors header's."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelError(f"{path.name} is not a GGUF file (no GGUF magic).", "Choose another file.")
            reader = _GGUFHeader(fh)
            version = reader.unpack("<I")
            if version not in (2, 3):
                raise ModelError(
                    f"{path.name} is a GGUF file of version {version}: only versions 2 and 3 are read.",
                    "Use a GGUF file made by a current tool (city96's Flux GGUFs are version 3).",
                )
            n_tensors, n_kv = reader.count(), reader.count()
            metadata: dict[str, str] = {}
            for _ in range(n_kv):
                key = reader.string()
                value = reader.value(reader.unpack("<I"))
                if value is not None:
                    metadata[key] = str(value)
            shapes: dict[str, tuple[int, ...]] = {}
            for _ in range(n_tensors):
                name = reader.string()
                n_dims = reader.unpack("<I")
                if n_dims > 8:
                    raise ValueError(f"{n_dims} dimensions")
                dims = [reader.unpack("<Q") for _ in range(n_dims)]
                reader.unpack("<I")  # ggml type
                reader.unpack("<Q")  # data offset
                shapes[name] = tuple(reversed(dims))
    except ModelError:
        raise
    except PermissionError as exc:
        raise ModelError(f"Cannot read {path}: permission denied.", "Give your user read permission on it.") from exc
    except (EOFError, ValueError, UnicodeDecodeError, struct.error, OSError) as exc:
        why = "the header is cut short" if isinstance(exc, EOFError) else str(exc) or type(exc).__name__
        raise ModelError(
            f"{path} is damaged or not a model: not a readable GGUF file ({why}).",
            "Choose another file, or download it again.",
        ) from exc
    return shapes, metadata


def read_any_header(path: str | os.PathLike) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes and metadata of a .safetensors (checkpoints.read_header) or .gguf file, header only."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return read_gguf_header(path)
    return checkpoints.read_header(path)


def inspect_flow_file(path: str | os.PathLike, state_dict: Mapping[str, Any] | None = None) -> FlowDetection | None:
    """The flow detection of a file (header only), or of an opted-in pickle's loaded state dict; None: not SD 3 / Flux."""
    path = Path(path)
    if state_dict is not None:
        return checkpoints.detect_flow(checkpoints.shapes_of(state_dict), {}, str(path))
    if path.suffix.lower() not in FLOW_SUFFIXES:
        return None
    shapes, metadata = read_any_header(path)
    return checkpoints.detect_flow(shapes, metadata, str(path))


def detect_flow_file(path: str | os.PathLike) -> str | None:
    """The family (core.modelinfo.FLOW_FAMILIES) of a `.safetensors` / `.gguf` SD 3.x or FLUX.1 transformer or
    all-in-one checkpoint, from its header alone; None for any other file (SD 1.x / 2.x / XL, a LoRA, ...).

    FLUX.1 Kontext has the very tensors of FLUX.1 [dev]: it is told apart by `kontext` in the file name or the
    metadata only (see checkpoints.detect_flow). A damaged file raises ModelError."""
    detection = inspect_flow_file(path)
    return detection.family if detection else None


# -- configs and settings -------------------------------------------------------------------------
def config_folder(detection: FlowDetection) -> Path:
    """The shipped diffusers-layout config folder of the detection's family (model_index.json, scheduler, vae, ...)."""
    return checkpoints.config_folder(detection.family)


def transformer_config_folder(detection: FlowDetection) -> Path:
    """The folder whose `transformer/config.json` is this variant's (SD 3.5 Large and SD 3 Medium have their own)."""
    folder = config_folder(detection)
    sub = folder / detection.config_subfolder if detection.config_subfolder else folder
    if not (sub / "transformer" / "config.json").is_file():
        raise ModelError(
            f"The transformer config for {detection.name} is missing from {sub}.",
            "Reinstall the app.",
        )
    return sub


def settings_folder(detection: FlowDetection) -> Path:
    """The folder whose diffusion_desk.json holds the variant's recommended settings (for model_defaults)."""
    return transformer_config_folder(detection)


def flow_defaults(detection: FlowDetection) -> dict[str, Any]:
    """Recommended steps, guidance, size, scheduler and edit method of the detected variant."""
    return model_defaults(str(settings_folder(detection)))


def _index(detection: FlowDetection) -> dict[str, Any]:
    return json.loads((config_folder(detection) / "model_index.json").read_text(encoding="utf-8"))


def parts_needed(detection: FlowDetection) -> dict[str, str]:
    """The pipeline parts that must come from outside the file: name -> class ("CLIPTokenizer", "T5EncoderModel", ...)."""
    out = {}
    for name, value in _index(detection).items():
        part = name.startswith(("text_encoder", "tokenizer")) or name == "vae"
        if part and isinstance(value, list) and len(value) == 2 and value[1]:
            out[name] = str(value[1])
    if detection.has_vae:
        out.pop("vae", None)
    return out


# -- where the text encoders, tokenizers and VAE are ----------------------------------------------
def _cached_repo(repo: str) -> Path | None:
    """The snapshot folder of a hub repo in the local cache (whatever part of it is there), no network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, cache_dir=str(hub.cache_dir()), local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends: not cached
        return None


def component_places(
    detection: FlowDetection, path: str | os.PathLike, text_encoders: str | os.PathLike | None = None
) -> list[tuple[str, Path]]:
    """Where the parts are looked for, in order: (what the place is, in words; its folder)."""
    path = Path(path)
    places: list[tuple[str, Path]] = []
    if text_encoders:
        places.append(("the folder given for the text encoders", Path(text_encoders).expanduser()))
    if os.environ.get(COMPONENTS_ENV):
        places.append((COMPONENTS_ENV, Path(os.environ[COMPONENTS_ENV]).expanduser()))
    places.append(("next to the file", path.parent))
    if path.parent.name == "transformer":  # the weights of a diffusers folder's transformer/
        places.append(("the model folder the file is in", path.parent.parent))
    from huggingface_hub.file_download import repo_folder_name

    for repo in BASE_REPOS[detection.variant]:
        cached = _cached_repo(repo)
        places.append(
            (f"the hub cache ({repo})", cached or hub.cache_dir() / repo_folder_name(repo_id=repo, repo_type="model"))
        )
    return places


def _weights_present(folder: Path) -> bool:
    """A model folder with .safetensors weights (sharded ones listed by an index must all be there)."""
    for index in folder.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            return False
        return bool(shards) and all((folder / shard).is_file() for shard in shards)
    return any(p.is_file() for p in folder.glob("*.safetensors"))


def part_files(name: str, cls: str) -> str:
    """The files part `name` (class `cls`) is made of, in words."""
    if cls == "CLIPTokenizer":
        return f"{name}/vocab.json + merges.txt"
    if cls.startswith("T5Tokenizer"):
        return f"{name}/spiece.model or tokenizer.json"
    if name.startswith("text_encoder"):
        encoder = {"T5EncoderModel": "t5xxl"}.get(cls, "clip_g" if name == "text_encoder_2" else "clip_l")
        return f"{name}/config.json + {name}/*.safetensors, or {ENCODER_FILES[encoder][0]}"
    return f"{name}/config.json + {name}/*.safetensors"


def part_present(folder: Path, name: str, cls: str) -> bool:
    """Whether part `name` (class `cls`) is complete in `folder`."""
    sub = folder / name
    if cls == "CLIPTokenizer":
        return (sub / "vocab.json").is_file() and (sub / "merges.txt").is_file()
    if cls.startswith("T5Tokenizer"):
        return (sub / "spiece.model").is_file() or (sub / "tokenizer.json").is_file()
    return (sub / "config.json").is_file() and _weights_present(sub)


def _bfl_vae(path: Path) -> Path | None:
    return next((path.parent / n for n in _BFL_VAE_FILES if (path.parent / n).is_file()), None)


def _encoder(detection: FlowDetection, part: str) -> str | None:
    return PART_ENCODERS["flux" if detection.family.startswith("flux") else "sd3"].get(part)


def _encoder_file(folder: Path, encoder: str) -> Path | None:
    """A ComfyUI / Stability text-encoder file (`clip_l.safetensors`, `t5xxl_fp16.safetensors`, ...) in `folder`
    or its `text_encoders/` (the layout of Stability's SD 3.5 repos)."""
    for where in (folder, folder / "text_encoders"):
        for name in ENCODER_FILES[encoder]:
            if (where / name).is_file():
                return where / name
    return None


def resolve_components(
    detection: FlowDetection, path: str | os.PathLike, text_encoders: str | os.PathLike | None = None
) -> dict[str, Path]:
    """part name -> where it is loaded from: a folder (the part is `<folder>/<name>/`, diffusers layout) or a
    file: the model file itself for the text encoders an all-in-one file carries, a ComfyUI / Stability
    text-encoder file (`clip_l.safetensors`, `t5xxl_fp16.safetensors`), or for "vae" BFL's `ae.safetensors`
    beside the transformer. Raises ModelError naming every missing file and every place looked in."""
    path = Path(path)
    needed = parts_needed(detection)
    places = component_places(detection, path, text_encoders)
    chosen: dict[str, Path] = {}
    if "vae" in needed and detection.family.startswith("flux") and (ae := _bfl_vae(path)) is not None:
        chosen["vae"] = ae
    for name in needed:
        if _encoder(detection, name) in detection.text_encoders:
            chosen[name] = path
    for name, cls in needed.items():
        if name in chosen:
            continue
        encoder = _encoder(detection, name)
        for _label, folder in places:
            if part_present(folder, name, cls):
                chosen[name] = folder
                break
            loose = _encoder_file(folder, encoder) if encoder else None
            if loose is not None:
                chosen[name] = loose
                break
    missing = {
        name: part_files(name, cls)
        for name, cls in needed.items()
        if name not in chosen and cls != "CLIPTokenizer"  # the CLIP vocabulary is shipped
    }
    if missing:
        raise _missing_error(detection, path, missing, needed, places)
    return chosen


def _missing_error(
    detection: FlowDetection,
    path: Path,
    missing: Mapping[str, str],
    needed: Mapping[str, str],
    places: list[tuple[str, Path]],
) -> ModelError:
    what = "an all-in-one file" if detection.has_vae or detection.text_encoders else "the transformer only"
    loose = [
        ENCODER_FILES[e][0] for e in PART_ENCODERS["flux" if detection.family.startswith("flux") else "sd3"].values()
    ]
    files = "; ".join(f"{missing[name]} ({needed[name]})" for name in missing)
    looked = "; ".join(f"{label}: {folder}" for label, folder in places)
    parts = parts_for(detection.family)
    repo = COMPONENTS_REPO[parts.kind]
    gated = f", from {repo}: gated, accept its license on the hub and log in first" if parts.gated else ""
    return ModelError(
        f"{path.name} is {detection.name} ({what}); not found: {', '.join(missing)}. "
        f"Missing: {files}. Looked in: {looked}.",
        f"Download them once: Models… > Download the text encoders and VAE ({parts.family_name}, about "
        f"{parts.size_gb:.1f} GB{gated}), or run `{parts.command}`; they serve every {parts.family_name} file "
        f"(`diffusion-desk-cli models --download {repo}` would fetch the whole model, transformer included). "
        f"Or put the folders {', '.join(f'{n}/' for n in needed)} (or ComfyUI's {' / '.join(loose)}) next to the "
        f"file, or point {COMPONENTS_ENV} at a folder that has them.",
    )


def parts_repo(family: str) -> tuple[str, tuple[str, ...]]:
    """(the hub repo to fetch a family's parts from, the components to fetch) for a transformer file of `family`:
    FLUX.1 schnell's (not gated) serve every FLUX.1 file, SD 3.5 Medium's every SD 3.x file."""
    kind = "flux" if family.startswith("flux") else "sd3"
    index = json.loads((checkpoints.config_folder(family) / "model_index.json").read_text(encoding="utf-8"))
    names = tuple(n for n in index if n.startswith(("text_encoder", "tokenizer")) or n == "vae")
    return COMPONENTS_REPO[kind], names


def download_parts(family: str, *, progress=None, cancel=None) -> Path:
    """Fetch only the text encoders, tokenizers and VAE of a family's base repo into the hub cache (where
    `component_places` looks), not its transformer: for FLUX.1 about 10 GB instead of 34."""
    repo, names = parts_repo(family)
    return hub.download_model(repo, progress=progress, cancel=cancel, only=names)


# -- loading --------------------------------------------------------------------------------------
def gguf_installed() -> bool:
    """Whether the optional `gguf` package is there (diffusers reads GGUF files with it)."""
    return importlib.util.find_spec("gguf") is not None


def _require_gguf(path: Path) -> None:
    if not gguf_installed():
        raise ModelError(
            f"{path.name} is a GGUF file: reading it needs the 'gguf' package, which is not installed.",
            "Install it: pip install gguf (or pip install 'diffusion-desk[gguf]'), then load the file again.",
        )


def _transformer_tensors(path: str, detection: FlowDetection, dtype) -> dict[str, Any]:
    """The transformer's tensors alone (prefix stripped, scaled FP8 multiplied out), for files diffusers would
    misread whole: diffusers names beside other parts (its converter takes them for original names), and ComfyUI's
    `fp8_scaled` files, whose `<layer>.scale_weight` it would drop (weights off by that factor)."""
    from safetensors.torch import load_file

    others = ("text_encoders.",) + checkpoints.FLOW_VAE_PREFIXES
    tensors = {
        k[len(detection.prefix) :]: v
        for k, v in load_file(path).items()
        if k.startswith(detection.prefix) and not k.startswith(others)
    }
    return _dequantize(tensors, dtype) if detection.scaled_fp8 else tensors


def _load_transformer(source: str | dict, detection: FlowDetection, dtype, gguf: bool):
    import diffusers

    cls = diffusers.FluxTransformer2DModel if detection.family.startswith("flux") else diffusers.SD3Transformer2DModel
    kwargs: dict[str, Any] = dict(
        config=str(transformer_config_folder(detection)), subfolder="transformer", dtype=dtype, local_files_only=True
    )
    if gguf:
        kwargs["quantization_config"] = diffusers.GGUFQuantizationConfig(compute_dtype=dtype)
    elif isinstance(source, str) and (
        detection.scaled_fp8
        or (detection.layout == "diffusers" and (detection.has_vae or detection.prefix or detection.text_encoders))
    ):
        source = _transformer_tensors(source, detection, dtype)
    return cls.from_single_file(source, **kwargs)  # pyright: ignore[reportArgumentType] - it takes a state dict too


def _load_vae(detection: FlowDetection, path: Path, chosen: Mapping[str, Path], dtype):
    from diffusers import AutoencoderKL

    config = dict(config=str(config_folder(detection)), subfolder="vae", dtype=dtype, local_files_only=True)
    if detection.has_vae:  # the all-in-one file's own (first_stage_model.* / vae.*)
        return AutoencoderKL.from_single_file(str(path), **config)
    where = chosen["vae"]
    if where.is_file():  # Black Forest Labs' ae.safetensors, original layout
        return AutoencoderKL.from_single_file(str(where), **config)
    return AutoencoderKL.from_pretrained(str(where / "vae"), dtype=dtype, local_files_only=True)


def _dequantize(tensors: dict[str, Any], dtype) -> dict[str, Any]:
    """ComfyUI's scaled FP8 files keep `<layer>.scale_weight` beside each FP8 weight: weight x scale, in `dtype`."""
    import torch

    out = {}
    for key, value in tensors.items():
        if key.endswith((".scale_weight", ".scale_input")) or key == "scaled_fp8":
            continue
        scale = tensors.get(key[: -len("weight")] + "scale_weight") if key.endswith(".weight") else None
        if scale is not None:
            value = value.to(torch.float32) * scale.to(torch.float32)
        out[key] = value.to(dtype) if value.is_floating_point() else value
    return out


def encoder_from_file(file: Path, part: str, cls_name: str, detection: FlowDetection, dtype, in_prefix: str = ""):
    """A text encoder (Hugging Face class `cls_name`) from a single file: its own (`clip_l.safetensors`) or an
    all-in-one checkpoint's `text_encoders.<name>.` tensors, built on the shipped config without random init."""
    import accelerate
    import transformers
    from safetensors import safe_open

    marker = _ENCODER_MARKERS[cls_name]
    with safe_open(str(file), framework="pt") as fh:
        keys = [k for k in fh.keys() if k.startswith(in_prefix)]  # noqa: SIM118 - safe_open is not iterable
        hit = next((k for k in keys if k.endswith(marker)), None)
        if hit is None:
            raise ModelError(
                f"{file.name} holds no {cls_name} weights for {part} (no '{in_prefix}...{marker}').",
                "Choose the right text-encoder file (clip_l / clip_g / t5xxl), or use a diffusers folder.",
            )
        prefix = hit[: -len(marker)].removesuffix("text_model.")  # CLIP's projection sits beside text_model.
        tensors = {k[len(prefix) :]: fh.get_tensor(k) for k in keys if k.startswith(prefix)}
    tensors = _dequantize(tensors, dtype)
    if cls_name == "T5EncoderModel":  # the embedding is shared: files keep one name or the other
        embedding = tensors.get("shared.weight", tensors.get("encoder.embed_tokens.weight"))
        if embedding is not None:
            tensors.setdefault("shared.weight", embedding)
            tensors.setdefault("encoder.embed_tokens.weight", embedding)
    cls = getattr(transformers, cls_name)
    config = cls.config_class.from_pretrained(str(config_folder(detection) / part))
    with accelerate.init_empty_weights():  # the weights come from the file: no multi-GB random init first
        model = cls(config)
    # transformers 5's CLIPTextModel names its weights without `text_model.`; files (and WithProjection) have it
    for name in [n for n, _ in model.named_parameters(remove_duplicate=False) if n not in tensors]:
        for other in ("text_model." + name, name.removeprefix("text_model.")):
            if other in tensors:
                tensors[name] = tensors[other]
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ModelError(
            f"{file.name}: its {part} ({cls_name}) lacks {len(missing)} of {len(names)} weights, e.g. {missing[0]}: "
            "it is another model's text encoder, or damaged.",
            "Choose the matching text-encoder file, or use the base model's diffusers folder.",
        )
    model.load_state_dict({n: tensors[n] for n in names}, strict=False, assign=True)
    return model.eval()


def _load_part(name: str, cls_name: str, folder: Path | None, detection: FlowDetection, dtype, model: Path):
    import transformers

    if cls_name == "CLIPTokenizer":
        if folder is not None:
            return transformers.CLIPTokenizer.from_pretrained(str(folder / name), local_files_only=True)
        pad_file = config_folder(detection) / name / "pad_token.json"
        pad = "<|endoftext|>"
        if pad_file.is_file():
            pad = json.loads(pad_file.read_text(encoding="utf-8")).get("pad_token", pad)
        return checkpoints.shared_tokenizer(pad)
    assert folder is not None  # resolve_components found every part but the CLIP tokenizers
    if folder.is_file():  # a single file: the all-in-one checkpoint itself, or a ComfyUI text-encoder file
        in_prefix = f"text_encoders.{_encoder(detection, name)}." if folder == model else ""
        return encoder_from_file(folder, name, cls_name, detection, dtype, in_prefix)
    cls = getattr(transformers, cls_name)
    if name.startswith("tokenizer"):
        return cls.from_pretrained(str(folder / name), local_files_only=True)
    return cls.from_pretrained(str(folder / name), dtype=dtype, local_files_only=True)


def load_flow_file(
    path: str | os.PathLike,
    dtype,
    *,
    allow_pickle: bool = False,
    text_encoders: str | os.PathLike | None = None,
):
    """The SD 3.x / FLUX.1 pipeline of a transformer (or all-in-one) file: the transformer from the file with the
    shipped config, the text encoders, tokenizers and VAE from `text_encoders` or the places of `component_places`.

    The pipeline carries `_diffusion_desk_family`, `_diffusion_desk_variant` and `_diffusion_desk_settings` (the
    folder of its recommended settings). ModelError for anything the user can fix: a missing part (named, with
    where it was looked for), a .gguf without the gguf package, a pickle not opted into, a file that is no model."""
    import diffusers
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    state_dict = None
    if suffix in checkpoints._PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelError(
                f"{path.name} is a pickle checkpoint: unpickling can run any code hidden in the file, so it is refused.",
                "Use a .safetensors or .gguf version, or, if you trust its source, turn on 'Allow pickle checkpoints'.",
            )
        state_dict = checkpoints.read_pickle(path)
    gguf = suffix == ".gguf"
    if gguf:
        _require_gguf(path)
    detection = inspect_flow_file(path, state_dict)
    if detection is None:
        raise ModelError(
            f"{path.name} is not an SD 3.x or FLUX.1 transformer.",
            "Choose a FLUX.1 or Stable Diffusion 3.5 model file (.safetensors or .gguf).",
        )
    chosen = resolve_components(detection, path, text_encoders)
    folder = config_folder(detection)
    index = _index(detection)
    try:
        transformer = _load_transformer(state_dict if state_dict is not None else str(path), detection, dtype, gguf)
        parts: dict[str, Any] = {"transformer": transformer, "vae": _load_vae(detection, path, chosen, dtype)}
        for name, cls_name in parts_needed(detection).items():
            if name != "vae":
                parts[name] = _load_part(name, cls_name, chosen.get(name), detection, dtype, path)
        parts["scheduler"] = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
            str(folder), subfolder="scheduler", local_files_only=True
        )
        cls = getattr(diffusers, str(index["_class_name"]))
        for optional in ("image_encoder", "feature_extractor"):
            if optional in index:
                parts[optional] = None
        pipe = cls(**parts)
    except (ModelError, JobCancelled, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - diffusers / transformers raise anything for a damaged or odd file
        raise ModelError(
            f"Cannot load {path.name} as {detection.name}: {exc}".splitlines()[0][:300],
            "The file may be damaged or a variant with another layout; try its diffusers version.",
        ) from exc
    finally:
        state_dict = None
    pipe._diffusion_desk_family = detection.family
    pipe._diffusion_desk_variant = detection.variant
    pipe._diffusion_desk_settings = str(settings_folder(detection))
    log.info(
        "loaded %s as %s (%s); parts from %s", path.name, detection.name, ", ".join(detection.evidence), dict(chosen)
    )
    return pipe
