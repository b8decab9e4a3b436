"""Reading user images and masks safely: odd modes converted, huge or broken files refused."""

from __future__ import annotations

import base64
import io
import os
import warnings
from pathlib import Path
from typing import cast

from PIL import Image, ImageOps, UnidentifiedImageError

from desktop_app.core.errors import ImageError

MAX_PIXELS = 80_000_000


def _open_checked(source: str | os.PathLike | bytes) -> Image.Image:
    label = "the image data" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ImageError(f"No image file at {label}.", "Check the path and try again.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"Cannot read {label}: not an image or corrupt.", "Open a PNG, JPEG or WebP file.") from exc
    megapixels = img.width * img.height
    if megapixels > MAX_PIXELS:
        raise ImageError(
            f"{label} is {img.width}x{img.height} ({megapixels / 1e6:.0f} megapixels), over the 80 megapixel limit.",
            "Downscale the image before opening it.",
        )
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"Cannot read {label}: the file is truncated or corrupt.", "Re-export the image.") from exc
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten any mode (CMYK, 16-bit, palette with alpha, LA...) onto RGB."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr / peak * 255.0).clip(0, 255).astype("uint8"), "L")
    if img.mode == "F":
        img = img.convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source: str | os.PathLike | bytes | Image.Image) -> Image.Image:
    """An RGB image from a path, bytes or PIL image; UserError for anything unusable."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    return _to_rgb(_open_checked(source))


def load_mask(source: str | os.PathLike | bytes | Image.Image) -> Image.Image:
    """A mask as mode 'L' (255 = change here); alpha masks use their alpha channel."""
    img = source if isinstance(source, Image.Image) else _open_checked(source)
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("RGBA", "LA") and cast("tuple[tuple[float, float], ...]", img.getextrema())[-1][0] < 255:
        return img.getchannel("A")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_rgb(img).convert("L")
    return img.convert("L")


def save_png(image: Image.Image, target: str | os.PathLike | io.BytesIO, pnginfo=None, **params) -> None:
    """Save a copy as PNG; a path is written atomically (a temporary file, then a rename).

    Pillow keeps a save's options on the image object itself, so two threads saving one result at
    once (the history writer and the user's Save) would swap or drop each other's text chunks."""
    image = image.copy()
    if not isinstance(target, (str, os.PathLike)):
        image.save(target, format="PNG", pnginfo=pnginfo, **params)
        return
    path = Path(target)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=pnginfo, **params)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def image_to_data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_from_data_url(url: str) -> Image.Image:
    if not url.startswith("data:image/png;base64,"):
        raise ImageError("Embedded image is not a PNG data URL.", "The request file may be damaged.")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    img.load()
    return img
