"""mask_ops without a window: the pixels each selection and operation makes, the bad input each refuses, a mask PNG
round trip, and the Document's tile undo steps (a long diagonal stroke keeps its path, not its bounding box)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from desktop_app.core.errors import ImageError, UserError
from desktop_app.model import mask_ops
from desktop_app.model.document import TILE, Document


def _disk(h, w, cy, cx, r):
    ys, xs = np.mgrid[0:h, 0:w]
    return (((ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2) <= r * r).astype(np.uint8) * 255


def test_rectangle_masks_the_pixels_whose_centres_lie_inside_from_any_corner():
    a = mask_ops.rectangle((60, 50), (40.2, 30.4), (10, 12))
    expected = np.zeros((50, 60), np.uint8)
    expected[12:30, 10:40] = 255
    assert np.array_equal(a, expected)
    clipped = mask_ops.rectangle((60, 50), (-20, -5), (5, 500))
    assert clipped[:, :5].all() and not clipped[:, 5:].any()
    assert not mask_ops.rectangle((60, 50), (10, 10), (10.3, 40)).any()  # no pixel centre inside


def test_polygon_fills_a_square_exactly_and_a_triangle_by_its_centres():
    square = mask_ops.polygon((60, 50), [(10, 10), (40, 10), (40, 30), (10, 30)])
    assert np.array_equal(square, mask_ops.rectangle((60, 50), (10, 10), (40, 30)))
    tri = mask_ops.polygon((40, 40), [(0, 0), (40, 0), (0, 40)])
    ys, xs = np.mgrid[0:40, 0:40]
    assert np.array_equal(tri > 0, (xs + 0.5) + (ys + 0.5) < 40)


def test_a_lasso_of_fewer_than_three_points_is_refused_with_a_message():
    with pytest.raises(UserError) as err:
        mask_ops.polygon((10, 10), [(1, 1), (5, 5)])
    assert "three points" in err.value.message and "unchanged" in err.value.hint


def test_flood_fill_masks_the_connected_shape_of_about_the_clicked_colour():
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[...] = (20, 20, 200)  # blue background
    rgb[5:20, 5:25] = (200, 30, 30)  # a red box
    rgb[25:35, 30:45] = (205, 28, 35)  # another red box, not connected to the first
    rgb[10, 10] = (215, 40, 20)  # a pixel within the tolerance
    image = Image.fromarray(rgb)
    box = mask_ops.flood(image, 12, 8, tolerance=32)
    expected = np.zeros((40, 50), np.uint8)
    expected[5:20, 5:25] = 255
    assert np.array_equal(box, expected)
    strict = mask_ops.flood(image, 12, 8, tolerance=0)
    assert strict[10, 10] == 0 and strict.sum() == expected.sum() - 255
    background = mask_ops.flood(image, 0, 0, tolerance=10)
    assert background[0, 0] == 255 and not background[5:20, 5:25].any() and not background[25:35, 30:45].any()
    assert not mask_ops.flood(image, 99, 0).any()  # outside the picture: nothing


def test_grow_and_shrink_move_the_edge_by_a_disk_of_n_px():
    h = w = 80
    disk = _disk(h, w, 40, 40, 15)
    grown = mask_ops.grow(disk, 5)
    inner = _disk(h, w, 40, 40, 19)  # within 4 px of the edge: certainly inside the grown mask
    outer = _disk(h, w, 40, 40, 21)
    assert grown[inner > 0].min() == 255 and not grown[outer == 0].any()
    shrunk = mask_ops.shrink(disk, 5)
    assert shrunk[_disk(h, w, 40, 40, 9) > 0].min() == 255 and not shrunk[_disk(h, w, 40, 40, 11) == 0].any()
    # the picture's border is not an edge: a mask along it shrinks only from its inner side
    band = np.zeros((h, w), np.uint8)
    band[:, :20] = 255
    assert np.array_equal(mask_ops.shrink(band, 4) > 0, np.arange(w)[None, :].repeat(h, 0) < 16)
    assert not mask_ops.shrink(disk, 20).any()  # shrunk away: the caller says so
    assert np.array_equal(mask_ops.grow(disk, 0), disk)
    with pytest.raises(UserError):
        mask_ops.grow(disk, mask_ops.MAX_RADIUS + 1)


def test_feather_paints_grey_levels_across_the_edge_and_keeps_the_middle():
    square = np.zeros((100, 100), np.uint8)
    square[30:70, 30:70] = 255
    soft = mask_ops.feather(square, 8)
    assert soft[50, 50] == 255 and soft[0, 0] == 0
    row = soft[50]
    assert 100 <= row[30] <= 160  # the old edge sits about half way
    grey = row[(row > 0) & (row < 255)]
    assert 8 <= len(grey) <= 40  # a ramp of about 2 x 8 px on each side, both sides counted
    assert np.all(np.diff(row[20:50].astype(int)) >= 0)  # monotonic up to the middle


def test_mask_from_alpha_masks_the_transparent_pixels_and_refuses_an_opaque_image():
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[5:10, 5:15, 3] = 0
    rgba[12, 3, 3] = 128
    mask = mask_ops.from_alpha(Image.fromarray(rgba, "RGBA"))
    assert mask[5:10, 5:15].min() == 255 and mask[12, 3] == 127 and mask.sum() == 255 * 50 + 127
    with pytest.raises(ImageError) as err:
        mask_ops.from_alpha(Image.new("RGB", (4, 4)))
    assert "no transparency" in err.value.message
    with pytest.raises(ImageError):
        mask_ops.from_alpha(Image.new("RGBA", (4, 4), (0, 0, 0, 255)))


def test_save_then_load_round_trips_bit_exactly(tmp_path):
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 256, (37, 53), dtype=np.uint8)  # grey levels too
    path = tmp_path / "mask.png"
    mask_ops.save(mask, path)
    loaded, notice = mask_ops.load(path, (53, 37))
    assert notice is None and loaded.dtype == np.uint8 and np.array_equal(loaded, mask)


def test_a_mask_of_another_size_is_scaled_with_a_notice_or_refused_naming_the_sizes(tmp_path):
    half = np.zeros((32, 48), np.uint8)
    half[8:16, 12:24] = 255
    path = tmp_path / "small.png"
    Image.fromarray(half, "L").save(path)
    scaled, notice = mask_ops.load(path, (96, 64))
    assert notice is not None and "48×32" in notice and "96×64" in notice
    expected = np.zeros((64, 96), np.uint8)
    expected[16:32, 24:48] = 255
    assert np.array_equal(scaled, expected)  # a hard mask stays hard
    wide = tmp_path / "wide.png"
    Image.new("L", (200, 50), 255).save(wide)
    with pytest.raises(ImageError) as err:
        mask_ops.load(wide, (96, 64))
    assert "200×50" in err.value.message and "96×64" in err.value.message
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageError):
        mask_ops.load(broken, (96, 64))


def test_combine_adds_subtracts_and_replaces():
    mask = np.zeros((4, 4), np.uint8)
    mask[:2] = 255
    shape = np.zeros((4, 4), np.uint8)
    shape[:, :2] = 200
    added = mask_ops.combine(mask, shape, "add")
    assert added[0, 3] == 255 and added[3, 0] == 200 and added[3, 3] == 0
    sub = mask_ops.combine(mask, shape, "subtract")
    assert sub[0, 0] == 55 and sub[0, 3] == 255 and sub[3, 0] == 0
    assert np.array_equal(mask_ops.combine(mask, shape, "replace"), shape)


def _m(doc):
    """The document's live mask (a source is open, so there is one)."""
    assert doc.mask is not None
    return doc.mask


def _document(size):
    doc = Document()
    doc.set_source(Image.new("RGB", (size, size)))
    return doc


def _stroke(doc, points, radius=4):
    """A stroke of discs along `points` through the document's stroke API (as the canvas stamps)."""
    doc.begin_stroke()
    for x, y in points:
        y0, y1, x0, x1 = max(0, y - radius), y + radius, max(0, x - radius), x + radius
        doc.stamp((y0, y1, x0, x1), np.full((y1 - y0, x1 - x0), 255, np.uint8))
    doc.end_stroke()


def test_a_long_diagonal_stroke_stores_the_tiles_it_crossed_not_its_bounding_box():
    doc = _document(1024)
    _stroke(doc, [(i, i) for i in range(0, 1024, 4)])
    stored = doc.undo_nbytes()
    tiles = 1024 // TILE
    assert stored <= 2 * (2 * tiles) * TILE * TILE * 2  # about two tiles per tile row, before and after
    assert stored < 2 * 1024 * 1024 / 4  # the bounding box would be the whole picture, twice
    painted = _m(doc).copy()
    assert doc.undo() and not _m(doc).any()
    assert doc.redo() and np.array_equal(_m(doc), painted)


def test_edit_mask_is_one_undo_step_of_its_changed_tiles():
    doc = _document(256)
    _stroke(doc, [(20, 20)])
    first = _m(doc).copy()
    new = first.copy()
    new[200:210, 200:210] = 255
    assert doc.edit_mask(new)
    assert doc.undo_nbytes() == 2 * TILE * TILE + 2 * TILE * TILE  # one tile for the stroke, one for the edit
    assert not doc.edit_mask(new.copy())  # nothing changed: no step
    assert doc.undo() and np.array_equal(_m(doc), first)
    assert doc.undo() and not _m(doc).any()
