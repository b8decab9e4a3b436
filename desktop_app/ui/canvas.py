"""MaskCanvas: shows an image, paints a mask onto it, zooms and pans.

The mask is a numpy uint8 array at the image's own size (0 = keep, 255 =
change), whatever the zoom. A stroke is a chain of capsules (the brush swept
along the straight segment between consecutive mouse positions), so strokes
are continuous however fast the mouse moves. Each stroke (and each clear or
invert) is one undo step, stored as the changed rectangle only.

A "view" image (a live preview, a trajectory frame, a result) can be shown in
place of the base image, scaled into the same rectangle; the mask stays
attached to the base image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QSizePolicy, QWidget

from desktop_app.ui.qt_images import LazyModule, numpy_to_qimage, pil_to_qimage, qimage_to_pil

np = LazyModule("numpy")  # imported when the first image arrives, not at start-up

MAX_UNDO = 64
MIN_SCALE, MAX_SCALE = 0.02, 64.0


@dataclass
class _Edit:
    """One undo step: a rectangle of the mask before and after."""

    y0: int
    y1: int
    x0: int
    x1: int
    before: np.ndarray
    after: np.ndarray


def _to_qimage(img) -> QImage:
    if isinstance(img, QImage):
        return img
    if isinstance(img, Image.Image):
        return pil_to_qimage(img)
    return numpy_to_qimage(img)


class MaskCanvas(QWidget):
    maskChanged = Signal()
    strokeStarted = Signal()
    imageDropped = Signal(str)  # a local file dropped on the canvas
    imageDataDropped = Signal(object)  # a QImage dropped on the canvas
    brushChanged = Signal()
    zoomChanged = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("maskCanvas")
        self.setAccessibleName("Image and mask canvas")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setAcceptDrops(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(200, 200)

        self._image: QImage | None = None
        self._pixmap: QPixmap | None = None
        self._view: QPixmap | None = None
        self._view_size: tuple[int, int] | None = None  # logical size of the view when there is no base image
        self._mask: np.ndarray | None = None
        self._overlay: np.ndarray | None = None
        self._overlay_img: QImage | None = None

        self.brush_size = 32  # diameter, image pixels
        self.hardness = 1.0
        self.tool = "brush"  # or "eraser"
        self.mask_opacity = 0.5
        self.mask_visible = True
        self.mask_enabled = True
        self.mask_color = QColor(255, 48, 96)

        self._scale = 1.0
        self._offset = QPointF(0, 0)
        self._fit = True

        self._undo: list[_Edit] = []
        self._redo: list[_Edit] = []

        self._stroking = False
        self._stroke_before: np.ndarray | None = None
        self._stroke_box: list[int] | None = None
        self._last: tuple[float, float] | None = None
        self._panning = False
        self._pan_last = QPointF()
        self._space = False
        self._cursor_pos: QPointF | None = None

    # -- image -----------------------------------------------------------------
    def set_image(self, img, keep_mask: bool = False) -> None:
        """Show `img` (PIL, QImage or numpy) as the base image; a new blank mask unless keep_mask and same size."""
        if img is None:
            self._image = self._pixmap = None
            self._mask = self._overlay = self._overlay_img = None
            self._view = None
            self._undo.clear()
            self._redo.clear()
            self.update()
            self.maskChanged.emit()
            return
        qimg = _to_qimage(img).convertToFormat(QImage.Format.Format_RGB32)
        same = self._mask is not None and self._mask.shape == (qimg.height(), qimg.width())
        self._image = qimg
        self._pixmap = QPixmap.fromImage(qimg)
        self._view = None
        self._view_size = None
        if not (keep_mask and same):
            self._mask = np.zeros((qimg.height(), qimg.width()), np.uint8)
            self._undo.clear()
            self._redo.clear()
            self._rebuild_overlay()
            self.maskChanged.emit()
        if self._fit or not same:
            self.zoom_fit()
        self.update()

    def has_image(self) -> bool:
        return self._image is not None

    def image(self) -> Image.Image | None:
        """The base image as PIL RGB."""
        return qimage_to_pil(self._image) if self._image is not None else None

    def image_size(self) -> tuple[int, int] | None:
        return (self._image.width(), self._image.height()) if self._image is not None else None

    def set_view(self, img, size: tuple[int, int] | None = None) -> None:
        """Show `img` instead of the base image, scaled into the base image's rectangle
        (or into a `size` rectangle when there is no base image)."""
        if img is None:
            self.clear_view()
            return
        qimg = _to_qimage(img)
        refit = self._image is None and self._content_size() != (size or (qimg.width(), qimg.height()))
        self._view = QPixmap.fromImage(qimg)
        self._view_size = size
        if refit and self._fit:
            self.zoom_fit()
        self.update()

    def clear_view(self) -> None:
        if self._view is not None:
            self._view = None
            self._view_size = None
            self.update()

    def has_view(self) -> bool:
        return self._view is not None

    def shown_image(self) -> Image.Image | None:
        """What the canvas shows now (view or base), at its own resolution, as PIL RGB."""
        if self._view is not None:
            return qimage_to_pil(self._view.toImage())
        return self.image()

    def _content_size(self) -> tuple[int, int] | None:
        if self._image is not None:
            return self._image.width(), self._image.height()
        if self._view is not None:
            return self._view_size or (self._view.width(), self._view.height())
        return None

    # -- mask ------------------------------------------------------------------
    def mask_array(self) -> np.ndarray | None:
        return None if self._mask is None else self._mask.copy()

    def mask_image(self) -> Image.Image | None:
        """The mask as PIL 'L' (255 = change), or None when there is no image or nothing is painted."""
        if self._mask is None or not self._mask.any():
            return None
        return Image.fromarray(self._mask, "L")

    def set_mask(self, mask, undoable: bool = True) -> None:
        """Replace the mask (PIL or numpy, resized to the image if needed)."""
        if self._image is None:
            return
        w, h = self._image.width(), self._image.height()
        if isinstance(mask, Image.Image):
            mask = mask.convert("L")
            if mask.size != (w, h):
                mask = mask.resize((w, h), Image.Resampling.NEAREST)
            arr = np.asarray(mask, np.uint8)
        else:
            arr = np.asarray(mask, np.uint8)
            if arr.shape != (h, w):
                arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.NEAREST))
        self._replace_mask(arr.copy(), undoable)

    def clear_mask(self) -> None:
        if self._mask is not None and self._mask.any():
            self._replace_mask(np.zeros_like(self._mask), True)

    def invert_mask(self) -> None:
        if self._mask is not None:
            self._replace_mask(255 - self._mask, True)

    def _replace_mask(self, new: np.ndarray, undoable: bool) -> None:
        assert self._mask is not None
        if undoable:
            self._push(_Edit(0, new.shape[0], 0, new.shape[1], self._mask.copy(), new.copy()))
        self._mask = new
        self._rebuild_overlay()
        self.update()
        self.maskChanged.emit()

    def _push(self, edit: _Edit) -> None:
        self._undo.append(edit)
        del self._undo[:-MAX_UNDO]
        self._redo.clear()

    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> bool:
        if not self._undo or self._mask is None:
            return False
        edit = self._undo.pop()
        self._mask[edit.y0 : edit.y1, edit.x0 : edit.x1] = edit.before
        self._redo.append(edit)
        self._touch(edit.y0, edit.y1, edit.x0, edit.x1)
        self.maskChanged.emit()
        return True

    def redo(self) -> bool:
        if not self._redo or self._mask is None:
            return False
        edit = self._redo.pop()
        self._mask[edit.y0 : edit.y1, edit.x0 : edit.x1] = edit.after
        self._undo.append(edit)
        self._touch(edit.y0, edit.y1, edit.x0, edit.x1)
        self.maskChanged.emit()
        return True

    # -- brush -------------------------------------------------------------------
    def set_tool(self, tool: str) -> None:
        if tool not in ("brush", "eraser"):
            raise ValueError(tool)
        self.tool = tool
        self.brushChanged.emit()
        self.update()

    def set_brush_size(self, size: int) -> None:
        self.brush_size = int(max(1, min(1024, size)))
        self.brushChanged.emit()
        self.update()

    def grow_brush(self, factor: float) -> None:
        new = self.brush_size * factor
        new = max(self.brush_size + 1, new) if factor > 1 else min(self.brush_size - 1, new)
        self.set_brush_size(int(round(new)))

    def set_hardness(self, hardness: float) -> None:
        self.hardness = float(max(0.0, min(1.0, hardness)))
        self.brushChanged.emit()

    def set_mask_opacity(self, opacity: float) -> None:
        self.mask_opacity = float(max(0.0, min(1.0, opacity)))
        self.update()

    def set_mask_visible(self, visible: bool) -> None:
        self.mask_visible = bool(visible)
        self.update()

    def _stamp_segment(self, p0: tuple[float, float], p1: tuple[float, float]) -> tuple[int, int, int, int] | None:
        """Sweep the brush from p0 to p1 (image coordinates) into the mask; returns the changed box."""
        if self._mask is None:
            return None
        h, w = self._mask.shape
        r = self.brush_size / 2.0
        x0 = max(0, int(math.floor(min(p0[0], p1[0]) - r - 1)))
        x1 = min(w, int(math.ceil(max(p0[0], p1[0]) + r + 1)))
        y0 = max(0, int(math.floor(min(p0[1], p1[1]) - r - 1)))
        y1 = min(h, int(math.ceil(max(p0[1], p1[1]) + r + 1)))
        if x0 >= x1 or y0 >= y1:
            return None
        dist = segment_distance(p0, p1, x0, x1, y0, y1)
        if self.hardness >= 1.0:
            value = np.where(dist <= r, 255, 0).astype(np.uint8)
        else:
            inner = r * self.hardness
            value = (np.clip((r - dist) / max(r - inner, 1e-6), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        region = self._mask[y0:y1, x0:x1]
        if self.tool == "eraser":
            np.minimum(region, 255 - value, out=region)
        else:
            np.maximum(region, value, out=region)
        self._touch(y0, y1, x0, x1)
        return y0, y1, x0, x1

    # -- overlay -----------------------------------------------------------------
    def _rebuild_overlay(self) -> None:
        if self._mask is None:
            self._overlay = self._overlay_img = None
            return
        h, w = self._mask.shape
        self._overlay = np.zeros((h, w, 4), np.uint8)
        self._overlay_img = QImage(self._overlay.data, w, h, 4 * w, QImage.Format.Format_RGBA8888_Premultiplied)
        self._update_overlay(0, h, 0, w)

    def _update_overlay(self, y0: int, y1: int, x0: int, x1: int) -> None:
        if self._overlay is None or self._mask is None:
            return
        a = self._mask[y0:y1, x0:x1].astype(np.uint16)
        c = self.mask_color
        out = self._overlay[y0:y1, x0:x1]
        out[..., 0] = (a * c.red() // 255).astype(np.uint8)
        out[..., 1] = (a * c.green() // 255).astype(np.uint8)
        out[..., 2] = (a * c.blue() // 255).astype(np.uint8)
        out[..., 3] = a.astype(np.uint8)

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
        size = self._content_size()
        self._fit = True
        if size is None:
            return
        margin = 8
        avail_w, avail_h = max(1, self.width() - 2 * margin), max(1, self.height() - 2 * margin)
        self._set_scale(min(avail_w / size[0], avail_h / size[1]))
        self._center(size)

    def zoom_actual(self) -> None:
        size = self._content_size()
        self._fit = False
        if size is None:
            return
        self._set_scale(1.0)
        self._center(size)

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
        # checkerboard-free dark frame around the image
        p.fillRect(rect.adjusted(-1, -1, 1, 1), QColor(12, 12, 14))
        shown = self._view if self._view is not None else self._pixmap
        if shown is not None:
            p.drawPixmap(rect, shown, QRectF(shown.rect()))
        if self.mask_visible and self.mask_enabled and self._overlay_img is not None and self._mask is not None:
            p.setOpacity(self.mask_opacity)
            p.drawImage(rect, self._overlay_img, QRectF(self._overlay_img.rect()))
            p.setOpacity(1.0)
        if self._cursor_pos is not None and self._image is not None and self.mask_enabled and not self._panning:
            radius = self.brush_size / 2.0 * self._scale
            p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            p.setPen(QPen(QColor(0, 0, 0, 160), 3))
            p.drawEllipse(self._cursor_pos, radius, radius)
            p.setPen(QPen(QColor(255, 255, 255, 220) if self.tool == "brush" else QColor(120, 200, 255, 220), 1.2))
            p.drawEllipse(self._cursor_pos, radius, radius)

    def mousePressEvent(self, event) -> None:  # noqa: N802
        pos = event.position()
        if event.button() == Qt.MouseButton.MiddleButton or (event.button() == Qt.MouseButton.LeftButton and self._space):
            self._panning = True
            self._pan_last = pos
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            event.accept()
            return
        if event.button() == Qt.MouseButton.LeftButton and self._mask is not None and self.mask_enabled:
            self._stroking = True
            self._stroke_before = self._mask.copy()
            self._stroke_box = None
            pt = self.widget_to_image(pos)
            self._last = pt
            self.strokeStarted.emit()
            self._grow_box(self._stamp_segment(pt, pt))
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
        if self._stroking and (event.buttons() & Qt.MouseButton.LeftButton) and self._last is not None:
            pt = self.widget_to_image(pos)
            self._grow_box(self._stamp_segment(self._last, pt))
            self._last = pt
        self._update_cursor_area(old_cursor, pos)

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        if self._panning and event.button() in (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton):
            self._panning = False
            self.setCursor(Qt.CursorShape.OpenHandCursor if self._space else Qt.CursorShape.ArrowCursor)
            return
        if self._stroking and event.button() == Qt.MouseButton.LeftButton:
            self._end_stroke()
            return
        super().mouseReleaseEvent(event)

    def _grow_box(self, box) -> None:
        if box is None:
            return
        if self._stroke_box is None:
            self._stroke_box = list(box)
        else:
            b = self._stroke_box
            self._stroke_box = [min(b[0], box[0]), max(b[1], box[1]), min(b[2], box[2]), max(b[3], box[3])]

    def _end_stroke(self) -> None:
        self._stroking = False
        before, box = self._stroke_before, self._stroke_box
        self._stroke_before = self._stroke_box = None
        self._last = None
        if before is None or box is None or self._mask is None:
            return
        y0, y1, x0, x1 = box
        old, new = before[y0:y1, x0:x1], self._mask[y0:y1, x0:x1]
        if not np.array_equal(old, new):
            self._push(_Edit(y0, y1, x0, x1, old.copy(), new.copy()))
            self.maskChanged.emit()

    def _update_cursor_area(self, old: QPointF | None, new: QPointF) -> None:
        r = self.brush_size / 2.0 * self._scale + 4
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


def segment_distance(p0, p1, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    """Distance from each pixel centre in [y0:y1, x0:x1] to the segment p0-p1 (image coordinates)."""
    ys = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    ax, ay = p0
    dx, dy = p1[0] - ax, p1[1] - ay
    length2 = dx * dx + dy * dy
    if length2 < 1e-12:
        return np.hypot(xs - ax, ys - ay)
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / length2, 0.0, 1.0)
    return np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
