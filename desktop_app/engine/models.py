"""Model sources -> one loaded set of components, shared by every mode (nothing is loaded twice)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from desktop_app.core import paths
from desktop_app.core.errors import ModelError
from desktop_app.core.modelinfo import BUILTIN, builtin_model_path, model_defaults
from desktop_app.engine.device import MemoryOptions, apply_memory_options, free_memory
from desktop_app.engine.preview import LatentPreviewer

log = logging.getLogger(__name__)


def quiet_libraries() -> None:
    """diffusers and transformers log notices meant for developers; users see our events instead."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: the built-in one, a diffusers folder, a single file, or a hub id."""

    kind: str  # builtin | folder | single_file | hub
    location: str

    @classmethod
    def parse(cls, text: str | None) -> "ModelSource":
        text = (text or BUILTIN).strip()
        if text == BUILTIN:
            return cls("builtin", str(builtin_model_path()))
        path = Path(text).expanduser()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelError(f"{path} is not a diffusers model folder: it has no model_index.json.", "Pick the folder that holds model_index.json.")
            return cls("folder", str(path.resolve()))
        if path.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES:
            if not path.is_file():
                raise ModelError(f"No model file at {path}.", "Check the path.")
            return cls("single_file", str(path.resolve()))
        looks_like_path = os.sep in text or text.startswith((".", "~")) or path.suffix
        if looks_like_path or text.count("/") != 1:
            raise ModelError(f"No model folder at {text}.", "Give a diffusers folder with model_index.json, or 'builtin'.")
        return cls("hub", text)

    @property
    def model_id(self) -> str:
        return BUILTIN if self.kind == "builtin" else Path(self.location).name if self.kind != "hub" else self.location


def short_hash(path: Path) -> str:
    """AUTOMATIC1111-style model hash: sha256 of the weights, first 10 hex digits; cached by size and mtime."""
    weights = _weights_file(path)
    if weights is None:
        return ""
    stat = weights.stat()
    cache_file = paths.cache_dir() / "model_hashes.json"
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    key = f"{weights}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in cache:
        digest = hashlib.sha256()
        with open(weights, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        cache[key] = digest.hexdigest()[:10]
        try:
            cache_file.write_text(json.dumps(cache), encoding="utf-8")
        except OSError:
            pass
    return cache[key]


def _weights_file(path: Path) -> Path | None:
    if path.is_file():
        return path
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        candidate = path / "unet" / name
        if candidate.is_file():
            return candidate
    return None


@dataclass
class LoadedModel:
    """One model's components, on its device, with the pipelines derived from them."""

    source: ModelSource
    pipe: Any  # StableDiffusionPipeline: owns the components
    device: torch.device
    dtype: torch.dtype
    model_hash: str
    defaults: dict[str, Any]
    scheduler_config: Any
    previewer: LatentPreviewer
    _derived: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.source.model_id

    def pipeline(self, mode: str):
        """The pipeline for a mode, sharing this model's modules (from_pipe): switching mode loads nothing."""
        if mode == "generate":
            return self.pipe
        if mode not in self._derived:
            from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

            cls = {"img2img": StableDiffusionImg2ImgPipeline, "inpaint": StableDiffusionInpaintPipeline}[mode]
            derived = cls.from_pipe(self.pipe)
            derived.set_progress_bar_config(disable=True)
            self._derived[mode] = derived
        return self._derived[mode]

    @property
    def latent_factor(self) -> int:
        return getattr(self.pipe, "vae_scale_factor", 8)


def load_pipeline(source: ModelSource, dtype: torch.dtype):
    """Read a model from disk: the one place that does."""
    from diffusers import StableDiffusionPipeline

    quiet_libraries()
    if source.kind in ("builtin", "folder"):
        if not (Path(source.location) / "model_index.json").is_file():
            raise ModelError(f"The model folder {source.location} has no model_index.json.", "Reinstall the app, or pick another model.")
        try:
            return StableDiffusionPipeline.from_pretrained(
                source.location, dtype=dtype, safety_checker=None, requires_safety_checker=False, local_files_only=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"Cannot load the model at {source.location}: {exc}".splitlines()[0][:300], "Check that the folder is a complete Stable Diffusion model.") from exc
    if source.kind == "single_file":
        if Path(source.location).suffix.lower() in PICKLE_SUFFIXES:
            raise ModelError(
                f"{Path(source.location).name} is a pickle checkpoint: loading it could run code hidden in the file.",
                "Use a .safetensors version of the model.",
            )
        try:
            return StableDiffusionPipeline.from_single_file(source.location, dtype=dtype, safety_checker=None, requires_safety_checker=False, local_files_only=True)
        except Exception as exc:  # diffusers raises many kinds here
            raise ModelError(f"Cannot load {Path(source.location).name}: {exc}".splitlines()[0][:300], "Only SD 1.x / 2.x / XL checkpoints are supported.") from exc
    try:
        return StableDiffusionPipeline.from_pretrained(source.location, dtype=dtype, safety_checker=None, requires_safety_checker=False)
    except Exception as exc:
        raise ModelError(f"Cannot load {source.location} from the hub: {exc}".splitlines()[0][:300], "Check the repo id and your network connection.") from exc


class ModelManager:
    """Keeps one model loaded; asking for it again is free, asking for another unloads the first."""

    def __init__(self, device: torch.device, dtype: torch.dtype, memory: MemoryOptions | None = None) -> None:
        self.device = device
        self.dtype = dtype
        self.memory = memory or MemoryOptions()
        self.loaded: LoadedModel | None = None
        self.loads = 0  # how many times a model was read from disk

    def get(self, model: str | None) -> LoadedModel:
        source = ModelSource.parse(model)
        if self.loaded is not None and self.loaded.source == source:
            return self.loaded
        self.unload()
        pipe = load_pipeline(source, self.dtype)
        self.loads += 1
        pipe.set_progress_bar_config(disable=True)
        apply_memory_options(pipe, self.memory, self.device)
        vae = pipe.vae
        previewer = LatentPreviewer.fit(vae, vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0)
        self.loaded = LoadedModel(
            source=source,
            pipe=pipe,
            device=self.device,
            dtype=self.dtype,
            model_hash=short_hash(Path(source.location)) if source.kind != "hub" else "",
            defaults=model_defaults(source.location if source.kind != "builtin" else BUILTIN),
            scheduler_config=pipe.scheduler.config,
            previewer=previewer,
        )
        log.info("loaded %s on %s (%s)", source.model_id, self.device, self.dtype)
        return self.loaded

    def unload(self) -> None:
        if self.loaded is not None:
            self.loaded = None
            free_memory(self.device)
