"""The history panel: a lazily loaded grid of thumbnails, newest first, with search and filters.

``HistoryPanel(store=None, saver=None, parent=None)`` (objectName ``historyPanel``) binds to a
`core.history.HistoryStore` (None: the panel says the history is not open; `set_history` changes it) and a
`model.history_saver.HistorySaver` (new entries appear from ``saver.saved``; a failed save shows a banner with
Retry and "Save elsewhere…"). A read-only history (a read-only folder, a full disk) is browsed; its reason shows in
the banner. The panel saves nothing itself and calls no window: it asks through signals the window connects.

Signals: openRequested(object: a Result built from the entry, to show), reuseRequested(object: the entry's
request, with its source image and mask when stored), useAsSourceRequested(object: SourceFromHistory(image, entry),
to edit or inpaint; the next result of it is the entry's child), entrySelected(object: Entry),
errorRaised(str message, str hint).

Methods: set_history(store, reason=""), set_saver(saver), save_elsewhere(folder=None), refresh(), set_search(text), set_kind(kind|None),
set_favourites_only(bool), entries() (loaded), selected_entries(), open_entry(entry), reuse_entry(entry),
use_as_source(entry), toggle_favourite(entries), reveal_entry(entry), copy_entry(entry),
delete_entries(entries, confirm=True).

No torch here; images reach the window as PIL images.
"""

from __future__ import annotations

import collections
import logging
import subprocess
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

from PySide6.QtCore import (
    QAbstractListModel,
    QEvent,
    QMimeData,
    QModelIndex,
    QObject,
    QRect,
    QRunnable,
    QSize,
    Qt,
    QThreadPool,
    QTimer,
    QUrl,
    Signal,
    Slot,
)
from PySide6.QtGui import (
    QAction,
    QColor,
    QDesktopServices,
    QGuiApplication,
    QImage,
    QKeyEvent,
    QKeySequence,
    QPainter,
    QPalette,
    QPixmap,
    QResizeEvent,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMenu,
    QMessageBox,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core.errors import HistoryError, UserError
from desktop_app.model.history_saver import HistorySaver

log = logging.getLogger(__name__)

ICON = 112
PAGE = 120
EntryRole = Qt.ItemDataRole.UserRole + 1
KIND_FILTERS = (
    ("All kinds", None),
    ("Generate", "generate"),
    ("Image to image", "img2img"),
    ("Inpaint", "inpaint"),
    ("Edit", "edit"),
)


class SourceFromHistory(NamedTuple):
    """What useAsSourceRequested carries: the image to edit and the entry it is (the parent of what is made of it)."""

    image: Any  # PIL image
    entry: Any  # core.history.Entry


class _Resources:
    """What must be released when the panel goes: not a QObject, so it outlives the widget's C++ side."""

    def __init__(self) -> None:
        self.unsubscribe: Any = None

    def close(self, *_: Any) -> None:
        if self.unsubscribe is not None:
            self.unsubscribe()
            self.unsubscribe = None


class _Bridge(QObject):
    """Carries news from other threads to the UI thread (queued)."""

    storeEvent = Signal(str, object)
    thumbLoaded = Signal(int, object)  # entry id, QImage or None


class _ThumbJob(QRunnable):
    def __init__(self, store: Any, entry: Any, bridge: _Bridge) -> None:
        super().__init__()
        self.store, self.entry, self.bridge = store, entry, bridge
        self.setAutoDelete(True)

    def run(self) -> None:  # worker thread: QImage (not QPixmap) is fine here
        image = None
        try:
            path = self.store.thumbnail(self.entry) if hasattr(self.store, "thumbnail") else self.entry.thumbnail_path
            if path is not None:
                loaded = QImage(str(path))
                image = None if loaded.isNull() else loaded
        except Exception as exc:  # noqa: BLE001 - a bad thumbnail shows a placeholder
            log.debug("thumbnail of %s: %s", getattr(self.entry, "id", "?"), exc)
        try:
            self.bridge.thumbLoaded.emit(self.entry.id, image)
        except RuntimeError:  # the panel is gone
            pass


def _placeholder(text: str, color: str) -> QPixmap:
    pix = QPixmap(ICON, ICON)
    pix.fill(QColor(color))
    painter = QPainter(pix)
    painter.setPen(QColor("#9aa0a6"))
    painter.drawText(pix.rect(), Qt.AlignmentFlag.AlignCenter, text)
    painter.end()
    return pix


class HistoryModel(QAbstractListModel):
    """Entries newest first, fetched a page at a time (`canFetchMore` / `fetchMore`); thumbnails load off-thread."""

    def __init__(self, store: Any, bridge: _Bridge, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.bridge = bridge
        self.search: str | None = None
        self.kind: str | None = None
        self.favourite: bool | None = None
        self._entries: list[Any] = []
        self._total = 0
        self._thumbs: collections.OrderedDict[int, QPixmap] = collections.OrderedDict()
        self._pending: set[int] = set()
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(2)
        self._loading = _placeholder("…", "#2a2d33")
        self._missing = _placeholder("missing", "#3a2a2a")
        bridge.thumbLoaded.connect(self._on_thumb)
        self.reset()

    # -- loading -------------------------------------------------------------------
    def _filters(self) -> dict[str, Any]:
        return {"search": self.search or None, "kind": self.kind, "favourite": self.favourite}

    def reset(self) -> None:
        self.beginResetModel()
        self._entries = []
        self._total = 0
        if self.store is not None:
            try:
                self._total = self.store.count(**self._filters())
                self._entries = self.store.list(offset=0, limit=PAGE, **self._filters())
            except UserError as exc:
                log.warning("history: %s", exc)
        self.endResetModel()

    def total(self) -> int:
        return self._total

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._entries)

    def canFetchMore(self, parent: QModelIndex = QModelIndex()) -> bool:  # noqa: N802, B008
        return not parent.isValid() and self.store is not None and len(self._entries) < self._total

    def fetchMore(self, parent: QModelIndex = QModelIndex()) -> None:  # noqa: N802, B008
        if not self.canFetchMore(parent):
            return
        try:
            more = self.store.list(offset=len(self._entries), limit=PAGE, **self._filters())
        except UserError as exc:
            log.warning("history: %s", exc)
            return
        known = {e.id for e in self._entries}
        more = [e for e in more if e.id not in known]
        if not more:
            self._total = len(self._entries)
            return
        first = len(self._entries)
        self.beginInsertRows(QModelIndex(), first, first + len(more) - 1)
        self._entries.extend(more)
        self.endInsertRows()

    # -- data ------------------------------------------------------------------------
    def entry(self, row: int) -> Any:
        return self._entries[row] if 0 <= row < len(self._entries) else None

    def entries(self) -> list[Any]:
        return list(self._entries)

    def row_of(self, entry_id: int) -> int:
        for row, entry in enumerate(self._entries):
            if entry.id == entry_id:
                return row
        return -1

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        entry = self.entry(index.row()) if index.isValid() else None
        if entry is None:
            return None
        if role == Qt.ItemDataRole.DecorationRole:
            return self._thumb(entry)
        if role == Qt.ItemDataRole.DisplayRole:
            return ("★ " if entry.favourite else "") + entry.kind
        if role == Qt.ItemDataRole.ToolTipRole:
            when = entry.created.astimezone().strftime("%Y-%m-%d %H:%M")
            prompt = entry.prompt if len(entry.prompt) < 300 else entry.prompt[:297] + "…"
            lines = [f"#{entry.id} · {entry.kind} · {when}", prompt]
            if entry.negative_prompt:
                lines.append(f"Negative: {entry.negative_prompt[:200]}")
            lines.append(f"Seed {entry.seed} · {entry.width}×{entry.height} · {entry.model_id}")
            return "\n".join(lines)
        if role == EntryRole:
            return entry
        return None

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        base = super().flags(index)
        return base | Qt.ItemFlag.ItemIsDragEnabled if index.isValid() else base

    def mimeTypes(self) -> list[str]:  # noqa: N802
        return ["text/uri-list"]

    def mimeData(self, indexes: Iterable[QModelIndex]) -> QMimeData:  # noqa: N802
        data = QMimeData()
        urls = [QUrl.fromLocalFile(str(e.image_path)) for e in (self.entry(i.row()) for i in indexes) if e is not None]
        data.setUrls(urls)
        return data

    def _thumb(self, entry: Any) -> QPixmap:
        pix = self._thumbs.get(entry.id)
        if pix is not None:
            self._thumbs.move_to_end(entry.id)
            return pix
        if entry.id not in self._pending and self.store is not None:
            self._pending.add(entry.id)
            self._pool.start(_ThumbJob(self.store, entry, self.bridge))
        return self._loading

    @Slot(int, object)
    def _on_thumb(self, entry_id: int, image: Any) -> None:
        self._pending.discard(entry_id)
        pix = QPixmap.fromImage(image) if image is not None else self._missing
        if not pix.isNull() and (pix.width() > ICON or pix.height() > ICON):
            pix = pix.scaled(ICON, ICON, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        self._thumbs[entry_id] = pix
        while len(self._thumbs) > 2000:
            self._thumbs.popitem(last=False)
        row = self.row_of(entry_id)
        if row >= 0:
            index = self.index(row)
            self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    def wait_for_thumbnails(self, msecs: int = 5000) -> bool:
        return self._pool.waitForDone(msecs)

    # -- changes -------------------------------------------------------------------------
    def _matches(self, entry: Any) -> bool:
        if self.kind and entry.kind != self.kind:
            return False
        if self.favourite is not None and entry.favourite != self.favourite:
            return False
        return not self.search

    def prepend(self, entries: list[Any]) -> None:
        if self.search:  # only the index knows what matches a search
            self.reset()
            return
        known = {e.id for e in self._entries}
        new = sorted(
            (e for e in entries if e.id not in known and self._matches(e)),
            key=lambda e: (e.created_at, e.id),
            reverse=True,
        )
        if not new:
            return
        newest = self._entries[0].created_at if self._entries else float("-inf")
        if any(e.created_at < newest for e in new):  # adopted old entries: their place is further down
            self.reset()
            return
        self.beginInsertRows(QModelIndex(), 0, len(new) - 1)
        self._entries[0:0] = new
        self._total += len(new)
        self.endInsertRows()

    def remove(self, ids: Iterable[int]) -> None:
        ids = set(ids)
        for row in range(len(self._entries) - 1, -1, -1):
            if self._entries[row].id in ids:
                self.beginRemoveRows(QModelIndex(), row, row)
                del self._entries[row]
                self._total -= 1
                self.endRemoveRows()
        for entry_id in ids:
            self._thumbs.pop(entry_id, None)

    def update(self, entries: list[Any]) -> None:
        for entry in entries:
            row = self.row_of(entry.id)
            if row < 0:
                continue
            if self.favourite is not None and entry.favourite != self.favourite:
                self.beginRemoveRows(QModelIndex(), row, row)
                del self._entries[row]
                self._total -= 1
                self.endRemoveRows()
                continue
            self._entries[row] = entry
            index = self.index(row)
            self.dataChanged.emit(index, index)


class ThumbnailDelegate(QStyledItemDelegate):
    """Paints a cell as the thumbnail scaled to fit above its caption, whatever the image's size and the font's:
    the default icon-mode layout sized the cell from the first item and cropped larger thumbnails and their
    caption."""

    MARGIN = 4

    def cell_size(self, option_font_metrics: Any, width: int | None = None) -> QSize:
        """A cell for a thumbnail and one caption line; `width` (the list's width over its columns) narrows the
        thumbnail when the panel is narrower than one full cell, or widens the cell to share out spare width."""
        full = ICON + 2 * self.MARGIN + 4
        width = full if width is None else max(width, 2 * self.MARGIN + 16)
        icon = min(ICON, width - 2 * self.MARGIN - 4)
        return QSize(width, icon + option_font_metrics.height() + 3 * self.MARGIN)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:  # noqa: N802
        view = option.widget  # type: ignore[attr-defined]
        if isinstance(view, QListView) and view.gridSize().isValid():
            return view.gridSize()  # the cell the view fitted to its width
        return self.cell_size(option.fontMetrics)  # type: ignore[attr-defined]

    @staticmethod
    def image_rect(cell: QRect, caption_height: int, size: QSize, margin: int = MARGIN) -> QRect:
        """Where a `size` image goes in `cell`: as large as fits above the caption, aspect ratio kept, centred."""
        box = QRect(
            cell.left() + margin,
            cell.top() + margin,
            cell.width() - 2 * margin,
            cell.height() - caption_height - 3 * margin,
        )
        if size.isEmpty() or box.isEmpty():
            return QRect(box.topLeft(), QSize(0, 0))
        fitted = size.scaled(box.size(), Qt.AspectRatioMode.KeepAspectRatio)
        return QRect(
            box.left() + (box.width() - fitted.width()) // 2,
            box.top() + (box.height() - fitted.height()) // 2,
            fitted.width(),
            fitted.height(),
        )

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        widget = opt.widget  # type: ignore[attr-defined]
        style = widget.style() if widget is not None else None
        cell: QRect = opt.rect  # type: ignore[attr-defined]
        painter.save()
        if style is not None:
            opt.text = ""  # type: ignore[attr-defined]
            opt.icon = type(opt.icon)()  # type: ignore[attr-defined]
            style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, opt, painter, widget)
        metrics = opt.fontMetrics  # type: ignore[attr-defined]
        caption_h = metrics.height()
        pix = index.data(Qt.ItemDataRole.DecorationRole)
        if isinstance(pix, QPixmap) and not pix.isNull():
            target = self.image_rect(cell, caption_h, pix.size())
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawPixmap(target, pix)
        text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        caption = QRect(
            cell.left() + self.MARGIN,
            cell.bottom() - self.MARGIN - caption_h + 1,
            cell.width() - 2 * self.MARGIN,
            caption_h,
        )
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)  # type: ignore[attr-defined]
        role = QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        painter.setPen(opt.palette.color(role))  # type: ignore[attr-defined]
        painter.setFont(opt.font)  # type: ignore[attr-defined]
        painter.drawText(
            caption,
            int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter),
            metrics.elidedText(text, Qt.TextElideMode.ElideRight, caption.width()),
        )
        painter.restore()


class HistoryView(QListView):
    """The grid. Copy and Delete are handled here while it has the focus: the window has actions on the same keys,
    and two shortcuts on one key are ambiguous in Qt and do nothing."""

    copyRequested = Signal()
    deleteRequested = Signal()

    KEYS = ((QKeySequence.StandardKey.Copy, "copyRequested"), (QKeySequence.StandardKey.Delete, "deleteRequested"))

    def event(self, event: QEvent) -> bool:
        overrides = event.type() == QEvent.Type.ShortcutOverride and isinstance(event, QKeyEvent)
        if overrides and any(event.matches(key) for key, _signal in self.KEYS):  # type: ignore[attr-defined]
            event.accept()  # the key comes to keyPressEvent instead of the window's shortcut
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        for key, signal in self.KEYS:
            if event.matches(key):
                getattr(self, signal).emit()
                event.accept()
                return
        super().keyPressEvent(event)

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802
        super().changeEvent(event)
        if event.type() == QEvent.Type.FontChange:
            self.fit_grid()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        self.fit_grid()

    def columns_width(self) -> int:
        """The width the cells share: the view less its frame and a vertical scroll bar, whether that shows or not,
        so that the bar coming and going cannot change the columns (and a resize never loops)."""
        bar = self.verticalScrollBar().sizeHint().width()
        return max(1, self.width() - 2 * self.frameWidth() - bar - 1)

    def fit_grid(self) -> None:
        """Cells for a thumbnail and one line of caption in the current font, as many columns as fit the width and
        the spare width shared out: a narrow panel (a large scale factor) gets narrower thumbnails, never a
        horizontal scroll bar and cells cut at the right edge."""
        delegate = self.itemDelegate()
        if not isinstance(delegate, ThumbnailDelegate):
            return
        metrics = self.fontMetrics()
        full = delegate.cell_size(metrics).width()
        width = self.columns_width()
        columns = max(1, width // full)
        cell = delegate.cell_size(metrics, width // columns)
        if cell != self.gridSize():
            self.setGridSize(cell)


class HistoryPanel(QWidget):
    """Gallery of past results. See the module docstring for its API."""

    openRequested = Signal(object)
    reuseRequested = Signal(object)
    useAsSourceRequested = Signal(object)
    entrySelected = Signal(object)
    errorRaised = Signal(str, str)

    def __init__(self, store: Any = None, saver: HistorySaver | None = None, parent: QWidget | None = None) -> None:
        if saver is not None and not isinstance(saver, HistorySaver):
            raise TypeError(f"HistoryPanel(store, saver): saver must be a HistorySaver, not {type(saver).__name__}")
        super().__init__(parent)
        self.setObjectName("historyPanel")
        self.history: Any = None
        self.saver: HistorySaver | None = None
        self._bridge = _Bridge(self)
        self._bridge.storeEvent.connect(self._on_store_event)
        self._res = _Resources()
        self.to_trash = True
        self._build_ui()
        self.set_history(store)
        self.set_saver(saver)
        self.destroyed.connect(self._res.close)

    # -- construction ---------------------------------------------------------------
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        title_row = QHBoxLayout()
        title = QLabel("History")
        title.setStyleSheet("font-weight: 600;")
        title_row.addWidget(title)
        title_row.addStretch(1)
        self.count_label = QLabel("")
        self.count_label.setObjectName("historyCount")
        self.count_label.setStyleSheet("color: #8a8f98;")
        title_row.addWidget(self.count_label)
        layout.addLayout(title_row)

        self.banner = QLabel("")
        self.banner.setObjectName("historyBanner")
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background: #4a3b1f; color: #f0d9a8; padding: 4px; border-radius: 3px;")
        self.banner.hide()
        layout.addWidget(self.banner)

        self.save_banner = QWidget()
        self.save_banner.setObjectName("historySaveBanner")
        self.save_banner.setStyleSheet("background: #4a2626; color: #f4c7c7; border-radius: 3px;")
        row = QHBoxLayout(self.save_banner)
        row.setContentsMargins(4, 2, 4, 2)
        self.save_label = QLabel("")
        self.save_label.setObjectName("historySaveMessage")
        self.save_label.setWordWrap(True)
        row.addWidget(self.save_label, 1)
        self.retry_button = QToolButton()
        self.retry_button.setObjectName("historyRetryButton")
        self.retry_button.setText("Retry")
        self.retry_button.setToolTip("Write the results that could not be saved to the history again")
        self.retry_button.clicked.connect(self._retry)
        row.addWidget(self.retry_button)
        self.save_elsewhere_button = QToolButton()
        self.save_elsewhere_button.setObjectName("historySaveElsewhereButton")
        self.save_elsewhere_button.setText("Save elsewhere…")
        self.save_elsewhere_button.setToolTip(
            "Write the results that are not in the history to another folder, as PNGs with their parameters"
        )
        self.save_elsewhere_button.clicked.connect(self.save_elsewhere)
        row.addWidget(self.save_elsewhere_button)
        self.save_banner.hide()
        layout.addWidget(self.save_banner)

        self.search_edit = QLineEdit()
        self.search_edit.setObjectName("historySearch")
        self.search_edit.setPlaceholderText("Search prompts…")
        self.search_edit.setClearButtonEnabled(True)
        layout.addWidget(self.search_edit)
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(250)
        self._search_timer.timeout.connect(self._apply_search)
        self.search_edit.textChanged.connect(lambda _t: self._search_timer.start())
        self.search_edit.returnPressed.connect(self._apply_search)

        filter_row = QHBoxLayout()
        self.kind_combo = QComboBox()
        self.kind_combo.setObjectName("historyKind")
        for label, kind in KIND_FILTERS:
            self.kind_combo.addItem(label, kind)
        self.kind_combo.currentIndexChanged.connect(lambda _i: self.set_kind(self.kind_combo.currentData()))
        filter_row.addWidget(self.kind_combo, 1)
        self.favourite_button = QToolButton()
        self.favourite_button.setObjectName("historyFavourites")
        self.favourite_button.setText("★")
        self.favourite_button.setToolTip("Only favourites")
        self.favourite_button.setCheckable(True)
        self.favourite_button.toggled.connect(self.set_favourites_only)
        filter_row.addWidget(self.favourite_button)
        layout.addLayout(filter_row)

        self.view = HistoryView()
        self.view.setObjectName("historyGrid")
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setIconSize(QSize(ICON, ICON))
        self.view.setItemDelegate(ThumbnailDelegate(self.view))
        self.view.fit_grid()
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setUniformItemSizes(True)
        self.view.setWrapping(True)
        self.view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the cells fit the width
        self.view.setLayoutMode(QListView.LayoutMode.Batched)
        self.view.setBatchSize(60)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setDragEnabled(True)
        self.view.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.doubleClicked.connect(lambda index: self.open_entry(index.data(EntryRole)))
        self.view.copyRequested.connect(lambda: self._on_selection(self.copy_entry))
        self.view.deleteRequested.connect(lambda: self.delete_entries(self.selected_entries()))
        layout.addWidget(self.view, 1)

        self.empty_label = QLabel("Results you make appear here.")
        self.empty_label.setWordWrap(True)
        self.empty_label.setStyleSheet("color: #8a8f98;")
        layout.addWidget(self.empty_label)

        action = QAction("Open", self.view)
        action.setShortcuts([QKeySequence(Qt.Key.Key_Return), QKeySequence(Qt.Key.Key_Enter)])
        action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        action.triggered.connect(lambda: self._on_selection(self.open_entry))
        self.view.addAction(action)

    def set_history(self, store: Any, reason: str = "") -> None:
        """Show `store` (a HistoryStore) or, with None, say the history is unavailable and why (`reason`: the
        store's error message)."""
        self._unavailable_reason = reason.strip()
        if self._res.unsubscribe is not None:
            self._res.unsubscribe()
            self._res.unsubscribe = None
        self.history = store
        self.model = HistoryModel(store, self._bridge, self)
        self.view.setModel(self.model)
        self.view.selectionModel().currentChanged.connect(self._on_current_changed)
        self.model.modelReset.connect(self._update_labels)
        self.model.rowsInserted.connect(self._update_labels)
        self.model.rowsRemoved.connect(self._update_labels)
        enabled = store is not None
        for widget in (self.search_edit, self.kind_combo, self.favourite_button):
            widget.setEnabled(enabled)
        if store is not None and hasattr(store, "subscribe"):
            bridge = self._bridge

            def forward(event: str, data: Any) -> None:
                try:
                    bridge.storeEvent.emit(event, data)
                except RuntimeError:  # the panel is gone
                    pass

            self._res.unsubscribe = store.subscribe(forward)
        notes = []
        if store is not None:
            if getattr(store, "read_only_reason", None):
                notes.append(store.read_only_reason)
            if getattr(store, "recovery_message", None):
                notes.append(store.recovery_message)
            check = getattr(store, "last_check", None)
            if check is not None and check.message():
                notes.append("History check: " + check.message())
        self._show_banner(" ".join(notes))
        self._update_labels()

    def set_saver(self, saver: HistorySaver | None) -> None:
        """Show what `saver` writes as soon as it is written, and its failures with a Retry button."""
        if self.saver is not None:
            for signal, slot in self._saver_links():
                signal.disconnect(slot)
        self.saver = saver
        if saver is not None:
            for signal, slot in self._saver_links():
                signal.connect(slot)
        self._update_save_banner()

    def _saver_links(self) -> list[tuple[Any, Any]]:
        saver = self.saver
        assert saver is not None
        return [
            (saver.saved, self._on_saved),
            (saver.failed, self._on_save_failed),
            (saver.unsavedChanged, self._update_save_banner),
        ]

    # -- labels ------------------------------------------------------------------------------
    def _show_banner(self, text: str) -> None:
        self.banner.setText(text)
        self.banner.setVisible(bool(text))

    def _update_labels(self, *_: Any) -> None:
        total = self.model.total() if self.history is not None else 0
        self.count_label.setText(f"{total:,}" if self.history is not None else "")
        filtered = bool(self.model.search or self.model.kind or self.model.favourite)
        if self.history is None:  # not opened yet (it opens after the first paint), or it failed to open
            reason = getattr(self, "_unavailable_reason", "")
            self.empty_label.setText(
                f"The history is not open: {reason.rstrip('.')}. Results are not saved to it."
                if reason
                else "The history is not open: results are not saved to it."
            )
        else:
            self.empty_label.setText("Nothing matches." if filtered else "Results you make appear here.")
        self.empty_label.setVisible(self.history is None or self.model.rowCount() == 0)

    # -- what the saver writes ------------------------------------------------------------------
    @Slot(list)
    def _on_saved(self, entries: list) -> None:
        if self.history is not None:
            self.model.prepend(list(entries))
            self._update_labels()

    @Slot(str, str)
    def _on_save_failed(self, message: str, hint: str) -> None:
        self._last_save_error = f"{message} {hint}".strip()
        self._update_save_banner()

    def _update_save_banner(self, *_: Any) -> None:
        n = len(self.saver.unsaved()) if self.saver is not None else 0
        if n:
            what = "1 result is" if n == 1 else f"{n} results are"
            reason = getattr(self, "_last_save_error", "")
            self.save_label.setText(f"{what} not in the history yet (kept in memory). {reason}".strip())
            self.retry_button.setEnabled(self.saver is not None and self.saver.store() is not None)
            self.save_elsewhere_button.setEnabled(True)
        self.save_banner.setVisible(bool(n))

    def _retry(self) -> None:
        if self.saver is not None:
            self.saver.retry()

    def _ask_folder(self) -> str:
        """The folder to save unsaved results into ('' when cancelled); tests replace it."""
        from PySide6.QtWidgets import QFileDialog

        return QFileDialog.getExistingDirectory(self, "Save the unsaved results in")

    def save_elsewhere(self, folder: str | None = None) -> list[Any]:
        """Write the results the history could not take to a folder the user picks (PNGs with their metadata);
        they stay in memory for Retry. Returns the files written."""
        if self.saver is None or not self.saver.unsaved():
            return []
        folder = folder or self._ask_folder()
        if not folder:
            return []
        try:
            written = self.saver.save_unsaved_to(folder)
        except UserError as exc:
            self._report(exc)
            return []
        self._last_save_error = f"Saved {len(written)} image(s) to {folder}; Retry adds them to the history."
        self._update_save_banner()
        return written

    # -- filters -------------------------------------------------------------------------------
    def _apply_search(self) -> None:
        self._search_timer.stop()
        self.set_search(self.search_edit.text())

    def set_search(self, text: str | None) -> None:
        text = (text or "").strip() or None
        if self.search_edit.text().strip() != (text or ""):
            self.search_edit.blockSignals(True)
            self.search_edit.setText(text or "")
            self.search_edit.blockSignals(False)
        if text != self.model.search:
            self.model.search = text
            self.model.reset()

    def set_kind(self, kind: str | None) -> None:
        index = self.kind_combo.findData(kind)
        if index >= 0 and index != self.kind_combo.currentIndex():
            self.kind_combo.setCurrentIndex(index)  # comes back here through the signal
            return
        if kind != self.model.kind:
            self.model.kind = kind
            self.model.reset()

    def set_favourites_only(self, only: bool) -> None:
        if self.favourite_button.isChecked() != bool(only):
            self.favourite_button.setChecked(bool(only))
            return
        value = True if only else None
        if value != self.model.favourite:
            self.model.favourite = value
            self.model.reset()

    def refresh(self) -> None:
        self.model.reset()

    # -- selection -------------------------------------------------------------------------------
    def entries(self) -> list[Any]:
        return self.model.entries()

    def selected_entries(self) -> list[Any]:
        rows = sorted({i.row() for i in self.view.selectionModel().selectedIndexes()})
        return [e for e in (self.model.entry(r) for r in rows) if e is not None]

    def _on_selection(self, fn: Any) -> None:
        selected = self.selected_entries()
        if selected:
            fn(selected[0])

    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        entry = current.data(EntryRole) if current.isValid() else None
        if entry is not None:
            self.entrySelected.emit(entry)

    @Slot(str, object)
    def _on_store_event(self, event: str, data: Any) -> None:
        if event == "added":
            self.model.prepend(list(data))
        elif event == "deleted":
            self.model.remove(data)
        elif event == "changed":
            self.model.update(list(data))
        self._update_labels()

    # -- actions on entries ---------------------------------------------------------------------------
    def _load_image(self, entry: Any) -> Any:
        from desktop_app.core.images import load_image

        if not entry.image_path.is_file():
            raise HistoryError(
                f"The image of entry {entry.id} is missing ({entry.image_path}).",
                "Delete the entry, or restore the file.",
            )
        return load_image(entry.image_path)

    def _report(self, exc: UserError) -> None:
        self.errorRaised.emit(exc.message, exc.hint)

    def open_entry(self, entry: Any) -> Any:
        """Emit openRequested with a Result holding the entry's image; the saver knows it is already saved."""
        if entry is None:
            return None
        from desktop_app.core.events import Result

        try:
            image = self._load_image(entry)
            request = entry.to_request()
        except UserError as exc:
            self._report(exc)
            return None
        result = Result(
            request=request,
            images=[image],
            seeds=[entry.seed if entry.seed is not None else 0],
            model_id=entry.model_id,
            model_hash=entry.model_hash,
            elapsed=entry.elapsed or 0.0,
        )
        if self.saver is not None:
            self.saver.remember(result, [entry])  # shown again, never saved again
        self.openRequested.emit(result)
        return result

    def reuse_entry(self, entry: Any) -> Any:
        """Emit reuseRequested with the entry's request (its source image and mask included when stored)."""
        if entry is None:
            return None
        try:
            request = self.history.load_request(entry.id)
        except UserError:
            try:
                request = entry.to_request()  # the parameters, without the missing source
            except UserError as exc:
                self._report(exc)
                return None
        self.reuseRequested.emit(request)
        return request

    def use_as_source(self, entry: Any) -> Any:
        """Emit useAsSourceRequested with the entry's image and the entry (the parent of the next edit of it)."""
        if entry is None:
            return None
        try:
            image = self._load_image(entry)
        except UserError as exc:
            self._report(exc)
            return None
        choice = SourceFromHistory(image, entry)
        self.useAsSourceRequested.emit(choice)
        return choice

    def toggle_favourite(self, entries: Any) -> None:
        entries = [entries] if not isinstance(entries, (list, tuple)) else list(entries)
        if not entries or self.history is None:
            return
        try:
            entries = [self.history.get(e.id) for e in entries]  # the state now, not when the menu opened
            value = not all(e.favourite for e in entries)
            self.history.set_favourite([e.id for e in entries], value)
        except UserError as exc:
            self._report(exc)

    def reveal_entry(self, entry: Any) -> None:
        """Show the file in the system's file manager."""
        path = entry.image_path
        target = path if path.exists() else path.parent
        try:
            if sys.platform == "darwin" and path.exists():
                subprocess.Popen(["open", "-R", str(path)])  # noqa: S603,S607
            elif sys.platform == "win32" and path.exists():
                subprocess.Popen(["explorer", "/select,", str(path)])  # noqa: S603,S607
            else:
                self._open_url(QUrl.fromLocalFile(str(target if target.is_dir() else target.parent)))
        except OSError as exc:
            self.errorRaised.emit(f"Cannot show the file: {exc}", str(path))

    def _open_url(self, url: QUrl) -> bool:
        return QDesktopServices.openUrl(url)

    def copy_entry(self, entry: Any) -> None:
        """Put the image (and its file) on the clipboard."""
        if not entry.image_path.is_file():
            self._report(HistoryError(f"The image of entry {entry.id} is missing.", "Nothing to copy."))
            return
        data = QMimeData()
        data.setImageData(QImage(str(entry.image_path)))
        data.setUrls([QUrl.fromLocalFile(str(entry.image_path))])
        data.setText(entry.prompt)
        QGuiApplication.clipboard().setMimeData(data)

    def _confirm(self, text: str) -> bool:
        answer = QMessageBox.question(
            self, "Delete from history", text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
        )
        return answer == QMessageBox.StandardButton.Yes

    def delete_entries(self, entries: Any, confirm: bool = True) -> bool:
        entries = [entries] if not isinstance(entries, (list, tuple)) else list(entries)
        if not entries or self.history is None:
            return False
        n = len(entries)
        where = "to the trash" if self.to_trash else "permanently"
        if confirm and not self._confirm(
            f"Delete {n} entr{'y' if n == 1 else 'ies'} and {'its' if n == 1 else 'their'} image{'s' if n > 1 else ''} ({where})?"
        ):
            return False
        try:
            self.history.delete([e.id for e in entries], to_trash=self.to_trash)
        except UserError as exc:
            self._report(exc)
            self.refresh()
            return False
        return True

    def _context_menu(self, pos: Any) -> None:
        index = self.view.indexAt(pos)
        entry = index.data(EntryRole) if index.isValid() else None
        if entry is None:
            return
        selected = self.selected_entries()
        if entry not in selected:
            self.view.setCurrentIndex(index)
            selected = [entry]
        menu = self._build_menu(entry, selected)
        menu.exec(self.view.viewport().mapToGlobal(pos))

    def _build_menu(self, entry: Any, selected: list[Any]) -> QMenu:
        menu = QMenu(self)
        menu.setObjectName("historyMenu")
        menu.addAction("Open on canvas", lambda: self.open_entry(entry))
        menu.addAction("Reuse parameters", lambda: self.reuse_entry(entry))
        menu.addAction("Use as source (edit / inpaint)", lambda: self.use_as_source(entry))
        menu.addSeparator()
        star = "Remove from favourites" if all(e.favourite for e in selected) else "Add to favourites"
        menu.addAction(star, lambda: self.toggle_favourite(selected))
        menu.addAction("Show file", lambda: self.reveal_entry(entry))
        copy = menu.addAction("Copy image", lambda: self.copy_entry(entry))
        copy.setShortcut(QKeySequence(QKeySequence.StandardKey.Copy))
        menu.addSeparator()
        n = len(selected)
        delete = menu.addAction(f"Delete{f' {n} entries' if n > 1 else ''}…", lambda: self.delete_entries(selected))
        delete.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        if getattr(self.history, "read_only", False):  # browsed only: the reason is in the banner
            for action in menu.actions():
                if action.text() in (star, delete.text()):
                    action.setEnabled(False)
        return menu


__all__ = ["EntryRole", "HistoryModel", "HistoryPanel", "HistoryView", "SourceFromHistory", "ThumbnailDelegate"]
