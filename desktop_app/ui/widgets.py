"""Small helpers for building widgets."""

from __future__ import annotations

from typing import TypeVar

from PySide6.QtCore import QCoreApplication, QEvent, QObject, Qt
from PySide6.QtWidgets import QAbstractScrollArea, QAbstractSpinBox, QComboBox, QWidget

T = TypeVar("T", bound=QObject)


def named(obj: T, name: str) -> T:
    """`obj` with its objectName set: the name tests, style sheets and accessibility tools find it by.
    (PySide6 takes `objectName=` as a keyword too, but its type stubs do not know it.)"""
    obj.setObjectName(name)
    return obj


class WheelGuard(QObject):
    """Scrolling a panel with the mouse wheel must not change the spin box or list the pointer passes over (Qt's
    default: a user scrolling to the Edit group turned the mask blur from 4 px to 0 without noticing). An unfocused
    spin box or combo box hands the wheel to the scroll area around it; a focused one (clicked, or tabbed to) still
    takes it, as users expect."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() != QEvent.Type.Wheel or not isinstance(watched, QWidget) or watched.hasFocus():
            return False
        area = watched.parentWidget()
        while area is not None and not isinstance(area, QAbstractScrollArea):
            area = area.parentWidget()
        if area is not None:
            QCoreApplication.sendEvent(area.verticalScrollBar(), event)
        return True

    def guard(self, root: QWidget) -> None:
        """Guard every spin box and combo box under `root` (they take focus by click or Tab, not by the wheel)."""
        for widget in root.findChildren(QAbstractSpinBox) + root.findChildren(QComboBox):
            widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
            widget.installEventFilter(self)
