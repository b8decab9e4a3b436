"""The history panel: lazy grid, search and filters, actions on entries, saving results in the background."""

from __future__ import annotations

import errno
import os
import time

import pytest
from PIL import Image
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QWidget

from desktop_app.core.history import HistoryStore
from desktop_app.core.requests import EditRequest
from desktop_app.ui.history_panel import PAGE, EntryRole, HistoryPanel
from test_history_support import edit_result, generate_result
from tests.ui_conftest_helpers import qloop  # noqa: F401  (a fixture)


class FakeWindow(QObject):
    """The part of MainWindow's public API the panel wires to."""

    resultReady = Signal(object)
    sourceChanged = Signal(object)

    def __init__(self):
        super().__init__()
        self.shown, self.filled, self.sources, self.errors = [], [], [], []

    def show_result(self, result):
        self.shown.append(result)

    def fill_from_request(self, request):
        self.filled.append(request)
        if getattr(request, "image", None) is not None:
            self.set_source_image(request.image)

    def set_source_image(self, image):
        copy = image.convert("RGB").copy()  # the window keeps a converted copy
        self.sources.append(copy)
        self.sourceChanged.emit(copy)

    def show_error(self, message, hint=""):
        self.errors.append((message, hint))


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(tmp_path / "history")
    yield s
    s.close()


@pytest.fixture
def fake_window():
    return FakeWindow()


@pytest.fixture
def panel(qtbot, store, fake_window):
    p = HistoryPanel(store, fake_window)
    qtbot.addWidget(p)
    p.resize(420, 600)
    p.show()
    yield p
    p.wait_for_saves()


def fill(store, n, **kw):
    out = []
    for i in range(n):
        out += store.add(generate_result(prompt=kw.get("prompt", "a red cube") + f" number{i}", seed=i))
    return out


def test_object_name_and_empty_state(panel):
    assert panel.objectName() == "historyPanel"
    assert panel.model.rowCount() == 0
    assert panel.empty_label.isVisible()


def test_without_history(qtbot):
    p = HistoryPanel(None)
    qtbot.addWidget(p)
    assert "not open" in p.empty_label.text() and p.banner.text() == ""
    assert p.add_result(generate_result()) is None


def test_lazy_paging_newest_first(qtbot, store, fake_window):
    entries = fill(store, PAGE + 30)
    p = HistoryPanel(store, fake_window)
    qtbot.addWidget(p)
    assert p.model.rowCount() == PAGE  # only the first page
    assert p.model.total() == PAGE + 30
    assert p.model.entry(0).id == entries[-1].id
    assert p.model.canFetchMore()
    p.model.fetchMore()
    assert p.model.rowCount() == PAGE + 30 and not p.model.canFetchMore()
    assert p.count_label.text() == f"{PAGE + 30:,}"


def test_thumbnails_load_off_thread(qtbot, panel, store):
    [entry] = store.add(generate_result())
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)
    index = panel.model.index(0)
    panel.model.data(index, Qt.ItemDataRole.DecorationRole)  # asks for it
    qtbot.waitUntil(lambda: entry.id in panel.model._thumbs, timeout=5000)
    pix = panel.model.data(index, Qt.ItemDataRole.DecorationRole)
    assert pix.width() == 64  # the real thumbnail of a 64x64 image, not the placeholder
    assert "seed 100" in panel.model.data(index, Qt.ItemDataRole.ToolTipRole).lower()


def test_missing_image_gets_placeholder(qtbot, panel, store):
    [entry] = store.add(generate_result())
    entry.image_path.unlink()
    entry.thumbnail_path.unlink()
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)
    panel.model.data(panel.model.index(0), Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: entry.id in panel.model._thumbs, timeout=5000)
    assert panel.model._thumbs[entry.id] is panel.model._missing
    panel.open_entry(entry)
    assert panel.window_.errors and "missing" in panel.window_.errors[-1][0]


def test_search_and_filters(qtbot, panel, store):
    fill(store, 3, prompt="a red cube")
    fill(store, 2, prompt="a lighthouse")
    edit = store.add(edit_result(prompt="a blue cube"))[0]
    qtbot.waitUntil(lambda: panel.model.rowCount() == 6)
    panel.search_edit.setText("lighthouse")
    qtbot.waitUntil(lambda: panel.model.rowCount() == 2, timeout=3000)  # debounced
    panel.set_search("cube")
    assert panel.model.rowCount() == 4
    panel.set_kind("edit")
    assert panel.kind_combo.currentData() == "edit"
    assert [e.id for e in panel.entries()] == [edit.id]
    panel.set_kind(None)
    panel.set_search("")
    panel.toggle_favourite(edit)
    qtbot.waitUntil(lambda: panel.entries()[0].favourite)
    panel.set_favourites_only(True)
    assert [e.id for e in panel.entries()] == [edit.id]
    assert panel.model.data(panel.model.index(0)).startswith("★")
    panel.toggle_favourite(edit)  # un-favourite: leaves the favourites view
    qtbot.waitUntil(lambda: panel.model.rowCount() == 0)
    assert panel.empty_label.text() == "Nothing matches."


def test_result_saved_in_background_appears_on_top(qtbot, panel, store, fake_window):
    fill(store, 2)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 2)
    result = generate_result(prompt="brand new", n=2, seed=900)
    with qtbot.waitSignal(panel.saved, timeout=10000) as blocker:
        fake_window.resultReady.emit(result)
    saved = blocker.args[0]
    assert [e.seed for e in saved] == [900, 901]
    qtbot.waitUntil(lambda: panel.model.rowCount() == 4)
    assert {panel.model.entry(0).seed, panel.model.entry(1).seed} == {900, 901}
    fake_window.resultReady.emit(result)  # the same result twice (wired twice): saved once
    panel.wait_for_saves()
    assert store.count() == 4


def test_disk_full_is_reported_and_result_kept(qtbot, panel, store, fake_window, monkeypatch):
    from desktop_app.core import history as history_module

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(history_module, "_atomic_write", full)
    result = generate_result()
    with qtbot.waitSignal(panel.saveFailed, timeout=10000) as blocker:
        panel.add_result(result)
    kept, message, hint = blocker.args
    assert kept is result and kept.images[0].size == (64, 64)
    assert "disk is full" in message and hint
    assert fake_window.errors and "disk is full" in fake_window.errors[-1][0]
    assert store.count() == 0


def test_open_reuse_and_use_as_source_make_parent(qtbot, panel, store, fake_window):
    [parent] = store.add(generate_result(prompt="the parent"))
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)
    shown = panel.open_entry(parent)
    assert fake_window.shown == [shown] and shown.images[0].size == (64, 64) and shown.seeds == [parent.seed]
    request = panel.reuse_entry(parent)
    assert fake_window.filled[-1] is request and request.prompt == "the parent"
    panel.use_as_source(parent)
    assert fake_window.sources and fake_window.sources[-1].size == (64, 64)
    child = edit_result(prompt="the child", source=fake_window.sources[-1])
    with qtbot.waitSignal(panel.saved, timeout=10000) as blocker:
        fake_window.resultReady.emit(child)
    assert blocker.args[0][0].parent_id == parent.id
    # An edit entry reused: its source image and mask come back for exact replay.
    edit_entry = blocker.args[0][0]
    request = panel.reuse_entry(edit_entry)
    assert isinstance(request, EditRequest) and request.image is not None and request.mask is not None


def test_result_made_source_by_the_window_links_parent(qtbot, panel, store, fake_window):
    result = generate_result(prompt="first")
    with qtbot.waitSignal(panel.saved, timeout=10000) as blocker:
        fake_window.resultReady.emit(result)
    first = blocker.args[0][0]
    fake_window.set_source_image(result.images[0])  # "Use result as source" in the window
    with qtbot.waitSignal(panel.saved, timeout=10000) as blocker:
        fake_window.resultReady.emit(edit_result(source=fake_window.sources[-1]))
    assert blocker.args[0][0].parent_id == first.id
    fake_window.set_source_image(Image.new("RGB", (64, 64), "pink"))  # an unrelated image: no parent
    with qtbot.waitSignal(panel.saved, timeout=10000) as blocker:
        fake_window.resultReady.emit(edit_result(source=fake_window.sources[-1]))
    assert blocker.args[0][0].parent_id is None


def test_delete_with_confirm(qtbot, panel, store, monkeypatch):
    entries = fill(store, 3)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 3)
    panel.to_trash = False
    monkeypatch.setattr(panel, "_confirm", lambda text: False)
    assert not panel.delete_entries(entries[:2])
    assert store.count() == 3
    asked = []
    monkeypatch.setattr(panel, "_confirm", lambda text: asked.append(text) or True)
    assert panel.delete_entries(entries[:2])
    assert "2 entries" in asked[0]
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)
    assert store.count() == 1 and not entries[0].image_path.exists()


def test_keyboard_and_context_menu(qtbot, panel, store, monkeypatch):
    entries = fill(store, 2)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 2)
    panel.view.setCurrentIndex(panel.model.index(0))
    panel.view.setFocus()
    qtbot.keyClick(panel.view, Qt.Key.Key_Return)
    assert panel.window_.shown and panel.window_.shown[-1].seeds == [entries[-1].seed]
    menu = panel._build_menu(entries[-1], [entries[-1]])
    texts = [a.text() for a in menu.actions() if a.text()]
    assert texts[:3] == ["Open on canvas", "Reuse parameters", "Use as source (edit / inpaint)"]
    assert any(t.startswith("Delete") for t in texts) and "Show file" in texts and "Copy image" in texts
    opened = []
    monkeypatch.setattr(panel, "_open_url", lambda url: opened.append(url.toLocalFile()) or True)
    panel.reveal_entry(entries[0])
    if opened:
        assert opened[0] == str(entries[0].image_path.parent)
    panel.copy_entry(entries[0])
    from PySide6.QtGui import QGuiApplication

    assert not QGuiApplication.clipboard().image().isNull()
    mime = panel.model.mimeData([panel.model.index(0)])
    assert mime.urls()[0].toLocalFile() == str(entries[-1].image_path)


def test_entries_adopted_at_check_show_up(qtbot, panel, store):
    [entry] = store.add(generate_result())
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)
    store._db().execute("DELETE FROM entries WHERE id = ?", (entry.id,))
    panel.refresh()
    assert panel.model.rowCount() == 0
    store.check(full=True)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)


def test_recovery_message_in_banner(qtbot, tmp_path):
    root = tmp_path / "h"
    with HistoryStore(root) as s:
        s.add(generate_result())
    (root / "history.db").write_bytes(b"garbage" * 100)
    with HistoryStore(root) as s:
        p = HistoryPanel(s)
        qtbot.addWidget(p)
        assert "damaged" in p.banner.text()
        assert p.model.rowCount() == 1


def test_first_screen_fast_with_many_entries(qtbot, tmp_path):
    """10,000 rows: the panel builds from one page; no per-entry work at start."""
    root = tmp_path / "big"
    s = HistoryStore(root)
    rows = [
        (f"u{i:05d}", 1_700_000_000 + i, "generate", '{"kind": "generate", "prompt": "p"}', f"prompt {i}", "", "builtin",
         "", i, f"images/2023-11-14/u{i:05d}.png", None, None, None, 64, 64, None, None)
        for i in range(10_000)
    ]
    conn = s._db()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO entries (uid, created_at, kind, request_json, prompt, negative_prompt, model_id, model_hash, seed,"
        " image_path, thumb_path, parent_id, elapsed, width, height, source_path, mask_path)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")
    t0 = time.perf_counter()
    p = HistoryPanel(s)
    qtbot.addWidget(p)
    p.show()
    qtbot.waitExposed(p)
    elapsed = time.perf_counter() - t0
    assert p.model.rowCount() == PAGE and p.model.total() == 10_000
    assert elapsed < 2.0, elapsed  # generous: shared CI cores
    p.model.wait_for_thumbnails(10_000)
    s.close()


def test_real_main_window_saves_results(qtbot, qloop, tmp_path):
    pytest.importorskip("desktop_app.app.application")
    from desktop_app.app.application import create_main_window
    from tests.ui_conftest_helpers import FakeEngine

    s = HistoryStore(tmp_path / "data" / "history")
    engine = FakeEngine()
    window = create_main_window(data_dir=tmp_path / "data", engine_factory=lambda: engine, history=s)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    panel = window.findChild(QWidget, "historyPanel")
    assert isinstance(panel, HistoryPanel) and panel.history is s
    window.findChild(QWidget, "promptEdit").setPlainText("a window cube")
    with qtbot.waitSignal(panel.saved, timeout=20000) as blocker:
        window.generate()
    [entry] = blocker.args[0][:1]
    assert entry.prompt == "a window cube"
    qtbot.waitUntil(lambda: panel.model.rowCount() >= 1)
    # Reuse fills the window's prompt panel.
    window.findChild(QWidget, "promptEdit").setPlainText("something else")
    panel.reuse_entry(entry)
    assert window.findChild(QWidget, "promptEdit").toPlainText() == "a window cube"
    panel.open_entry(entry)
    assert window.current_result is not None and window.current_result.seeds == [entry.seed]
    window.close()
    s.close()
