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


def _key(location: str) -> str:
    path = Path(location).expanduser()
    if path.is_absolute() or path.exists():
        return str(path.resolve())
    return location
