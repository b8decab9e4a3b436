"""Pixel-space geometry of a job with a source image: the work size, the resize modes, masks and the paste-back.

All Pillow. The model runs at a work size near its native area; the source is mapped onto it by the
request's resize mode and the result is mapped back to the source's size, so the user gets an image of the
size they gave. Masks are feathered inward: a pixel the user did not paint is never changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageFilter

from desktop_app.core.requests import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL, RESIZE_MODES

MIN_SIDE, MAX_SIDE = 64, 2048
AREA_TOLERANCE = 2.0  # a source within 1/2x..2x of the model's native area is worked at its own size


def _round8(value: float) -> int:
    return max(MIN_SIDE, min(MAX_SIDE, int(round(value / 8)) * 8))


def native_work_size(source: tuple[int, int], native: tuple[int, int]) -> tuple[int, int]:
    """The model's native area with the source's aspect ratio, sides multiples of 8 and at least 64."""
    width, height = source
    aspect = width / height
    w, h = math.sqrt(native[0] * native[1] * aspect), math.sqrt(native[0] * native[1] / aspect)
    if min(w, h) < MIN_SIDE:  # keep the short side at the minimum and the aspect ratio (long side rounded down)
        scale = MIN_SIDE / min(w, h)
        w, h = w * scale, h * scale
        return (max(MIN_SIDE, min(MAX_SIDE, int(w) // 8 * 8)), max(MIN_SIDE, min(MAX_SIDE, int(h) // 8 * 8)))
    return _round8(w), _round8(h)


def plan_work_size(
    source: tuple[int, int], native: tuple[int, int], requested: tuple[int | None, int | None]
) -> tuple[tuple[int, int], bool]:
    """(work size, whether it was scaled to the model): the request's size when it gives one; else the
    source's own (rounded down to a multiple of 8) when its area is near the model's; else `native_work_size`."""
    if requested[0] and requested[1]:
        return (int(requested[0]), int(requested[1])), False
    area, native_area = source[0] * source[1], native[0] * native[1]
    if native_area / AREA_TOLERANCE <= area <= native_area * AREA_TOLERANCE:
        return (max(MIN_SIDE, source[0] - source[0] % 8), max(MIN_SIDE, source[1] - source[1] % 8)), False
    return native_work_size(source, native), True


@dataclass(frozen=True)
class Placement:
    """Where the source lands on the work canvas: scaled by (sx, sy) and its top-left corner at (x, y)."""

    mode: str
    source: tuple[int, int]
    work: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        (w, h), (W, H) = self.source, self.work
        if self.mode == JUST_RESIZE:
            return W / w, H / h
        ratio = max(W / w, H / h) if self.mode == CROP_AND_RESIZE else min(W / w, H / h)
        return ratio, ratio

    @property
    def scaled_size(self) -> tuple[int, int]:
        sx, sy = self.scale
        return max(1, round(self.source[0] * sx)), max(1, round(self.source[1] * sy))

    @property
    def offset(self) -> tuple[int, int]:
        (sw, sh), (W, H) = self.scaled_size, self.work
        return (W - sw) // 2, (H - sh) // 2  # negative when cropping (the overhang is cut), positive when filling


def to_work(image: Image.Image, placement: Placement, resample=Image.Resampling.LANCZOS) -> Image.Image:
    """The source mapped onto the work canvas by the placement's resize mode."""
    if placement.mode not in RESIZE_MODES:
        raise ValueError(placement.mode)
    if image.size == placement.work:
        return image
    if placement.mode == JUST_RESIZE:
        return image.resize(placement.work, resample)
    scaled = image.resize(placement.scaled_size, resample)
    if placement.mode == CROP_AND_RESIZE:
        x, y = placement.offset
        return scaled.crop((-x, -y, -x + placement.work[0], -y + placement.work[1]))
    assert placement.mode == RESIZE_AND_FILL
    canvas = image.resize(placement.work, resample)  # the bands show the image's edges, stretched
    canvas.paste(scaled, placement.offset)
    return canvas


def from_work(
    result: Image.Image, source: Image.Image, placement: Placement, resample=Image.Resampling.LANCZOS
) -> Image.Image:
    """A work-size result back at the source's size. Crop and resize leaves the cut-off parts of the source as
    they were; resize and fill drops the bands."""
    if result.size == source.size and placement.work == source.size:
        return result
    if placement.mode == JUST_RESIZE:
        return result.resize(source.size, resample)
    (sw, sh), (x, y) = placement.scaled_size, placement.offset
    if placement.mode == RESIZE_AND_FILL:
        return result.crop((x, y, x + sw, y + sh)).resize(source.size, resample)
    assert placement.mode == CROP_AND_RESIZE
    canvas = source.convert(result.mode).resize((sw, sh), resample)
    canvas.paste(result, (-x, -y))  # the crop box inside the scaled source
    out = canvas.resize(source.size, resample)
    # outside the crop box the model saw nothing: those pixels stay exactly the source's
    sx, sy = placement.scale
    box = (
        max(0, math.floor(-x / sx)),
        max(0, math.floor(-y / sy)),
        min(source.width, math.ceil((-x + placement.work[0]) / sx)),
        min(source.height, math.ceil((-y + placement.work[1]) / sy)),
    )
    keep = Image.new("L", source.size, 255)
    keep.paste(0, box)
    return Image.composite(source.convert(result.mode), out, keep)


def grow_mask(mask: Image.Image, pixels: int) -> Image.Image:
    """The painted mask grown outward by `pixels` (a square dilation), for a change that may spill over its edge."""
    mask = mask.convert("L")
    if pixels <= 0:
        return mask
    return mask.filter(ImageFilter.MaxFilter(2 * pixels + 1))


def feather_mask(mask: Image.Image, blur: int) -> Image.Image:
    """Feather a mask inwards only: pixels outside the painted mask stay exactly 0."""
    mask = mask.convert("L")
    if blur <= 0:
        return mask
    return ImageChops.darker(mask, mask.filter(ImageFilter.GaussianBlur(blur)))


def paste_back(result: Image.Image, source: Image.Image, mask: Image.Image) -> Image.Image:
    """The result where `mask` is 255, the source where it is 0 (bit-identical there), blended between."""
    return Image.composite(result.convert("RGB"), source.convert("RGB"), mask.convert("L"))
