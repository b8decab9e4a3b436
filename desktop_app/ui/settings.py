"""Where the window keeps its settings: an INI file (under --data-dir when given), never the registry; the
engine's Performance settings in it."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings

from desktop_app.worker import DEVICE_CHOICES, DTYPE_CHOICES, EngineOptions

SETTINGS_NAME = "settings.ini"


def settings_path(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir:
        folder = Path(data_dir)
    else:
        from desktop_app.core import paths

        folder = paths.config_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # a read-only place: the window still opens, its settings are just not kept (the app says so once)
    return folder / SETTINGS_NAME


def make_settings(data_dir: str | os.PathLike | None = None) -> QSettings:
    return QSettings(str(settings_path(data_dir)), QSettings.Format.IniFormat)


# -- the engine's Performance settings (worker.EngineOptions), under "performance/" --------------------------------
PERFORMANCE_SWITCHES = ("attention_slicing", "vae_tiling", "cpu_offload", "sequential_offload")


def load_engine_options(s: QSettings) -> EngineOptions:
    """The Performance settings kept last time (an unknown or damaged value: its default)."""
    device = str(s.value("performance/device", "auto") or "auto")
    dtype = str(s.value("performance/dtype", "auto") or "auto")
    switches = {key: str(s.value(f"performance/{key}", "false")).lower() == "true" for key in PERFORMANCE_SWITCHES}
    return EngineOptions(
        device=device if device in DEVICE_CHOICES else "auto",
        dtype=dtype if dtype in DTYPE_CHOICES else "auto",
        **switches,
    )


def save_engine_options(s: QSettings, options: EngineOptions) -> None:
    s.setValue("performance/device", options.device)
    s.setValue("performance/dtype", options.dtype)
    for key in PERFORMANCE_SWITCHES:
        s.setValue(f"performance/{key}", "true" if getattr(options, key) else "false")
