"""Model sources -> one loaded set of components, shared by every mode (nothing is loaded twice)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from desktop_app.core import paths
from desktop_app.core.errors import JobCancelled, ModelError, UserError
from desktop_app.core.latents import Previewer
from desktop_app.core.modelinfo import BUILTIN, builtin_model_path, is_flow, model_defaults
from desktop_app.engine import checkpoints, hub
from desktop_app.engine.device import MemoryOptions, apply_memory_options, free_memory, pick_dtype, vae_precision
from desktop_app.engine.preview import previewer_for

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
MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".gguf")  # .sft / .gguf: FLUX.1 and SD 3.x transformers (flow_files)
PICKLE_RISK = (
    "{name} is a pickle checkpoint: unpickling can run any code hidden in the file, so it is refused.",
    "Use a .safetensors version of the model, or, if you trust its source, turn on 'Allow pickle checkpoints' (--allow-pickle): "
    "it is then read with torch.load(weights_only=True), which loads tensors only.",
)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: the built-in one, a diffusers folder, a single file, or a hub id."""

    kind: str  # builtin | folder | single_file | hub
    location: str
    revision: str | None = None  # hub only: branch, tag or commit
    subfolder: str | None = None  # hub only: the pipeline inside the repo

    @classmethod
    def parse(cls, text: str | None) -> ModelSource:
        """'builtin', a folder, a file, or a hub id 'owner/name[@revision][:subfolder]'."""
        text = (text or BUILTIN).strip()
        if text == BUILTIN:
            return cls("builtin", str(builtin_model_path()))
        path = Path(text).expanduser()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelError(
                    f"{path} is not a diffusers model folder: it has no model_index.json.",
                    "Pick the folder that holds model_index.json.",
                )
            return cls("folder", str(path.resolve()))
        if path.suffix.lower() in MODEL_FILE_SUFFIXES + PICKLE_SUFFIXES:
            if not path.is_file():
                raise ModelError(f"No model file at {path}.", "Check the path.")
            return cls("single_file", str(path.resolve()))
        hub_id = hub.HUB_ID.fullmatch(text)
        looks_like_path = (
            text.startswith((".", "~", os.sep))
            or (os.sep != "/" and os.sep in text)
            # a file's extension (".png"), not a version inside a hub name ("FLUX.1-schnell", "stable-diffusion-3.5-medium")
            or re.fullmatch(r"\.[A-Za-z]{1,5}", Path(text.split("@")[0].split(":")[0]).suffix) is not None
        )
        if looks_like_path or hub_id is None:
            raise ModelError(
                f"No model folder at {text}.",
                "Give a diffusers folder with model_index.json, a .safetensors file, a hub id (owner/name), or 'builtin'.",
            )
        return cls("hub", hub_id["repo"], hub_id["revision"] or None, hub_id["subfolder"] or None)

    @property
    def model_id(self) -> str:
        if self.kind == "builtin":
            return BUILTIN
        if self.kind != "hub":
            return Path(self.location).name
        return (
            self.location
            + (f"@{self.revision}" if self.revision else "")
            + (f":{self.subfolder}" if self.subfolder else "")
        )


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
    for denoiser in ("unet", "transformer"):  # SD 1.x / 2.x / XL, then SD 3.x / Flux
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
            candidate = path / denoiser / name
            if candidate.is_file():
                return candidate
    return None


# The diffusers pipeline class of each mode, per flow family (they share one set of modules). Flux Fill has one
# pipeline for all: generate and img2img run as an inpaint of the whole image, as an SD inpainting UNet does. Kontext
# without a source image is a plain Flux dev; its own modes take the source as the reference ("kontext") and add a
# mask ("kontext_inpaint").
_FLUX = {"generate": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"}
FLOW_PIPELINES: dict[str, dict[str, str]] = {
    "sd3": {
        "generate": "StableDiffusion3Pipeline",
        "img2img": "StableDiffusion3Img2ImgPipeline",
        "inpaint": "StableDiffusion3InpaintPipeline",
    },
    "flux-dev": _FLUX,
    "flux-schnell": _FLUX,
    "flux-fill": {"generate": "FluxFillPipeline", "img2img": "FluxFillPipeline", "inpaint": "FluxFillPipeline"},
    "flux-kontext": {
        **_FLUX,
        "kontext": "FluxKontextPipeline",
        "kontext_inpaint": "FluxKontextInpaintPipeline",
    },
}
# Recommended settings per flow family when the model brings none (no diffusion_desk.json, no shipped config):
# the model cards' (FLUX.1 schnell: 4 steps, no guidance; dev: distilled guidance 3.5; Fill: 30; Kontext: 2.5;
# SD 3.5 medium: 28-40 steps at CFG 4.5-5). "euler" names the flow-matching Euler sampler they all use.
FLOW_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd3": {"steps": 28, "guidance": 4.5},
    "flux-dev": {"steps": 28, "guidance": 3.5},
    "flux-schnell": {"steps": 4, "guidance": 0.0},
    "flux-fill": {"steps": 28, "guidance": 30.0},
    "flux-kontext": {"steps": 28, "guidance": 2.5},
}


@dataclass
class LoadedModel:
    """One model's components, on its device, with the pipelines derived from them."""

    source: ModelSource
    pipe: Any  # StableDiffusion(XL)Pipeline, StableDiffusion3Pipeline or a Flux pipeline: owns the components
    device: torch.device
    dtype: torch.dtype
    model_hash: str
    defaults: dict[str, Any]
    scheduler_config: Any
    previewer: Previewer  # preview.previewer_for: the family's known map, a TAESD decoder or a cached fit
    _derived: dict[str, Any] = field(default_factory=dict)
    family: str = ""  # sd1 | sd2 | sd2-v | sdxl | ...-inpaint | core.modelinfo.FLOW_FAMILIES, "" when unknown
    loras: dict[str, float] = field(default_factory=dict)  # adapter name -> weight, see engine.lora
    decode_previews: bool = (
        False  # the VAE decodes a native-size latent in under PREVIEW_DECODE_BUDGET: previews decode
    )

    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def is_flow(self) -> bool:
        """SD 3.x or Flux: a transformer predicting velocity in sigma time, with its own pipelines."""
        return is_flow(self.family) or type(self.pipe).__name__.startswith(FLOW_PIPELINE_PREFIXES)

    @property
    def is_xl(self) -> bool:
        if self.is_flow:  # SD 3.x and Flux have a text_encoder_2 too, but none of SDXL's conditioning
            return False
        return getattr(self.pipe, "text_encoder_2", None) is not None or "XL" in type(self.pipe).__name__

    @property
    def inpaint_unet(self) -> bool:
        """A 9-channel inpainting UNet: every mode runs through the inpainting pipeline (a full mask for generate)."""
        unet = getattr(self.pipe, "unet", None)
        return unet is not None and int(unet.config.in_channels) == 9

    @property
    def prediction_type(self) -> str:
        """epsilon | v_prediction for SD; "flow" (velocity, x0 = x_t - sigma v) for SD 3.x and Flux."""
        if self.is_flow:
            return "flow"
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    def pipeline(self, mode: str):
        """The pipeline for a mode, sharing this model's modules (from_pipe): switching mode loads nothing.

        Modes: generate, img2img, inpaint; on Flux Kontext also kontext and kontext_inpaint (its instruction edits)."""
        if self.is_flow:
            names = FLOW_PIPELINES.get(self.family) or FLOW_PIPELINES[family_of_pipeline(self.pipe)]
            if mode not in names:
                raise KeyError(mode)
            if names[mode] == type(self.pipe).__name__:
                return self.pipe
            return self._derive(mode, names[mode])
        if mode not in ("generate", "img2img", "inpaint"):
            raise KeyError(mode)
        if self.inpaint_unet:
            mode = "inpaint"
        if mode == "generate":
            return self.pipe
        names = {
            False: {"img2img": "StableDiffusionImg2ImgPipeline", "inpaint": "StableDiffusionInpaintPipeline"},
            True: {"img2img": "StableDiffusionXLImg2ImgPipeline", "inpaint": "StableDiffusionXLInpaintPipeline"},
        }
        return self._derive(mode, names[self.is_xl][mode])

    def _derive(self, mode: str, class_name: str):
        """The diffusers pipeline `class_name` on this model's modules, made once per mode."""
        if mode not in self._derived:
            import diffusers

            cls = getattr(diffusers, class_name)
            if getattr(self.pipe, "_all_hooks", None) or getattr(self.pipe, "_offload_device", None) is not None:
                derived = cls.from_pipe(self.pipe)  # CPU offload: from_pipe carries the hooks over
            else:
                derived = _share_components(cls, self.pipe)
            derived.set_progress_bar_config(disable=True)
            self._derived[mode] = derived
        return self._derived[mode]

    @property
    def latent_factor(self) -> int:
        return getattr(self.pipe, "vae_scale_factor", 8)


def _share_components(cls, pipe):
    """`cls` built on `pipe`'s very modules (what from_pipe does, without its walk over every module: ~3x faster)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    components = {name: module for name, module in pipe.components.items() if name in params}
    for name in (
        "requires_safety_checker",
        "force_zeros_for_empty_prompt",
        "requires_aesthetics_score",
        "add_watermarker",
    ):
        if name in params and name in pipe.config:
            components[name] = pipe.config[name]
    if "requires_safety_checker" in params:
        components["requires_safety_checker"] = False
    if "add_watermarker" in params:
        components["add_watermarker"] = False
    derived = cls(**components)
    for attr in ("_name_or_path",):
        if attr in pipe.config:
            derived.register_to_config(**{attr: pipe.config[attr]})
    return derived


# -- reading models from disk ------------------------------------------------------------------
FLOW_PIPELINE_PREFIXES = ("StableDiffusion3", "Flux")
# model_index.json's _class_name -> the pipeline we load it as (a folder saved from a derived pipeline loads as the
# family's text-to-image one; the mode pipelines are made from it). Flux Control / ControlNet / Prior are not here.
_FLOW_FOLDER_CLASSES = {
    "StableDiffusion3Pipeline": "StableDiffusion3Pipeline",
    "StableDiffusion3Img2ImgPipeline": "StableDiffusion3Pipeline",
    "StableDiffusion3InpaintPipeline": "StableDiffusion3Pipeline",
    "FluxPipeline": "FluxPipeline",
    "FluxImg2ImgPipeline": "FluxPipeline",
    "FluxInpaintPipeline": "FluxPipeline",
    "FluxFillPipeline": "FluxFillPipeline",
    "FluxKontextPipeline": "FluxKontextPipeline",
    "FluxKontextInpaintPipeline": "FluxKontextPipeline",
}


def _folder_pipeline_class(folder: Path):
    """StableDiffusion(XL)Pipeline, StableDiffusion3Pipeline, FluxPipeline, FluxFillPipeline or FluxKontextPipeline,
    from model_index.json; others get a clear message."""
    import diffusers

    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelError(
            f"Cannot read {folder / 'model_index.json'}: {exc}"[:300],
            "Check that the folder is a complete diffusers model.",
        ) from exc
    if not isinstance(index, dict):
        raise ModelError(
            f"{folder / 'model_index.json'} is damaged: it holds a JSON {type(index).__name__}, not an object.",
            "Replace the folder with an intact copy of the model (its model_index.json names its parts).",
        )
    name = str(index.get("_class_name", "StableDiffusionPipeline"))
    if name in _FLOW_FOLDER_CLASSES:
        return getattr(diffusers, _FLOW_FOLDER_CLASSES[name])
    encoder_2 = index.get("text_encoder_2")
    if isinstance(encoder_2, list) and encoder_2 and encoder_2[0] is not None and "XL" in name:
        return diffusers.StableDiffusionXLPipeline
    if "XL" in name and "Refiner" not in name and index.get("text_encoder_2"):
        return diffusers.StableDiffusionXLPipeline
    if (
        name.startswith("StableDiffusion")
        and "XL" not in name
        and "3" not in name
        and "Upscale" not in name
        and "Depth" not in name
        and "Pix2Pix" not in name
    ):
        return diffusers.StableDiffusionPipeline
    raise ModelError(
        f"{folder.name} is a {name} model: Diffusion Desk runs Stable Diffusion 1.x, 2.x, XL and 3.x, and FLUX.1 "
        "(schnell, dev, Fill, Kontext).",
        "Choose an SD 1.x, 2.x, XL or 3.x model, or a FLUX.1 one.",
    )


def _refuse_pickle_only_components(folder: Path) -> None:
    """A diffusers folder whose weights are pickles only (.bin) is refused like a .ckpt, unless opted in."""
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        names = [p.name for p in sub.iterdir()]
        if any(n.endswith(".safetensors") for n in names):
            continue
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            message, hint = PICKLE_RISK
            raise ModelError(message.format(name=f"{folder.name}/{sub.name}/{pickles[0]}"), hint)


def _from_pretrained(cls, location: str, dtype: torch.dtype, **kwargs):
    # optional parts we never use (and never download): hub repos list them in model_index.json
    extra: dict[str, Any] = {"feature_extractor": None, "image_encoder": None}
    if cls.__name__ == "StableDiffusionPipeline":
        extra.update(safety_checker=None, requires_safety_checker=False)
    return cls.from_pretrained(location, dtype=dtype, local_files_only=True, **extra, **kwargs)


def load_single_file(path: Path, dtype: torch.dtype, *, allow_pickle: bool = False):
    """A single-file SD 1.x / 2.x / XL checkpoint, with the shipped configs: no network. Returns (pipe, Detection)."""
    import diffusers
    from transformers import CLIPTokenizer

    state_dict = None
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            message, hint = PICKLE_RISK
            raise ModelError(message.format(name=path.name), hint)
        state_dict = checkpoints.read_pickle(path)
    elif path.suffix.lower() != ".safetensors":
        raise ModelError(f"{path.name}: unknown checkpoint format.", "Use a .safetensors checkpoint.")
    detection = checkpoints.detect_file(path, state_dict)
    config = checkpoints.config_folder(detection.family)
    cls = diffusers.StableDiffusionXLPipeline if detection.is_xl else diffusers.StableDiffusionPipeline
    components: dict[str, Any] = {}
    for name in ("tokenizer", "tokenizer_2"):
        folder = config / name
        if (folder / "vocab.json").is_file():
            components[name] = CLIPTokenizer.from_pretrained(str(folder))
        elif folder.is_dir():
            pad = (
                json.loads((folder / "pad_token.json").read_text(encoding="utf-8")).get("pad_token", "<|endoftext|>")
                if (folder / "pad_token.json").is_file()
                else "<|endoftext|>"
            )
            components[name] = checkpoints.shared_tokenizer(pad)
    if not detection.is_xl:
        components.update(safety_checker=None, requires_safety_checker=False, feature_extractor=None)
    kwargs = dict(config=str(config), dtype=dtype, local_files_only=True, **components)
    try:
        if state_dict is None:
            pipe = cls.from_single_file(str(path), **kwargs)
        else:
            from unittest import mock

            with mock.patch("diffusers.loaders.single_file.load_single_file_checkpoint", return_value=state_dict):
                pipe = cls.from_single_file(str(path), **kwargs)
    except ModelError:
        raise
    except Exception as exc:  # diffusers raises many kinds here
        raise ModelError(
            f"Cannot load {path.name} as {detection.name}: {exc}".splitlines()[0][:300],
            "The file may be damaged or a variant with a different layout; try its diffusers version.",
        ) from exc
    finally:
        state_dict = None
    if detection.family == "sd2-v" and not detection.prediction_known:
        # same layout as the epsilon 2.x base: ask the UNet which one it is
        if not checkpoints.probe_v_prediction(pipe.unet):
            detection = checkpoints.Detection(
                "sd2",
                detection.in_channels,
                detection.context_dim,
                "epsilon",
                detection.evidence + ("prediction type epsilon (probed)",),
            )
        else:
            detection = checkpoints.Detection(
                "sd2-v",
                detection.in_channels,
                detection.context_dim,
                "v_prediction",
                detection.evidence + ("prediction type v (probed)",),
            )
    if pipe.scheduler.config.get("prediction_type") != detection.prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, prediction_type=detection.prediction_type
        )
    pipe._diffusion_desk_family = detection.family  # read by ModelManager
    return pipe, detection


def load_pipeline(source: ModelSource, dtype: torch.dtype, *, allow_pickle: bool = False, download=None):
    """Read a model from disk: the one place that does. `download(source) -> folder` fetches hub models (engine.hub)."""
    quiet_libraries()
    if source.kind in ("builtin", "folder"):
        if not (Path(source.location) / "model_index.json").is_file():
            raise ModelError(
                f"The model folder {source.location} has no model_index.json.",
                "Reinstall the app, or pick another model.",
            )
        if not allow_pickle:
            _refuse_pickle_only_components(Path(source.location))
        cls = _folder_pipeline_class(Path(source.location))
        try:
            return _from_pretrained(cls, source.location, dtype)
        except (JobCancelled, MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged or hostile folder: diffusers/transformers raise anything
            raise ModelError(
                f"Cannot load the model at {source.location}: {exc}".splitlines()[0][:300],
                "Check that the folder is a complete Stable Diffusion model.",
            ) from exc
    if source.kind == "single_file":
        path = Path(source.location)
        if _is_flow_file(path):  # a FLUX.1 / SD 3.x transformer (or all-in-one) file, with its parts found
            from desktop_app.engine import flow_files

            return flow_files.load_flow_file(path, dtype, allow_pickle=allow_pickle)
        pipe, _ = load_single_file(path, dtype, allow_pickle=allow_pickle)
        return pipe
    folder = Path(
        download(source)
        if download is not None
        else hub.download_model(
            source.location, revision=source.revision, subfolder=source.subfolder, prefer_fp16=dtype != torch.float32
        )
    )
    cls = _folder_pipeline_class(folder)
    try:
        return _from_pretrained(cls, str(folder), dtype, variant=hub.weights_variant(folder))
    except (JobCancelled, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged download: diffusers/transformers raise anything
        raise ModelError(
            f"Cannot load {source.model_id}: {exc}".splitlines()[0][:300],
            "The download may be incomplete: download it again.",
        ) from exc


def _is_flow_file(path: Path) -> bool:
    """A .gguf / .sft file is a flow transformer; a .safetensors one when its header says so. A damaged header
    is left to the SD reader, which names what is wrong with the file."""
    suffix = path.suffix.lower()
    if suffix in (".gguf", ".sft"):
        return True
    if suffix != ".safetensors":
        return False
    from desktop_app.engine import flow_files

    try:
        return flow_files.detect_flow_file(path) is not None
    except ModelError:
        return False


def family_of_pipeline(pipe) -> str:
    """sd1 / sd2 / sd2-v / sdxl (+ -inpaint), sd3 or flux-dev / -schnell / -fill / -kontext of a loaded pipeline,
    for the registry and the UI.

    Flux: Kontext by its pipeline; Fill by its pipeline or its 384 input channels (latent 64 + masked image 64 + the
    8x8 pixel mask packed 2x2, 256); schnell is the one without a guidance embedding (timestep-distilled)."""
    family = getattr(pipe, "_diffusion_desk_family", "")
    if family:
        return family
    name = type(pipe).__name__
    if name.startswith("StableDiffusion3"):
        return "sd3"
    if name.startswith("Flux"):
        config = pipe.transformer.config
        if "Kontext" in name:
            return "flux-kontext"
        if "Fill" in name or int(config.in_channels) == 384:
            return "flux-fill"
        return "flux-dev" if config.guidance_embeds else "flux-schnell"
    unet = pipe.unet.config
    inpaint = "-inpaint" if int(unet.in_channels) == 9 else ""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl" + inpaint
    if int(unet.cross_attention_dim) == 1024 or getattr(pipe.text_encoder.config, "hidden_act", "") == "gelu":
        if inpaint:
            return "sd2-inpaint"
        return "sd2-v" if pipe.scheduler.config.get("prediction_type") == "v_prediction" else "sd2"
    return "sd1" + inpaint


def _looks_flow(source: ModelSource) -> bool:
    """Whether a source is an SD 3.x / Flux model, before loading it (its model_index.json, its file's header, the
    curated list or its hub name): it decides the precision the weights load in."""
    try:
        if source.kind in ("builtin", "folder"):
            index = json.loads((Path(source.location) / "model_index.json").read_text(encoding="utf-8"))
            return str(index.get("_class_name", "")).startswith(("Flux", "StableDiffusion3"))
        if source.kind == "single_file":
            from desktop_app.engine import flow_files

            return flow_files.detect_flow_file(source.location) is not None
    except (OSError, ValueError, AttributeError, UserError):
        return False
    pick = hub.curated(source.location)
    if pick is not None:
        return is_flow(pick.family)
    name = source.location.lower()
    return "flux" in name or "stable-diffusion-3" in name


class ModelManager:
    """Keeps one model loaded; asking for it again is free, asking for another unloads the first."""

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        memory: MemoryOptions | None = None,
        *,
        allow_pickle: bool = False,
        requested_dtype: str | None = None,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.requested_dtype = (
            requested_dtype  # the user's precision ("bf16" ...), None: the device's and family's best
        )
        self.memory = memory or MemoryOptions()
        self.allow_pickle = allow_pickle  # the user's explicit opt-in (setting, --allow-pickle)
        self.loaded: LoadedModel | None = None
        self.loads = 0  # how many times a model was read from disk

    def get(self, model: str | None, emit=None, cancel=None) -> LoadedModel:
        """The loaded model for a source; `emit` gets download Progress (phase "download"), `cancel` stops a download."""
        source = ModelSource.parse(model)
        if self.loaded is not None and self.loaded.source == source:
            return self.loaded
        self.unload()
        dtype = self._dtype_for(source)
        download: Callable[[ModelSource], Path] | None = None
        if source.kind == "hub":

            def download_hub(src: ModelSource) -> Path:
                return hub.download_model(
                    src.location,
                    revision=src.revision,
                    subfolder=src.subfolder,
                    progress=hub.progress_to_events(emit),
                    cancel=cancel,
                    prefer_fp16=dtype != torch.float32,
                )

            download = download_hub

        try:
            pipe = load_pipeline(source, dtype, allow_pickle=self.allow_pickle, download=download)
        except hub.DownloadCancelled as exc:
            raise JobCancelled() from exc
        self.loads += 1
        pipe.set_progress_bar_config(disable=True)
        apply_memory_options(pipe, self.memory, self.device)
        location = source.location
        if source.kind == "hub":
            location = str(getattr(pipe, "name_or_path", "") or source.location)
        family = family_of_pipeline(pipe)
        model_hash = short_hash(Path(location))
        vae = pipe.vae
        with vae_precision(vae):  # the SDXL VAE overflows in fp16 (when a map has to be fitted)
            previewer = previewer_for(vae, family, model_hash, model_id=source.model_id)
        defaults = model_defaults(location if source.kind != "builtin" else BUILTIN)
        own_settings = (
            source.kind in ("builtin", "folder", "hub") and (Path(location) / "diffusion_desk.json").is_file()
        )
        settings = getattr(pipe, "_diffusion_desk_settings", None)  # a flow file's variant (flow_files)
        if source.kind == "single_file" and settings and (Path(settings) / "diffusion_desk.json").is_file():
            defaults = model_defaults(str(settings))
        elif source.kind == "single_file":
            defaults = _family_defaults(family, defaults)
        elif source.kind == "hub" and not own_settings:
            pick = hub.curated(source.location)
            defaults = {**defaults, **pick.defaults()} if pick else _family_defaults(family, defaults)
        elif is_flow(family) and not own_settings:  # a flow folder without its settings: its family's
            defaults = _family_defaults(family, defaults)
        self.loaded = LoadedModel(
            source=source,
            pipe=pipe,
            device=self.device,
            dtype=dtype,
            model_hash=model_hash,
            defaults=defaults,
            scheduler_config=pipe.scheduler.config,
            previewer=previewer,
            family=family,
        )
        self.loaded.decode_previews = _decode_is_cheap(self.loaded)
        _remember(source, family, self.loaded.model_hash)
        log.info("loaded %s (%s) on %s (%s)", source.model_id, family, self.device, dtype)
        return self.loaded

    def _dtype_for(self, source: ModelSource) -> torch.dtype:
        """The precision to load `source` in: the engine's, except that on a GPU with no precision asked a flow model
        (SD 3.x, Flux: trained in bf16, their T5 overflows fp16) gets bf16 where the GPU has it (device.pick_dtype)."""
        if self.requested_dtype is not None or self.device.type == "cpu" or not _looks_flow(source):
            return self.dtype
        return pick_dtype(self.device, None, family="flux-dev")

    def unload(self) -> None:
        if self.loaded is not None:
            self.loaded = None
            free_memory(self.device)


PREVIEW_DECODE_BUDGET = 0.015  # seconds


def _decode_is_cheap(loaded: LoadedModel) -> bool:
    """Time one VAE decode at the model's native size. A small VAE (the built-in one: ~3 ms on a CPU) then
    decodes every step's preview: a linear map cannot show its colours (its decoder mixes neighbouring latents)."""
    if loaded.is_xl or loaded.device.type == "meta":
        return False
    factor = loaded.latent_factor
    width, height = int(loaded.defaults.get("width") or 512), int(loaded.defaults.get("height") or 512)
    if width * height > 256 * 256:
        return False
    vae = loaded.pipe.vae
    latent = torch.zeros(
        (1, int(vae.config.latent_channels), height // factor, width // factor), device=loaded.device, dtype=vae.dtype
    )
    timings = []
    with torch.inference_mode():
        vae.decode(latent, return_dict=False)  # warm-up
        for _ in range(3):  # the fastest of three: a busy machine's hiccup does not make a small VAE look slow
            started = time.perf_counter()
            vae.decode(latent, return_dict=False)
            timings.append(time.perf_counter() - started)
            if timings[-1] < PREVIEW_DECODE_BUDGET:
                break
    return min(timings) < PREVIEW_DECODE_BUDGET


def _family_defaults(family: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """A single file has no diffusion_desk.json: use its family's (the shipped config folder's, or a test override's).

    A flow family's shipped folder may hold only diffusion_desk.json; without one, FLOW_DEFAULTS at 1024x1024."""
    if is_flow(family):
        settings = checkpoints.configs_root() / family / "diffusion_desk.json"
        if settings.is_file():
            return model_defaults(str(settings.parent))
        known = FLOW_DEFAULTS.get(family)
        if known is None:
            return defaults
        return {**defaults, "width": 1024, "height": 1024, "scheduler": "euler", **known}
    try:
        folder = checkpoints.config_folder(family)
    except ModelError:
        return defaults
    return model_defaults(str(folder))


def _remember(source: ModelSource, family: str, model_hash: str) -> None:
    """Record the model in the registry (last used); a registry problem never stops a job."""
    if source.kind == "builtin":
        return
    try:
        from desktop_app.core.model_registry import ModelRegistry

        ModelRegistry().touch(
            source.location if source.kind != "hub" else source.model_id,
            kind=source.kind,
            family=family,
            model_hash=model_hash,
        )
    except Exception:  # noqa: BLE001 - the registry is a convenience
        log.warning("could not update the model registry", exc_info=True)
