"""An uncaught exception is logged and shown in a dialog with the log path, instead of the app vanishing."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QThread, QTimer
from PySide6.QtWidgets import QMessageBox

from desktop_app.app.crash import CrashHandler, ExcInfo


class Boom(RuntimeError):
    pass


def _raise_boom():
    raise Boom("the flux capacitor is empty")


@pytest.fixture
def shown() -> list:
    """The dialogs the `handler` fixture's handler made: (box, made on the GUI thread)."""
    return []


@pytest.fixture
def handler(qapp, tmp_path, monkeypatch, shown):
    """A handler whose dialog is recorded (in `shown`) instead of run modally."""
    h = CrashHandler(tmp_path / "logs" / "diffusion-desk.log")

    def fake_show(exc_info):
        box = h.make_dialog(exc_info)
        shown.append((box, QThread.currentThread() is qapp.thread()))

    monkeypatch.setattr(h, "_show_dialog", fake_show)
    yield h
    h.uninstall()


def _exc_info() -> ExcInfo:
    """What sys.exc_info() gives in the except clause of a real raise."""
    try:
        _raise_boom()
    except Boom as exc:
        return type(exc), exc, exc.__traceback__
    raise AssertionError("_raise_boom() returned")


def test_dialog_names_the_log_file_and_carries_the_traceback(handler, shown, caplog):
    with caplog.at_level(logging.CRITICAL, logger="desktop_app.app.crash"):
        handler.handle(_exc_info())
    assert handler.count == 1
    assert any(r.exc_info and r.exc_info[0] is Boom for r in caplog.records)
    box, on_gui_thread = shown[0]
    assert isinstance(box, QMessageBox) and on_gui_thread
    assert box.icon() == QMessageBox.Icon.Critical
    assert str(handler.log_path) in box.informativeText()
    assert "Boom: the flux capacitor is empty" in box.informativeText()
    assert "_raise_boom" in box.detailedText()
    assert any(b.objectName() == "openLogFolderButton" for b in box.buttons())


@pytest.mark.qt_no_exception_capture
def test_exception_in_a_qt_slot_reaches_the_handler(qtbot, handler, shown):
    handler.install()
    QTimer.singleShot(0, _raise_boom)
    qtbot.waitUntil(lambda: handler.count == 1, timeout=5000)
    assert handler.last[0] is Boom and len(shown) == 1


def test_exception_in_another_thread_shows_the_dialog_on_the_gui_thread(qtbot, handler, shown):
    handler.install()
    thread = threading.Thread(target=_raise_boom, name="worker-x")
    thread.start()
    thread.join(5)
    qtbot.waitUntil(lambda: len(shown) == 1, timeout=5000)
    assert shown[0][1] is True  # made on the GUI thread
    assert handler.last[0] is Boom


def test_one_dialog_at_a_time(qapp, tmp_path, monkeypatch):
    h = CrashHandler(tmp_path / "x.log")
    runs: list = []

    class FakeBox:
        def exec(self):
            runs.append(1)
            h.handle(_exc_info())  # a second error while the first dialog is open: logged only
            return 0

    monkeypatch.setattr(h, "make_dialog", lambda exc_info: FakeBox())
    h.handle(_exc_info())
    assert runs == [1] and h.count == 2


def test_keyboard_interrupt_is_left_alone(handler, monkeypatch):
    called: list = []
    monkeypatch.setattr(sys, "__excepthook__", lambda *a: called.append(a[0]))
    handler.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert called == [KeyboardInterrupt] and handler.count == 0


def test_no_dialog_without_a_gui(tmp_path, monkeypatch):
    """Headless commands (generate, history...) get the log and stderr, never a dialog."""
    from PySide6.QtWidgets import QApplication

    monkeypatch.setattr(QApplication, "instance", staticmethod(lambda: None))
    h = CrashHandler(tmp_path / "x.log")
    monkeypatch.setattr(h, "make_dialog", lambda exc_info: pytest.fail("no dialog without a QApplication"))
    h.handle(_exc_info())
    assert h.count == 1


def test_the_log_file_gets_the_traceback(tmp_path):
    log_file = tmp_path / "app.log"
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    logging.getLogger().addHandler(file_handler)
    try:
        CrashHandler(log_file, show_dialog=False).handle(_exc_info())
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()
    text = log_file.read_text(encoding="utf-8")
    assert "Uncaught exception" in text and "Boom: the flux capacitor is empty" in text and "_raise_boom" in text


def test_install_crash_handler_is_process_wide_and_updates_the_path(tmp_path, monkeypatch):
    import desktop_app.app.crash as crash

    monkeypatch.setattr(crash, "_installed", None)
    previous = sys.excepthook
    try:
        a = crash.install_crash_handler(tmp_path / "a.log")
        b = crash.install_crash_handler(tmp_path / "b.log")
        assert a is b and b.log_path == Path(tmp_path / "b.log") and sys.excepthook == a.excepthook
    finally:
        a.uninstall()
    assert sys.excepthook is previous


def test_asyncio_task_errors_are_routed(handler):
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        handler.install_asyncio(loop)
        loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": Boom("async")})
    finally:
        loop.close()
    assert handler.count == 1 and handler.last[0] is Boom
