"""A module imported on first use, so that numpy and friends stay out of the window's start-up."""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A module imported on first attribute access: numpy stays out of start-up (the window paints sooner)."""

    def __init__(self, name: str) -> None:
        self.__dict__["_name"] = name
        self.__dict__["_module"] = None

    def __getattr__(self, attr: str) -> Any:
        module = self.__dict__["_module"]
        if module is None:
            module = self.__dict__["_module"] = importlib.import_module(self.__dict__["_name"])
        return getattr(module, attr)
