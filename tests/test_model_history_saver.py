"""HistorySaver: results written off the GUI thread, in order, reported on it; a failed write keeps the result."""

from __future__ import annotations

import errno
import threading

import pytest
from PySide6.QtCore import QCoreApplication, QThread
from test_history_support import assert_consistent, edit_result, generate_result

from desktop_app.core.history import HistoryStore
from desktop_app.model.history_saver import HistorySaver


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(tmp_path / "history")
    yield s
    s.close()


def test_writes_off_the_gui_thread_in_order_and_reports_on_it(qtbot, store, monkeypatch):
    saver = HistorySaver(store)
    writers, receivers = [], []
    real_add = store.add

    def add(result, parent_id=None):
        writers.append(threading.current_thread().name)
        return real_add(result, parent_id=parent_id)

    monkeypatch.setattr(store, "add", add)
    batches = []
    saver.saved.connect(lambda entries: (batches.append(entries), receivers.append(QThread.currentThread())))
    for i in range(5):
        saver.save(generate_result(prompt=f"cube {i}", seed=i))
    assert saver.pending() >= 1
    assert saver.wait(10)
    qtbot.waitUntil(lambda: len(batches) == 5, timeout=5000)
    assert [b[0].prompt for b in batches] == [f"cube {i}" for i in range(5)]
    assert all(name.startswith("history-save") for name in writers)
    app = QCoreApplication.instance()
    assert app is not None
    assert all(t is app.thread() for t in receivers)
    assert saver.pending() == 0 and saver.unsaved() == []
    assert assert_consistent(store.root) == 5
    saver.close()


def test_parent_and_the_same_result_saved_once(qtbot, store):
    saver = HistorySaver(store)
    first = generate_result(prompt="the parent")
    with qtbot.waitSignal(saver.saved, timeout=10000) as blocker:
        saver.save(first)
    [parent] = blocker.args[0]
    assert saver.entries_for(first) == [parent]
    saver.save(first)  # wired twice: nothing more is written
    saver.wait(10)
    assert store.count() == 1
    child = edit_result(source=first.images[0])
    with qtbot.waitSignal(saver.saved, timeout=10000) as blocker:
        saver.save(child, parent_id=parent.id)
    assert blocker.args[0][0].parent_id == parent.id
    opened = generate_result(prompt="opened from the history")
    saver.remember(opened, [parent])
    saver.save(opened)
    saver.wait(10)
    assert store.count() == 2
    saver.close()


def test_disk_full_keeps_the_result_and_retry_writes_it(qtbot, store, monkeypatch):
    from desktop_app.core import history as history_module

    real = history_module._atomic_write

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(history_module, "_atomic_write", full)
    saver = HistorySaver(store)
    result = generate_result()
    with qtbot.waitSignal(saver.failed, timeout=10000) as blocker:
        saver.save(result)
    message, hint = blocker.args
    assert "disk is full" in message and hint
    assert saver.unsaved() == [result] and result.images[0].size == (64, 64)
    assert store.count() == 0
    monkeypatch.setattr(history_module, "_atomic_write", real)  # space freed
    with qtbot.waitSignal(saver.saved, timeout=10000) as blocker:
        assert saver.retry() == 1
    assert blocker.args[0][0].seed == result.seeds[0]
    assert saver.unsaved() == [] and store.count() == 1
    assert_consistent(store.root)
    saver.close()


def test_results_before_the_history_opens_are_written_when_it_does(qtbot, store):
    saver = HistorySaver()
    early = generate_result(prompt="made before the history opened")
    saver.save(early)
    assert saver.unsaved() == [early] and saver.pending() == 0
    with qtbot.waitSignal(saver.saved, timeout=10000) as blocker:
        saver.set_store(store)
    assert blocker.args[0][0].prompt == "made before the history opened"
    assert saver.unsaved() == []
    saver.close()
