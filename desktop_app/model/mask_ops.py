"""Selections and mask operations as plain arrays: rectangle, lasso polygon, flood fill by colour, grow / shrink /
feather, mask from an image's alpha, loading and saving a mask PNG.

No Qt here, so each is tested without a window: the canvas and the Mask menu compute a new mask with these and
hand it to `Document.edit_mask`, which stores the change as one undo step. A mask is a uint8 array (h, w):
0 = keep, 255 = change, grey = partial (a soft mask: per-pixel strength when "Soft inpainting" is on).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from PIL import Image, ImageChops, ImageFilter

from desktop_app.core.errors import ImageError, InvalidRequest
from desktop_app.core.images import load_mask, save_png
from desktop_app.core.lazy import LazyModule

if TYPE_CHECKING:
    import numpy

np = LazyModule("numpy")
ndimage = LazyModule("scipy.ndimage")  # only when a selection is grown, shrunk or flood filled

MODES = ("add", "subtract", "replace")
MAX_RADIUS = 256  # grow / shrink / feather: past this the mask is all or nothing at any size we paint
ASPECT_TOLERANCE = 0.02  # a mask file whose width/height differs from the image's by more is refused, not scaled


class InvalidSelection(InvalidRequest):
    """A selection that cannot make a mask: a lasso of fewer than three points, an empty result, ..."""


def combine(mask: numpy.ndarray, shape: numpy.ndarray, mode: str = "add") -> numpy.ndarray:
    """The mask with `shape` (uint8, same size) added (max), subtracted (min with its inverse) or replacing it."""
    if mode not in MODES:
        raise ValueError(f"Unknown selection mode {mode!r}: one of {', '.join(MODES)}")
    if shape.shape != mask.shape:
        raise ValueError(f"selection {shape.shape} and mask {mask.shape} differ in size")
    if mode == "add":
        return np.maximum(mask, shape)
    if mode == "subtract":
        return np.minimum(mask, 255 - shape)
    return shape.astype(np.uint8, copy=True)


def rectangle(size: tuple[int, int], a: tuple[float, float], b: tuple[float, float]) -> numpy.ndarray:
    """A mask of `size` (w, h) with the rectangle between image points a and b (any two corners) at 255: the
    pixels whose centres lie inside it, clipped to the image. An empty array when it covers no pixel."""
    w, h = size
    x0, x1 = sorted((a[0], b[0]))
    y0, y1 = sorted((a[1], b[1]))
    # pixel i's centre is i + 0.5: inside when x0 <= i + 0.5 < x1
    c0, c1 = max(0, int(np.floor(x0 + 0.5))), min(w, int(np.floor(x1 + 0.5)))
    r0, r1 = max(0, int(np.floor(y0 + 0.5))), min(h, int(np.floor(y1 + 0.5)))
    out = np.zeros((h, w), np.uint8)
    if c1 > c0 and r1 > r0:
        out[r0:r1, c0:c1] = 255
    return out


def polygon(size: tuple[int, int], points: list[tuple[float, float]]) -> numpy.ndarray:
    """A mask of `size` (w, h) with the lasso polygon through `points` (image coordinates) filled at 255."""
    if len(points) < 3:
        raise InvalidSelection(
            f"A lasso needs at least three points, this one has {len(points)}.",
            "Drag around the area to mask; the mask is unchanged.",
        )
    w, h = size
    out = np.zeros((h, w), np.uint8)
    pts = np.asarray(points, np.float64)  # (n, 2): x, y
    ax, ay = pts[:, 0], pts[:, 1]
    bx, by = np.roll(ax, -1), np.roll(ay, -1)  # each edge runs from point i to point i + 1 (closing the loop)
    # scanlines through the pixel centres (even-odd rule): a pixel is inside when its centre is, as for the
    # rectangle and the brush
    r0, r1 = max(0, int(np.floor(pts[:, 1].min()))), min(h, int(np.ceil(pts[:, 1].max())) + 1)
    for row in range(r0, r1):
        yc = row + 0.5
        crosses = (ay <= yc) != (by <= yc)  # edges that straddle the scanline (horizontal ones never do)
        if not crosses.any():
            continue
        xa, ya, xb, yb = ax[crosses], ay[crosses], bx[crosses], by[crosses]
        xs = np.sort(xa + (yc - ya) * (xb - xa) / (yb - ya))
        for left, right in zip(xs[0::2], xs[1::2]):
            # pixel i is inside when left <= i + 0.5 < right
            c0, c1 = max(0, int(np.ceil(left - 0.5))), min(w, int(np.ceil(right - 0.5)))
            if c1 > c0:
                out[row, c0:c1] = 255
    return out


def flood(image: Image.Image, x: int, y: int, tolerance: int = 32) -> numpy.ndarray:
    """The pixels 4-connected to (x, y) whose colour is within `tolerance` (0..255, on every channel) of that
    pixel's, at 255: a mask of `image`'s size. (x, y) outside the image: an empty mask."""
    w, h = image.size
    out = np.zeros((h, w), np.uint8)
    if not (0 <= x < w and 0 <= y < h):
        return out
    image = image if image.mode == "RGB" else image.convert("RGB")
    seed = image.getpixel((x, y))
    assert isinstance(seed, tuple)
    tol = int(tolerance)
    # per-band lookup tables in Pillow (C, uint8): 255 where a channel is within the tolerance, then the darkest of
    # the three bands; four times faster than int16 differences over (h, w, 3) in numpy on 2048x2048
    lut = [255 if abs(i - c) <= tol else 0 for c in seed[:3] for i in range(256)]
    r, g, b = image.point(lut).split()
    close = np.asarray(ImageChops.darker(ImageChops.darker(r, g), b))  # (h, w) uint8
    labels, _count = ndimage.label(close)  # 4-connectivity: the default structuring element is a cross
    out[labels == labels[y, x]] = 255
    return out


def _check_radius(px: int, what: str) -> int:
    px = int(px)
    if not 0 <= px <= MAX_RADIUS:
        raise InvalidSelection(f"{what} by {px} px is out of range.", f"Choose 0 to {MAX_RADIUS} px.")
    return px


def _dilate(mask: numpy.ndarray, radius: int) -> numpy.ndarray:
    """Grey dilation by a disk of `radius` px (outside the image counts as 0): each row offset dy of the disk is
    a horizontal running max of half-width sqrt(r² - dy²), shifted by dy. O(r) passes of O(1)-per-pixel filters,
    where a 2D footprint would cost O(r²) per pixel."""
    h, w = mask.shape
    out = mask.copy()
    rows: dict[int, numpy.ndarray] = {}
    for dy in range(-radius, radius + 1):
        half = int(np.floor(np.sqrt(radius * radius - dy * dy)))
        row = rows.get(half)
        if row is None:
            row = rows[half] = ndimage.maximum_filter1d(mask, 2 * half + 1, axis=1, mode="constant", cval=0)
        # out[y] takes row[y + dy]
        if dy >= 0:
            np.maximum(out[: h - dy], row[dy:], out=out[: h - dy])
        else:
            np.maximum(out[-dy:], row[: h + dy], out=out[-dy:])
    return out


def grow(mask: numpy.ndarray, px: int) -> numpy.ndarray:
    """The mask grown by `px` pixels all round (a round brush of that radius run along its edge)."""
    px = _check_radius(px, "Growing the mask")
    return mask.copy() if px == 0 else _dilate(mask, px)


def shrink(mask: numpy.ndarray, px: int) -> numpy.ndarray:
    """The mask shrunk by `px` pixels from each edge inside the image (the image's border is not an edge)."""
    px = _check_radius(px, "Shrinking the mask")
    return mask.copy() if px == 0 else 255 - _dilate(255 - mask, px)


def feather(mask: numpy.ndarray, px: int) -> numpy.ndarray:
    """The mask's edges softened over about `px` pixels each side (a Gaussian of sigma px / 2): grey levels, which
    soft inpainting uses as per-pixel strength."""
    px = _check_radius(px, "Feathering the mask")
    if px == 0:
        return mask.copy()
    blurred = Image.fromarray(mask, "L").filter(ImageFilter.GaussianBlur(px / 2.0))
    return np.asarray(blurred, np.uint8).copy()


def from_alpha(image: Image.Image) -> numpy.ndarray:
    """A mask from an image's transparency: transparent = 255 (change), opaque = 0, partial = grey."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La"):
        raise ImageError(
            f"The image has no transparency (it is {image.mode}).",
            "Use a PNG with an alpha channel: its transparent pixels become the mask.",
        )
    alpha = np.asarray(image.getchannel("A"), np.uint8)
    if alpha.min() == 255:
        raise ImageError("The image has no transparent pixels.", "Erase the area to change in an image editor first.")
    return (255 - alpha).astype(np.uint8)


def fit_to(mask: Image.Image, size: tuple[int, int], what: str = "The mask") -> tuple[numpy.ndarray, str | None]:
    """`mask` ('L') at `size` (w, h): as it is, or scaled (with a notice naming both sizes) when its aspect ratio
    is the image's; refused (ImageError naming both sizes) when its shape differs."""
    w, h = size
    mw, mh = mask.size
    if (mw, mh) == (w, h):
        return np.asarray(mask, np.uint8).copy(), None
    ratio, target = mw / mh, w / h
    if abs(ratio - target) / target > ASPECT_TOLERANCE:
        raise ImageError(
            f"{what} is {mw}×{mh}, the image {w}×{h}: their shapes differ.",
            f"Use a mask of {w}×{h} (or of the same aspect ratio, which is scaled); the mask is unchanged.",
        )
    arr = np.asarray(mask, np.uint8)
    hard = bool(np.isin(arr, (0, 255)).all())  # a hard mask stays hard; a soft one is interpolated
    method = Image.Resampling.NEAREST if hard else Image.Resampling.BILINEAR
    scaled = np.asarray(mask.resize((w, h), method), np.uint8).copy()
    return scaled, f"{what} ({mw}×{mh}) was scaled to the image's {w}×{h}."


def load(path: str | os.PathLike, size: tuple[int, int]) -> tuple[numpy.ndarray, str | None]:
    """A mask PNG (white = change; an image with transparency uses its alpha) at the image's `size`, and a notice
    when it was scaled. ImageError for a file that is no image or of another shape."""
    return fit_to(load_mask(path), size)


def load_alpha(path: str | os.PathLike, size: tuple[int, int]) -> tuple[numpy.ndarray, str | None]:
    """The mask of an image file's transparency (transparent = change) at `size`, and a notice when scaled."""
    from desktop_app.core.images import _open_checked  # the checked opener: a broken file is an ImageError

    mask = from_alpha(_open_checked(path))
    return fit_to(Image.fromarray(mask, "L"), size, "The image's transparency")


def save(mask: numpy.ndarray, path: str | os.PathLike) -> None:
    """The mask as an 8-bit greyscale PNG (bit-exact: loading it gives the same array)."""
    try:
        save_png(Image.fromarray(np.ascontiguousarray(mask, np.uint8), "L"), path)
    except OSError as exc:
        raise ImageError(
            f"Could not save the mask to {path}: {exc.strerror or exc}.", "Choose another folder."
        ) from exc
