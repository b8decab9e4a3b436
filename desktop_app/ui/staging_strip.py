"""The staging strip: the results of a run (a batch, or every run of a "repeat N") wait here, under the canvas.

Bound to the Document (its `staged` list and the shown one): a thumbnail per image, arrows (and the Left / Right
keys while the strip has focus) to cycle, Accept (the shown image becomes the source: one undo step brings the old
one back), Discard one or all (the Discard button's menu; the history keeps every image, so nothing made is lost), and a Before / after toggle
with a label that says in words what the canvas shows: "Result 2 of 4" or "Before (the source)".
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QKeyEvent, QPixmap
from PySide6.QtWidgets import (
    QButtonGroup,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QWidget,
)

from desktop_app.ui.qt_images import pil_to_qimage
from desktop_app.ui.widgets import named

THUMB = 40  # px, logical: a thumbnail's longer side


class StagingStrip(QFrame):
    accepted = Signal()  # a staged image became the source
    discarded = Signal(int)  # how many images left the strip (they stay in the history)

    def __init__(self, document: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("stagingStrip")
        self.setAccessibleName("Staged results")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.document = document
        self._keys: list[tuple[int, int]] = []  # (id(result), batch index) per thumbnail, to rebuild only on change
        self._icons: dict[tuple[int, int], QIcon] = {}

        row = QHBoxLayout(self)
        row.setContentsMargins(4, 2, 4, 2)
        row.setSpacing(4)
        self.prev_button = self._button("◀", "stagingPrevButton", "Previous result (Left)", document.previous_image)
        self.next_button = self._button("▶", "stagingNextButton", "Next result (Right)", document.next_image)
        for arrow in (self.prev_button, self.next_button):
            arrow.setAutoRaise(True)
        self._thumbs = QWidget()
        self._thumb_row = QHBoxLayout(self._thumbs)
        self._thumb_row.setContentsMargins(0, 0, 0, 0)
        self._thumb_row.setSpacing(2)
        self._thumb_row.addStretch(1)
        self._group = QButtonGroup(self)
        self._group.setExclusive(True)
        scroll = named(QScrollArea(), "stagingThumbs")
        scroll.setWidget(self._thumbs)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the arrows scroll it
        scroll.setFixedHeight(THUMB + 8)
        scroll.setMinimumWidth(THUMB + 8)
        self.thumb_area = scroll
        self.label = named(QLabel(), "stagingLabel")
        self.label.setMinimumWidth(self.label.fontMetrics().horizontalAdvance("Before (the source)") + 6)
        self.before_button = self._button(
            "Before",
            "beforeAfterButton",
            "Before / after: show the source, or the result again (Ctrl+Shift+B)",
            self._toggle,
        )
        self.before_button.setCheckable(True)
        self.accept_button = self._button(
            "Accept",
            "acceptResultButton",
            "Make the shown result the source (Ctrl+Z brings the old one back)",
            self.accept,
        )
        self.discard_button = self._button(
            "Discard",
            "discardResultButton",
            "Take the shown result out of the strip (the history keeps it)",
            self.discard,
        )
        # "Discard all" on the Discard button's menu (its arrow): the strip fits a 1366x768 screen at scale 1.5
        menu = QMenu(self.discard_button)
        self.discard_all_action = menu.addAction("Discard all")
        self.discard_all_action.setObjectName("discardAllAction")
        self.discard_all_action.setToolTip("Empty the strip (the history keeps every result)")
        self.discard_all_action.triggered.connect(lambda *_: self.discard_all())
        self.discard_button.setMenu(menu)
        self.discard_button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        row.addWidget(self.prev_button)
        row.addWidget(scroll, 1)
        row.addWidget(self.next_button)
        row.addWidget(self.label)
        row.addWidget(self.before_button)
        row.addWidget(self.accept_button)
        row.addWidget(self.discard_button)

        document.stagingChanged.connect(self._sync)
        document.shownChanged.connect(self._show_state)
        self._sync()

    def _button(self, text: str, name: str, tip: str, slot: Any) -> QToolButton:
        button = named(QToolButton(), name)
        button.setText(text)
        button.setToolTip(tip)
        button.setAccessibleName(tip.split(" (")[0].split(":")[0])
        button.clicked.connect(lambda *_: slot())
        return button

    def thumbnails(self) -> list[QToolButton]:
        """The thumbnail buttons, in the strip's order."""
        return [b for b in self._group.buttons() if isinstance(b, QToolButton)]

    # -- actions ------------------------------------------------------------------------------
    def accept(self) -> bool:
        if self.document.accept_staged():
            self.accepted.emit()
            return True
        return False

    def discard(self) -> None:
        if self.document.staged:
            self.document.discard_staged()
            self.discarded.emit(1)

    def discard_all(self) -> None:
        n = len(self.document.staged)
        if n:
            self.document.discard_all_staged()
            self.discarded.emit(n)

    def _toggle(self) -> None:
        self.document.toggle_before_after()

    # -- showing the document ------------------------------------------------------------------
    def _sync(self) -> None:
        staged = self.document.staged
        self.setVisible(bool(staged))
        keys = [(id(result), index) for result, index in staged]
        if keys != self._keys:
            self._rebuild(staged, keys)
        self._show_state()

    def _rebuild(self, staged: list[tuple[Any, int]], keys: list[tuple[int, int]]) -> None:
        for button in self._group.buttons():
            self._group.removeButton(button)
            button.deleteLater()
        self._icons = {k: v for k, v in self._icons.items() if k in keys}
        for k, ((result, index), key) in enumerate(zip(staged, keys)):
            button = named(QToolButton(), f"stagedThumb{k}")
            button.setCheckable(True)
            button.setAutoRaise(True)
            button.setIconSize(QSize(THUMB, THUMB))
            icon = self._icons.get(key)
            if icon is None:
                icon = self._icons[key] = _thumbnail(result.images[index])
            button.setIcon(icon)
            seed = result.seeds[index] if index < len(result.seeds) else None
            button.setToolTip(f"Result {k + 1}" + (f" · seed {seed}" if seed is not None else ""))
            button.setAccessibleName(f"Result {k + 1}")
            button.clicked.connect(lambda *_, i=k: self.document.show_image(i))
            self._group.addButton(button, k)
            self._thumb_row.insertWidget(k, button)
        self._keys = keys

    def _show_state(self) -> None:
        d = self.document
        n = len(d.staged)
        self.label.setText(d.staging_label())
        result_shown = d.showing == "result"
        for button in self._group.buttons():
            button.setChecked(result_shown and self._group.id(button) == d.staged_index)
        if not result_shown:  # an exclusive group keeps one checked: let none be, the source is shown
            self._group.setExclusive(False)
            for button in self._group.buttons():
                button.setChecked(False)
            self._group.setExclusive(True)
        self.before_button.setChecked(d.showing == "source" and n > 0)
        current = self._group.button(d.staged_index)
        if current is not None:
            self.thumb_area.ensureWidgetVisible(current, 2, 0)
        self.prev_button.setEnabled(n > 1)
        self.next_button.setEnabled(n > 1)
        for button in (self.accept_button, self.discard_button):
            button.setEnabled(n > 0)
        self.discard_all_action.setEnabled(n > 0)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        key = event.key()
        if key == Qt.Key.Key_Left:
            self.document.previous_image()
        elif key == Qt.Key.Key_Right:
            self.document.next_image()
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.accept()
        elif key in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace):
            self.discard()
        elif key == Qt.Key.Key_Space:
            self._toggle()
        else:
            super().keyPressEvent(event)
            return
        event.accept()


def _thumbnail(image: Image.Image) -> QIcon:
    """A small copy of `image` (scaled once, not by the button on every paint)."""
    small = image.convert("RGB").copy()
    small.thumbnail((THUMB * 2, THUMB * 2))  # twice the size: sharp at a scale factor of 2
    return QIcon(QPixmap.fromImage(pil_to_qimage(small)))
