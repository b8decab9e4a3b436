"""Where the app keeps its data, config, cache and logs (platformdirs), overridable for tests and portable installs."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "diffusion-desk"
DATA_DIR_ENV = "DIFFUSION_DESK_DATA_DIR"
_override: Path | None = None


def set_data_dir(path: str | os.PathLike | None) -> None:
    """--data-dir: everything (history, config, logs) goes under this folder."""
    global _override
    _override = Path(path).expanduser().resolve() if path else None


def _root() -> Path | None:
    if _override is not None:
        return _override
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser().resolve() if env else None


def _dir(sub: str, default: str) -> Path:
    root = _root()
    path = root / sub if root and sub else root if root else Path(default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    return _dir("", platformdirs.user_data_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    return _dir("config", platformdirs.user_config_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    return _dir("cache", platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def log_dir() -> Path:
    return _dir("logs", platformdirs.user_log_dir(APP_NAME, appauthor=False))


def history_dir() -> Path:
    return _dir("history", str(Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "history"))
