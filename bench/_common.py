"""Shared bench helpers: a model folder to measure on, and a plain diffusers pipeline as the baseline."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def bench_model(prefer_builtin: bool = True) -> str:
    """The built-in model when it is there, else a tiny random one built offline."""
    from desktop_app.core.modelinfo import builtin_model_path

    builtin = builtin_model_path()
    if prefer_builtin and (builtin / "model_index.json").is_file():
        return str(builtin)
    from tiny_model import build_tiny_sd

    return str(build_tiny_sd(Path(tempfile.mkdtemp()) / "tiny-sd"))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
