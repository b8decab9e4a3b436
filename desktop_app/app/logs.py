"""Logging to a rotating file in the user's log folder; --debug raises the level."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from desktop_app.core import paths

LOG_NAME = "diffusion-desk.log"


def setup_logging(debug: bool = False) -> Path:
    """Configure the root logger once; return the log file's path (shown to users when something breaks)."""
    log_file = paths.log_dir() / LOG_NAME
    root = logging.getLogger()
    level = logging.DEBUG if debug else logging.INFO
    root.setLevel(level)
    if not any(getattr(h, "_diffusion_desk", False) for h in root.handlers):
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._diffusion_desk = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for handler in root.handlers:
        handler.setLevel(level)
    return log_file
