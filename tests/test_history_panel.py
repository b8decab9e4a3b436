"""The history panel: lazy grid, search and filters, actions on entries, saving results in the background."""

from __future__ import annotations

import dataclasses
import errno
import time

import pytest
from PIL import Image
from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction, QColor, QFont, QGuiApplication, QKeySequence
from PySide6.QtWidgets import QMainWindow, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget
from test_history_support import edit_result, generate_result

from desktop_app.core.history import HistoryStore
from desktop_app.core.requests import EditRequest
from desktop_app.model.history_saver import HistorySaver
from desktop_app.ui.history_panel import PAGE, HistoryPanel, SourceFromHistory
from tests.ui_conftest_helpers import qloop  # noqa: F401  (a fixture)


class Window(QObject):
    """Stands for the lead's window: records what the panel asks for through its signals."""

    def __init__(self, panel):
        super().__init__()
        self.shown, self.filled, self.sources, self.errors = [], [], [], []
        panel.openRequested.connect(self.shown.append)
        panel.reuseRequested.connect(self.filled.append)
        panel.useAsSourceRequested.connect(self.sources.append)
        panel.errorRaised.connect(lambda message, hint: self.errors.append((message, hint)))


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(tmp_path / "history")
    yield s
    s.close()


@pytest.fixture
def saver(store):
    s = HistorySaver(store)
    yield s
    s.wait(10)
    s.close()


@pytest.fixture
def panel(qtbot, store, saver):
    p = HistoryPanel(store, saver)
    qtbot.addWidget(p)
    p.resize(420, 600)
    p.show()
    yield p
    saver.wait(10)


@pytest.fixture
def window(panel):
    """What the panel asked the window for, recorded from its signals."""
    return Window(panel)


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
    assert not p.save_banner.isVisible()


def test_a_panel_never_saves_and_takes_only_a_saver(qtbot, store):
    with pytest.raises(TypeError):
        # the old HistoryPanel(history, window) call: the wrong type on purpose
        HistoryPanel(store, QObject())  # pyright: ignore[reportArgumentType]
    p = HistoryPanel(store)
    qtbot.addWidget(p)
    assert not hasattr(p, "add_result") and not hasattr(p, "saved")


def test_lazy_paging_newest_first(qtbot, store, saver):
    entries = fill(store, PAGE + 30)
    p = HistoryPanel(store, saver)
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


def test_missing_image_gets_placeholder(qtbot, panel, window, store):
    [entry] = store.add(generate_result())
    entry.image_path.unlink()
    entry.thumbnail_path.unlink()
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)
    panel.model.data(panel.model.index(0), Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: entry.id in panel.model._thumbs, timeout=5000)
    assert panel.model._thumbs[entry.id] is panel.model._missing
    panel.open_entry(entry)
    assert window.errors and "missing" in window.errors[-1][0]


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


def test_results_the_saver_writes_appear_on_top(qtbot, panel, store, saver):
    fill(store, 2)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 2)
    result = generate_result(prompt="brand new", n=2, seed=900)
    with qtbot.waitSignal(saver.saved, timeout=10000) as blocker:
        saver.save(result)
    assert [e.seed for e in blocker.args[0]] == [900, 901]
    qtbot.waitUntil(lambda: panel.model.rowCount() == 4)
    assert {panel.model.entry(0).seed, panel.model.entry(1).seed} == {900, 901}
    saver.save(result)  # the same result twice (wired twice): saved once
    saver.wait(10)
    assert store.count() == 4


def test_a_failed_save_shows_a_banner_and_retry_writes_it(qtbot, panel, store, saver, monkeypatch):
    from desktop_app.core import history as history_module

    real = history_module._atomic_write

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(history_module, "_atomic_write", full)
    result = generate_result(prompt="kept in memory")
    with qtbot.waitSignal(saver.failed, timeout=10000):
        saver.save(result)
    assert panel.save_banner.isVisible() and "disk is full" in panel.save_label.text()
    assert "1 result" in panel.save_label.text() and saver.unsaved() == [result]
    assert store.count() == 0 and panel.model.rowCount() == 0
    monkeypatch.setattr(history_module, "_atomic_write", real)  # space freed
    with qtbot.waitSignal(saver.saved, timeout=10000):
        qtbot.mouseClick(panel.retry_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)
    assert panel.model.entry(0).prompt == "kept in memory"
    assert not panel.save_banner.isVisible()


def test_open_reuse_and_use_as_source(qtbot, panel, window, store, saver):
    [parent] = store.add(generate_result(prompt="the parent"))
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1)
    shown = panel.open_entry(parent)
    assert window.shown == [shown] and shown.images[0].size == (64, 64) and shown.seeds == [parent.seed]
    saver.save(shown)  # the window shows it as a result: it is not saved a second time
    saver.wait(10)
    assert store.count() == 1
    request = panel.reuse_entry(parent)
    assert window.filled[-1] is request and request.prompt == "the parent"
    panel.use_as_source(parent)
    choice = window.sources[-1]
    assert isinstance(choice, SourceFromHistory) and choice.entry.id == parent.id and choice.image.size == (64, 64)
    image, entry = choice  # unpacks as (image, entry)
    child = edit_result(prompt="the child", source=image)
    with qtbot.waitSignal(saver.saved, timeout=10000) as blocker:
        saver.save(child, parent_id=entry.id)  # what the window's wiring does with the entry it was given
    assert blocker.args[0][0].parent_id == parent.id
    # An edit entry reused: its source image and mask come back for exact replay.
    edit_entry = blocker.args[0][0]
    request = panel.reuse_entry(edit_entry)
    assert isinstance(request, EditRequest) and request.image is not None and request.mask is not None


def _color_box(image, rect, color, tolerance=40):
    """Bounding box (left, top, right, bottom) of the pixels of `color` inside `rect` of a QImage, or None."""
    want = QColor(color)
    xs, ys = [], []
    for y in range(rect.top(), rect.bottom() + 1):
        for x in range(rect.left(), rect.right() + 1):
            c = image.pixelColor(x, y)
            if abs(c.red() - want.red()) + abs(c.green() - want.green()) + abs(c.blue() - want.blue()) < tolerance:
                xs.append(x)
                ys.append(y)
    return (min(xs), min(ys), max(xs), max(ys)) if xs else None


def test_thumbnails_fit_their_cell_with_the_caption_visible(qtbot, store, saver):
    """Defect 6: a 512x320 image was cropped to about 70x80 and its caption lost; a 64x64 one stayed tiny."""
    wide = dataclasses.replace(generate_result(prompt="wide"), images=[Image.new("RGB", (512, 320), (220, 20, 20))])
    small = dataclasses.replace(
        generate_result(prompt="small", seed=5), images=[Image.new("RGB", (64, 64), (20, 20, 220))]
    )
    store.add(wide)
    store.add(small)
    p = HistoryPanel(store, saver)
    qtbot.addWidget(p)
    font = QFont(p.font())
    font.setPixelSize(18)  # a desktop with a larger font than the test default
    p.setFont(font)
    p.resize(420, 600)
    p.show()
    qtbot.waitExposed(p)
    for row in range(2):
        p.model.data(p.model.index(row), Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: len(p.model._thumbs) == 2, timeout=5000)
    p.view.viewport().update()
    qtbot.wait(50)
    grab = p.view.viewport().grab().toImage()
    caption_h = p.view.fontMetrics().height()
    for row, color, aspect in ((1, (220, 20, 20), 512 / 320), (0, (20, 20, 220), 1.0)):
        cell = p.view.visualRect(p.model.index(row))
        box = _color_box(grab, cell, QColor(*color))
        assert box is not None, row
        left, top, right, bottom = box
        width, height = right - left + 1, bottom - top + 1
        assert abs(width / height - aspect) < 0.08, (row, width, height)  # the whole image, not a crop of it
        assert width >= 100, (row, width)  # scaled to the cell (112 px), up or down
        assert left > cell.left() and right < cell.right() and top >= cell.top()
        caption = cell.adjusted(0, bottom - cell.top() + 2, 0, 0)  # everything below the image in the cell
        assert caption.height() >= caption_h, (row, caption.height(), caption_h)
        text = QColor(p.view.palette().color(p.view.foregroundRole()))
        assert _color_box(grab, caption, text, tolerance=120) is not None, row  # the caption's text is painted


def test_ctrl_c_in_the_list_copies_the_entry_and_elsewhere_the_windows_copy(qtbot, store, saver):
    """Defect 7: Ctrl+C in the history was an ambiguous shortcut (the window has Copy on Ctrl+C) and did nothing."""
    big = dataclasses.replace(generate_result(prompt="to the clipboard"), images=[Image.new("RGB", (96, 80), "orange")])
    [entry] = store.add(big)
    window = QMainWindow()
    qtbot.addWidget(window)
    copied = []
    copy = QAction("Copy", window)
    copy.setShortcut(QKeySequence(QKeySequence.StandardKey.Copy))
    copy.triggered.connect(lambda: copied.append("window"))
    window.addAction(copy)
    central = QWidget()
    lay = QVBoxLayout(central)
    button = QPushButton("elsewhere")
    lay.addWidget(button)
    p = HistoryPanel(store, saver)
    lay.addWidget(p)
    window.setCentralWidget(central)
    window.show()
    window.activateWindow()
    qtbot.waitActive(window)
    QGuiApplication.clipboard().clear()
    qtbot.waitUntil(lambda: p.model.rowCount() == 1)
    p.view.setCurrentIndex(p.model.index(0))
    p.view.setFocus()
    qtbot.waitUntil(p.view.hasFocus)
    qtbot.keyClick(p.view, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    image = QGuiApplication.clipboard().image()
    assert not image.isNull() and (image.width(), image.height()) == (96, 80)
    assert QGuiApplication.clipboard().mimeData().urls()[0].toLocalFile() == str(entry.image_path)
    assert copied == []  # the window's Copy did not run as well
    button.setFocus()
    qtbot.waitUntil(button.hasFocus)
    qtbot.keyClick(button, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert copied == ["window"]


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


def test_keyboard_and_context_menu(qtbot, panel, window, store, monkeypatch):
    entries = fill(store, 2)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 2)
    panel.view.setCurrentIndex(panel.model.index(0))
    panel.view.setFocus()
    qtbot.keyClick(panel.view, Qt.Key.Key_Return)
    assert window.shown and window.shown[-1].seeds == [entries[-1].seed]
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
        (
            f"u{i:05d}",
            1_700_000_000 + i,
            "generate",
            '{"kind": "generate", "prompt": "p"}',
            f"prompt {i}",
            "",
            "builtin",
            "",
            i,
            f"images/2023-11-14/u{i:05d}.png",
            None,
            None,
            None,
            64,
            64,
            None,
            None,
        )
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
    saver = getattr(window, "history_saver", None)
    if not isinstance(saver, HistorySaver):
        window.close()
        s.close()
        pytest.skip("the window binds the panel to a HistorySaver after its rewrite (window.history_saver)")
    window.show()
    qtbot.waitExposed(window)
    panel = window.findChild(QWidget, "historyPanel")
    assert isinstance(panel, HistoryPanel) and panel.history is s and panel.saver is saver
    prompt = window.findChild(QPlainTextEdit, "promptEdit")
    assert isinstance(prompt, QPlainTextEdit)
    prompt.setPlainText("a window cube")
    with qtbot.waitSignal(saver.saved, timeout=20000) as blocker:
        window.generate()
    [entry] = blocker.args[0][:1]
    assert entry.prompt == "a window cube"
    qtbot.waitUntil(lambda: panel.model.rowCount() >= 1)
    # Reuse fills the window's prompt panel.
    prompt.setPlainText("something else")
    panel.reuse_entry(entry)
    assert prompt.toPlainText() == "a window cube"
    panel.open_entry(entry)
    assert window.current_result is not None and window.current_result.seeds == [entry.seed]
    window.close()
    saver.wait(10)
    s.close()
