"""Small helpers for building widgets."""

from __future__ import annotations

from typing import TypeVar

from PySide6.QtCore import QObject

T = TypeVar("T", bound=QObject)


def named(obj: T, name: str) -> T:
    """`obj` with its objectName set: the name tests, style sheets and accessibility tools find it by.
    (PySide6 takes `objectName=` as a keyword too, but its type stubs do not know it.)"""
    obj.setObjectName(name)
    return obj
