"""Where the app keeps its data, config, cache and logs (platformdirs), overridable for tests and portable installs.

A folder that cannot be created or written (a read-only mount, no permission) is not fatal: its path is still
returned, the reason is remembered, and `read_only_notice()` says in one sentence what is read-only and what the
app does without it (logs to stderr only, no cache, settings not kept). Writers handle their own OSError."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import platformdirs

APP_NAME = "diffusion-desk"
DATA_DIR_ENV = "DIFFUSION_DESK_DATA_DIR"
_override: Path | None = None
_unwritable: dict[Path, str] = {}  # folder -> why it cannot be written ("read-only file system", ...)

# What the app does without each folder (in read_only_notice's sentence).
_WITHOUT = {
    "logs": "logging to stderr only",
    "cache": "no cache",
    "config": "settings and the models list are not kept",
    "history": "new results are not added to the history",
}


def set_data_dir(path: str | os.PathLike | None) -> None:
    """--data-dir: everything (history, config, logs) goes under this folder."""
    global _override
    _override = Path(path).expanduser().resolve() if path else None
    _unwritable.clear()


def _root() -> Path | None:
    if _override is not None:
        return _override
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser().resolve() if env else None


def why(exc: OSError) -> str:
    """An OSError as a short reason a user understands."""
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "no write permission"
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is in the way"
    return exc.strerror or str(exc)


def note_unwritable(folder: str | os.PathLike, exc: OSError) -> str:
    """Remember that `folder` cannot be written and why; returns the reason."""
    reason = why(exc)
    _unwritable.setdefault(Path(folder), reason)
    return reason


def _dir(sub: str, default: str) -> Path:
    root = _root()
    path = root / sub if root and sub else root if root else Path(default)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        note_unwritable(path, exc)
    return path


def writable(folder: str | os.PathLike) -> bool:
    """True when a file can be created in `folder` (a probe file, removed at once); False is remembered."""
    folder = Path(folder)
    if folder in _unwritable:
        return False
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=str(folder))
    except OSError as exc:
        note_unwritable(folder, exc)
        return False
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass
    return True


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


def loras_dir() -> Path:
    """Where LoRAs are found by name (`<lora:NAME:WEIGHT>` in a prompt, the window's LoRA picker)."""
    return _dir("loras", str(Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "loras"))


def embeddings_dir() -> Path:
    """Where textual-inversion embeddings are found by name (their file stem, used as a word in a prompt)."""
    return _dir("embeddings", str(Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "embeddings"))


def taesd_dir() -> Path:
    """Where TAESD preview decoders are found (`taesd`, `taesdxl`, `taesd3`, `taef1`: a diffusers AutoencoderTiny
    folder each, or single decoder files as ComfyUI's models/vae_approx holds them)."""
    return _dir("taesd", str(Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "taesd"))


def preview_cache_dir() -> Path:
    """Fitted latent-to-RGB maps, one small JSON file per model, so a model's second load fits nothing."""
    return _dir("cache/previews", str(Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)) / "previews"))


def read_only_notice(history: bool = True) -> str | None:
    """One sentence naming the folders that cannot be written, why, and what the app does without them; None when
    every folder can be written. `history=False` leaves the history out (its commands say so themselves)."""
    folders = {"logs": log_dir(), "cache": cache_dir(), "config": config_dir()}
    if history:
        folders["history"] = history_dir()
    bad = {name: folder for name, folder in folders.items() if not writable(folder)}
    if not bad:
        return None
    effects = "; ".join(_WITHOUT[name] for name in bad)
    root = _root()
    reasons = {_unwritable.get(folder, "cannot be written") for folder in bad.values()}
    if root is not None and len(reasons) == 1 and all(folder.parent == root for folder in bad.values()):
        where = f"The data folder {root} cannot be written ({reasons.pop()})"
    else:
        where = "Cannot write " + ", ".join(
            f"{folder} ({_unwritable.get(folder, 'cannot be written')})" for folder in bad.values()
        )
    return f"{where}: {effects}."
