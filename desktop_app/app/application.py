"""The GUI application: QApplication + qasync loop; wires the window, the worker and the history.

Nothing here imports torch: the engine is imported lazily on the worker thread
when the first job runs, so the window shows first.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from desktop_app.app.wiring import create_main_window, open_history, open_history_with_reason

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


def run_gui(
    model: str | None = None,
    data_dir: str | os.PathLike | None = None,
    files: Sequence[str] = (),
    debug: bool = False,
) -> int:
    """Run the desktop app until its window closes; returns the exit status.

    `files`: absolute paths to open (the first is shown). When a Diffusion Desk already runs on this data
    folder, or is starting in this very moment, they go to its window and this process returns 0 at once."""
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
    assert isinstance(app, QApplication), "run_gui needs a widgets application"
    QGuiApplication.setDesktopFileName(DESKTOP_ID)
    from desktop_app.app.crash import install_crash_handler
    from desktop_app.app.logs import setup_logging
    from desktop_app.app.single_instance import SingleInstance, open_files

    crash = install_crash_handler(setup_logging(debug))
    instance = SingleInstance()
    if not instance.claim(files):  # atomic: of two launches in the same instant, one runs and one hands off
        log.info("handed %s to the running window", list(files) or "activation")
        return 0
    from desktop_app.ui.theme import apply_theme

    apply_theme(app)
    app.setWindowIcon(app_icon())
    window = create_main_window(model=model if model not in (None, "") else None, data_dir=data_dir, defer_history=True)
    apply_theme(app)  # again: the window's wiring may still set its own palette; the system's scheme wins
    for hook in window_created_hooks:
        hook(window)
    instance.attach(window)
    window.show()
    app.processEvents()  # first paint now; the history, asyncio and qasync load after it
    window.attach_history(*open_history_with_reason(data_dir))
    announce_read_only(window)
    if files:
        open_files(window, list(files))
    instance.listen()  # after our own file: a later launch's file is opened after it, and shown
    log.info("ready: window up, listening for other launches on %s", instance.name)
    quit_on_signals(window)
    # Import torch/diffusers on the worker thread while the user types the first prompt (the window is up).
    from PySide6.QtCore import QTimer

    QTimer.singleShot(WARM_UP_DELAY_MS, window.worker.warm_up)

    import asyncio

    import qasync

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    crash.install_asyncio(loop)
    closed = asyncio.Event()
    app.aboutToQuit.connect(closed.set)
    app.lastWindowClosed.connect(closed.set)
    with loop:
        loop.run_until_complete(closed.wait())
    instance.close()  # no hand-off to a window that is going away
    _exit_if_engine_busy(window.worker)
    instance.release()
    return 0


READ_ONLY_HINT = "Start with --data-dir on a writable folder, or make this one writable."


def announce_read_only(window: Any) -> str | None:
    """Say once, in the log and in the window's banner, which data folders cannot be written and what the app does
    without them (a read-only data folder: no log file, no cache, settings and new history entries not kept)."""
    from desktop_app.core import paths

    notice = paths.read_only_notice()
    if notice:
        log.warning("%s", notice)
        window.show_error(notice, READ_ONLY_HINT)
    return notice


def quit_on_signals(window: Any) -> Any:
    """SIGTERM (logout, `kill`) and SIGINT (Ctrl+C in a terminal) close the window as Quit does; a second one quits
    even if the window asked to stay (a job runs). Returns what must stay alive (the wake-up socket pair)."""
    import signal
    import socket

    from PySide6.QtCore import QSocketNotifier, QTimer
    from PySide6.QtWidgets import QApplication

    # Python runs its signal handlers only between bytecodes: the wake-up socket lets Qt's loop call into Python
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno())
    notifier = QSocketNotifier(reader.fileno(), QSocketNotifier.Type.Read, window)

    def drain() -> None:
        try:
            reader.recv(64)
        except OSError:
            pass

    notifier.activated.connect(drain)
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        log.info("signal %s: closing the window", signum)
        if len(received) == 1:
            QTimer.singleShot(0, window.close)
        else:
            QTimer.singleShot(0, QApplication.quit)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    keep = (reader, writer, notifier)
    window.setProperty("diffusionDeskSignals", True)
    window._signal_wakeup = keep  # lives as long as the window
    return keep


def _exit_if_engine_busy(worker: Any, code: int = 0) -> None:
    """A model load cannot be interrupted: give it a while, then leave without waiting for it
    (Qt aborts the process when a running QThread is destroyed)."""
    if worker.is_running() and not worker.shutdown(30_000):
        log.warning("the engine is still busy; exiting without waiting for it")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


__all__ = ["announce_read_only", "app_icon", "create_main_window", "open_history", "run_gui", "window_created_hooks"]
