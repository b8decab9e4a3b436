"""Uncaught exceptions: write them to the log and tell the user where it is, instead of vanishing.

    from desktop_app.app.crash import install_crash_handler
    install_crash_handler(log_path)        # log_path from desktop_app.app.logs.setup_logging(debug)

After this, an exception nobody catches (in a Qt slot, on the main thread, in another
thread, or in an asyncio task on the qasync loop via `handler.install_asyncio(loop)`)
is logged with its traceback, and, when a QApplication exists, a dialog shows a short
message, the log file's path and the details. One dialog at a time: exceptions that
come while it is open are only logged. Ctrl+C keeps its usual behaviour.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger("desktop_app.app.crash")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class CrashHandler:
    """sys.excepthook / threading.excepthook / asyncio exception handler that logs and shows a dialog."""

    def __init__(self, log_path: str | Path | None = None, show_dialog: bool = True) -> None:
        self.log_path = Path(log_path) if log_path else None
        self.show_dialog = show_dialog
        self.count = 0  # exceptions handled so far (tests, and "one dialog at a time")
        self.last: ExcInfo | None = None
        self._dialog_open = False
        self._previous_hook: Callable[..., Any] | None = None
        self._previous_thread_hook: Callable[..., Any] | None = None
        self._bridge: Any = None

    # -- installing ---------------------------------------------------------------------------
    def install(self) -> CrashHandler:
        self._previous_hook = sys.excepthook
        self._previous_thread_hook = threading.excepthook
        sys.excepthook = self.excepthook
        threading.excepthook = self.thread_excepthook
        return self

    def uninstall(self) -> None:
        if sys.excepthook == self.excepthook and self._previous_hook is not None:
            sys.excepthook = self._previous_hook
        if threading.excepthook == self.thread_excepthook and self._previous_thread_hook is not None:
            threading.excepthook = self._previous_thread_hook

    def install_asyncio(self, loop: Any) -> None:
        """Route exceptions that asyncio would only print (a failed task nobody awaited) here too."""

        def handler(loop: Any, context: dict) -> None:
            exc = context.get("exception")
            if isinstance(exc, BaseException) and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                self.handle((type(exc), exc, exc.__traceback__), context.get("message", ""))
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    # -- hooks ----------------------------------------------------------------------------------------
    def excepthook(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        self.handle((exc_type, exc, tb))

    def thread_excepthook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        exc = args.exc_value if args.exc_value is not None else args.exc_type()
        where = f"in thread {args.thread.name}" if args.thread is not None else "in a thread"
        self.handle((args.exc_type, exc, args.exc_traceback), where)

    # -- the work ---------------------------------------------------------------------------------------
    def handle(self, exc_info: ExcInfo, where: str = "") -> None:
        """Log the exception; show the dialog (on the GUI thread, one at a time)."""
        self.count += 1
        self.last = exc_info
        try:
            log.critical("Uncaught exception%s", f" ({where})" if where else "", exc_info=exc_info)
        except Exception:  # noqa: BLE001 - logging itself broke (disk full): the terminal still gets it
            pass
        if sys.stderr is not None:
            try:
                traceback.print_exception(*exc_info, file=sys.stderr)
            except Exception:  # noqa: BLE001
                pass
        if self.show_dialog:
            self._show_on_gui_thread(exc_info)

    def message(self, exc_info: ExcInfo) -> tuple[str, str, str]:
        """(text, informative text, details) for the dialog."""
        exc_type, exc, tb = exc_info
        text = "Diffusion Desk ran into an unexpected error."
        summary = f"{exc_type.__name__}: {exc}".strip().rstrip(":")
        where = f"The details are in the log file:\n{self.log_path}" if self.log_path else "The details are below."
        informative = f"{summary}\n\n{where}\n\nYour history and the images already made are kept. If this happens again, please report it with the log."
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        return text, informative, details

    def _show_on_gui_thread(self, exc_info: ExcInfo) -> None:
        try:
            from PySide6.QtCore import QThread
            from PySide6.QtWidgets import QApplication
        except ImportError:
            return
        app = QApplication.instance()
        if app is None:  # no GUI yet (or a headless command): the log and stderr have it
            return
        if QThread.currentThread() is app.thread():
            self._show_dialog(exc_info)
        else:
            self._ensure_bridge(app).request.emit(exc_info)  # queued to the GUI thread

    def _ensure_bridge(self, app: Any) -> Any:
        if self._bridge is None:
            from PySide6.QtCore import QObject, Qt, Signal, Slot

            handler = self

            class _Bridge(QObject):
                request = Signal(object)

                @Slot(object)
                def show(self, exc_info: Any) -> None:
                    handler._show_dialog(exc_info)

            bridge = _Bridge()
            bridge.moveToThread(app.thread())
            bridge.request.connect(bridge.show, Qt.ConnectionType.QueuedConnection)
            self._bridge = bridge
        return self._bridge

    def _show_dialog(self, exc_info: ExcInfo) -> None:
        if self._dialog_open:
            return
        self._dialog_open = True
        try:
            box = self.make_dialog(exc_info)
            box.exec()
        except Exception:  # noqa: BLE001 - never raise from the hook
            log.exception("could not show the error dialog")
        finally:
            self._dialog_open = False

    def make_dialog(self, exc_info: ExcInfo) -> Any:
        """The QMessageBox (not shown): critical icon, the log path, an "Open log folder" button."""
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices
        from PySide6.QtWidgets import QApplication, QMessageBox

        text, informative, details = self.message(exc_info)
        parent = QApplication.activeWindow()
        box = QMessageBox(parent)
        box.setObjectName("crashDialog")
        box.setIcon(QMessageBox.Icon.Critical)
        box.setWindowTitle("Diffusion Desk: unexpected error")
        box.setText(text)
        box.setInformativeText(informative)
        box.setDetailedText(details)
        box.setStandardButtons(QMessageBox.StandardButton.Close)
        if self.log_path is not None:
            folder = self.log_path.parent
            button = box.addButton("Open log folder", QMessageBox.ButtonRole.ActionRole)
            button.setObjectName("openLogFolderButton")
            button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))))
        box.setDefaultButton(QMessageBox.StandardButton.Close)
        return box


_installed: CrashHandler | None = None


def install_crash_handler(log_path: str | Path | None = None, show_dialog: bool = True) -> CrashHandler:
    """Install (once; later calls update the log path) and return the process-wide handler."""
    global _installed
    if _installed is None:
        _installed = CrashHandler(log_path, show_dialog).install()
    else:
        if log_path:
            _installed.log_path = Path(log_path)
        _installed.show_dialog = show_dialog
    return _installed


__all__ = ["CrashHandler", "install_crash_handler"]
