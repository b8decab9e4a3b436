"""Where the window keeps its settings: an INI file (under --data-dir when given), never the registry."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings

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
