"""Outpainting: an inpaint request with `extend` becomes an inpaint of the extended canvas.

The original is pasted at (left, top) of a larger canvas; the new area is filled first (`outpaint_fill`: the
edge pixels stretched outward, that stretch strongly blurred, or noise with the edge's local mean and spread);
the model repaints the new area plus `outpaint_overlap` px into the original, and the paste-back mask ramps
down to 0 across that overlap band, so every original pixel outside the band stays bit-identical. A painted
mask of the original's size is moved by (left, top) and repainted too. The canvas is rounded up to a multiple
of 8 on the extended sides. With "only masked" the job runs on a crop around the new area + band (+ padding)
at the crop's own size, and the crop is pasted back into the canvas: a 2048-wide canvas does not run at 2048.

Pixel-space only (Pillow and numpy); `Engine._run` calls `plan_outpaint` first and `CanvasPlan.finish` last.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from desktop_app.core.imaging import grow_mask
from desktop_app.core.requests import OUTPAINT_FILLS, GenerateRequest, InpaintRequest

SIDES = ("left", "top", "right", "bottom")


def rounded_extend(size: tuple[int, int], extend: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """`extend` with each extended axis grown so the canvas side is a multiple of 8: the extra goes to the right
    (bottom) when that side is extended, else to the left (top). An axis not extended is left as it is."""
    left, top, right, bottom = extend
    width, height = size[0] + left + right, size[1] + top + bottom
    if width % 8 and (left or right):
        extra = 8 - width % 8
        right, left = (right + extra, left) if right else (right, left + extra)
    if height % 8 and (top or bottom):
        extra = 8 - height % 8
        bottom, top = (bottom + extra, top) if bottom else (bottom, top + extra)
    return left, top, right, bottom


def describe(extend: tuple[int, int, int, int], fill: str) -> str:
    """A1111-style text for the infotext: "left 64, top 32, edge"."""
    parts = [f"{side} {value}" for side, value in zip(SIDES, extend) if value]
    return ", ".join(parts + [fill])


def _blur_radius(extend: tuple[int, int, int, int]) -> float:
    return float(min(64, max(8, max(extend) // 2)))


def fill_canvas(image: Image.Image, extend: tuple[int, int, int, int], how: str, seed: int = 0) -> Image.Image:
    """The extended canvas: the original at (left, top), the new area filled by `how` (a key of OUTPAINT_FILLS).

    "edge": each edge pixel repeated outward (corners take the corner pixel); "blur": that stretch blurred with a
    radius of half the widest extension (8 to 64 px), so no streaks show; "noise": Gaussian noise around that
    blurred mean with the spread of the pixels near the edge (the mirrored border's mean absolute deviation)."""
    if how not in OUTPAINT_FILLS:
        raise ValueError(how)
    left, top, right, bottom = extend
    src = np.asarray(image.convert("RGB"))  # (h, w, 3) uint8
    pad = ((top, bottom), (left, right), (0, 0))
    stretched = np.pad(src, pad, mode="edge")  # (H, W, 3)
    if how == "edge":
        canvas = stretched
    else:
        radius = _blur_radius(extend)
        mean = np.asarray(Image.fromarray(stretched).filter(ImageFilter.GaussianBlur(radius)))
        if how == "blur":
            canvas = mean
        else:
            mirrored = np.pad(src, pad, mode="symmetric")  # the border's texture carried outward
            local = np.asarray(Image.fromarray(mirrored).filter(ImageFilter.GaussianBlur(radius))).astype(np.int16)
            deviation = np.abs(mirrored.astype(np.int16) - local).astype(np.uint8)
            spread = np.asarray(Image.fromarray(deviation).filter(ImageFilter.GaussianBlur(radius)), np.float32)
            rng = np.random.default_rng(seed)
            noise = rng.standard_normal(mean.shape, dtype=np.float32)
            canvas = np.clip(mean + noise * spread * 1.25, 0, 255).round().astype(np.uint8)  # MAD * 1.25 ~ sigma
    canvas = np.array(canvas, dtype=np.uint8)
    canvas[top : top + src.shape[0], left : left + src.shape[1]] = src  # the original, bit for bit
    return Image.fromarray(canvas, "RGB")


def outpaint_masks(
    size: tuple[int, int], extend: tuple[int, int, int, int], overlap: int
) -> tuple[Image.Image, Image.Image]:
    """(model mask, paste mask) on the canvas, mode "L". The model repaints the new area and the overlap band
    (255); the paste-back takes the result at 255 in the new area, ramping down across the band to 1 at its inner
    edge, and 0 (the original, bit for bit) beyond it."""
    left, top, right, bottom = extend
    w, h = size
    width, height = w + left + right, h + top + bottom
    ys, xs = np.mgrid[0:h, 0:w]
    distance = np.full((h, w), np.inf)  # to the nearest extended side of the original, in px
    for extended, d in ((left, xs), (top, ys), (right, w - 1 - xs), (bottom, h - 1 - ys)):
        if extended:
            distance = np.minimum(distance, d)
    overlap = max(0, int(overlap))
    band = distance < overlap
    ramp = np.zeros((h, w), np.uint8)
    if overlap:
        ramp[band] = np.ceil(255 * (overlap - distance[band]) / (overlap + 1)).astype(np.uint8)
    model = np.full((height, width), 255, np.uint8)
    model[top : top + h, left : left + w] = np.where(band, 255, 0)
    paste = np.full((height, width), 255, np.uint8)
    paste[top : top + h, left : left + w] = ramp
    return Image.fromarray(model, "L"), Image.fromarray(paste, "L")


def _moved(mask: Image.Image, size: tuple[int, int], offset: tuple[int, int]) -> Image.Image:
    canvas = Image.new("L", size, 0)
    canvas.paste(mask.convert("L"), offset)
    return canvas


def crop_box(mask: Image.Image, padding: int) -> tuple[int, int, int, int]:
    """The masked area's bounding box grown by `padding`, then to multiples of 8 where the canvas allows."""
    bbox = mask.getbbox()
    assert bbox is not None  # an outpaint always repaints its new area; an inpaint's mask is checked non-empty
    width, height = mask.size
    x0, y0 = max(0, bbox[0] - padding), max(0, bbox[1] - padding)
    x1, y1 = min(width, bbox[2] + padding), min(height, bbox[3] + padding)

    def to8(a: int, b: int, limit: int) -> tuple[int, int]:
        short = (-(b - a)) % 8
        b = min(limit, b + short)
        a = max(0, a - ((-(b - a)) % 8))
        return a, b

    x0, x1 = to8(x0, x1, width)
    y0, y1 = to8(y0, y1, height)
    return x0, y0, x1, y1


@dataclass
class CanvasPlan:
    """What an outpaint or a full-resolution "only masked" inpaint runs as (`request`: an inpaint of the canvas,
    or of its crop) and how it comes back."""

    original: InpaintRequest  # as asked: the Result's request, so it replays
    request: InpaintRequest  # as run: image = canvas (or its crop), mask = paste mask, extend (0, 0, 0, 0)
    model_mask: Image.Image  # what the model repaints (hard over new area + band), at the size of request.image
    canvas: Image.Image  # the whole filled canvas
    extend: tuple[int, int, int, int]  # after rounding
    box: tuple[int, int, int, int] | None = None  # the only-masked crop inside the canvas
    notices: list[str] = field(default_factory=list)
    info: dict[str, object] = field(default_factory=dict)

    def finish(self, images: list[Image.Image]) -> list[Image.Image]:
        """Results of the run at the extended canvas's size: a crop's results pasted into the canvas."""
        if self.box is None:
            return images
        out = []
        for image in images:
            canvas = self.canvas.copy()
            canvas.paste(image.convert("RGB").resize(self.request.image.size), self.box[:2])  # type: ignore[union-attr]
            out.append(canvas)
        return out

    def result_request(self, run: GenerateRequest) -> GenerateRequest:
        """The request as asked with what the run filled in (seed, steps, work size, ...): replaying it remakes
        the same picture."""
        filled = {name: getattr(run, name) for name in ("steps", "guidance", "seed", "scheduler", "schedule")}
        if self.box is None:
            filled.update(width=run.width, height=run.height)
        return self.original.with_defaults(**filled)


def plan_only_masked(request: InpaintRequest) -> CanvasPlan:
    """'Only masked' at full resolution: the masked area's box plus the padding, cut from the source at its own
    size, is what runs (at the model's work size); its results are pasted back into the source. Scaling the whole
    source to the work size first and cutting the box from that copy (diffusers' `padding_mask_crop` on the work
    image) would lose the detail of a large picture."""
    assert request.image is not None and request.mask is not None and request.only_masked
    image = request.image.convert("RGB")
    mask = grow_mask(request.mask, request.mask_grow)  # grown here: the crop holds all the model may repaint
    box = crop_box(mask, request.only_masked_padding)
    work: dict[str, object] = dict(
        image=image.crop(box),
        mask=mask.crop(box),
        mask_grow=0,
        only_masked=False,  # the crop is the only-masked area already, at its own size
        regions=tuple(dataclasses.replace(r, mask=r.mask.crop(box)) for r in request.regions),
    )
    if request.width or request.height:
        work.update(width=None, height=None)  # a work size asked for the picture, not for the crop
    return CanvasPlan(
        original=request,
        request=dataclasses.replace(request, **work),
        model_mask=mask.crop(box),
        canvas=image,
        extend=(0, 0, 0, 0),
        box=box,
    )


def plan_outpaint(request: InpaintRequest) -> CanvasPlan:
    """An outpaint request (validated, `request.outpaints`) as an inpaint of the extended canvas."""
    assert request.image is not None and request.outpaints
    image = request.image.convert("RGB")
    extend = rounded_extend(image.size, request.extend)
    left, top, right, bottom = extend
    size = (image.width + left + right, image.height + top + bottom)
    notices: list[str] = []
    if extend != tuple(request.extend):
        asked = (image.width + sum(request.extend[::2]), image.height + sum(request.extend[1::2]))
        notices.append(
            f"The extended canvas {asked[0]}x{asked[1]} is not a multiple of 8: rounded up to {size[0]}x{size[1]} "
            "(the extra pixels on the extended sides)."
        )
    seed = zlib.crc32(image.tobytes()) ^ zlib.crc32(repr(extend).encode())  # the same input fills the same way
    canvas = fill_canvas(image, extend, request.outpaint_fill, seed)
    overlap = min(request.outpaint_overlap, image.width, image.height)
    model_mask, paste_mask = outpaint_masks(image.size, extend, overlap)
    if request.mask is not None:  # a painted mask of the original is repainted too, grown as asked
        painted = _moved(grow_mask(request.mask, request.mask_grow), size, (left, top))
        model_mask = ImageChops.lighter(model_mask, painted)
        paste_mask = ImageChops.lighter(paste_mask, painted)
    regions = tuple(dataclasses.replace(r, mask=_moved(r.mask, size, (left, top))) for r in request.regions)
    work: dict[str, object] = dict(image=canvas, mask=paste_mask, mask_grow=0, extend=(0, 0, 0, 0), regions=regions)
    box = None
    if request.only_masked:
        box = crop_box(model_mask, request.only_masked_padding)
        work.update(
            image=canvas.crop(box),
            mask=paste_mask.crop(box),
            regions=tuple(dataclasses.replace(r, mask=r.mask.crop(box)) for r in regions),
            only_masked=False,  # the crop is the only-masked area already, at its own size
        )
        model_mask = model_mask.crop(box)
        if request.width or request.height:
            work.update(width=None, height=None)  # the work size was asked for the canvas, not the crop
    if request.strength >= 1 and request.outpaint_fill != "edge":
        notices.append(
            f"The outpaint fill ({OUTPAINT_FILLS[request.outpaint_fill]}) has no effect at strength 1: the new area "
            "starts from pure noise. Use a strength below 1 (0.7 to 0.9) for it to show."
        )
    info: dict[str, object] = {"Outpaint": describe(extend, request.outpaint_fill)}
    if request.outpaint_overlap:
        info["Outpaint overlap"] = request.outpaint_overlap
    return CanvasPlan(
        original=request,
        request=dataclasses.replace(request, **work),
        model_mask=model_mask,
        canvas=canvas,
        extend=extend,
        box=box,
        notices=notices,
        info=info,
    )
