"""MaskCanvas: draws a Document (its source, its mask, whatever it shows) and paints the mask with a Brush.

The canvas holds no picture state of its own: the source, the mask and its undo steps live in the
`Document`, the brush and the overlay's colour in the `Brush` (desktop_app.model). A stroke is a chain of
capsules (the brush swept along the straight segment between consecutive mouse positions), so strokes are
continuous however fast the mouse moves; each segment is stamped into the document's mask and only the
changed rectangle of the overlay is redrawn, which keeps large canvases smooth.

The Region tools paint the document's active region the same way; every region is drawn in its colour as a
second overlay, updated by the changed rectangle too. Without a source, regions are painted on a blank canvas of
the text-to-image size (the document's `blank_size`), shown once the first region exists.

The selection tools (rectangle, lasso, flood fill; `desktop_app.model.mask_ops`) add to the mask, or subtract with
Alt or Ctrl held, one undo step each. A tablet's pen paints through `tabletEvent` with its pressure setting the
stamp's size or opacity (the brush's `pressure`); the mouse paints as before.

Made without a document (tests, tools), it makes its own; its convenience methods (set_image, mask_image,
undo, ...) forward to the document and brush.

Outpainting: in Inpaint mode (`extend_enabled`) the canvas frame's edges drag outward to extend the canvas past
the source (the document's `extension`); the new area shows as a checkerboard, and a result made at the extended
size is drawn over all of it (`Document.shown_rect`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from PIL import Image
from PySide6.QtCore import QEvent, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QPixmap, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

from desktop_app.core.errors import UserError
from desktop_app.core.lazy import LazyModule
from desktop_app.core.requests import MAX_CANVAS
from desktop_app.model import mask_ops
from desktop_app.model.brush import REGION_TOOLS, Brush
from desktop_app.model.document import Document
from desktop_app.ui.qt_images import numpy_to_qimage, pil_to_qimage, qimage_to_pil

if TYPE_CHECKING:
    import numpy

np = LazyModule("numpy")  # imported when the first image arrives, not at start-up

MIN_SCALE, MAX_SCALE = 0.02, 64.0
BLANK_COLOR = QColor(64, 66, 72)  # the blank canvas regions are painted on for text to image
EDGE_GRAB = 8  # widget px either side of the canvas frame's edge that start an outpaint drag
REGION_OPACITY = 0.45  # of a region's colour where it is fully painted (times the overlay's opacity slider)


def _to_qimage(img) -> QImage:
    if isinstance(img, QImage):
        return img
    if isinstance(img, Image.Image):
        return pil_to_qimage(img)
    return numpy_to_qimage(img)


class MaskCanvas(QWidget):
    strokeStarted = Signal()
    imageDropped = Signal(str)  # a local file dropped on the canvas
    imageDataDropped = Signal(object)  # a QImage dropped on the canvas
    zoomChanged = Signal(float)

    def __init__(self, document: Document | None = None, brush: Brush | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("maskCanvas")
        self.setAccessibleName("Image and mask canvas")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setAcceptDrops(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 120)
        self.document = document if document is not None else Document(self)
        self.brush = brush if brush is not None else Brush(self)
        self.mask_enabled = True  # whether painting is possible (false while nothing is open)
        self.region_painting_enabled = True  # whether the Region tools paint (the window turns it off in Edit mode)

        self._pixmap: QPixmap | None = None  # the source
        self._shown: QPixmap | None = None  # the shown image when it is not the source
        self._shown_key: Any = None
        self._overlay: numpy.ndarray | None = None
        self._overlay_img: QImage | None = None
        self._regions: numpy.ndarray | None = None  # every region in its colour, premultiplied RGBA
        self._regions_img: QImage | None = None

        self._scale = 1.0
        self._offset = QPointF(0, 0)
        self._fit = True
        self._stroking = False
        self._last: tuple[float, float] | None = None
        self._panning = False
        self._pan_last = QPointF()
        self._space = False
        self._cursor_pos: QPointF | None = None
        self._last_content_size: tuple[int, int] | None = None
        self.extend_enabled = False  # whether the frame's edges drag (the window turns it on in Inpaint mode)
        self._edge_drag: tuple[str, QPointF, tuple[int, int, int, int]] | None = None  # side, press, extension
        self._edge_hover: str | None = None
        self._frame_before: QRectF | None = None  # the frame zoom-to-fit last covered
        self._pressure = 1.0  # the pen's at the last stamp (a mouse: 1)
        self._select_points: list[tuple[float, float]] = []  # image points of a rectangle or lasso being dragged
        self._select_mode = "add"

        d = self.document
        d.sourceChanged.connect(self._on_source_changed)
        d.maskChanged.connect(self._on_mask_changed)
        d.shownChanged.connect(self._on_shown_changed)
        d.boundsChanged.connect(self._on_bounds_changed)
        d.shownChanged.connect(self._on_shown_frame)
        d.regionPainted.connect(self._on_region_painted)
        d.regionsChanged.connect(self._on_regions_changed)
        self.brush.overlayChanged.connect(self._on_overlay_style)
        self.brush.changed.connect(self.update)
        if d.source is not None or d.regions:
            self._on_source_changed()

    # -- document signals ---------------------------------------------------------
    def _on_source_changed(self) -> None:
        source = self.document.source
        size_before = None if self._pixmap is None else (self._pixmap.width(), self._pixmap.height())
        self._pixmap = None if source is None else QPixmap.fromImage(pil_to_qimage(source))
        self._shown = None
        self._shown_key = None
        self._rebuild_overlay()
        self._rebuild_regions()
        if self._fit or (source is not None and source.size != size_before):
            self.zoom_fit()
        self.update()

    def _on_region_painted(self, box: Any) -> None:
        shape = (self.document.canvas_size[1], self.document.canvas_size[0])
        if box is None or self._regions is None or self._regions.shape[:2] != shape:
            self._rebuild_regions()
            self.update()
        else:
            self._touch_regions(*box)

    def _on_regions_changed(self) -> None:
        """The blank canvas appears with the first region (and its size may change): fit it when it does."""
        size = self._content_size()
        if size != self._last_content_size:
            self._last_content_size = size
            if self._fit or self.document.source is None:
                self.zoom_fit()
        self.update()

    def _on_mask_changed(self, box: Any) -> None:
        if (
            box is None
            or self._overlay is None
            or self._overlay.shape[:2] != getattr(self.document.mask, "shape", None)
        ):
            self._rebuild_overlay()
            self.update()
        else:
            self._touch(*box)

    def _on_shown_changed(self) -> None:
        d = self.document
        shown = d.shown_image()
        if shown is None or shown is d.source:
            self._shown = None
            self._shown_key = None
        elif shown is not self._shown_key:
            refit = d.source is None and self._content_size() != (d.view_size or _size_of(shown))
            self._shown = QPixmap.fromImage(_to_qimage(shown))
            self._shown_key = shown
            if refit and self._fit:
                self._shown_size_changed()
        self.update()

    def _shown_size_changed(self) -> None:
        self.zoom_fit()

    def _on_overlay_style(self) -> None:
        self._rebuild_overlay()
        self.update()

    # -- convenience API (forwarded to the document and the brush) -------------------------------
    def set_image(self, img, keep_mask: bool = False) -> None:
        """Make `img` (PIL, QImage or numpy) the document's source; a blank mask unless keep_mask and same size."""
        if img is None:
            self.document.set_source(None)
            return
        if not isinstance(img, Image.Image):
            img = qimage_to_pil(_to_qimage(img))
        self.document.set_source(img.convert("RGB"), keep_mask=keep_mask)

    def has_image(self) -> bool:
        return self.document.source is not None

    def image(self) -> Image.Image | None:
        return self.document.source

    def image_size(self) -> tuple[int, int] | None:
        return self.document.size

    def set_view(self, img, size: tuple[int, int] | None = None) -> None:
        if img is None:
            self.clear_view()
        else:
            self.document.show_view(img, size)

    def clear_view(self) -> None:
        self.document.show_source()

    def has_view(self) -> bool:
        return self.document.showing != "source"

    def shown_image(self) -> Image.Image | None:
        """What the canvas shows now, at its own resolution, as PIL RGB."""
        shown = self.document.shown_image()
        if shown is None or isinstance(shown, Image.Image):
            return shown
        return qimage_to_pil(_to_qimage(shown))

    def mask_array(self) -> numpy.ndarray | None:
        mask = self.document.mask
        return None if mask is None else mask.copy()

    def mask_image(self) -> Image.Image | None:
        return self.document.mask_image()

    def set_mask(self, mask, undoable: bool = True) -> None:
        self.document.set_mask(mask, undoable)

    def clear_mask(self) -> None:
        self.document.clear_mask()

    def invert_mask(self) -> None:
        self.document.invert_mask()

    def can_undo(self) -> bool:
        return self.document.can_undo()

    def can_redo(self) -> bool:
        return self.document.can_redo()

    def undo(self) -> bool:
        return self.document.undo()

    def redo(self) -> bool:
        return self.document.redo()

    @property
    def brush_size(self) -> int:
        return self.brush.size

    @property
    def hardness(self) -> float:
        return self.brush.hardness

    @property
    def tool(self) -> str:
        return self.brush.tool

    @property
    def mask_opacity(self) -> float:
        return self.brush.overlay_opacity

    def set_tool(self, tool: str) -> None:
        self.brush.set_tool(tool)

    def set_brush_size(self, size: int) -> None:
        self.brush.set_size(size)

    def grow_brush(self, factor: float) -> None:
        self.brush.grow(factor)

    def set_hardness(self, hardness: float) -> None:
        self.brush.set_hardness(hardness)

    def set_mask_opacity(self, opacity: float) -> None:
        self.brush.set_overlay_opacity(opacity)

    def set_mask_visible(self, visible: bool) -> None:
        self.brush.set_overlay_visible(visible)

    def _content_size(self) -> tuple[int, int] | None:
        d = self.document
        if d.source is not None:
            return d.source.size
        if self._shown is not None:
            return d.view_size or (self._shown.width(), self._shown.height())
        if d.regions:
            return d.canvas_size
        return None

    def _region_tool(self) -> bool:
        return self.brush.tool in REGION_TOOLS

    def _can_paint(self) -> bool:
        if not self.mask_enabled:
            return False
        if self._region_tool():
            return self.region_painting_enabled
        return self.document.mask is not None

    # -- painting ------------------------------------------------------------------
    def _stamp_segment(
        self, p0: tuple[float, float], p1: tuple[float, float], pressure0: float = 1.0, pressure1: float = 1.0
    ) -> tuple[int, int, int, int] | None:
        """Sweep the brush from p0 to p1 (image coordinates) into the mask (or the active region); returns the
        changed box. A pen's pressure at each end (0..1) scales the radius or the opacity along the segment."""
        mask = self.document.stroke_target(self._region_tool())
        if mask is None:
            return None
        h, w = mask.shape
        size0, alpha0 = self.brush.pressure_factors(pressure0)
        size1, alpha1 = self.brush.pressure_factors(pressure1)
        full = self.brush.size / 2.0
        r = full * max(size0, size1)
        x0 = max(0, int(math.floor(min(p0[0], p1[0]) - r - 1)))
        x1 = min(w, int(math.ceil(max(p0[0], p1[0]) + r + 1)))
        y0 = max(0, int(math.floor(min(p0[1], p1[1]) - r - 1)))
        y1 = min(h, int(math.ceil(max(p0[1], p1[1]) + r + 1)))
        if x0 >= x1 or y0 >= y1:
            return None
        if size0 == size1 == alpha0 == alpha1 == 1.0:  # the mouse: a capsule of one radius
            dist, radius, alpha = segment_distance(p0, p1, x0, x1, y0, y1), full, 1.0
        else:  # the radius and opacity follow the pressure along the segment (t: 0 at p0, 1 at p1)
            dist, t = segment_distance(p0, p1, x0, x1, y0, y1, with_t=True)
            radius = np.maximum(0.5, full * (size0 + (size1 - size0) * t))
            alpha = alpha0 + (alpha1 - alpha0) * t
        if self.brush.hardness >= 1.0:
            value = np.where(dist <= radius, 255.0 * alpha, 0.0)
        else:
            inner = radius * self.brush.hardness
            value = np.clip((radius - dist) / np.maximum(radius - inner, 1e-6), 0.0, 1.0) * (255.0 * alpha)
        value = (value + 0.5).astype(np.uint8)
        self.document.stamp((y0, y1, x0, x1), value, erase=self.brush.tool in ("eraser", "region_eraser"))
        return y0, y1, x0, x1

    # -- overlay -----------------------------------------------------------------
    def _rebuild_overlay(self) -> None:
        mask = self.document.mask
        if mask is None:
            self._overlay = self._overlay_img = None
            return
        h, w = mask.shape
        overlay = self._overlay = np.zeros((h, w, 4), np.uint8)
        self._overlay_img = QImage(overlay.data, w, h, 4 * w, QImage.Format.Format_RGBA8888_Premultiplied)
        self._update_overlay(0, h, 0, w)

    def _update_overlay(self, y0: int, y1: int, x0: int, x1: int) -> None:
        mask = self.document.mask
        if self._overlay is None or mask is None:
            return
        a = mask[y0:y1, x0:x1].astype(np.uint16)
        c = self.brush.overlay_color
        out = self._overlay[y0:y1, x0:x1]
        out[..., 0] = (a * c.red() // 255).astype(np.uint8)
        out[..., 1] = (a * c.green() // 255).astype(np.uint8)
        out[..., 2] = (a * c.blue() // 255).astype(np.uint8)
        out[..., 3] = a.astype(np.uint8)

    def _rebuild_regions(self) -> None:
        d = self.document
        if not d.regions:
            self._regions = self._regions_img = None
            return
        w, h = d.canvas_size
        overlay = self._regions = np.zeros((h, w, 4), np.uint8)
        self._regions_img = QImage(overlay.data, w, h, 4 * w, QImage.Format.Format_RGBA8888_Premultiplied)
        self._update_regions(0, h, 0, w)

    def _update_regions(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Composite every region over the box, in order, each in its colour (premultiplied "over")."""
        if self._regions is None:
            return
        out = np.zeros((y1 - y0, x1 - x0, 4), np.float32)
        for region in self.document.regions:
            if region.mask.shape != self._regions.shape[:2]:
                continue
            a = region.mask[y0:y1, x0:x1].astype(np.float32) * (REGION_OPACITY / 255.0)
            if not a.any():
                continue
            c = QColor(region.color)
            rgba = np.array([c.red(), c.green(), c.blue(), 255], np.float32)
            out *= (1.0 - a)[..., None]
            out += a[..., None] * rgba
        self._regions[y0:y1, x0:x1] = (out + 0.5).astype(np.uint8)

    def _touch_regions(self, y0: int, y1: int, x0: int, x1: int) -> None:
        self._update_regions(y0, y1, x0, x1)
        self._update_rect(y0, y1, x0, x1)

    def _update_rect(self, y0: int, y1: int, x0: int, x1: int) -> None:
        tl = self.image_to_widget(x0, y0)
        br = self.image_to_widget(x1, y1)
        self.update(QRectF(tl, br).toAlignedRect().adjusted(-2, -2, 2, 2))

    def _touch(self, y0: int, y1: int, x0: int, x1: int) -> None:
        self._update_overlay(y0, y1, x0, x1)
        tl = self.image_to_widget(x0, y0)
        br = self.image_to_widget(x1, y1)
        self.update(QRectF(tl, br).toAlignedRect().adjusted(-2, -2, 2, 2))

    # -- geometry ----------------------------------------------------------------
    @property
    def scale(self) -> float:
        return self._scale

    def widget_to_image(self, pos: QPointF) -> tuple[float, float]:
        return ((pos.x() - self._offset.x()) / self._scale, (pos.y() - self._offset.y()) / self._scale)

    def image_to_widget(self, x: float, y: float) -> QPointF:
        return QPointF(x * self._scale + self._offset.x(), y * self._scale + self._offset.y())

    def _target_rect(self) -> QRectF | None:
        size = self._content_size()
        if size is None:
            return None
        return QRectF(self._offset.x(), self._offset.y(), size[0] * self._scale, size[1] * self._scale)

    def zoom_fit(self) -> None:
        frame = self._frame()
        self._fit = True
        self._frame_before = frame
        if frame is None:
            return
        margin = 8
        avail_w, avail_h = max(1, self.width() - 2 * margin), max(1, self.height() - 2 * margin)
        self._set_scale(min(avail_w / frame.width(), avail_h / frame.height()))
        self._center_frame(frame)

    def zoom_actual(self) -> None:
        frame = self._frame()
        self._fit = False
        if frame is None:
            return
        self._set_scale(1.0)
        self._center_frame(frame)

    def set_zoom(self, scale: float, anchor: QPointF | None = None) -> None:
        """Zoom to `scale`, keeping the image point under `anchor` (widget coordinates) in place."""
        anchor = anchor if anchor is not None else QPointF(self.width() / 2, self.height() / 2)
        ix, iy = self.widget_to_image(anchor)
        self._fit = False
        self._set_scale(scale)
        self._offset = QPointF(anchor.x() - ix * self._scale, anchor.y() - iy * self._scale)
        self.update()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        self.set_zoom(self._scale * factor, anchor)

    def _set_scale(self, scale: float) -> None:
        self._scale = float(max(MIN_SCALE, min(MAX_SCALE, scale)))
        self.zoomChanged.emit(self._scale)
        self.update()

    def _center(self, size: tuple[int, int]) -> None:
        self._offset = QPointF((self.width() - size[0] * self._scale) / 2, (self.height() - size[1] * self._scale) / 2)
        self.update()

    def pan_by(self, dx: float, dy: float) -> None:
        self._fit = False
        self._offset += QPointF(dx, dy)
        self.update()

    # -- Qt events -----------------------------------------------------------------
    def resizeEvent(self, event) -> None:  # noqa: N802
        if self._fit:
            self.zoom_fit()
        super().resizeEvent(event)

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(30, 31, 34))
        rect = self._target_rect()
        if rect is None:
            p.setPen(QColor(150, 150, 158))
            p.drawText(
                self.rect(),
                Qt.AlignmentFlag.AlignCenter,
                "Open an image (Ctrl+O), drop one here or paste it (Ctrl+V)\nto paint a mask — or just Generate.",
            )
            return
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self._scale < 2.0)
        self._paint_extension(p, rect)
        # checkerboard-free dark frame around the image
        p.fillRect(rect.adjusted(-1, -1, 1, 1), QColor(12, 12, 14))
        shown = self._shown if self._shown is not None else self._pixmap
        shown_at = self._shown_target(rect) if self._shown is not None else rect  # an outpaint: the extended canvas
        if shown is not None:
            p.drawPixmap(shown_at, shown, QRectF(shown.rect()))
        else:  # the blank canvas of the text-to-image size, for regions
            p.fillRect(rect, BLANK_COLOR)
        brush = self.brush
        if brush.overlay_visible and self._regions_img is not None and self.document.regions_apply():
            p.setOpacity(min(1.0, 2.0 * brush.overlay_opacity))  # the mask's opacity slider: 50 % shows them fully
            p.drawImage(rect, self._regions_img, QRectF(self._regions_img.rect()))
            p.setOpacity(1.0)
        if (
            brush.overlay_visible
            and self.mask_enabled
            and self._overlay_img is not None
            and self.document.mask_applies()
        ):
            p.setOpacity(brush.overlay_opacity)
            # Qt's raster engine scales only what the update rectangle clips: a stamp repaints its box, not the
            # whole 2048x2048 overlay (bench/canvas.py measures it)
            p.drawImage(rect, self._overlay_img, QRectF(self._overlay_img.rect()))
            p.setOpacity(1.0)
        self._paint_selection(p)
        if self._cursor_pos is not None and self._can_paint() and not self._panning and not brush.selects:
            radius = brush.size / 2.0 * self._scale
            p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            p.setPen(QPen(QColor(0, 0, 0, 160), 3))
            p.drawEllipse(self._cursor_pos, radius, radius)
            active = self.document.active_region()
            if brush.tool == "brush":
                ring = QColor(255, 255, 255, 220)
            elif brush.tool == "region" and active is not None:
                ring = QColor(active.color)
            else:
                ring = QColor(120, 200, 255, 220)
            p.setPen(QPen(ring, 1.2 if brush.tool != "region" else 2.0))
            p.drawEllipse(self._cursor_pos, radius, radius)

    def mousePressEvent(self, event) -> None:  # noqa: N802
        pos = event.position()
        if event.button() == Qt.MouseButton.MiddleButton or (
            event.button() == Qt.MouseButton.LeftButton and self._space
        ):
            self._panning = True
            self._pan_last = pos
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            event.accept()
            return
        if event.button() == Qt.MouseButton.LeftButton and self._begin_edge_drag(pos):
            event.accept()
            return
        if event.button() == Qt.MouseButton.LeftButton and self.brush.selects:
            self._begin_selection(self.widget_to_image(pos), event.modifiers())
            event.accept()
            return
        if event.button() == Qt.MouseButton.LeftButton and self._can_paint():
            region = self._region_tool()
            # the Region brush on a canvas without regions makes the first one
            if (
                region
                and self.document.active_region() is None
                and (self.brush.tool == "region_eraser" or self.document.add_region() is None)
            ):
                return
            self._stroking = True
            self.document.show_source()  # painting happens on the source: show it, not a preview or result
            self.document.begin_stroke(region=region)
            pt = self.widget_to_image(pos)
            self._last = pt
            self.strokeStarted.emit()
            self._stamp_segment(pt, pt)
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        pos = event.position()
        old_cursor = self._cursor_pos
        self._cursor_pos = pos
        if self._panning:
            d = pos - self._pan_last
            self._pan_last = pos
            self.pan_by(d.x(), d.y())
            return
        if self._edge_move(pos):
            return
        if self._select_points and (event.buttons() & Qt.MouseButton.LeftButton):
            self._drag_selection(self.widget_to_image(pos))
            return
        if self._stroking and (event.buttons() & Qt.MouseButton.LeftButton) and self._last is not None:
            pt = self.widget_to_image(pos)
            self._stamp_segment(self._last, pt)
            self._last = pt
        self._update_cursor_area(old_cursor, pos)

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        if self._panning and event.button() in (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton):
            self._panning = False
            self.setCursor(Qt.CursorShape.OpenHandCursor if self._space else Qt.CursorShape.ArrowCursor)
            return
        if self._edge_drag is not None and event.button() == Qt.MouseButton.LeftButton:
            self._end_edge_drag()
            return
        if self._select_points and event.button() == Qt.MouseButton.LeftButton:
            self._finish_selection(self.widget_to_image(event.position()))
            return
        if self._stroking and event.button() == Qt.MouseButton.LeftButton:
            self._end_stroke()
            return
        super().mouseReleaseEvent(event)

    def _end_stroke(self) -> None:
        self._stroking = False
        self._last = None
        self._pressure = 1.0
        self.document.end_stroke()

    # -- selections: rectangle, lasso, flood fill ----------------------------------------------------
    def _begin_selection(self, pt: tuple[float, float], modifiers: Qt.KeyboardModifier) -> None:
        """A press with a selection tool: the fill masks at once, a rectangle or lasso follows the drag. Alt or
        Ctrl held subtracts from the mask."""
        d = self.document
        if not self.mask_enabled or d.mask is None or d.source is None:
            return
        subtract = bool(modifiers & (Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.ControlModifier))
        self._select_mode = "subtract" if subtract else "add"
        d.show_source()  # a selection is made on the source, as a stroke is
        self.strokeStarted.emit()
        if self.brush.tool == "fill":
            shape = mask_ops.flood(d.source, int(math.floor(pt[0])), int(math.floor(pt[1])), self.brush.fill_tolerance)
            self._apply_selection(shape)
            return
        self._select_points = [pt]

    def _drag_selection(self, pt: tuple[float, float]) -> None:
        before = self._selection_widget_rect()
        if self.brush.tool == "rectangle":
            self._select_points[1:] = [pt]
        else:
            self._select_points.append(pt)
        after = self._selection_widget_rect()
        for rect in (before, after):
            if rect is not None:
                self.update(rect.toAlignedRect().adjusted(-3, -3, 3, 3))

    def _finish_selection(self, pt: tuple[float, float]) -> None:
        points, self._select_points = self._select_points, []
        rect = self._selection_widget_rect(points + [pt])
        if rect is not None:
            self.update(rect.toAlignedRect().adjusted(-3, -3, 3, 3))
        d = self.document
        if d.mask is None or d.source is None:
            return
        try:
            if self.brush.tool == "rectangle":
                shape = mask_ops.rectangle(d.source.size, points[0], pt)
            else:
                if points[-1] != pt:
                    points.append(pt)
                shape = mask_ops.polygon(d.source.size, _distinct(points))
        except UserError as exc:
            d.notice.emit(f"{exc.message} {exc.hint}")
            return
        self._apply_selection(shape)

    def _apply_selection(self, shape: numpy.ndarray) -> None:
        d = self.document
        if d.mask is None:
            return
        if not shape.any():
            d.notice.emit("The selection covers no pixel of the image; the mask is unchanged.")
            return
        d.edit_mask(mask_ops.combine(d.mask, shape, self._select_mode))

    def _selection_widget_rect(self, points: list[tuple[float, float]] | None = None) -> QRectF | None:
        points = self._select_points if points is None else points
        if not points:
            return None
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        return QRectF(self.image_to_widget(min(xs), min(ys)), self.image_to_widget(max(xs), max(ys)))

    def _paint_selection(self, p: QPainter) -> None:
        """The rectangle or lasso being dragged: a dashed black-on-white outline that shows on any picture."""
        if not self._select_points:
            return
        pts = [self.image_to_widget(x, y) for x, y in self._select_points]
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        for color, style in ((QColor(255, 255, 255), Qt.PenStyle.SolidLine), (QColor(0, 0, 0), Qt.PenStyle.DashLine)):
            p.setPen(QPen(color, 1, style))
            p.setBrush(Qt.BrushStyle.NoBrush)
            if self.brush.tool == "rectangle":
                if len(pts) > 1:
                    p.drawRect(QRectF(pts[0], pts[1]).normalized())
            else:
                p.drawPolyline(QPolygonF(pts))

    # -- the pen: pressure ----------------------------------------------------------------------------
    def tabletEvent(self, event) -> None:  # noqa: N802
        """A pen paints as the mouse does, its pressure setting the stamp's size or opacity (the brush's
        `pressure`). Accepted, so Qt synthesizes no mouse event from it; the selection tools take the mouse's."""
        kind = event.type()
        pos = event.position()
        pressure = float(event.pressure())
        if self.brush.selects or self._panning or self._space:
            event.ignore()  # Qt turns it into mouse events: selections and panning need no pressure
            return
        if kind == QEvent.Type.TabletPress and event.button() == Qt.MouseButton.LeftButton and self._can_paint():
            region = self._region_tool()
            if (
                region
                and self.document.active_region() is None
                and (self.brush.tool == "region_eraser" or self.document.add_region() is None)
            ):
                event.accept()
                return
            self._stroking = True
            self.document.show_source()
            self.document.begin_stroke(region=region)
            pt = self.widget_to_image(pos)
            self._last, self._pressure = pt, pressure
            self.strokeStarted.emit()
            self._stamp_segment(pt, pt, pressure, pressure)
        elif kind == QEvent.Type.TabletMove:
            old_cursor, self._cursor_pos = self._cursor_pos, pos
            if self._stroking and self._last is not None:
                pt = self.widget_to_image(pos)
                self._stamp_segment(self._last, pt, self._pressure, pressure)
                self._last, self._pressure = pt, pressure
            self._update_cursor_area(old_cursor, pos)
        elif kind == QEvent.Type.TabletRelease and self._stroking:
            self._end_stroke()
        event.accept()

    # -- outpainting: the extended canvas and its frame's edges --------------------------------------
    def _on_bounds_changed(self) -> None:
        if self._fit and self._edge_drag is None:
            self.zoom_fit()
        self.update()

    def _on_shown_frame(self) -> None:
        """An outpaint's result covers more than the source: fit it when the view is fitted."""
        frame = self._frame()
        if self._fit and frame is not None and frame != self._frame_before:
            self.zoom_fit()

    def set_extend_enabled(self, enabled: bool) -> None:
        """Show the extension and let the frame's edges drag (Inpaint mode) or not; a fitted view refits."""
        if bool(enabled) != self.extend_enabled:
            self.extend_enabled = bool(enabled)
            if self._fit:
                self.zoom_fit()
            self.update()

    def _extension_shown(self) -> bool:
        return self.extend_enabled and self.document.source is not None and self.document.bounds is not None

    def _frame(self) -> QRectF | None:
        """What zoom-to-fit covers, in image pixels: the content, the extended canvas and what is shown."""
        d = self.document
        size = self._content_size()
        if size is None:
            return None
        frame = QRectF(0, 0, size[0], size[1])
        if d.source is not None:
            if self._extension_shown():
                frame = frame.united(QRectF(*d.bounds))  # type: ignore[misc]
            shown = d.shown_rect()
            if shown is not None:
                frame = frame.united(QRectF(*shown))
        return frame

    def _center_frame(self, frame: QRectF) -> None:
        s = self._scale
        self._offset = QPointF(
            (self.width() - frame.width() * s) / 2 - frame.left() * s,
            (self.height() - frame.height() * s) / 2 - frame.top() * s,
        )
        self.update()

    def _image_rect(self, x: float, y: float, w: float, h: float) -> QRectF:
        return QRectF(self.image_to_widget(x, y), self.image_to_widget(x + w, y + h))

    def _shown_target(self, rect: QRectF) -> QRectF:
        """Where the shown result or preview is drawn: the source's rectangle, or the extended canvas of the
        outpaint that made it."""
        d = self.document
        shown = d.shown_rect()
        if d.source is None or shown is None or tuple(shown) == (0, 0, *d.source.size):
            return rect
        return self._image_rect(*shown)

    def _paint_extension(self, p: QPainter, rect: QRectF) -> None:
        """The area the extension adds: a checkerboard inside a dashed frame (the status bar says the size)."""
        if not self._extension_shown() or not any(self.document.extension):
            return
        outer = self._image_rect(*self.document.bounds)  # type: ignore[misc]
        cell = 12
        p.save()
        p.setClipRect(outer)
        p.fillRect(outer, QColor(92, 92, 98))
        x0, y0 = int(outer.left()) - int(outer.left()) % (2 * cell), int(outer.top()) - int(outer.top()) % (2 * cell)
        light = QColor(128, 128, 134)
        for yy in range(y0, int(outer.bottom()) + cell, cell):
            for xx in range(x0 + ((yy - y0) // cell % 2) * cell, int(outer.right()) + cell, 2 * cell):
                p.fillRect(xx, yy, cell, cell, light)
        p.restore()
        p.setPen(QPen(QColor(120, 200, 255), 1, Qt.PenStyle.DashLine))
        p.drawRect(outer.adjusted(0, 0, -1, -1))

    def _edge_at(self, pos: QPointF) -> str | None:
        """The frame edge under `pos` (widget px): outside the source, within EDGE_GRAB of the canvas's edge."""
        if not self._extension_shown() or self.document.source is None:
            return None
        outer = self._image_rect(*self.document.bounds)  # type: ignore[misc]
        inner = self._image_rect(0, 0, *self.document.source.size)
        if inner.contains(pos):
            return None  # on the picture: the brush paints
        g = EDGE_GRAB
        x, y = pos.x(), pos.y()
        across = outer.top() - g <= y <= outer.bottom() + g
        along = outer.left() - g <= x <= outer.right() + g
        if across and abs(x - outer.right()) <= g:
            return "right"
        if across and abs(x - outer.left()) <= g:
            return "left"
        if along and abs(y - outer.bottom()) <= g:
            return "bottom"
        if along and abs(y - outer.top()) <= g:
            return "top"
        return None

    def _begin_edge_drag(self, pos: QPointF) -> bool:
        side = self._edge_at(pos)
        if side is None:
            return False
        self._edge_drag = (side, pos, self.document.extension)
        return True

    def _edge_move(self, pos: QPointF) -> bool:
        """Drag an edge (the extension follows, in whole image pixels), or show the resize cursor over one."""
        if self._edge_drag is None:
            side = self._edge_at(pos) if not self._stroking else None
            if side != self._edge_hover:
                self._edge_hover = side
                if side is None:
                    self.unsetCursor()
                else:
                    horizontal = side in ("left", "right")
                    self.setCursor(Qt.CursorShape.SizeHorCursor if horizontal else Qt.CursorShape.SizeVerCursor)
            return False
        side, start, extension = self._edge_drag
        sign = 1.0 if side in ("right", "bottom") else -1.0
        delta = (pos.x() - start.x()) if side in ("left", "right") else (pos.y() - start.y())
        index = ("left", "top", "right", "bottom").index(side)
        values = list(extension)
        values[index] = max(0, int(round(extension[index] + sign * delta / self._scale)))
        source = self.document.source
        assert source is not None
        across = source.width if side in ("left", "right") else source.height
        other = values[(index + 2) % 4]
        if across + values[index] + other > MAX_CANVAS:
            values[index] = max(0, MAX_CANVAS - across - other)
            self.document.notice.emit(
                f"The canvas can be at most {MAX_CANVAS} px on a side: the extension stops at {values[index]} px."
            )
        self.document.set_extension(*values)
        return True

    def _end_edge_drag(self) -> None:
        self._edge_drag = None
        if self._fit:
            self.zoom_fit()
        self.update()

    def _update_cursor_area(self, old: QPointF | None, new: QPointF) -> None:
        r = self.brush.size / 2.0 * self._scale + 4
        for c in (old, new):
            if c is not None:
                self.update(QRectF(c.x() - r, c.y() - r, 2 * r, 2 * r).toAlignedRect())

    def leaveEvent(self, event) -> None:  # noqa: N802
        old, self._cursor_pos = self._cursor_pos, None
        if old is not None:
            self._update_cursor_area(old, old)
        super().leaveEvent(event)

    def wheelEvent(self, event) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120.0
        if steps and self._content_size() is not None:
            self.zoom_by(1.25**steps, event.position())
        event.accept()

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.setCursor(Qt.CursorShape.OpenHandCursor)
            event.accept()
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self.setCursor(Qt.CursorShape.ArrowCursor)
            event.accept()
            return
        super().keyReleaseEvent(event)

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        md = event.mimeData()
        if md.hasImage() or (md.hasUrls() and any(u.isLocalFile() for u in md.urls())):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        md = event.mimeData()
        files = [u.toLocalFile() for u in md.urls() if u.isLocalFile()] if md.hasUrls() else []
        if files:
            self.imageDropped.emit(files[0])
        elif md.hasImage():
            self.imageDataDropped.emit(QImage(md.imageData()))
        event.acceptProposedAction()


def segment_distance(p0, p1, x0: int, x1: int, y0: int, y1: int, with_t: bool = False) -> Any:
    """Distance from each pixel centre in [y0:y1, x0:x1] to the segment p0-p1 (image coordinates), an array
    (y1 - y0, x1 - x0); `with_t`: also where along the segment (0..1) the nearest point lies, same shape."""
    ys = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    ax, ay = p0
    dx, dy = p1[0] - ax, p1[1] - ay
    length2 = dx * dx + dy * dy
    if length2 < 1e-12:
        dist = np.hypot(xs - ax, ys - ay)
        return (dist, np.zeros_like(dist)) if with_t else dist
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / length2, 0.0, 1.0)
    dist = np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
    return (dist, t) if with_t else dist


def _distinct(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A lasso's points without consecutive repeats (a mouse that stayed put sends the same position again)."""
    out: list[tuple[float, float]] = []
    for pt in points:
        if not out or pt != out[-1]:
            out.append(pt)
    return out


def _size_of(image: Any) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, (QImage, QPixmap)):
        return image.width(), image.height()
    return int(image.shape[1]), int(image.shape[0])
