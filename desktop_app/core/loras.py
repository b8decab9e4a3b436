"""LoRA files without torch: their family from the safetensors header, the hash A1111 and Civitai write, and the
folder's list for the window's picker and the `<lora:NAME:WEIGHT>` tags.

The family comes from key names AND tensor shapes. Key prefixes alone mislead: diffusers' own kohya converter
writes an SD 1.5 LoRA's text-encoder keys as `lora_te1_`, the prefix SDXL LoRAs use for their first encoder; what
tells the families apart is the UNet (cross-attention width 768 / 1024 / 2048, and which blocks have attention)
and a second text encoder (SDXL only).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from desktop_app.core import paths
from desktop_app.core.errors import ModelError

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux", "unknown")
FAMILY_NAMES = {
    "sd1": "SD 1.x",
    "sd2": "SD 2.x",
    "sdxl": "SDXL",
    "sd3": "SD 3.x",
    "flux": "FLUX.1",
    "unknown": "an unknown family",
}
_WIDTH_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}  # the UNet's cross-attention width (the text width)
FLUX_WIDTH = 3072  # FLUX.1's transformer width (24 heads x 128)
SD3_WIDTHS = {1536: "SD 3 / 3.5 Medium", 2432: "SD 3.5 Large"}  # SD 3.x's transformer widths (heads x 64)
_MAX_HEADER = 100 * 1024 * 1024
_HASH_CACHE = "lora_hashes.json"


@dataclass(frozen=True)
class LoraFile:
    """One LoRA in the folder; `reason` says why the family is "unknown" (an unreadable file), else ""."""

    name: str
    path: Path
    family: str
    reason: str = ""

    @property
    def hash(self) -> str:
        """The 12-digit hash A1111 writes in `Lora hashes` ("" when the file cannot be read)."""
        try:
            return lora_hash(self.path)
        except ModelError:
            return ""

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES.get(self.family, self.family)


def read_header(path: str | os.PathLike) -> tuple[int, dict[str, tuple[int, ...]], dict[str, str]]:
    """(header length, tensor name -> shape, metadata) of a .safetensors file, reading only its header.

    By hand because the format is just that (8 bytes of length, then JSON), the hash needs the length, and the
    reasons can be said in words; raises ModelError naming the file and what is wrong."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise _damaged(path, "the file is too short")
            (length,) = struct.unpack("<Q", raw)
            if length < 2 or length > _MAX_HEADER:
                raise _damaged(path, "it does not start with a safetensors header")
            text = fh.read(length)
    except IsADirectoryError as exc:
        raise ModelError(f"{path} is a folder, not a LoRA file.", "Choose a .safetensors LoRA file.") from exc
    except OSError as exc:
        raise ModelError(
            f"Cannot read the LoRA {path}: {exc.strerror or exc}.", "Check the file and its rights."
        ) from exc
    if len(text) != length:
        raise _damaged(path, "the header is cut short")
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _damaged(path, "the header is not JSON") from exc
    if not isinstance(header, dict):
        raise _damaged(path, "the header is not a table of tensors")
    metadata = header.pop("__metadata__", None)
    meta = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    shapes: dict[str, tuple[int, ...]] = {}
    for key, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
            raise _damaged(path, f"the tensor {str(key)[:60]!r} has no shape")
        shapes[str(key)] = tuple(shape)
    return int(length), shapes, meta


def _damaged(path: Path, why: str) -> ModelError:
    return ModelError(f"{path.name} is not a readable LoRA: {why}.", "Download the LoRA again as .safetensors.")


def _in_width(shapes: Mapping[str, Sequence[int]], pattern: str) -> set[int]:
    """Input widths of the LoRA down-projections whose key matches `pattern` (kohya, PEFT, old diffusers, LoHa)."""
    down = re.compile(r"(lora_down|lora_A|lora\.down|_lora\.down|hada_w[12]_b)\b")
    rx = re.compile(pattern)
    return {int(s[-1]) for k, s in shapes.items() if len(s) >= 2 and down.search(k) and rx.search(k)}


_TE2 = r"^(lora_te2_|text_encoder_2\.|te2\.)"
_TE1 = r"^(lora_te1?_|text_encoder\.|te1?\.)"
_UNET = r"^(lora_unet_|unet\.|transformer\.|model\.diffusion_model\.)?"
# Blocks with attention in one family's UNet and not the other's (diffusers and kohya-SGM names).
_XL_ONLY = re.compile(r"up_blocks[._]0[._]attentions|output_blocks[._][012][._]1[._]|transformer_blocks[._][1-9]")
_SD_ONLY = re.compile(r"down_blocks[._]0[._]attentions|up_blocks[._]3[._]attentions|input_blocks[._][12][._]1[._]")


# Transformer (DiT) LoRAs. FLUX.1: kohya `lora_unet_double_blocks_0_...` / `lora_unet_single_blocks_...`, XLabs and
# ComfyUI `double_blocks.0...`, diffusers / PEFT `transformer.single_transformer_blocks.0...`. SD 3.x: kohya
# `lora_unet_joint_blocks_0_...`, diffusers `transformer.transformer_blocks.0...` (no single blocks). diffusers'
# `transformer_blocks` also name the blocks inside an SD UNet's attentions (`unet.down_blocks.0.attentions.0.
# transformer_blocks.0`): only a key that starts with them (after a `transformer.` prefix) is a DiT's.
_FLUX_BLOCKS = r"(double_blocks|single_blocks|single_transformer_blocks)[._]\d+"
_SD3_BLOCKS = r"joint_blocks[._]\d+"
_DIT_BLOCKS = r"^(transformer\.|lora_transformer_|base_model\.model\.|diffusion_model\.)?transformer_blocks[._]\d+"


def transformer_lora(shapes: Mapping[str, Sequence[int]]) -> tuple[str, str] | None:
    """("flux" | "sd3" | "unknown", evidence) for a LoRA of a flow transformer; None for a UNet LoRA.

    The blocks say which architecture, the input width of the LoRA's down projections which model: 3072 is
    FLUX.1, 1536 / 2432 SD 3.x (a FLUX-like LoRA of another width, FLUX.2's, is "unknown")."""
    flux = any(re.search(_FLUX_BLOCKS, k) for k in shapes)
    sd3 = any(re.search(_SD3_BLOCKS, k) for k in shapes)
    dit = any(re.search(_DIT_BLOCKS, k) for k in shapes)
    if not (flux or sd3 or dit):
        return None
    widths = _in_width(shapes, f"{_FLUX_BLOCKS}|{_SD3_BLOCKS}|{_DIT_BLOCKS}")
    if flux or (dit and FLUX_WIDTH in widths and not widths & set(SD3_WIDTHS)):
        if FLUX_WIDTH in widths or not widths:
            return "flux", f"FLUX.1 transformer blocks, width {FLUX_WIDTH}"
        return "unknown", f"FLUX-like transformer blocks of width {', '.join(map(str, sorted(widths)))}"
    model = next((SD3_WIDTHS[w] for w in sorted(widths) if w in SD3_WIDTHS), None)
    if model is not None:
        return "sd3", f"SD 3.x transformer blocks, width {min(w for w in widths if w in SD3_WIDTHS)} ({model})"
    if sd3 and not widths:
        return "sd3", "SD 3.x joint blocks"
    return "unknown", f"transformer blocks of width {', '.join(map(str, sorted(widths))) or 'unknown'}"


def transformer_lora_width(shapes: Mapping[str, Sequence[int]]) -> int | None:
    """The transformer width a flow LoRA was made for (3072, 1536, 2432), None when the file does not say."""
    widths = _in_width(shapes, f"{_FLUX_BLOCKS}|{_SD3_BLOCKS}|{_DIT_BLOCKS}")
    known = sorted(w for w in widths if w == FLUX_WIDTH or w in SD3_WIDTHS)
    return known[0] if known else (min(widths) if widths else None)


def family_from_shapes(shapes: Mapping[str, Sequence[int]]) -> tuple[str, str]:
    """(family, the evidence in words) from a LoRA's tensor names and shapes.

    A flow transformer's LoRA (FLUX.1, SD 3.x) is told by its blocks and width first. For UNet LoRAs widths
    decide first; the blocks with attention only when the file has no layer of a telling width (a UNet
    self-attention-only LoRA). A width of no known family (a test model's) means "unknown", whatever the blocks."""
    dit = transformer_lora(shapes)
    if dit is not None:
        return dit
    widths = _in_width(shapes, r"attn2[._](processor[._])?to_[kv]")
    known = {_WIDTH_FAMILY[w] for w in widths if w in _WIDTH_FAMILY}
    if len(known) == 1:
        return known.pop(), f"cross-attention width {max(widths)}"
    if any(re.match(_TE2, k) for k in shapes):
        return "sdxl", "a second text encoder"
    if widths:
        return "unknown", f"cross-attention width {', '.join(map(str, sorted(widths)))}"
    te_width = _in_width(shapes, _TE1 + r".*(q_proj|k_proj|v_proj|out_proj|fc1)")
    unet_keys = [k for k in shapes if not re.match(_TE1, k)]
    xl = any(_XL_ONLY.search(k) for k in unet_keys)
    sd = any(_SD_ONLY.search(k) for k in unet_keys)
    if te_width == {1024}:
        return "sd2", "text width 1024"
    if te_width == {768}:
        return ("sdxl", "SDXL's UNet blocks") if xl and not sd else ("sd1", "text width 768")
    if te_width:
        return "unknown", f"text width {', '.join(map(str, sorted(te_width)))}"
    if xl != sd:
        return ("sdxl", "SDXL's UNet blocks") if xl else ("sd1", "SD 1.x's UNet blocks")
    return "unknown", "no cross-attention or text-encoder layers of a known width"


def lora_family(path: str | os.PathLike) -> str:
    """ "sd1" | "sd2" | "sdxl" | "sd3" | "flux" | "unknown" from the file's header alone (ModelError when unreadable)."""
    return family_from_shapes(read_header(path)[1])[0]


def lora_hash(path: str | os.PathLike) -> str:
    """A1111's / Civitai's LoRA short hash: sha256 of the bytes after the safetensors header (kohya's "addnet"
    hash, which stays the same when only the metadata changes), first 12 hex digits; cached by size and mtime."""
    path = Path(path)
    length = read_header(path)[0]
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelError(f"Cannot read the LoRA {path}: {exc.strerror or exc}.", "Check the file.") from exc
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = paths.cache_dir() / _HASH_CACHE
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    cached = cache.get(key)
    if isinstance(cached, str) and re.fullmatch(r"[0-9a-f]{12}", cached):
        return cached
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            fh.seek(8 + length)
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ModelError(f"Cannot read the LoRA {path}: {exc.strerror or exc}.", "Check the file.") from exc
    short = digest.hexdigest()[:12]
    cache[key] = short
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache), encoding="utf-8")
    except OSError:
        pass  # a read-only cache only costs the hash again next time
    return short


def scan_loras(folder: str | os.PathLike | None = None) -> list[LoraFile]:
    """The .safetensors LoRAs in the folder and its subfolders, sorted by name; an unreadable one is listed with
    family "unknown" and its reason. A missing folder has none."""
    root = Path(folder) if folder is not None else paths.loras_dir()
    try:
        files = [p for p in root.rglob("*") if p.suffix.lower() == ".safetensors" and p.is_file()]
    except OSError:
        return []
    out = []
    for path in files:
        try:
            family, reason = lora_family(path), ""
        except ModelError as exc:
            family, reason = "unknown", exc.message
        out.append(LoraFile(path.stem, path, family, reason))
    return sorted(out, key=lambda lora: (lora.name.lower(), str(lora.path)))


def find_lora(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The LoRA a `<lora:NAME:W>` tag names: the file stem (any case; "sub/name" for a subfolder). Raises
    ModelError naming the folder and the closest names when there is none."""
    root = Path(folder) if folder is not None else paths.loras_dir()
    wanted = name.strip().replace("\\", "/")
    loras = scan_loras(root)
    rel = {lora: lora.path.relative_to(root).with_suffix("").as_posix() for lora in loras}
    for match in (
        lambda lo: rel[lo] == wanted or lo.name == wanted,
        lambda lo: rel[lo].lower() == wanted.lower() or lo.name.lower() == wanted.lower(),
    ):
        found = [lora for lora in loras if match(lora)]
        if found:
            return found[0].path
    plain = wanted and ".." not in wanted and not any(c in wanted for c in "*?[")
    pickles = [p for p in root.glob(f"{wanted}.*") if p.suffix.lower() in (".pt", ".ckpt", ".bin")] if plain else []
    if pickles:
        raise ModelError(
            f"The LoRA {wanted!r} in {root} is a {pickles[0].suffix} file, which may hide code.",
            "Use a .safetensors version of it.",
        )
    close = difflib.get_close_matches(wanted, sorted({lora.name for lora in loras}), n=3, cutoff=0.5)
    hint = f"Did you mean {', '.join(close)}?" if close else f"Put {wanted}.safetensors in {root}."
    raise ModelError(f"No LoRA named {wanted!r} in {root}.", hint)
