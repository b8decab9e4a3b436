"""LoRAs on a loaded model: added, re-weighted and removed without reloading the base model.

diffusers' PEFT integration does the work (`load_lora_weights`, `set_adapters`,
`delete_adapters`); it reads both the diffusers / PEFT layout and kohya's
(`lora_unet_*`, `lora_te_*`, `.lora_down/.lora_up/.alpha`). The pipelines of every
mode share the model's modules, so a LoRA set once applies to generate, img2img,
inpaint and edit alike. Removing a LoRA removes its layers: the model computes
exactly what it did before.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from desktop_app.core.errors import ModelError
from desktop_app.core.loras import FAMILY_NAMES, family_from_shapes, lora_hash, transformer_lora_width
from desktop_app.core.modelinfo import is_flow
from desktop_app.engine.models import PICKLE_RISK, PICKLE_SUFFIXES, LoadedModel


@dataclass(frozen=True)
class LoraSpec:
    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """'path' or 'path:weight' (a Windows drive letter is not a weight)."""
        match = re.fullmatch(r"(.+?):(-?\d+(?:\.\d*)?)", text.strip())
        if match and not re.fullmatch(r"[A-Za-z]", match[1]):
            return cls(match[1], float(match[2]))
        return cls(text.strip(), 1.0)

    @property
    def name(self) -> str:
        return Path(self.path).stem


def adapter_name(path: str | Path) -> str:
    """A stable PEFT adapter name for a file: its stem (sanitised) plus a short digest of the full path."""
    path = Path(path).expanduser().resolve()
    stem = re.sub(r"[^0-9A-Za-z_]", "_", path.stem)[:40] or "lora"
    return f"{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"


def _read(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor] | str:
    if not path.is_file():
        raise ModelError(f"No LoRA file at {path}.", "Check the path; the LoRA may have been moved or deleted.")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            message, hint = PICKLE_RISK
            raise ModelError(message.format(name=path.name), hint)
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(
                f"{path.name} could not be read as tensors only.", "Use a .safetensors version of the LoRA."
            ) from exc
        while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict):
            raise ModelError(
                f"{path.name} is not a LoRA: it holds a {type(data).__name__}, not named tensors.",
                "Choose a LoRA file (a .safetensors LoRA is best).",
            )
        tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise ModelError(f"{path.name} is not a LoRA: it holds no tensors.", "Choose a LoRA .safetensors file.")
        return tensors
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"{path.name}: unknown LoRA format.", "Use a .safetensors LoRA.")
    return str(path)


def _shapes(source: dict[str, torch.Tensor] | str) -> dict[str, tuple[int, ...]]:
    if isinstance(source, dict):
        return {k: tuple(v.shape) for k, v in source.items()}
    from desktop_app.engine.checkpoints import read_header

    return read_header(source)[0]


def check_compatible(shapes: dict[str, tuple[int, ...]], loaded: LoadedModel, name: str) -> None:
    """A LoRA made for another family fails with a message instead of a shape error deep in PEFT.

    The family comes from core.loras (UNet widths and blocks, a second text encoder), not from key prefixes:
    diffusers' own converter writes SD 1.5 text-encoder keys as `lora_te1_`, SDXL's prefix."""
    if not any(("lora" in k.lower()) or k.endswith(".alpha") or "hada_" in k for k in shapes):
        raise ModelError(f"{name} does not look like a LoRA (no lora_* tensors).", "Choose a LoRA .safetensors file.")
    family, evidence = family_from_shapes(shapes)
    model_name = loaded.family or loaded.model_id
    if flow_model(loaded):
        _check_flow(shapes, family, evidence, loaded, name)
        return
    if family in ("flux", "sd3"):
        raise ModelError(
            f"{name} is a {FAMILY_NAMES[family]} LoRA ({evidence}); the loaded model ({model_name}) is "
            f"{'SDXL' if loaded.is_xl else 'an SD 1.x / 2.x model'}.",
            f"Load a {FAMILY_NAMES[family]} model, or choose a LoRA made for this one.",
        )
    expected = int(loaded.pipe.unet.config.cross_attention_dim)
    if family == "sdxl" and not loaded.is_xl:
        raise ModelError(
            f"{name} is an SDXL LoRA ({evidence}); the loaded model ({model_name}) is not SDXL.",
            "Load an SDXL model, or choose a LoRA made for this one.",
        )
    if family in ("sd1", "sd2") and loaded.is_xl:
        raise ModelError(
            f"{name} was made for {FAMILY_NAMES[family]} ({evidence}); the loaded model ({model_name}) is SDXL.",
            "Choose an SDXL LoRA, or load a model of the LoRA's family.",
        )
    widths = {
        v[-1]
        for k, v in shapes.items()
        if re.search(r"attn2[._](processor[._])?to_k.*(lora_down|lora_A|lora\.down|hada_w[12]_b)", k) and len(v) >= 2
    }
    family_width = {"sd1": 768, "sd2": 1024, "sdxl": 2048}.get(family)
    if not widths and family_width and expected in (768, 1024, 2048):
        widths = {family_width}
    if widths and expected not in widths:
        width = next(iter(widths))
        made_for = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}.get(width, f"a model with text width {width}")
        raise ModelError(
            f"{name} was made for {made_for}; the loaded model ({model_name}) has text width {expected}.",
            "Choose a LoRA made for the loaded model's family.",
        )


def flow_model(loaded: LoadedModel) -> bool:
    """An SD 3.x / FLUX.1 model: a transformer, no UNet."""
    return is_flow(loaded.family) or (
        getattr(loaded.pipe, "transformer", None) is not None and getattr(loaded.pipe, "unet", None) is None
    )


def transformer_width(transformer) -> int:
    """The hidden width of a Flux / SD 3 transformer (heads x head size): what its LoRAs' down projections take."""
    config = transformer.config
    return int(config.num_attention_heads) * int(config.attention_head_dim)


def _check_flow(shapes: dict[str, tuple[int, ...]], family: str, evidence: str, loaded: LoadedModel, name: str) -> None:
    """A LoRA on an SD 3.x / FLUX.1 model: made for that family, and for a transformer of that width."""
    model_family = "flux" if (loaded.family or "").startswith("flux") or "Flux" in type(loaded.pipe).__name__ else "sd3"
    model_name = loaded.family or loaded.model_id
    if family in ("sd1", "sd2", "sdxl") or (family in ("flux", "sd3") and family != model_family):
        raise ModelError(
            f"{name} is a {FAMILY_NAMES[family]} LoRA ({evidence}); the loaded model ({model_name}) is "
            f"{FAMILY_NAMES[model_family]}.",
            f"Choose a {FAMILY_NAMES[model_family]} LoRA, or load a model of the LoRA's family.",
        )
    width = transformer_lora_width(shapes)
    expected = transformer_width(loaded.pipe.transformer)
    if family == model_family and width is not None and width != expected:
        raise ModelError(
            f"{name} was made for a {FAMILY_NAMES[family]} transformer of width {width}; the loaded model "
            f"({model_name}) is {expected} wide"
            + (" (SD 3.5 Medium and Large take different LoRAs)." if family == "sd3" else "."),
            "Choose a LoRA made for the loaded model.",
        )


def lora_file_hash(path: Path) -> str:
    """The short hash A1111 writes in `Lora hashes`: the addnet hash of a .safetensors file, and, as A1111 does
    for other formats, the sha256 of the whole file (12 hex digits)."""
    if path.suffix.lower() == ".safetensors":
        return lora_hash(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def hash_name(name: str) -> str:
    """A name as A1111 writes it before its hash: without the ':' and ',' that would break the list."""
    return name.replace(":", "").replace(",", "")


def apply_loras(
    loaded: LoadedModel, specs: Iterable[LoraSpec | tuple[str, float] | str], *, allow_pickle: bool = False
) -> dict[str, Any]:
    """Make the model's LoRAs exactly `specs` (path, weight). Loads only new files; returns infotext fields."""
    wanted: dict[str, LoraSpec] = {}
    for spec in specs:
        if isinstance(spec, str):
            spec = LoraSpec.parse(spec)
        elif not isinstance(spec, LoraSpec):
            spec = LoraSpec(str(spec[0]), float(spec[1]))
        wanted[adapter_name(spec.path)] = spec
    pipe = loaded.pipe
    if wanted and importlib.util.find_spec("peft") is None:
        raise ModelError("LoRAs need the 'peft' package, which is not installed.", "Install it: pip install peft")
    current = dict(loaded.loras)
    for name in [n for n in current if n not in wanted]:
        pipe.delete_adapters(name)
        del loaded.loras[name]
    for name, spec in wanted.items():
        if name in loaded.loras:
            continue
        path = Path(spec.path).expanduser()
        source = _read(path, allow_pickle)
        check_compatible(_shapes(source), loaded, path.name)
        try:
            pipe.load_lora_weights(source, adapter_name=name)
        except ModelError:
            raise
        except Exception as exc:  # a layout PEFT cannot map, a damaged file
            try:
                pipe.delete_adapters(name)
            except Exception:  # noqa: BLE001 - it may not have been registered at all
                pass
            raise ModelError(
                f"Cannot apply the LoRA {path.name}: {exc}".splitlines()[0][:300],
                "It may be made for another model family, or damaged.",
            ) from exc
        loaded.loras[name] = spec.weight
    if wanted:
        pipe.set_adapters(list(wanted), adapter_weights=[wanted[n].weight for n in wanted])
        for name in wanted:
            loaded.loras[name] = wanted[name].weight
    if not wanted:
        return {}
    hashes = ", ".join(
        f"{hash_name(spec.name)}: {lora_file_hash(Path(spec.path).expanduser())}" for spec in wanted.values()
    )
    return {"Lora hashes": hashes, "Loras": ", ".join(f"{spec.name}:{spec.weight:g}" for spec in wanted.values())}


def remove_all(loaded: LoadedModel) -> None:
    apply_loras(loaded, [])
