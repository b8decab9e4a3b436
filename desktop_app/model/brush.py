"""The mask brush and how the mask is drawn over the image: one object the canvas, the tool bar and the
settings share, so a change anywhere shows everywhere. The Region tools paint the document's active region
(regional prompts) instead of the inpaint mask, with the same size and hardness. The selection tools (rectangle,
lasso, flood fill) add to the mask or, with Alt or Ctrl held, subtract from it. A pen's pressure sets the stamp's
size or opacity (`pressure`); a mouse paints at full pressure."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtGui import QColor

DEFAULT_OVERLAY = "#ff3060"
TOOLS = ("brush", "eraser", "region", "region_eraser", "rectangle", "lasso", "fill")
REGION_TOOLS = ("region", "region_eraser")
SELECTION_TOOLS = ("rectangle", "lasso", "fill")
PRESSURE_MODES = ("size", "opacity", "off")  # what a pen's pressure sets
DEFAULT_TOLERANCE = 32  # flood fill: the most a channel may differ from the clicked pixel's (0..255)


def default_brush_size(image_size: tuple[int, int] | None) -> int:
    """About a tenth of the image's short side: 32 px is half of a 64 px picture."""
    if not image_size:
        return 32
    return max(2, min(128, round(min(image_size) / 10)))


class Brush(QObject):
    changed = Signal()  # size, hardness or tool
    overlayChanged = Signal()  # colour, opacity or visibility of the mask overlay

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.size = 32  # diameter in image pixels
        self.hardness = 1.0
        self.tool = "brush"
        self.overlay_color = QColor(DEFAULT_OVERLAY)
        self.overlay_opacity = 0.5
        self.overlay_visible = True
        self.pressure = "size"  # one of PRESSURE_MODES
        self.fill_tolerance = DEFAULT_TOLERANCE

    def set_size(self, size: int) -> None:
        size = int(max(1, min(1024, size)))
        if size != self.size:
            self.size = size
            self.changed.emit()

    def grow(self, factor: float) -> None:
        new = self.size * factor
        new = max(self.size + 1, new) if factor > 1 else min(self.size - 1, new)
        self.set_size(int(round(new)))

    def set_hardness(self, hardness: float) -> None:
        self.hardness = float(max(0.0, min(1.0, hardness)))
        self.changed.emit()

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(tool)
        self.tool = tool
        self.changed.emit()

    def set_pressure(self, mode: str) -> None:
        if mode not in PRESSURE_MODES:
            raise ValueError(f"Unknown pressure mode {mode!r}: one of {', '.join(PRESSURE_MODES)}")
        if mode != self.pressure:
            self.pressure = mode
            self.changed.emit()

    def set_fill_tolerance(self, tolerance: int) -> None:
        tolerance = int(max(0, min(255, tolerance)))
        if tolerance != self.fill_tolerance:
            self.fill_tolerance = tolerance
            self.changed.emit()

    def pressure_factors(self, pressure: float) -> tuple[float, float]:
        """(size, opacity) multipliers for a pen's `pressure` (0..1) under the pressure mode."""
        p = float(max(0.0, min(1.0, pressure)))
        if self.pressure == "size":
            return p, 1.0
        if self.pressure == "opacity":
            return 1.0, p
        return 1.0, 1.0

    @property
    def selects(self) -> bool:
        return self.tool in SELECTION_TOOLS

    @property
    def paints_regions(self) -> bool:
        return self.tool in REGION_TOOLS

    def set_overlay_color(self, color: QColor | str) -> None:
        color = QColor(color)
        if color.isValid():
            self.overlay_color = color
            self.overlayChanged.emit()

    def set_overlay_opacity(self, opacity: float) -> None:
        self.overlay_opacity = float(max(0.0, min(1.0, opacity)))
        self.overlayChanged.emit()

    def set_overlay_visible(self, visible: bool) -> None:
        self.overlay_visible = bool(visible)
        self.overlayChanged.emit()

    # -- settings --------------------------------------------------------------------
    def save(self, s: QSettings) -> None:
        s.setValue("brush/size", self.size)
        s.setValue("brush/hardness", self.hardness)
        s.setValue("mask/opacity", self.overlay_opacity)
        s.setValue("mask/color", self.overlay_color.name())
        s.setValue("brush/pressure", self.pressure)
        s.setValue("brush/fillTolerance", self.fill_tolerance)

    def restore(self, s: QSettings) -> None:
        """The last session's brush; a value that does not parse (a hand-edited file) falls back to the default."""
        self.set_size(_number(s.value("brush/size"), 32, int))
        self.set_hardness(_number(s.value("brush/hardness"), 1.0, float))
        self.set_overlay_opacity(_number(s.value("mask/opacity"), 0.5, float))
        color = QColor(str(s.value("mask/color", DEFAULT_OVERLAY)))
        self.set_overlay_color(color if color.isValid() else QColor(DEFAULT_OVERLAY))
        pressure = str(s.value("brush/pressure", "size"))
        self.set_pressure(pressure if pressure in PRESSURE_MODES else "size")
        self.set_fill_tolerance(_number(s.value("brush/fillTolerance"), DEFAULT_TOLERANCE, int))


def _number(value: object, default: float, cast: type) -> Any:
    try:
        return cast(value) if value is not None else default  # type: ignore[call-arg]
    except (TypeError, ValueError):
        return default
