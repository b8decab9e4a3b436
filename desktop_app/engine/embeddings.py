"""Textual-inversion embeddings from the embeddings folder, used by name (the file stem) in prompts, as A1111 does.

An embedding is loaded into a model's tokenizer and text encoder(s) through diffusers' `load_textual_inversion`, under
a token of our own (`<ti:NAME>`, `<ti:NAME>_1`, ... per vector) that no prompt can type: the prompt's word is
matched on its token ids by `prompts.tokenize_weighted` (A1111's matching), so case and spacing follow the
tokenizer. The tokens live in that model's tokenizer only (another model never sees them); loading again is a
no-op, a file changed on disk is reloaded. SD 1.x / 2.x files hold one tensor (A1111's `string_to_param`, or a
diffusers concept); SDXL files hold `clip_l` and `clip_g`.

`TI hashes` as A1111 writes them: `name: hash` where hash is the sha256 of the whole file, its first 12 hex digits
(`Embedding.set_hash(hashes.sha256(path, ...))`, `shorthash = hash[0:12]`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from desktop_app.core.errors import ModelError
from desktop_app.engine.models import PICKLE_RISK, PICKLE_SUFFIXES, LoadedModel
from desktop_app.engine.prompts import TokenEmbedding

SUFFIXES = (".safetensors", ".pt", ".bin")
_REGISTRY = "_diffusion_desk_ti"  # attribute on the pipeline: name -> Registered
_hash_cache: dict[tuple[str, int, int], str] = {}


@dataclass
class Registered:
    """One embedding loaded into one model: its file, and its token ids per text encoder."""

    name: str
    path: Path
    sha256: str
    stamp: tuple[int, int]  # size, mtime_ns: a changed file is reloaded
    tokens: list[list[str]] = field(default_factory=list)  # per text encoder
    ids: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def shorthash(self) -> str:
        return self.sha256[:12]


def available(folder: Path, allow_pickle: bool = False) -> dict[str, Path]:
    """Embedding files in `folder` (and below), by lower-case file stem; pickles only when allowed."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    suffixes = SUFFIXES if allow_pickle else (".safetensors",)
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file() and path.stat().st_size > 0:
            found.setdefault(path.stem.lower(), path)
    return found


def file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def read_vectors(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """{"": (n, D)} for an SD 1.x / 2.x embedding, {"clip_l": (n, 768), "clip_g": (n, 1280)} for an SDXL one."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            message, hint = PICKLE_RISK
            raise ModelError(message.format(name=path.name), hint)
        try:
            data: Any = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"The embedding {path.name} could not be read as tensors only.", _HINT) from exc
    else:
        from safetensors.torch import load_file

        try:
            data = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelError(
                f"The embedding {path.name} could not be read: {exc}".splitlines()[0][:300], _HINT
            ) from exc
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):  # A1111 / kohya
        params = data["string_to_param"]
        if len(params) != 1:
            raise ModelError(f"The embedding {path.name} holds {len(params)} words; one is expected.", _HINT)
        data = {"": next(iter(params.values()))}
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path.name} is not a textual-inversion embedding (no tensors).", _HINT)
    if "clip_l" in data and "clip_g" in data:
        vectors = {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
    elif len(data) == 1:
        vectors = {"": next(iter(data.values()))}
    else:
        raise ModelError(
            f"{path.name} is not a textual-inversion embedding: it holds {len(data)} tensors "
            f"({', '.join(list(data)[:4])}).",
            _HINT,
        )
    out = {}
    for key, tensor in vectors.items():
        tensor = tensor.detach().float()
        if tensor.ndim == 1:
            tensor = tensor[None]
        if tensor.ndim != 2 or tensor.shape[0] < 1:
            raise ModelError(f"The embedding {path.name} has vectors of shape {tuple(tensor.shape)}.", _HINT)
        out[key] = tensor
    return out


_HINT = "Use an embedding .safetensors made for this model's family (SD 1.x, SD 2.x or SDXL)."


def encoders(loaded: LoadedModel) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs of a model: one for SD 1.x / 2.x, clip_l then clip_g for SDXL."""
    pipe = loaded.pipe
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if loaded.is_xl:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return [(t, e) for t, e in pairs if t is not None and e is not None]


def _width(encoder) -> int:
    return int(encoder.get_input_embeddings().weight.shape[-1])


def _fit(name: str, vectors: dict[str, torch.Tensor], loaded: LoadedModel) -> list[torch.Tensor]:
    """The vectors for each of the model's text encoders, or a ModelError naming both widths."""
    widths = [_width(e) for _, e in encoders(loaded)]
    model_widths = " + ".join(str(w) for w in widths)
    kind = "SDXL (clip_l + clip_g)" if loaded.is_xl else "this model's text encoder"
    if loaded.is_xl and set(vectors) == {"clip_l", "clip_g"}:
        parts = [vectors["clip_l"], vectors["clip_g"]]
    elif not loaded.is_xl and set(vectors) == {""}:
        parts = [vectors[""]]
    else:
        file_widths = " + ".join(str(v.shape[-1]) for v in vectors.values())
        made = "SDXL" if "clip_g" in vectors else "an SD 1.x / 2.x model"
        raise ModelError(
            f"The embedding {name!r} has width {file_widths} (made for {made}); {kind} takes width {model_widths}.",
            _HINT,
        )
    got = [int(p.shape[-1]) for p in parts]
    if got != widths:
        raise ModelError(
            f"The embedding {name!r} has width {' + '.join(map(str, got))}; {kind} takes width {model_widths}.",
            _HINT,
        )
    if parts[0].shape[0] != parts[-1].shape[0]:
        raise ModelError(f"The embedding {name!r} has clip_l and clip_g of different lengths.", _HINT)
    return parts


def registry(loaded: LoadedModel) -> dict[str, Registered]:
    reg = getattr(loaded.pipe, _REGISTRY, None)
    if reg is None:
        reg = {}
        setattr(loaded.pipe, _REGISTRY, reg)
    return reg


def _token(name: str) -> str:
    return "<ti:" + re.sub(r"[^0-9a-z_.-]", "_", name.lower()) + ">"


def _unload(loaded: LoadedModel, entry: Registered) -> None:
    for (tokenizer, encoder), tokens in zip(encoders(loaded), entry.tokens):
        loaded.pipe.unload_textual_inversion(tokens=tokens, tokenizer=tokenizer, text_encoder=encoder)


def _load(loaded: LoadedModel, name: str, path: Path, allow_pickle: bool) -> Registered:
    parts = _fit(name, read_vectors(path, allow_pickle), loaded)
    stat = path.stat()
    entry = Registered(name, path, file_sha256(path), (stat.st_size, stat.st_mtime_ns))
    base = _token(name)
    for (tokenizer, encoder), vectors in zip(encoders(loaded), parts):
        vectors = vectors.to(encoder.dtype)
        loaded.pipe.load_textual_inversion(vectors, token=base, tokenizer=tokenizer, text_encoder=encoder)
        tokens = [base] + [f"{base}_{i}" for i in range(1, vectors.shape[0])]
        entry.tokens.append(tokens)
        entry.ids.append(tuple(int(i) for i in tokenizer.convert_tokens_to_ids(tokens)))
    return entry


def prepare(
    loaded: LoadedModel, texts: list[str], *, folder: Path | None = None, allow_pickle: bool = False
) -> list[Registered]:
    """Load the folder's embeddings whose name occurs as a word in `texts` into the model (once); return those
    loaded. The engine calls it first with the job's allow_pickle; encoding calls it again (safetensors only).

    An embedding that does not fit the model (another family's width) is a ModelError naming it and both widths.
    A flow model (SD 3.x, Flux) takes none: its prompts go in as plain text (engine/encoding.py `flow_prompt`)."""
    if getattr(loaded, "is_flow", False):
        return []
    if folder is None:
        from desktop_app.core.paths import embeddings_dir

        folder = embeddings_dir()
    reg = registry(loaded)
    joined = "\n".join(texts).lower()
    if not joined.strip() and not reg:
        return []
    files = available(folder, allow_pickle)
    for key, path in files.items():
        if key not in joined or not re.search(rf"(?<![0-9a-z_]){re.escape(key)}(?![0-9a-z_])", joined):
            continue
        stat = path.stat()
        entry = reg.get(key)
        if entry is not None and entry.path == path and entry.stamp == (stat.st_size, stat.st_mtime_ns):
            continue
        if entry is not None:
            _unload(loaded, entry)
            del reg[key]
        reg[key] = _load(loaded, path.stem, path, allow_pickle)
    return list(reg.values())


def token_embeddings(loaded: LoadedModel, encoder_index: int) -> list[TokenEmbedding]:
    """What `prompts.tokenize_weighted` needs for one text encoder: each loaded name's ids and its vectors' ids."""
    tokenizer = encoders(loaded)[encoder_index][0]
    out = []
    for entry in registry(loaded).values():
        name_ids = tuple(tokenizer(entry.name, add_special_tokens=False)["input_ids"])
        out.append(TokenEmbedding(entry.name, name_ids, entry.ids[encoder_index]))
    return out


def ti_hashes(loaded: LoadedModel, used: set[str]) -> str:
    """A1111's `TI hashes`: "name: 0123456789ab, ..." of the embeddings a prompt used (':' and ',' dropped)."""
    reg = registry(loaded)
    parts = []
    for name in sorted(used, key=str.lower):
        entry = reg.get(name.lower())
        if entry is None:
            continue
        clean = entry.name.replace(":", "").replace(",", "")
        parts.append(f"{clean}: {entry.shorthash}")
    return ", ".join(parts)
