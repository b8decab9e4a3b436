"""Regional prompts as the document keeps them: each region is a prompt, a weight, a colour and a painted mask.

The masks live at the canvas's size (the source image's, or the text-to-image size on a blank canvas), as numpy
uint8 (0 = outside, 255 = inside), painted in place by the document's strokes like the inpaint mask. The
`Document` owns the list, the active region and the undo steps; this module holds the plain pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING

from desktop_app.core.lazy import LazyModule

if TYPE_CHECKING:
    import numpy

np = LazyModule("numpy")

# distinct, readable over photos and over the dark blank canvas; the mask's own red-pink is not among them
PALETTE = ("#3fa7ff", "#ffc233", "#4fd67a", "#c77dff", "#ff8a3d", "#2ee6d6", "#f26dbb", "#b5e655")
MAX_REGIONS = 16
_ids = count(1)


@dataclass(eq=False)
class Region:
    """One region. Compared by identity: undo steps and the canvas hold the region object itself."""

    mask: numpy.ndarray
    prompt: str = ""
    weight: float = 1.0
    color: str = PALETTE[0]
    id: int = field(default_factory=lambda: next(_ids))

    def has_paint(self) -> bool:
        return bool(self.mask.any())


def next_color(regions: list[Region]) -> str:
    """The first palette colour no region uses (cycling when all are taken)."""
    used = {r.color for r in regions}
    for color in PALETTE:
        if color not in used:
            return color
    return PALETTE[len(regions) % len(PALETTE)]


def resized(mask: numpy.ndarray, size: tuple[int, int]) -> numpy.ndarray:
    """`mask` scaled to `size` (w, h) with nearest neighbours: painted areas keep their place on the picture."""
    from PIL import Image

    w, h = size
    if mask.shape == (h, w):
        return mask.copy()
    return np.asarray(Image.fromarray(mask, "L").resize((w, h), Image.Resampling.NEAREST), np.uint8).copy()
