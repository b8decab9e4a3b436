"""What the app knows about a model without loading it: where the built-in one lives, its recommended settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

BUILTIN = "builtin"
SETTINGS_FILE = "diffusion_desk.json"
GENERIC_DEFAULTS: dict[str, Any] = {"steps": 25, "guidance": 7.0, "width": 512, "height": 512, "scheduler": "dpmpp_2m"}
# The recommended settings of an edit (a model's diffusion_desk.json "edit" object): they override the generation
# defaults for edit jobs, and the window starts its Edit controls there.
EDIT_DEFAULT_KEYS = (
    "method",
    "attention_control",
    "cross_replace",
    "self_replace",
    "local_blend",
    "guidance",
    "steps",
    "t0",
    "strength",
)
# Flow-matching families (time is sigma in 0..1, the denoiser predicts velocity): Stable Diffusion 3 / 3.5 and Flux.1
FLOW_FAMILIES = ("sd3", "flux-dev", "flux-schnell", "flux-fill", "flux-kontext")


def is_flow(family: str | None) -> bool:
    """A flow-matching model (SD 3.x, Flux): sigma time, velocity prediction, its own pipelines and edit methods."""
    return (family or "").startswith(("sd3", "flux"))


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model as plain data (what `Backend.preload` gives the window): no torch objects."""

    source: str  # what the user chose: "builtin", a folder, a file or a hub id
    model_id: str  # its short name: "builtin", the folder or file name, the hub id
    family: str  # sd1 | sd2 | sd2-v | sdxl | ...-inpaint, "" when unknown
    model_hash: str  # AUTOMATIC1111-style short hash of the weights, "" when there is no single weights file
    defaults: dict[str, Any] = field(
        default_factory=dict, hash=False
    )  # recommended steps, guidance, width, height, scheduler


def builtin_model_path() -> Path:
    """The shipped shapes model, inside the installed package."""
    return Path(str(resources.files("desktop_app.resources").joinpath("models").joinpath("shapes")))


def model_defaults(source: str | None) -> dict[str, Any]:
    """Recommended steps, guidance, size and scheduler for a model (its diffusion_desk.json, else SD-like defaults)."""
    path = builtin_model_path() if source in (None, "", BUILTIN) else Path(source)
    defaults = dict(GENERIC_DEFAULTS)
    settings = path / SETTINGS_FILE if path.is_dir() else None
    if settings is not None and settings.is_file():
        try:
            data = json.loads(settings.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        defaults.update({k: data[k] for k in GENERIC_DEFAULTS if k in data})
        if "name" in data:
            defaults["name"] = data["name"]
        edit = data.get("edit") if isinstance(data, dict) else None
        if isinstance(edit, dict):
            defaults["edit"] = {k: edit[k] for k in EDIT_DEFAULT_KEYS if k in edit}
    elif path.is_dir() and (path / "vae" / "config.json").is_file():
        defaults.update(_size_from_unet(path))
    return defaults


def _size_from_unet(path: Path) -> dict[str, int]:
    """SD 1.x works at 512, SD 2.x-v at 768, XL at 1024: infer from the UNet's sample_size and the VAE's downscale."""
    try:
        unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((path / "vae" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    size = int(unet.get("sample_size", 64)) * factor
    return {"width": size, "height": size}
