"""Synthetic "shapes" domain for the built-in Diffusion Desk model.

Renders small pictures of one coloured shape on a plain coloured background,
writes/reads their captions, defines a deterministic train / held-out split of
caption combinations and provides a deterministic pixel classifier that
recovers the attributes from an image (used to evaluate generated images).

Only the standard library, numpy and Pillow are used (no torch import).

A *spec* is a dict with keys ``shape``, ``colour``, ``background``,
``position`` (``None`` or one of :data:`POSITIONS`) and ``size`` (``None`` or
one of :data:`SIZES`).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 225, 30),
    "orange": (250, 140, 20),
    "purple": (140, 40, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
SIZES: tuple[str, ...] = ("small", "large")

_POS_PHRASE = {
    "left": "at the left",
    "right": "at the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# Shape centre (x, y) in a 64 px picture for each position word.
_POS_CENTRE = {
    "left": (18, 32),
    "right": (46, 32),
    "top": (32, 18),
    "bottom": (32, 46),
    "centre": (32, 32),
}
# Half-extent ("radius") ranges in a 64 px picture; every shape fills a
# 2r x 2r bounding box.
_RADIUS = {"small": (8, 10), None: (12, 16), "large": (19, 21)}
JITTER = 6  # +- pixels (64 px scale) around the nominal position
HELDOUT_FRACTION = 0.2


# ----------------------------------------------------------------- specs ---


def make_spec(shape, colour, background, position=None, size=None) -> dict:
    return {"shape": shape, "colour": colour, "background": background, "position": position, "size": size}


def all_specs() -> list[dict]:
    """Every valid caption combination (shape colour != background colour)."""
    out = []
    for shape, colour, bg, pos, size in itertools.product(
        SHAPES, COLOURS, COLOURS, (None,) + POSITIONS, (None,) + SIZES
    ):
        if colour != bg:
            out.append(make_spec(shape, colour, bg, pos, size))
    return out


def _split_key(spec: dict) -> float:
    h = hashlib.sha256(caption(spec).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def is_heldout(spec: dict) -> bool:
    """Deterministic split of whole captions: ~20% never used in training.

    Every word and every (shape, colour, background) triple still occurs in
    training, but the held-out sentences (with their exact position / size
    words) never do.
    """
    return _split_key(spec) < HELDOUT_FRACTION


def train_specs() -> list[dict]:
    return [s for s in all_specs() if not is_heldout(s)]


def heldout_specs() -> list[dict]:
    """Held-out specs in a deterministic, well-mixed order."""
    specs = [s for s in all_specs() if is_heldout(s)]
    rnd = random.Random(1234)
    rnd.shuffle(specs)
    return specs


# --------------------------------------------------------------- captions ---


def caption(spec: dict) -> str:
    words = ["a"]
    if spec.get("size"):
        words.append(spec["size"])
    words += [spec["colour"], spec["shape"]]
    if spec.get("position"):
        words.append(_POS_PHRASE[spec["position"]])
    words.append(f"on a {spec['background']} background")
    return " ".join(words)


def parse_caption(text: str) -> dict:
    """Inverse of :func:`caption` (tolerant to case, 'center', extra spaces)."""
    t = " ".join(text.lower().replace("center", "centre").replace(",", " ").split())
    toks = t.split()
    spec = make_spec(None, None, None)
    if " on a " in f" {t} " or " on " in f" {t} ":
        head, _, tail = t.rpartition(" on ")
    else:
        head, tail = t, ""
    for w in tail.split():
        if w in PALETTE:
            spec["background"] = w
    htoks = head.split()
    for w in htoks:
        if w in SHAPES:
            spec["shape"] = w
        elif w in SIZES:
            spec["size"] = w
        elif w in POSITIONS:
            spec["position"] = w
    # shape colour: the colour word right before the shape word, else first colour in head
    for w in htoks:
        if w in PALETTE:
            spec["colour"] = w
            break
    if spec["background"] is None:  # "... background" missing "on"
        cols = [w for w in toks if w in PALETTE]
        if len(cols) >= 2:
            spec["background"] = cols[-1]
    return spec


# -------------------------------------------------------------- rendering ---


def random_spec(rng: random.Random | None = None, specs: list[dict] | None = None) -> dict:
    rng = rng or random.Random()
    return dict(rng.choice(specs if specs is not None else train_specs()))


def render(spec: dict, size: int = 64, rng: random.Random | np.random.Generator | None = None) -> Image.Image:
    """Render a spec to an RGB picture of ``size`` x ``size`` pixels.

    ``rng`` (random.Random, numpy Generator, int seed or None) draws the jitter
    and the exact radius; None gives the nominal, un-jittered picture.
    """
    if isinstance(rng, int):
        rng = random.Random(rng)

    def uniform(a, b):
        if rng is None:
            return (a + b) / 2.0
        if isinstance(rng, np.random.Generator):
            return float(rng.uniform(a, b))
        return rng.uniform(a, b)

    s = size / 64.0
    lo, hi = _RADIUS[spec.get("size")]
    r = uniform(lo, hi)
    pos = spec.get("position")
    if pos is None:
        if rng is None:
            cx, cy = 32.0, 32.0
        else:  # anywhere reasonable
            cx, cy = uniform(18, 46), uniform(18, 46)
    else:
        cx, cy = _POS_CENTRE[pos]
        cx += uniform(-JITTER, JITTER)
        cy += uniform(-JITTER, JITTER)
    cx = min(max(cx, r + 1), 63 - r)
    cy = min(max(cy, r + 1), 63 - r)
    cx, cy, r = cx * s, cy * s, r * s

    # supersample for smooth edges
    ss = 4
    img = Image.new("RGB", (size * ss, size * ss), PALETTE[spec["background"]])
    d = ImageDraw.Draw(img)
    col = PALETTE[spec["colour"]]
    X, Y, R = cx * ss, cy * ss, r * ss
    if spec["shape"] == "circle":
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=col)
    elif spec["shape"] == "square":
        d.rectangle([X - R, Y - R, X + R, Y + R], fill=col)
    elif spec["shape"] == "triangle":
        d.polygon([(X - R, Y + R), (X + R, Y + R), (X, Y - R)], fill=col)
    else:
        raise ValueError(f"unknown shape {spec['shape']!r}")
    return img.resize((size, size), Image.Resampling.LANCZOS)


# ------------------------------------------------------------- classifier ---

_PAL_NAMES = list(PALETTE)
_PAL = np.array([PALETTE[n] for n in _PAL_NAMES], dtype=np.float32)


def _nearest(pixels: np.ndarray) -> np.ndarray:
    d = ((pixels[..., None, :] - _PAL) ** 2).sum(-1)
    return d.argmin(-1)


def classify(img) -> dict:
    """Recover (shape, colour, background, position, size) from a picture.

    * background: most common palette colour on the border pixels;
    * shape colour: most common palette colour among the other pixels;
    * mask: pixels of that colour; its robust bounding box gives the size and
      the position (bounding-box centre), and its fill ratio of the box plus
      the box corners give the shape kind (square ~1, circle ~0.79,
      triangle ~0.5 with filled bottom corners and empty top ones).
    """
    if isinstance(img, Image.Image):
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    else:
        arr = np.asarray(img, dtype=np.float32)
        if arr.max() <= 1.0:
            arr = arr * 255.0
    if arr.shape[0] != 64 or arr.shape[1] != 64:
        arr = np.asarray(
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).resize((64, 64), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
    lab = _nearest(arr)
    H, W = lab.shape
    border = np.concatenate([lab[0], lab[-1], lab[1:-1, 0], lab[1:-1, -1]])
    bg = int(np.bincount(border, minlength=len(_PAL)).argmax())
    counts = np.bincount(lab.ravel(), minlength=len(_PAL)).astype(np.int64)
    counts[bg] = 0
    res = {"shape": None, "colour": None, "background": _PAL_NAMES[bg], "position": None, "size": None}
    if counts.max() < 12:
        return res
    fg = int(counts.argmax())
    res["colour"] = _PAL_NAMES[fg]
    mask = lab == fg
    ys, xs = np.nonzero(mask)
    # robust bounding box (ignore a few stray pixels)
    x0, x1 = np.percentile(xs, [1, 99])
    y0, y1 = np.percentile(ys, [1, 99])
    x0, x1, y0, y1 = int(round(x0)), int(round(x1)), int(round(y0)), int(round(y1))
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    box = mask[y0 : y1 + 1, x0 : x1 + 1]
    fill = box.mean() if box.size else 0.0
    k = max(1, min(bw, bh) // 5)
    tl = box[:k, :k].mean()
    tr = box[:k, -k:].mean()
    bl = box[-k:, :k].mean()
    br = box[-k:, -k:].mean()
    top = (tl + tr) / 2
    bottom = (bl + br) / 2
    if fill > 0.9 or (fill > 0.82 and top > 0.6 and bottom > 0.6):
        shape = "square"
    elif fill < 0.64 or (fill < 0.7 and bottom - top > 0.5):
        shape = "triangle"
    else:
        shape = "circle"
    res["shape"] = shape
    # size from the bounding-box extent (2r)
    area = float(mask.sum())
    ext = 2.0 * (area / {"square": 4.0, "circle": np.pi, "triangle": 2.0}[shape]) ** 0.5
    if ext <= 2 * 11 + 1:
        res["size"] = "small"
    elif ext >= 2 * 17.5 + 1:
        res["size"] = "large"
    else:
        res["size"] = None
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    dx, dy = cx - 31.5, cy - 31.5
    if max(abs(dx), abs(dy)) < 7:
        res["position"] = "centre"
    elif abs(dx) >= abs(dy):
        res["position"] = "left" if dx < 0 else "right"
    else:
        res["position"] = "top" if dy < 0 else "bottom"
    return res


def score(spec: dict, pred: dict) -> dict:
    """Per-attribute correctness (None where the caption does not name it)."""
    return {
        "colour": pred["colour"] == spec["colour"],
        "background": pred["background"] == spec["background"],
        "shape": pred["shape"] == spec["shape"],
        "position": (pred["position"] == spec["position"]) if spec.get("position") else None,
        "size": (pred["size"] == spec["size"]) if spec.get("size") else None,
    }


def render_batch(specs: Iterable[dict], rng: random.Random, size: int = 64) -> np.ndarray:
    """uint8 array (N, size, size, 3) of renders."""
    return np.stack([np.asarray(render(s, size, rng)) for s in specs])


if __name__ == "__main__":  # self-check of the classifier on renders
    rng = random.Random(0)
    specs = all_specs()
    tot = {}
    n = 3000
    for _ in range(n):
        s = rng.choice(specs)
        sc = score(s, classify(render(s, rng=rng)))
        for k, v in sc.items():
            if v is not None:
                a = tot.setdefault(k, [0, 0])
                a[0] += int(v)
                a[1] += 1
    print("specs:", len(specs), "train:", len(train_specs()), "heldout:", len(heldout_specs()))
    for k, (c, m) in tot.items():
        print(f"{k:10s} {c / m:.4f}  ({m})")
