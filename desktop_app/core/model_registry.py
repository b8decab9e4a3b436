"""The models the app knows: path or hub id, family, hash, last used. A JSON file in the config folder.

Plain data, no torch: the models dialog lists these, and a model that was moved
or deleted shows as missing instead of failing.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from desktop_app.core import paths

FILE_NAME = "models.json"
_lock = threading.Lock()


@dataclass
class KnownModel:
    location: str  # absolute path, or hub id owner/name[@rev][:subfolder]
    kind: str  # folder | single_file | hub
    family: str = ""  # sd1 | sd2 | sd2-v | sdxl | ...-inpaint
    model_hash: str = ""
    name: str = ""
    last_used: float = 0.0
    added: float = 0.0

    @property
    def missing(self) -> bool:
        """A local model whose file or folder is gone (hub models live in the hub cache: never 'missing')."""
        return self.kind != "hub" and not Path(self.location).exists()

    @property
    def display_name(self) -> str:
        return self.name or (Path(self.location).name if self.kind != "hub" else self.location)

    def to_dict(self) -> dict:
        return asdict(self)


class ModelRegistry:
    """Load, change, save: every change is written at once, atomically (temp file + os.replace)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else paths.config_dir() / FILE_NAME

    def _read(self) -> dict[str, KnownModel]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # a damaged file is set aside, not fatal: the list starts again
            try:
                os.replace(self.path, self.path.with_suffix(".json.bad"))
            except OSError:
                pass
            return {}
        rows = data.get("models", []) if isinstance(data, dict) else []
        fields = set(KnownModel.__dataclass_fields__)
        out = {}
        for row in rows:
            if isinstance(row, dict) and "location" in row and "kind" in row:
                model = KnownModel(**{k: v for k, v in row.items() if k in fields})
                out[model.location] = model
        return out

    def _write(self, models: dict[str, KnownModel]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": 1, "models": [m.to_dict() for m in models.values()]}, indent=1)
        fd, tmp = tempfile.mkstemp(prefix=".models-", suffix=".json", dir=str(self.path.parent))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def all(self) -> list[KnownModel]:
        """Most recently used first."""
        with _lock:
            return sorted(self._read().values(), key=lambda m: (m.last_used, m.added), reverse=True)

    def get(self, location: str) -> KnownModel | None:
        with _lock:
            return self._read().get(_key(location))

    def add(self, location: str, kind: str, *, family: str = "", model_hash: str = "", name: str = "") -> KnownModel:
        with _lock:
            models = self._read()
            key = _key(location)
            model = models.get(key) or KnownModel(location=key, kind=kind, added=time.time())
            model.kind = kind
            model.family = family or model.family
            model.model_hash = model_hash or model.model_hash
            model.name = name or model.name
            models[key] = model
            self._write(models)
            return model

    def touch(self, location: str, *, kind: str, family: str = "", model_hash: str = "") -> KnownModel:
        """A model was just loaded: remember it and when."""
        with _lock:
            models = self._read()
            key = _key(location)
            model = models.get(key) or KnownModel(location=key, kind=kind, added=time.time())
            model.kind, model.last_used = kind, time.time()
            model.family = family or model.family
            model.model_hash = model_hash or model.model_hash
            models[key] = model
            self._write(models)
            return model

    def remove(self, location: str) -> bool:
        with _lock:
            models = self._read()
            if models.pop(_key(location), None) is None:
                return False
            self._write(models)
            return True

    def missing(self) -> list[KnownModel]:
        return [m for m in self.all() if m.missing]


@dataclass(frozen=True)
class CuratedModel:
    """A model a new user can pick without knowing repo ids. Sizes are the download (fp16 where a GPU uses it)."""

    name: str
    repo: str
    family: str
    size_gb: float  # download with the fp16 variant (GPU)
    size_gb_fp32: float  # full-precision download (CPU)
    note: str
    steps: int = 25
    guidance: float = 7.0
    size: int = 512
    scheduler: str = "dpmpp_2m"
    gated: bool = False  # the hub asks for the license to be accepted and a login before it lets anyone download
    edit_method: str = ""  # the recommended edit method (core.requests.EDIT_METHODS), "" for the engine's default

    def defaults(self) -> dict:
        out: dict = {
            "name": self.name,
            "steps": self.steps,
            "guidance": self.guidance,
            "width": self.size,
            "height": self.size,
            "scheduler": self.scheduler,
        }
        if self.edit_method:
            out["edit"] = {"method": self.edit_method}
        return out

    @property
    def login_hint(self) -> str:
        """How to get a gated model: accept the license, then log in ("" for an open one)."""
        return gated_hint(self.repo) if self.gated else ""


def gated_hint(repo: str) -> str:
    """What to do for a gated hub repo (FLUX.1 dev / Fill / Kontext, SD 3.5): the license page, then a token."""
    return (
        f"Accept the license at https://huggingface.co/{repo} (logged in there), then log in here once: "
        "run `hf auth login` (older versions: `huggingface-cli login`) and paste a read token from "
        "https://huggingface.co/settings/tokens, or set the HF_TOKEN environment variable to it."
    )


CURATED: tuple[CuratedModel, ...] = (
    CuratedModel(
        "Stable Diffusion 1.5",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "sd1",
        2.1,
        4.3,
        "The classic; huge ecosystem of LoRAs. 512x512.",
    ),
    CuratedModel(
        "Stable Diffusion 1.5 Inpainting",
        "stable-diffusion-v1-5/stable-diffusion-inpainting",
        "sd1-inpaint",
        2.1,
        4.3,
        "Fills masked areas seamlessly. 512x512.",
    ),
    CuratedModel(
        "Stable Diffusion 2.1",
        "stabilityai/stable-diffusion-2-1",
        "sd2-v",
        2.6,
        5.2,
        "v-prediction, 768x768.",
        size=768,
    ),
    CuratedModel(
        "SD-Turbo",
        "stabilityai/sd-turbo",
        "sd2",
        2.6,
        5.2,
        "1-4 steps, no guidance: fast on small GPUs. 512x512.",
        steps=2,
        guidance=0.0,
        scheduler="euler_a",
    ),
    CuratedModel(
        "Stable Diffusion XL",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "sdxl",
        6.9,
        13.9,
        "Best quality; needs about 8 GB of GPU memory. 1024x1024.",
        steps=30,
        guidance=6.0,
        size=1024,
    ),
    CuratedModel(
        "SDXL-Turbo",
        "stabilityai/sdxl-turbo",
        "sdxl",
        6.9,
        13.9,
        "1-4 steps, no guidance. 512x512.",
        steps=2,
        guidance=0.0,
        scheduler="euler_a",
    ),
    CuratedModel(
        "SDXL Inpainting",
        "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        "sdxl-inpaint",
        6.9,
        13.9,
        "Inpainting at 1024x1024.",
        steps=30,
        guidance=6.0,
        size=1024,
    ),
    # Flow-matching models: bf16 weights only (no fp16 variant), so both sizes are the same download.
    CuratedModel(
        "FLUX.1 [schnell]",
        "black-forest-labs/FLUX.1-schnell",
        "flux-schnell",
        33.7,
        33.7,
        "12B, 4 steps, no guidance; Apache 2.0, not gated. Needs about 24 GB of GPU memory (less with offload).",
        steps=4,
        guidance=0.0,
        size=1024,
        scheduler="euler",
        edit_method="fireflow",
    ),
    CuratedModel(
        "FLUX.1 [dev]",
        "black-forest-labs/FLUX.1-dev",
        "flux-dev",
        33.7,
        33.7,
        "12B, best FLUX.1 quality; guidance 3.5 is distilled guidance, not CFG. Gated, non-commercial license.",
        steps=28,
        guidance=3.5,
        size=1024,
        scheduler="euler",
        gated=True,
        edit_method="fireflow",
    ),
    CuratedModel(
        "FLUX.1 Fill [dev]",
        "black-forest-labs/FLUX.1-Fill-dev",
        "flux-fill",
        33.7,
        33.7,
        "FLUX.1 inpainting and outpainting. Gated, non-commercial license.",
        steps=50,
        guidance=30.0,
        size=1024,
        scheduler="euler",
        gated=True,
        edit_method="fireflow",
    ),
    CuratedModel(
        "FLUX.1 Kontext [dev]",
        "black-forest-labs/FLUX.1-Kontext-dev",
        "flux-kontext",
        33.7,
        33.7,
        "Instruction edits ('make the circle blue'). Gated, non-commercial license.",
        steps=28,
        guidance=2.5,
        size=1024,
        scheduler="euler",
        gated=True,
        edit_method="kontext",
    ),
    CuratedModel(
        "Stable Diffusion 3.5 Medium",
        "stabilityai/stable-diffusion-3.5-medium",
        "sd3",
        16.3,
        16.3,
        "2.5B MMDiT-X with three text encoders (T5 is 9.5 GB of it). Gated, Stability community license.",
        steps=40,
        guidance=4.5,
        size=1024,
        scheduler="euler",
        gated=True,
        edit_method="fireflow",
    ),
    CuratedModel(
        "Stable Diffusion 3.5 Large",
        "stabilityai/stable-diffusion-3.5-large",
        "sd3",
        27.6,
        27.6,
        "8B, the best SD 3.5; needs about 20 GB of GPU memory (less with offload). Gated, Stability community license.",
        steps=28,
        guidance=3.5,
        size=1024,
        scheduler="euler",
        gated=True,
        edit_method="fireflow",
    ),
)


def curated(repo: str) -> CuratedModel | None:
    return next((m for m in CURATED if m.repo == repo), None)


def _key(location: str) -> str:
    path = Path(location).expanduser()
    if path.is_absolute() or path.exists():
        return str(path.resolve())
    return location


def list_rows(registry: ModelRegistry | None = None) -> list[dict]:
    """Known models (most recent first, missing ones flagged) then the curated hub list: for `models` in the CLI."""
    rows = []
    for m in (registry or ModelRegistry()).all():
        rows.append(
            {
                "id": m.location,
                "name": m.display_name,
                "kind": m.kind,
                "family": m.family,
                "hash": m.model_hash,
                "last_used": m.last_used,
                "missing": m.missing,
            }
        )
    for c in CURATED:
        rows.append(
            {
                "id": c.repo,
                "name": c.name,
                "kind": "hub (curated)",
                "family": c.family,
                "download_gb": c.size_gb,
                "note": c.note,
                "gated": c.gated,
            }
        )
    return rows


def format_size(num_bytes: float) -> str:
    """Bytes as a person reads them (download sizes and progress)."""
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GB"
