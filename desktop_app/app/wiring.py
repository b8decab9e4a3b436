"""The app's wiring: builds the worker, the model objects (documents, jobs, history saver) and the main window.

Kept apart from `application.py` (process start, single instance, event loop) so tests and tools can build the
whole window on their own QApplication with a fake backend.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

log = logging.getLogger(__name__)


def open_history(data_dir: str | os.PathLike | None) -> Any:
    """The HistoryStore (desktop_app.core.history) under data_dir/history; None when missing or broken."""
    try:
        from desktop_app.core.history import HistoryStore
    except ImportError:
        return None
    try:
        from pathlib import Path

        return HistoryStore(Path(data_dir) / "history" if data_dir else None)
    except Exception as exc:  # noqa: BLE001 - the window still works without history
        log.warning("history unavailable: %s", exc)
        return None


def create_main_window(
    model: str | None = None,
    data_dir: str | os.PathLike | None = None,
    engine_factory: Callable[[], Any] | None = None,
    history: Any = None,
    defer_history: bool = False,
):
    """Build the main window with its worker (and history) on an existing QApplication.

    Does not enter the event loop and does not show the window. `engine_factory`
    (called on the worker thread) replaces the real engine, for tests and tools.
    `history`: a HistoryStore to use instead of opening the one under data_dir.
    `defer_history`: leave it to the caller to `window.attach_history(open_history(data_dir))`
    later (run_gui does it right after the first paint).
    """
    from PySide6.QtWidgets import QApplication

    from desktop_app.ui.main_window import MainWindow, apply_dark_theme
    from desktop_app.worker import EngineWorker

    app = QApplication.instance()
    if app is None:
        raise RuntimeError("create a QApplication first")
    apply_dark_theme(app)
    worker = EngineWorker(engine_factory=engine_factory)
    worker.start()
    if history is None and not defer_history:
        history = open_history(data_dir)
    window = MainWindow(worker=worker, model=model, data_dir=data_dir, history=history, history_deferred=defer_history)
    worker.setParent(window)
    app.aboutToQuit.connect(worker.shutdown)
    return window


__all__ = ["create_main_window", "open_history"]
