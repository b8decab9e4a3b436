"""The GUI application: QApplication + qasync loop; wires the window, the worker and the history.

Nothing here imports torch: the engine is imported lazily on the worker thread
when the first job runs, so the window shows first.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from desktop_app.app.wiring import create_main_window, open_history

log = logging.getLogger(__name__)


WARM_UP_DELAY_MS = 800
DESKTOP_ID = "io.github.diffusiondesk.DiffusionDesk"


def app_icon():
    """The window and taskbar icon, from the installed package's resources."""
    from importlib import resources

    from PySide6.QtGui import QIcon

    icons = resources.files("desktop_app.resources").joinpath("icons")
    icon = QIcon()
    for size in (16, 24, 32, 48, 64, 128, 256, 512):
        icon.addFile(str(icons.joinpath(f"diffusion-desk-{size}.png")))
    return icon

# Called with the window right after it is created in run_gui (bench/startup.py uses it to time the first paint).
window_created_hooks: list[Callable[[Any], None]] = []


def run_gui(model: str | None = None, data_dir: str | os.PathLike | None = None, open_path: str | None = None, debug: bool = False) -> int:
    """Run the desktop app until its window closes; returns the exit status."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if data_dir:
        from desktop_app.core import paths

        paths.set_data_dir(data_dir)
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    QCoreApplication.setOrganizationName("diffusion-desk")
    QCoreApplication.setApplicationName("Diffusion Desk")
    app = QApplication.instance() or QApplication(sys.argv[:1])
    QGuiApplication.setDesktopFileName(DESKTOP_ID)
    from desktop_app.app.crash import install_crash_handler
    from desktop_app.app.logs import setup_logging
    from desktop_app.app.single_instance import SingleInstance

    crash = install_crash_handler(setup_logging(debug))
    instance = SingleInstance()
    if instance.try_hand_off([open_path] if open_path else []):
        log.info("handed %s to the running window", open_path or "activation")
        return 0
    app.setWindowIcon(app_icon())
    window = create_main_window(model=model if model not in (None, "") else None, data_dir=data_dir, defer_history=True)
    for hook in window_created_hooks:
        hook(window)
    instance.listen()
    instance.attach(window)
    window.show()
    app.processEvents()  # first paint now; the history, asyncio and qasync load after it
    window.attach_history(open_history(data_dir))
    # Import torch/diffusers on the worker thread while the user types the first prompt (the window is up).
    from PySide6.QtCore import QTimer

    QTimer.singleShot(WARM_UP_DELAY_MS, window.worker.warm_up)

    import asyncio

    import qasync

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    crash.install_asyncio(loop)
    if open_path:
        window.open_image(open_path)
    closed = asyncio.Event()
    app.aboutToQuit.connect(closed.set)
    app.lastWindowClosed.connect(closed.set)
    with loop:
        loop.run_until_complete(closed.wait())
    _exit_if_engine_busy(window.worker)
    return 0


def _exit_if_engine_busy(worker: Any, code: int = 0) -> None:
    """A model load cannot be interrupted: give it a while, then leave without waiting for it
    (Qt aborts the process when a running QThread is destroyed)."""
    if worker.is_running() and not worker.shutdown(30_000):
        log.warning("the engine is still busy; exiting without waiting for it")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


__all__ = ["app_icon", "create_main_window", "open_history", "run_gui", "window_created_hooks"]
