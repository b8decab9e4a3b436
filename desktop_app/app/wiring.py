"""The app's wiring: builds the worker, the model objects (documents, jobs, history saver) and the main window.

Kept apart from `application.py` (process start, single instance, event loop) so tests and tools can build the
whole window on their own QApplication with a fake backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def open_history(data_dir: str | os.PathLike | None) -> Any:
    """The HistoryStore (desktop_app.core.history) under data_dir/history; None when missing or broken."""
    return open_history_with_reason(data_dir)[0]


def open_history_with_reason(data_dir: str | os.PathLike | None) -> tuple[Any, str]:
    """(the HistoryStore, "") or (None, why it could not be opened): the window says why."""
    from pathlib import Path

    from desktop_app.core.history import HistoryStore

    try:
        return HistoryStore(Path(data_dir) / "history" if data_dir else None), ""
    except Exception as exc:  # noqa: BLE001 - the window still works without history
        log.warning("history unavailable: %s", exc)
        return None, getattr(exc, "message", None) or str(exc) or type(exc).__name__


def create_main_window(
    model: str | None = None,
    data_dir: str | os.PathLike | None = None,
    engine_factory: Callable[[], Any] | None = None,
    history: Any = None,
    defer_history: bool = False,
):
    """Build the worker, the model objects and the main window on an existing QApplication.

    Does not enter the event loop and does not show the window. `engine_factory` (called on the worker
    thread) replaces the real engine, for tests and tools. `history`: a HistoryStore to use instead of
    opening the one under data_dir. `defer_history`: leave it to the caller to
    `window.attach_history(open_history(data_dir))` later (run_gui does it right after the first paint).
    """
    from PySide6.QtWidgets import QApplication

    from desktop_app.model.brush import Brush
    from desktop_app.model.document import Document
    from desktop_app.model.history_saver import HistorySaver
    from desktop_app.model.jobs import Jobs
    from desktop_app.model.models import Models
    from desktop_app.model.timeline import Timeline
    from desktop_app.ui.main_window import MainWindow
    from desktop_app.ui.settings import make_settings
    from desktop_app.ui.theme import apply_theme, current_scheme
    from desktop_app.worker import EngineWorker

    app = QApplication.instance()
    if app is None:
        raise RuntimeError("create a QApplication first")
    if not current_scheme(app):  # type: ignore[arg-type]  # run_gui applies it before; tests and tools come here
        apply_theme(app)  # type: ignore[arg-type]
    settings = make_settings(data_dir)
    connections, routing = connect_servers(data_dir, engine_factory)
    worker = EngineWorker(engine_factory=engine_factory, backend=routing)
    worker.start()
    history_reason = ""
    if history is None and not defer_history:
        history, history_reason = open_history_with_reason(data_dir)
    saved_model = str(settings.value("model/current", "") or "")
    models = Models(worker, settings, downloader=worker.download_model)
    document = Document()
    saver = HistorySaver(history)
    jobs = Jobs(worker, document, entries_for=saver.entries_for)
    timeline = Timeline(worker, document, models.current)
    jobs.resultReady.connect(lambda result: saver.save(result, parent_id=jobs.parent_of(result)))
    window = MainWindow(
        worker=worker,
        document=document,
        brush=Brush(),
        jobs=jobs,
        timeline=timeline,
        models=models,
        saver=saver,
        settings=settings,
        history=history,
        history_deferred=defer_history,
        history_reason=history_reason,
        data_dir=data_dir,
        same_model=model in (None, "", saved_model),
    )
    for obj in (worker, models, document, jobs, timeline, saver, window.brush, connections):
        obj.setParent(window)
    setattr(window, "connections", connections)  # noqa: B010 - for the Servers dialog (ui/connections_dialog.py)
    connections.statusChanged.connect(lambda url, status: _list_remote_models(connections, models))
    connections.refresh()
    if model:
        models.select(model)
    else:
        models.start()
    app.aboutToQuit.connect(worker.shutdown)
    app.aboutToQuit.connect(models.cancel_downloads)
    return window


def connect_servers(data_dir: str | os.PathLike | None, engine_factory: Callable[[], Any] | None = None):
    """(the Connections of the ComfyUI servers the user added, the RoutingBackend over them and the local engine).

    The routing backend is built only for the real engine (engine_factory None): a test's fake engine is used as it
    is. It follows the Connections: a server added or removed changes where the next `comfyui:` job goes."""
    from pathlib import Path

    from desktop_app.model.connections import Connections

    if data_dir:
        folder = Path(data_dir)
    else:
        from desktop_app.core import paths

        folder = paths.config_dir()
    connections = Connections(folder)
    if engine_factory is not None:
        return connections, None
    from desktop_app.routing import RoutingBackend
    from desktop_app.worker import default_engine_factory

    routing = RoutingBackend(default_engine_factory, remote_backend(connections))
    connections.changed.connect(lambda: routing.set_remote(remote_backend(connections)))
    return connections, routing


def remote_backend(connections: Any) -> Any:
    """A ComfyBackend over the Connections' servers (None when there are none)."""
    clients = connections.clients()
    if not clients:
        return None
    from desktop_app.comfyui.backend import ComfyBackend

    return ComfyBackend(clients)


def _list_remote_models(connections: Any, models: Any) -> None:
    """Every checkpoint an answering server has goes into the model picker as `comfyui:<name>`."""
    for model_id in connections.checkpoint_ids():
        models.add(model_id)


__all__ = ["connect_servers", "create_main_window", "open_history", "open_history_with_reason", "remote_backend"]
