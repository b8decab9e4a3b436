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
    if not isinstance(source, bytes) and not os.access(source, os.R_OK):
        raise ImageError(
            f"Cannot read {label}: permission denied.", "Give your user read permission on the file, or copy it."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
    except PermissionError as exc:
        raise ImageError(
            f"Cannot read {label}: permission denied.", "Give your user read permission on the file, or copy it."
        ) from exc
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


MAX_DATA_URL_CHARS = 200_000_000  # base64 of a 150 MB PNG: far past any source image we write


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (the first 24 bytes), without decoding anything; None if not a PNG."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def image_from_data_url(url: str) -> Image.Image:
    """A PNG data URL (a request's source or mask) as an image. Its size is read from the PNG header before
    anything is decoded: past the 80 megapixel limit (a 2 KB PNG can claim 12000x12000) it is refused."""
    if not isinstance(url, str) or not url.startswith("data:image/png;base64,"):
        raise ImageError("Embedded image is not a PNG data URL.", "The request file may be damaged.")
    if len(url) > MAX_DATA_URL_CHARS:
        raise ImageError("The embedded image is too large.", "The request file may be damaged.")
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=False)
    except ValueError as exc:
        raise ImageError("The embedded image is not valid base64.", "The request file may be damaged.") from exc
    size = png_size(data)
    if size is None:
        raise ImageError("The embedded image is not a PNG.", "The request file may be damaged.")
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"The embedded image claims {width}x{height} ({width * height / 1e6:.0f} megapixels), over the 80 "
            "megapixel limit; it was not decoded.",
            "The request file may be damaged or crafted.",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError("The embedded image is damaged.", "The request file may be damaged.") from exc
    return img
