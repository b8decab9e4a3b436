"""Every input a user can get wrong gives a UserError with a message and a hint; odd image modes are converted."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from desktop_app.core.errors import ImageError, InvalidRequest, UserError
from desktop_app.core.images import MAX_PIXELS, load_image, load_mask
from desktop_app.core.requests import EditRequest, GenerateRequest, Img2ImgRequest, InpaintRequest


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_corrupt_file_is_refused_with_hint(tmp_path):
    with pytest.raises(ImageError) as info:
        load_image(write(tmp_path, "x.png", b"this is not a png at all"))
    assert "not an image" in info.value.message and info.value.hint


def test_truncated_file_is_refused(tmp_path):
    data = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageError, match="truncated|corrupt"):
        load_image(write(tmp_path, "t.png", data[: len(data) // 2]))


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="No image file"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "LA", "L", "RGBA"])
def test_odd_modes_are_converted_to_rgb(tmp_path, mode):
    base = Image.new("RGB", (16, 8), (200, 30, 40))
    if mode == "I;16":
        img = Image.fromarray(np.full((8, 16), 40000, dtype=np.uint16))
        data = png_bytes(img)
    elif mode == "CMYK":
        data = png_bytes(base.convert("CMYK"), format="JPEG")
    else:
        data = png_bytes(base.convert(mode))
    out = load_image(write(tmp_path, "m.img", data))
    assert out.mode == "RGB" and out.size == (16, 8)


def test_sixteen_bit_keeps_its_brightness(tmp_path):
    img = Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16))
    out = np.asarray(load_image(write(tmp_path, "g.png", png_bytes(img))))
    assert 120 <= out.mean() <= 135


def test_palette_with_alpha_is_flattened_on_white(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    img.info["transparency"] = 0
    out = load_image(write(tmp_path, "p.png", png_bytes(img, transparency=0)))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = load_image(write(tmp_path, "e.jpg", png_bytes(img, format="JPEG", exif=exif.tobytes())))
    assert out.size == (10, 20)


def _huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG header that claims a huge size: the refusal must come before any decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_image_over_80_megapixels_is_refused_before_decoding(tmp_path):
    path = write(tmp_path, "huge.png", _huge_png_header(10_000, 9_000))
    assert MAX_PIXELS < 10_000 * 9_000
    with pytest.raises(ImageError, match="80 megapixel"):
        load_image(path)


def test_mask_from_alpha_channel(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((3, 3), (0, 0, 0, 255))
    mask = load_mask(write(tmp_path, "a.png", png_bytes(rgba)))
    assert mask.mode == "L" and mask.getpixel((3, 3)) == 255 and mask.getpixel((0, 0)) == 0


IMG = Image.new("RGB", (64, 64))


@pytest.mark.parametrize(
    "request_, match",
    [
        (GenerateRequest(width=65, height=64), "multiple of 8"),
        (GenerateRequest(width=4096, height=64), "between 64 and 2048"),
        (GenerateRequest(width=56, height=64), "between 64 and 2048"),
        (GenerateRequest(steps=0), "Steps"),
        (GenerateRequest(steps=151), "Steps"),
        (GenerateRequest(guidance=31), "Guidance"),
        (GenerateRequest(guidance=-1), "Guidance"),
        (GenerateRequest(seed=2**32), "Seed"),
        (GenerateRequest(seed=-1), "Seed"),
        (GenerateRequest(scheduler="plms"), "scheduler"),
        (Img2ImgRequest(image=IMG, strength=1.5), "Strength"),
        (Img2ImgRequest(), "source image"),
        (InpaintRequest(image=IMG, mask=Image.new("L", (64, 64))), "mask is empty"),
        (InpaintRequest(image=IMG, mask=Image.new("L", (32, 64), 255)), "32x64 but the image is 64x64"),
        (InpaintRequest(image=IMG), "needs a mask"),
        (EditRequest(image=IMG, t0=1000), "t0"),
        (EditRequest(image=IMG, method="magic"), "edit method"),
    ],
)
def test_out_of_range_parameters(request_, match):
    with pytest.raises(InvalidRequest, match=match) as info:
        request_.validate()
    assert info.value.hint


def test_request_round_trips_through_json():
    import json

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 8, 8))
    request = InpaintRequest(prompt="a red circle", image=IMG, mask=mask, seed=5, mask_blur=2)
    data = json.loads(json.dumps(request.to_dict()))
    again = GenerateRequest.from_dict(data)
    assert isinstance(again, InpaintRequest) and again.seed == 5 and again.mask_blur == 2
    assert np.array_equal(np.asarray(again.mask), np.asarray(mask))
    assert "image" not in request.to_dict(include_images=False)


def test_user_error_str_has_hint():
    assert str(UserError("Bad.", "Fix it.")) == "Bad. (Fix it.)"
