"""Logging to a rotating file in the user's log folder; --debug raises the level.

A log folder that cannot be written (read-only data folder, no permission) is not fatal: logging goes to stderr
only (warnings and up, everything with --debug) and `setup_logging` returns None instead of the file's path."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from desktop_app.core import paths

LOG_NAME = "diffusion-desk.log"


def _ours(handler: logging.Handler) -> bool:
    return bool(getattr(handler, "_diffusion_desk", False))


def _to_stderr(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
        sys.stderr,
        sys.__stderr__,
    )


def setup_logging(debug: bool = False) -> Path | None:
    """Configure the root logger once; return the log file's path (shown to users when something breaks), or None
    when there is no log file (its folder cannot be written: logging goes to stderr)."""
    root = logging.getLogger()
    level = logging.DEBUG if debug else logging.INFO
    root.setLevel(level)
    ours = [h for h in root.handlers if _ours(h)]
    if not ours:
        log_file = paths.log_dir() / LOG_NAME
        try:
            handler: logging.Handler = logging.handlers.RotatingFileHandler(
                log_file, maxBytes=2_000_000, backupCount=3, encoding="utf-8"
            )
        except OSError as exc:
            paths.note_unwritable(log_file.parent, exc)
            handler = logging.StreamHandler(sys.stderr)
            handler._diffusion_desk_stderr = True  # type: ignore[attr-defined]
            if any(_to_stderr(h) for h in root.handlers):
                handler = logging.NullHandler()  # stderr has a handler already (the window's basicConfig)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._diffusion_desk = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        ours = [handler]
    for handler in ours:
        quiet = getattr(handler, "_diffusion_desk_stderr", False) and not debug
        handler.setLevel(logging.WARNING if quiet else level)
    file_handler = next((h for h in ours if isinstance(h, logging.FileHandler)), None)
    return Path(file_handler.baseFilename) if file_handler is not None else None


def log_file() -> Path | None:
    """The log file in use, or None (no file: logging to stderr only, or not set up)."""
    for handler in logging.getLogger().handlers:
        if _ours(handler) and isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None
