"""PIL / numpy <-> QImage conversions (no torch). Every QImage returned owns its pixels."""

from __future__ import annotations

from typing import Any

from PIL import Image
from PySide6.QtGui import QImage

from desktop_app.core.lazy import LazyModule

np = LazyModule("numpy")

__all__ = ["LazyModule", "numpy_to_qimage", "pil_to_qimage", "qimage_to_pil"]


def numpy_to_qimage(arr: Any) -> QImage:
    """HxWx3 (RGB), HxWx4 (RGBA) or HxW (grey) uint8 array -> QImage (a deep copy)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        h, w = arr.shape
        fmt = QImage.Format.Format_Grayscale8
        bpl = w
    elif arr.shape[2] == 3:
        h, w, _ = arr.shape
        fmt = QImage.Format.Format_RGB888
        bpl = 3 * w
    elif arr.shape[2] == 4:
        h, w, _ = arr.shape
        fmt = QImage.Format.Format_RGBA8888
        bpl = 4 * w
    else:
        raise ValueError(f"cannot convert an array of shape {arr.shape} to a QImage")
    return QImage(arr.data, w, h, bpl, fmt).copy()


def pil_to_qimage(img: Image.Image) -> QImage:
    """Any PIL image -> QImage (RGB888, RGBA8888 or Grayscale8)."""
    if img.mode not in ("RGB", "RGBA", "L"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    return numpy_to_qimage(np.asarray(img))


def qimage_to_numpy(qimg: QImage, mode: str = "RGB") -> Any:
    """QImage -> HxWx3 (mode 'RGB'), HxWx4 ('RGBA') or HxW ('L') uint8 array (a copy)."""
    if mode == "L":
        q = qimg.convertToFormat(QImage.Format.Format_Grayscale8)
        channels = 1
    elif mode == "RGBA":
        q = qimg.convertToFormat(QImage.Format.Format_RGBA8888)
        channels = 4
    else:
        q = qimg.convertToFormat(QImage.Format.Format_RGB888)
        channels = 3
    w, h, bpl = q.width(), q.height(), q.bytesPerLine()
    buf = np.frombuffer(q.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    arr = buf[:, : w * channels].reshape(h, w, channels) if channels > 1 else buf[:, :w]
    return arr.copy()


def qimage_to_pil(qimg: QImage, mode: str = "RGB") -> Image.Image:
    return Image.fromarray(qimage_to_numpy(qimg, mode), mode)
