"""The document the window edits: a source image, its mask, the canvas bounds and the results of the last run.

All of the canvas's state lives here, so the canvas widget only draws it and turns mouse input into
`stamp` calls, and jobs, the timeline and the history read one place. The mask is a numpy uint8 array
at the source's own size (0 = keep, 255 = change; grey = partial), whatever the zoom. Each stroke,
clear, invert, selection or replacement is one undo step, stored as the 64x64 tiles it changed only (a long
diagonal stroke on 2048x2048 keeps its path, not its bounding box).

Regions (regional prompts, `desktop_app.model.regions`) are painted the same way into their own masks at the
canvas size: the source's, or the text-to-image size (`set_blank_size`) on a blank canvas. Their strokes, their
adding and removing, and their clearing share the one undo stack with the mask, so Ctrl+Z undoes whichever
came last; a new picture of another size clears their paint as one undo step (nothing painted is lost silently).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image
from PySide6.QtCore import QObject, Signal

from desktop_app.core.events import Result
from desktop_app.core.lazy import LazyModule
from desktop_app.core.requests import REGION_MODES
from desktop_app.model.regions import MAX_REGIONS, Region, next_color, resized

WINDOW_REGION_MODE = "latent"

if TYPE_CHECKING:
    import numpy

np = LazyModule("numpy")  # imported when the first image arrives, not at start-up

MAX_UNDO = 64
TILE = 64  # undo steps keep the TILE x TILE tiles of a mask that changed
Box = tuple[int, int, int, int]  # y0, y1, x0, x1 in source pixels
DEFAULT_BLANK_SIZE = (512, 512)


@dataclass
class _Edit:
    """One undo step of the mask (or of a region's mask): the tiles it changed, each before and after."""

    tiles: list[tuple[int, int, numpy.ndarray, numpy.ndarray]]  # (y, x) of a tile's top-left, before, after
    region: Region | None = None

    @property
    def box(self) -> Box:
        """The rectangle that holds every changed tile."""
        ys = [y for y, _x, t, _a in self.tiles] + [y + t.shape[0] for y, _x, t, _a in self.tiles]
        xs = [x for _y, x, t, _a in self.tiles] + [x + t.shape[1] for _y, x, t, _a in self.tiles]
        return min(ys), max(ys), min(xs), max(xs)

    @property
    def nbytes(self) -> int:
        return sum(before.nbytes + after.nbytes for _y, _x, before, after in self.tiles)

    def apply(self, target: numpy.ndarray, side: str) -> None:
        for y, x, before, after in self.tiles:
            tile = before if side == "before" else after
            target[y : y + tile.shape[0], x : x + tile.shape[1]] = tile


def _tile_range(box: Box) -> tuple[range, range]:
    """The tile rows and columns (top-left y, x) a box touches."""
    y0, y1, x0, x1 = box
    return range(y0 // TILE * TILE, y1, TILE), range(x0 // TILE * TILE, x1, TILE)


def _changed_tiles(before: numpy.ndarray, after: numpy.ndarray, box: Box | None = None) -> list:
    """The tiles of `box` (all of the mask when None) where `before` and `after` (same shape) differ, as
    `_Edit.tiles`."""
    h, w = after.shape
    rows, cols = _tile_range(box if box is not None else (0, h, 0, w))
    tiles = []
    for y in rows:
        for x in cols:
            old, new = before[y : y + TILE, x : x + TILE], after[y : y + TILE, x : x + TILE]
            if not np.array_equal(old, new):
                tiles.append((y, x, old.copy(), new.copy()))
    return tiles


@dataclass
class _MasksEdit:
    """Whole region masks replaced (cleared, or scaled to a new canvas size): each region's arrays."""

    items: list[tuple[Region, numpy.ndarray, numpy.ndarray]]
    sizes: tuple[tuple[int, int], tuple[int, int]] | None = None  # a resize: the blank canvas size before, after


@dataclass
class _ListEdit:
    """Regions added or removed: the list and the active region before and after."""

    before: list[Region]
    after: list[Region]
    active_before: int
    active_after: int


@dataclass
class _Staged:
    """What accepting a staged result changes, on either side of that undo step: the source and its mask, the
    regions' paint (padded or scaled to a new size), the strip and what the canvas showed."""

    source: Image.Image | None
    mask: numpy.ndarray | None
    made_by: tuple[Result, int] | None
    entry_id: int | None
    staged: list[tuple[Result, int]]
    pos: int
    result: Result | None
    index: int
    from_source: bool
    showing: str
    regions: list[tuple[Region, numpy.ndarray]]


@dataclass
class _SourceEdit:
    """A staged result accepted as the source: one undo step that brings the old source, mask and strip back."""

    before: _Staged
    after: _Staged


_Step = _Edit | _MasksEdit | _ListEdit | _SourceEdit


class Document(QObject):
    sourceChanged = Signal()  # a new source image (or none); the mask may be new too
    maskChanged = Signal(object)  # the changed Box, or None for the whole mask
    undoChanged = Signal()
    boundsChanged = Signal()
    resultChanged = Signal()  # a new run's results (or none)
    shownChanged = Signal()  # which image is shown: source, a result of the batch, or a transient view
    regionsChanged = Signal()  # regions added, removed or reordered; the active one; a prompt, weight or colour
    regionPainted = Signal(object)  # the changed Box of a region's mask, or None for every region's whole mask
    blankSizeChanged = Signal(int, int)  # the text-to-image size, when an undo step puts it back
    notice = Signal(str)  # something the user should know about their regions (cleared by a new picture, ...)
    stagingChanged = Signal()  # the staged results (the strip), or which of them is shown

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._source: Image.Image | None = None
        self._made_by: tuple[Result, int] | None = None
        self._entry_id: int | None = None
        self._mask: numpy.ndarray | None = None
        self._bounds: tuple[int, int, int, int] | None = None
        self._undo: list[_Step] = []
        self._redo: list[_Step] = []
        self._regions: list[Region] = []
        self._active = -1
        # how the regions' prompts apply (a key of REGION_MODES). The window starts in latent mode: with the built-in
        # model it gets both regions right on 30 of 30 held-out seeds, attention mode on 0 (bench/regional_prompts.py)
        self._region_mode = WINDOW_REGION_MODE
        self._blank_size: tuple[int, int] = DEFAULT_BLANK_SIZE
        self._stroke_region: Region | None = None
        self._stroke_array: numpy.ndarray | None = None  # what the stroke paints (the mask or a region's)
        self._stroke_tiles: dict[tuple[int, int], numpy.ndarray] = {}  # tiles before the stroke first touched them
        self._result: Result | None = None
        self._result_from_source = False
        self._index = 0
        self._showing = "source"  # "source" | "result" | "view"
        self._view: Any = None  # a preview or timeline frame (PIL, QImage or uint8 RGB array)
        self._view_size: tuple[int, int] | None = None
        self._view_rect: Box | None = None  # where the view lies (x, y, w, h in source px) when not the source's
        self._staged: list[tuple[Result, int]] = []  # the staging strip: (result, batch index) per image
        self._pos = 0  # which staged image is shown (or would be, when the source is shown)

    # -- the source ------------------------------------------------------------
    @property
    def source(self) -> Image.Image | None:
        return self._source

    def set_source(
        self,
        image: Image.Image | None,
        made_by: tuple[Result, int] | None = None,
        keep_mask: bool = True,
        entry_id: int | None = None,
    ) -> None:
        """Make `image` (RGB) the source. The mask is kept when the size is the same (unless not `keep_mask`),
        else a blank one. `made_by`: the result (and batch index) of this session that it is; `entry_id`: the
        history entry it came from; either makes the next result's history row a child of it."""
        same = (
            keep_mask
            and image is not None
            and self._mask is not None
            and self._mask.shape == (image.height, image.width)
        )
        size_before = self.canvas_size
        self._source = image
        self._made_by = made_by
        self._entry_id = entry_id
        if image is None:
            self._mask = None
            self._bounds = None
        else:
            self._bounds = (0, 0, image.width, image.height)
            if not same:
                self._mask = np.zeros((image.height, image.width), np.uint8)
        if not same:
            self._undo.clear()
            self._redo.clear()
        regions_cleared = self._fit_regions(size_before)
        if not same or regions_cleared:
            self.undoChanged.emit()
        self._showing = "source"
        self._view = None
        self.sourceChanged.emit()
        self.boundsChanged.emit()
        if not same:
            self.maskChanged.emit(None)
        if size_before != self.canvas_size and self._regions:
            self.regionPainted.emit(None)
            self.regionsChanged.emit()
        self.shownChanged.emit()
        if regions_cleared:
            self.notice.emit(
                f"The regions' paint was cleared: the new picture is {self.canvas_size[0]}×{self.canvas_size[1]}, "
                f"the regions were painted on {size_before[0]}×{size_before[1]}. Undo (Ctrl+Z) brings it back, "
                "scaled to this picture."
            )

    def _fit_regions(self, size_before: tuple[int, int]) -> bool:
        """The regions on a canvas of a new size: their prompts stay, their paint (which lay on another picture)
        is cleared as one undo step. Returns whether any paint was cleared."""
        size = self.canvas_size
        if size == size_before or not self._regions:
            return False
        w, h = size
        painted = [r for r in self._regions if r.has_paint()]
        items = [(r, r.mask, np.zeros((h, w), np.uint8)) for r in painted]
        for region in self._regions:
            region.mask = np.zeros((h, w), np.uint8)
        if items:
            self._push(_MasksEdit(items), emit=False)
        return bool(items)

    @property
    def size(self) -> tuple[int, int] | None:
        return self._source.size if self._source is not None else None

    @property
    def canvas_size(self) -> tuple[int, int]:
        """The size of the picture regions are painted on: the source's, else the text-to-image size."""
        return self._source.size if self._source is not None else self._blank_size

    @property
    def blank_size(self) -> tuple[int, int]:
        return self._blank_size

    def set_blank_size(self, width: int, height: int) -> None:
        """The text-to-image size (the blank canvas regions are painted on without a source). Regions already
        painted there are scaled to it (from what was painted, however often the size changes: one undo step)."""
        size = (max(1, int(width)), max(1, int(height)))
        if size == self._blank_size:
            return
        old, self._blank_size = self._blank_size, size
        if self._source is not None or not self._regions:
            return
        top = self._undo[-1] if self._undo else None
        if isinstance(top, _MasksEdit) and top.sizes is not None and not self._redo:
            items = [(r, before, resized(before, size)) for r, before, _after in top.items]
            top.items, top.sizes = items, (top.sizes[0], size)
        else:
            items = [(r, r.mask, resized(r.mask, size)) for r in self._regions]
            self._push(_MasksEdit(items, sizes=(old, size)))
        for region, _before, after in items:
            region.mask = after
        self.regionPainted.emit(None)
        self.regionsChanged.emit()

    @property
    def made_by(self) -> tuple[Result, int] | None:
        return self._made_by

    @property
    def source_entry_id(self) -> int | None:
        return self._entry_id

    def edit_source(self) -> Result | Any | None:
        """What made the source, when it is a result of this session: an edit then replays its recorded
        trajectory instead of inverting (exact). The Result for its first image, else a seeded request."""
        if self._made_by is None:
            return None
        result, index = self._made_by
        if index == 0:
            return result
        return result.request.replace(seed=result.seeds[index], batch=1)

    # -- canvas bounds (outpainting extends them past the source) -------------------
    @property
    def bounds(self) -> tuple[int, int, int, int] | None:
        """(x, y, width, height) of the canvas in source pixels; the source's own rectangle unless extended."""
        return self._bounds

    def set_bounds(self, x: int, y: int, width: int, height: int) -> None:
        if self._source is None:
            return
        self._bounds = (int(x), int(y), max(1, int(width)), max(1, int(height)))
        self.boundsChanged.emit()

    @property
    def extension(self) -> tuple[int, int, int, int]:
        """Pixels added (left, top, right, bottom) around the source by outpainting: the request's `extend`."""
        if self._source is None or self._bounds is None:
            return (0, 0, 0, 0)
        x, y, w, h = self._bounds
        sw, sh = self._source.size
        return (max(0, -x), max(0, -y), max(0, x + w - sw), max(0, y + h - sh))

    def set_extension(self, left: int, top: int, right: int, bottom: int) -> None:
        """Extend the canvas past the source (outpainting); negative values count as 0. Not an undo step: the
        source and its mask are untouched until a result is accepted."""
        if self._source is None:
            return
        left, top, right, bottom = (max(0, int(v)) for v in (left, top, right, bottom))
        sw, sh = self._source.size
        bounds = (-left, -top, sw + left + right, sh + top + bottom)
        if bounds != self._bounds:
            self._bounds = bounds
            self.boundsChanged.emit()

    def extended_size(self) -> tuple[int, int] | None:
        """The canvas size with the extension (what an outpaint makes, before the engine rounds it to 8)."""
        if self._bounds is None:
            return None
        return self._bounds[2], self._bounds[3]

    # -- the mask ----------------------------------------------------------------
    @property
    def mask(self) -> numpy.ndarray | None:
        """The live mask array (painted in place by `stamp`); copy it to keep it."""
        return self._mask

    def mask_image(self) -> Image.Image | None:
        """The mask as PIL 'L' (255 = change), or None when there is no source or nothing is painted."""
        if self._mask is None or not self._mask.any():
            return None
        return Image.fromarray(self._mask.copy(), "L")

    def has_mask(self) -> bool:
        return self._mask is not None and bool(self._mask.any())

    def set_mask(self, mask: Image.Image | numpy.ndarray, undoable: bool = True) -> None:
        """Replace the mask (PIL or numpy; resized to the source when its size differs)."""
        if self._source is None:
            return
        w, h = self._source.size
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

    def _replace_mask(self, new: numpy.ndarray, undoable: bool) -> None:
        assert self._mask is not None
        if undoable:
            tiles = _changed_tiles(self._mask, new)
            if tiles:
                self._push(_Edit(tiles))
        self._mask = new
        self.maskChanged.emit(None)

    def edit_mask(self, new: numpy.ndarray) -> bool:
        """Replace the mask by `new` (uint8, the source's size): a selection, grow, shrink, feather, a loaded
        mask. One undo step of the tiles that changed; returns whether anything changed."""
        if self._mask is None:
            return False
        new = np.ascontiguousarray(new, np.uint8)
        if new.shape != self._mask.shape:
            raise ValueError(f"mask {new.shape} for a source of {self._mask.shape}")
        tiles = _changed_tiles(self._mask, new)
        if not tiles:
            return False
        edit = _Edit(tiles)
        edit.apply(self._mask, "after")  # in place: the canvas's overlay follows the changed box only
        self._push(edit)
        self.maskChanged.emit(edit.box)
        return True

    def undo_nbytes(self) -> int:
        """Bytes the undo and redo history of the masks holds (the stroke and selection steps)."""
        return sum(e.nbytes for e in self._undo + self._redo if isinstance(e, _Edit))

    # strokes: the canvas computes the brush's footprint, the document keeps the pixels and the undo step
    def begin_stroke(self, region: bool = False) -> None:
        """Start a stroke into the mask, or (`region`) into the active region's mask."""
        target = self.active_region() if region else None
        self._stroke_region = target
        self._stroke_array = target.mask if target is not None else (None if region else self._mask)
        self._stroke_tiles = {}

    def stroke_target(self, region: bool = False) -> numpy.ndarray | None:
        """The array a stroke paints: the mask, or the active region's mask."""
        if region:
            active = self.active_region()
            return None if active is None else active.mask
        return self._mask

    def stamp(self, box: Box, value: numpy.ndarray, erase: bool = False) -> None:
        """Paint `value` (uint8, the box's shape) into the stroke's mask: max for the brush, min of the inverse to
        erase."""
        target = self._stroke_region.mask if self._stroke_region is not None else self._mask
        if target is None:
            return
        y0, y1, x0, x1 = box
        if target is self._stroke_array:  # keep each tile as it was before the stroke first touched it
            rows, cols = _tile_range(box)
            for ty in rows:
                for tx in cols:
                    if (ty, tx) not in self._stroke_tiles:
                        self._stroke_tiles[ty, tx] = target[ty : ty + TILE, tx : tx + TILE].copy()
        area = target[y0:y1, x0:x1]
        if erase:
            np.minimum(area, 255 - value, out=area)
        else:
            np.maximum(area, value, out=area)
        if self._stroke_region is not None:
            self.regionPainted.emit(box)
        else:
            self.maskChanged.emit(box)

    def end_stroke(self) -> None:
        array, saved, region = self._stroke_array, self._stroke_tiles, self._stroke_region
        self._stroke_array, self._stroke_tiles, self._stroke_region = None, {}, None
        target = region.mask if region is not None else self._mask
        if array is None or target is not array or not saved:  # nothing painted, or the mask was replaced meanwhile
            return
        tiles = []
        for (y, x), old in sorted(saved.items()):
            new = array[y : y + TILE, x : x + TILE]
            if not np.array_equal(old, new):
                tiles.append((y, x, old, new.copy()))
        if tiles:
            self._push(_Edit(tiles, region))

    def _push(self, edit: _Step, emit: bool = True) -> None:
        self._undo.append(edit)
        del self._undo[:-MAX_UNDO]
        self._redo.clear()
        if emit:
            self.undoChanged.emit()

    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> bool:
        return self._step(self._undo, self._redo, "before")

    def redo(self) -> bool:
        return self._step(self._redo, self._undo, "after")

    def _step(self, take: list[_Step], give: list[_Step], side: str) -> bool:
        if not take:
            return False
        edit = take[-1]
        if isinstance(edit, _Edit):
            target = edit.region.mask if edit.region is not None else self._mask
            if target is None:
                return False
            take.pop()
            edit.apply(target, side)
            box = edit.box
            self.regionPainted.emit(box) if edit.region is not None else self.maskChanged.emit(box)
        elif isinstance(edit, _SourceEdit):
            take.pop()
            self._restore(edit.before if side == "before" else edit.after)
        elif isinstance(edit, _MasksEdit):
            take.pop()
            if edit.sizes is not None and self._source is None:  # a resize: the size goes back with the paint
                self._blank_size = edit.sizes[0] if side == "before" else edit.sizes[1]
                self.blankSizeChanged.emit(*self._blank_size)
            w, h = self.canvas_size
            for region, before, after in edit.items:
                mask = before if side == "before" else after
                # paint from a picture of another size comes back scaled to this one
                region.mask = mask.copy() if mask.shape == (h, w) else resized(mask, (w, h))
            self.regionPainted.emit(None)
            self.regionsChanged.emit()
        else:
            take.pop()
            regions = edit.before if side == "before" else edit.after
            w, h = self.canvas_size
            for region in regions:
                if region.mask.shape != (h, w):
                    region.mask = resized(region.mask, (w, h))
            self._regions = list(regions)
            self._active = edit.active_before if side == "before" else edit.active_after
            self.regionPainted.emit(None)
            self.regionsChanged.emit()
        give.append(edit)
        self.undoChanged.emit()
        return True

    # -- regions -------------------------------------------------------------------
    @property
    def regions(self) -> list[Region]:
        """The regions, in order (a copy of the list; the regions themselves are live)."""
        return list(self._regions)

    @property
    def active_index(self) -> int:
        """The index of the region the Region tool paints (-1: none)."""
        return self._active

    def active_region(self) -> Region | None:
        return self._regions[self._active] if 0 <= self._active < len(self._regions) else None

    @property
    def region_mode(self) -> str:
        """How the regions' prompts apply (core.requests.REGION_MODES): "attention" (in cross-attention, one UNet
        run) or "latent" (a UNet run per region on its crop, blended). A setting of the job, not an undo step."""
        return self._region_mode

    def set_region_mode(self, mode: str) -> None:
        if mode not in REGION_MODES:
            raise ValueError(f"Unknown region mode {mode!r}: one of {', '.join(REGION_MODES)}")
        if mode != self._region_mode:
            self._region_mode = mode
            self.regionsChanged.emit()

    def set_active_region(self, index: int) -> None:
        index = int(index) if 0 <= int(index) < len(self._regions) else -1
        if index != self._active:
            self._active = index
            self.regionsChanged.emit()

    def add_region(self, prompt: str = "", weight: float = 1.0) -> Region | None:
        """A new empty region at the canvas size, made active (one undo step); None past MAX_REGIONS."""
        if len(self._regions) >= MAX_REGIONS:
            self.notice.emit(f"At most {MAX_REGIONS} regions: remove one first.")
            return None
        w, h = self.canvas_size
        region = Region(np.zeros((h, w), np.uint8), prompt, float(weight), next_color(self._regions))
        before, active_before = list(self._regions), self._active
        self._regions.append(region)
        self._active = len(self._regions) - 1
        self._push(_ListEdit(before, list(self._regions), active_before, self._active))
        self.regionPainted.emit(None)
        self.regionsChanged.emit()
        return region

    def remove_region(self, index: int) -> None:
        """Remove a region (one undo step: its paint and prompt come back with Ctrl+Z)."""
        if not 0 <= index < len(self._regions):
            return
        before, active_before = list(self._regions), self._active
        del self._regions[index]
        if self._active == index:  # its neighbour becomes active
            self._active = min(index, len(self._regions) - 1)
        elif self._active > index:
            self._active -= 1
        self._push(_ListEdit(before, list(self._regions), active_before, self._active))
        self.regionPainted.emit(None)
        self.regionsChanged.emit()

    def clear_region(self, index: int) -> None:
        """Clear a region's paint (one undo step); its prompt stays."""
        if not 0 <= index < len(self._regions) or not self._regions[index].has_paint():
            return
        region = self._regions[index]
        empty = np.zeros_like(region.mask)
        self._push(_MasksEdit([(region, region.mask, empty)]))
        region.mask = empty
        self.regionPainted.emit(None)
        self.regionsChanged.emit()

    def set_region_prompt(self, index: int, prompt: str) -> None:
        if 0 <= index < len(self._regions) and self._regions[index].prompt != prompt:
            self._regions[index].prompt = prompt
            self.regionsChanged.emit()

    def set_region_weight(self, index: int, weight: float) -> None:
        if 0 <= index < len(self._regions) and self._regions[index].weight != float(weight):
            self._regions[index].weight = float(weight)
            self.regionsChanged.emit()

    def set_region_color(self, index: int, color: str) -> None:
        if 0 <= index < len(self._regions) and self._regions[index].color != color:
            self._regions[index].color = color
            self.regionPainted.emit(None)
            self.regionsChanged.emit()

    def regions_apply(self) -> bool:
        """Whether the regions belong to what is shown: the source or the blank canvas, or a picture made from
        the source at its size (as `mask_applies`)."""
        if not self._regions:
            return False
        if self._source is None:  # the blank canvas, not a picture made from text
            return self._showing == "source"
        if self._showing == "source":
            return True
        if not self._result_from_source:
            return False
        shown = self.shown_image()
        return not isinstance(shown, Image.Image) or shown.size == self._source.size

    # -- results -------------------------------------------------------------------
    @property
    def result(self) -> Result | None:
        return self._result

    @property
    def index(self) -> int:
        """Which image of the last run's batch is shown (or would be, when the source is shown)."""
        return self._index

    def set_result(self, result: Result | None, from_source: bool = False, gather: bool = False) -> None:
        """The results of a run, staged in the strip and the first one shown; `from_source`: made from the current
        source (inpaint, img2img, edit), so the mask still belongs to what is shown. `gather`: a later run of the
        same "repeat N": its images join the strip instead of replacing it."""
        items = [(result, i) for i in range(len(result.images))] if result is not None else []
        if gather and self._staged and bool(from_source) == self._result_from_source:
            self._pos = len(self._staged)
            self._staged = self._staged + items
        else:
            self._staged, self._pos = items, 0
        self._result = result
        self._result_from_source = bool(from_source and result is not None)
        self._index = 0
        self._view = None
        self._view_rect = None
        self._showing = "result" if result is not None and result.images else "source"
        self.resultChanged.emit()
        self.stagingChanged.emit()
        self.shownChanged.emit()

    def result_image(self) -> Image.Image | None:
        if self._result is None or not self._result.images:
            return None
        return self._result.images[min(self._index, len(self._result.images) - 1)]

    def shown_seed(self) -> int | None:
        if self._result is None or not self._result.seeds:
            return None
        return self._result.seeds[min(self._index, len(self._result.seeds) - 1)]

    def show_image(self, index: int) -> None:
        """Show staged image `index` (wraps around): of the batch, or of every run of a "repeat N"."""
        if not self._staged:
            return
        self._pos = index % len(self._staged)
        result, self._index = self._staged[self._pos]
        changed, self._result = result is not self._result, result
        self._showing = "result"
        self._view = None
        if changed:  # another run's image: its own trajectory on the timestep slider
            self.resultChanged.emit()
        self.stagingChanged.emit()
        self.shownChanged.emit()

    def next_image(self) -> None:
        self.show_image(self._index + 1)

    def previous_image(self) -> None:
        self.show_image(self._index - 1)

    def show_source(self) -> None:
        if self._showing != "source" or self._view is not None:
            self._showing = "source"
            self._view = None
            self.shownChanged.emit()

    def show_result(self) -> None:
        if self.result_image() is not None:
            self._showing = "result"
            self._view = None
            self.shownChanged.emit()

    # -- the staging strip ------------------------------------------------------------------
    @property
    def staged(self) -> list[tuple[Result, int]]:
        """The results waiting in the strip, as (result, batch index), in the order they came."""
        return list(self._staged)

    @property
    def staged_index(self) -> int:
        """Which staged image is shown (or would be, while the source is shown)."""
        return self._pos

    def staged_image(self, index: int) -> Image.Image:
        result, i = self._staged[index]
        return result.images[i]

    def staging_label(self) -> str:
        """What the canvas shows, in words: "Result 2 of 4", "Before (the source)" or "Preview"."""
        if not self._staged:
            return ""
        if self._showing == "result":
            return f"Result {self._pos + 1} of {len(self._staged)}"
        if self._showing == "source":
            return "Before (the source)"
        return "Preview"

    def toggle_before_after(self) -> None:
        """Between the source (before) and the staged result (after)."""
        if self._showing == "result":
            self.show_source()
        elif self._staged:
            self.show_image(self._pos)

    def discard_staged(self, index: int | None = None) -> None:
        """Take one image out of the strip (the history keeps it); the next one is shown, or the source."""
        if not self._staged:
            return
        index = self._pos if index is None else int(index)
        if not 0 <= index < len(self._staged):
            return
        was_shown = self._showing == "result" and index == self._pos
        staged = self._staged[:index] + self._staged[index + 1 :]
        if not staged:
            self.discard_all_staged()
            return
        self._staged = staged
        if index < self._pos or self._pos >= len(staged):
            self._pos = max(0, self._pos - 1) if index < self._pos else len(staged) - 1
        if was_shown or self._showing == "result":
            self.show_image(self._pos)
        else:
            result, self._index = self._staged[self._pos]
            if result is not self._result:
                self._result = result
                self.resultChanged.emit()
            self.stagingChanged.emit()
            self.shownChanged.emit()

    def discard_all_staged(self) -> None:
        """Empty the strip (every image stays in the history) and show the source."""
        if not self._staged:
            return
        self._staged, self._pos = [], 0
        self._result, self._index = None, 0
        self._result_from_source = False
        self._showing, self._view = "source", None
        self.resultChanged.emit()
        self.stagingChanged.emit()
        self.shownChanged.emit()

    def accept_staged(self, index: int | None = None) -> bool:
        """Staged image `index` (the shown one by default) becomes the source: one undo step brings the old source,
        its mask and the strip back. The strip empties; the mask stays when the size is the same, and an outpaint
        (a bigger picture) pads the regions' paint by its extension and starts a blank mask."""
        if not self._staged:
            return False
        index = self._pos if index is None else int(index)
        if not 0 <= index < len(self._staged):
            return False
        result, i = self._staged[index]
        image = result.images[i].convert("RGB")
        before = self._snapshot()
        old_size = self._source.size if self._source is not None else None
        if old_size == image.size and self._mask is not None:
            mask = self._mask.copy()
        else:
            mask = np.zeros((image.height, image.width), np.uint8)
        regions = []
        if old_size != image.size:
            extend = getattr(result.request, "extend", (0, 0, 0, 0)) or (0, 0, 0, 0)
            for region in self._regions:
                regions.append((region, _placed(region.mask, image.size, extend[0], extend[1])))
        after = _Staged(
            image, mask, (result, i), None, [], 0, result, i, True, "source",
            regions or [(r, r.mask) for r in self._regions],
        )  # fmt: skip
        self._push(_SourceEdit(before, after), emit=False)
        self._restore(after)
        return True

    def _snapshot(self) -> _Staged:
        return _Staged(
            self._source,
            None if self._mask is None else self._mask.copy(),
            self._made_by,
            self._entry_id,
            list(self._staged),
            self._pos,
            self._result,
            self._index,
            self._result_from_source,
            self._showing if self._showing != "view" else "source",
            [(r, r.mask.copy()) for r in self._regions],
        )

    def _restore(self, state: _Staged) -> None:
        """Put one side of an accept back: source, mask, regions' paint, strip and what is shown."""
        result_changed = state.result is not self._result
        self._source, self._made_by, self._entry_id = state.source, state.made_by, state.entry_id
        self._mask = None if state.mask is None else state.mask.copy()
        self._bounds = None if state.source is None else (0, 0, state.source.width, state.source.height)
        w, h = self.canvas_size
        for region, mask in state.regions:
            region.mask = mask.copy() if mask.shape == (h, w) else resized(mask, (w, h))
        self._staged, self._pos = list(state.staged), state.pos
        self._result, self._index, self._result_from_source = state.result, state.index, state.from_source
        self._showing, self._view, self._view_rect = state.showing, None, None
        self.sourceChanged.emit()
        self.boundsChanged.emit()
        self.maskChanged.emit(None)
        if self._regions:
            self.regionPainted.emit(None)
            self.regionsChanged.emit()
        if result_changed:
            self.resultChanged.emit()
        self.stagingChanged.emit()
        self.shownChanged.emit()
        self.undoChanged.emit()

    def use_result_as_source(self) -> bool:
        """The shown result becomes the source of the next job (the mask stays when the size is the same)."""
        image = self.result_image()
        if image is None or self._result is None:
            return False
        index = min(self._index, len(self._result.images) - 1)
        self.set_source(image, made_by=(self._result, index))
        self._result_from_source = True
        return True

    # -- what the canvas shows ----------------------------------------------------------
    @property
    def showing(self) -> str:
        return self._showing

    def show_view(self, image: Any, size: tuple[int, int] | None = None, rect: Box | None = None) -> None:
        """Show a transient image (a job's preview, a timeline frame) scaled into the canvas; `size`: the logical
        size to scale it to when there is no source; `rect`: where it lies (x, y, w, h in source pixels) when not
        on the source's own rectangle (an outpaint's preview covers the extended canvas)."""
        self._view = image
        self._view_size = size
        self._view_rect = rect
        self._showing = "view" if image is not None else ("result" if self.result_image() is not None else "source")
        self.shownChanged.emit()

    @property
    def view(self) -> Any:
        return self._view

    @property
    def view_size(self) -> tuple[int, int] | None:
        return self._view_size

    def shown_image(self) -> Any:
        """What the canvas shows now: the view, the shown result image, or the source."""
        if self._showing == "view" and self._view is not None:
            return self._view
        if self._showing == "result":
            image = self.result_image()
            if image is not None:
                return image
        return self._source

    def shown_rect(self) -> Box | None:
        """Where what is shown lies, as (x, y, width, height) in source pixels: the source's rectangle, or, for an
        outpaint's result or preview, the extended canvas around it (the engine may have rounded it up to 8)."""
        if self._source is None:
            return None
        sw, sh = self._source.size
        if self._showing == "view" and self._view is not None:
            if self._view_rect is not None:
                return self._view_rect
            return self._outpaint_rect(None) or (0, 0, sw, sh)
        if self._showing == "result":
            image = self.result_image()
            if image is not None:
                return self._outpaint_rect(image.size) or (0, 0, sw, sh)
        return (0, 0, sw, sh)

    def _outpaint_rect(self, size: tuple[int, int] | None) -> Box | None:
        """The rectangle of the shown result when it is an outpaint of the current source."""
        result = self._result
        extend = getattr(getattr(result, "request", None), "extend", None)
        if result is None or not self._result_from_source or not extend or not any(extend) or self._source is None:
            return None
        from desktop_app.core.outpaint import rounded_extend  # numpy: imported when an outpaint is shown

        # the backends round the canvas up to a multiple of 8 on the extended sides: the same rule places it here
        left, top, right, bottom = rounded_extend(self._source.size, tuple(extend))
        width, height = self._source.width + left + right, self._source.height + top + bottom
        if size is not None and size != (width, height):  # a result of another size: anchor it at its own size
            width, height = size
        return (-left, -top, width, height)

    def mask_applies(self) -> bool:
        """Whether the mask belongs to what is shown: the source, or something made from it at its size.
        A result generated from text alone is not covered by a mask painted for another picture."""
        if self._source is None or self._mask is None:
            return False
        if self._showing == "source":
            return True
        if not self._result_from_source:
            return False
        shown = self.shown_image()
        if isinstance(shown, Image.Image):
            return shown.size == self._source.size
        # a preview or timeline frame (QImage or a latent-resolution array) of a job on this source, scaled into
        # its rectangle
        return True


def _placed(mask: numpy.ndarray, size: tuple[int, int], left: int, top: int) -> numpy.ndarray:
    """`mask` put at (left, top) on a blank mask of `size` (w, h): the paint of an outpainted picture stays where
    it was painted; a size that is no extension of it (another picture) is scaled instead."""
    w, h = size
    mh, mw = mask.shape
    if left + mw > w or top + mh > h:
        return resized(mask, size)
    out = np.zeros((h, w), np.uint8)
    out[top : top + mh, left : left + mw] = mask
    return out
