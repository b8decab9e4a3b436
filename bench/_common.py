"""Shared bench helpers: a model folder to measure on, and a plain diffusers pipeline as the baseline."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def bench_model() -> str:
    """The built-in model (as a folder path, for plain diffusers too) when it is there, else a tiny random one."""
    from tiny_model import builtin_or_tiny  # pyright: ignore[reportMissingImports] - tests/ is on sys.path

    from desktop_app.core.modelinfo import builtin_model_path

    model = builtin_or_tiny()
    return str(builtin_model_path()) if model == "builtin" else model


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
