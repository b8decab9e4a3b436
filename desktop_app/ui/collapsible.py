"""A section of the prompt panel that folds away: its title is a button with an arrow, its content shows below.

Folded sections keep the panel short on a small screen (1366x768 at scale 1.5): their title buttons share one
row (the prompt panel places `button` and `content`); a section runs `on_first_open` the first time it opens, so
nothing is scanned before the user asks.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QSizePolicy, QToolButton, QWidget

from desktop_app.ui.widgets import named


class Section(QObject):
    toggled = Signal(bool)

    def __init__(
        self,
        title: str,
        content: QWidget,
        name: str,
        expanded: bool = False,
        on_first_open: Callable[[], None] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName(name)
        self._title = title
        self._on_first_open = on_first_open
        self.button = named(QToolButton(), name + "Toggle")
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.button.setAutoRaise(True)
        self.button.setStyleSheet("QToolButton { font-weight: 600; text-align: left; border: none; }")
        self.content = content
        self.button.toggled.connect(self._set_open)
        self.set_title(title)
        self._set_open(False)
        if expanded:
            self.button.setChecked(True)

    def set_title(self, title: str) -> None:
        self._title = title
        self.button.setText(title)
        self.button.setAccessibleName(title)

    def is_open(self) -> bool:
        return self.button.isChecked()

    def set_open(self, shown: bool) -> None:
        self.button.setChecked(bool(shown))

    def _set_open(self, shown: bool) -> None:
        if shown and self._on_first_open is not None:
            first, self._on_first_open = self._on_first_open, None
            first()
        self.button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        self.content.setVisible(shown)
        self.toggled.emit(shown)
