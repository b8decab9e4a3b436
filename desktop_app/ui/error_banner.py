"""The error banner over the canvas: what went wrong and what to do, until the user dismisses it or its cause goes."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QWidget

from desktop_app.ui.widgets import named


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class ErrorBanner(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("errorBanner")
        self.setStyleSheet(
            "#errorBanner { background: #5a1f24; border: 1px solid #a8434c; border-radius: 4px; }"
            "#errorBanner QLabel { color: #ffe3e3; }"
        )
        self.label = named(QLabel(), "errorLabel")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = named(QToolButton(), "errorCloseButton")
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.clicked.connect(lambda: self.clear())
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 6, 6)
        row.addWidget(self.label, 1)
        row.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.cause: str | None = None
        self.hide()

    def show_error(self, message: str, hint: str = "", cause: str | None = None) -> None:
        """`cause` names what makes it go by itself: "source" (an image opens), "model" (a model loads),
        "job" (a job finishes); None: only the user dismisses it (or the next attempt)."""
        self.cause = cause
        self.label.setText(f"<b>{_html(message)}</b>" + (f"<br>{_html(hint)}" if hint else ""))
        self.show()

    def clear(self, cause: str | None = None) -> None:
        """Hide the banner; with `cause`, only when that is its cause (a job that worked clears any)."""
        if cause is not None and self.cause not in (cause, "job") and cause != "job":
            return
        self.hide()
        self.cause = None
