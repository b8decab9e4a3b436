"""Plain-data job requests: frozen, validated, JSON-serialisable.

One request carries everything a job needs, so the same object drives the UI,
the CLI, the history (exact replay) and, later, a remote worker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from PIL import Image

from desktop_app.core.errors import InvalidRequest
from desktop_app.core.images import image_from_data_url, image_to_data_url

# Scheduler ids, with the names AUTOMATIC1111 writes as "Sampler".
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
}
EDIT_METHODS = ("ddim", "negative-prompt", "direct")
# How a source image of another shape than the work size is mapped onto it (AUTOMATIC1111's names).
JUST_RESIZE = "just_resize"  # stretch to the work size
CROP_AND_RESIZE = "crop_and_resize"  # scale to cover the work size, cut the overhang (centred)
RESIZE_AND_FILL = "resize_and_fill"  # scale to fit inside, fill the bands with the image's stretched edges
RESIZE_MODES: dict[str, str] = {
    JUST_RESIZE: "Just resize",
    CROP_AND_RESIZE: "Crop and resize",
    RESIZE_AND_FILL: "Resize and fill",
}
DEFAULT_RESIZE_MODE = JUST_RESIZE
MAX_SEED = 2**32 - 1
_IMAGE_FIELDS = ("image", "mask")


def _check_range(name: str, value: float, low: float, high: float, hint: str) -> None:
    if not (low <= value <= high):
        raise InvalidRequest(f"{name} is {value}; it must be between {low} and {high}.", hint)


@dataclass(frozen=True)
class GenerateRequest:
    """Text to image. None means "the model's default" and is filled by `with_defaults`."""

    kind: ClassVar[str] = "generate"

    prompt: str = ""
    negative_prompt: str = ""
    model: str = "builtin"
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    batch: int = 1
    scheduler: str | None = None
    previews: bool = True
    trajectory: bool = True
    loras: tuple[tuple[str, float], ...] = ()  # (path, weight) per LoRA

    # -- defaults and checks -------------------------------------------------
    def with_defaults(self, **defaults: Any) -> GenerateRequest:
        """Fill fields left as None from `defaults` (the model's recommended settings)."""
        changes = {
            k: v for k, v in defaults.items() if k in self.field_names() and getattr(self, k) is None and v is not None
        }
        return dataclasses.replace(self, **changes) if changes else self

    def replace(self, **changes: Any) -> GenerateRequest:
        return dataclasses.replace(self, **changes)

    def validate(self) -> GenerateRequest:
        """Raise InvalidRequest naming the first parameter out of range; return self."""
        for name, value in (("Width", self.width), ("Height", self.height)):
            if value is None:
                continue
            if value % 8:
                raise InvalidRequest(
                    f"{name} {value} is not a multiple of 8.", f"Use {value - value % 8} or {value - value % 8 + 8}."
                )
            _check_range(name, value, 64, 2048, "Pick a size between 64 and 2048 pixels.")
        if self.steps is not None:
            if not isinstance(self.steps, int):
                raise InvalidRequest(f"Steps must be a whole number, not {self.steps!r}.", "Use 20 to 50.")
            _check_range("Steps", self.steps, 1, 150, "20 to 50 steps suit most models.")
        if self.guidance is not None:
            _check_range("Guidance", self.guidance, 0, 30, "Guidance (CFG scale) of 5 to 9 suits most models.")
        if self.seed is not None:
            _check_range("Seed", self.seed, 0, MAX_SEED, "Leave the seed empty for a random one.")
        _check_range("Batch", self.batch, 1, 16, "Make at most 16 images per job.")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InvalidRequest(f"Unknown scheduler {self.scheduler!r}.", "Choose one of: " + ", ".join(SCHEDULERS))
        for _path, weight in self.loras:
            _check_range("LoRA weight", weight, -4, 4, "0.5 to 1 suits most LoRAs.")
        self._validate_images()
        return self

    def _validate_images(self) -> None:
        pass

    # -- serialisation -------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self, include_images: bool = True) -> dict[str, Any]:
        """JSON-ready dict; images become PNG data URLs (or are left out)."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _IMAGE_FIELDS:
                if value is not None and include_images:
                    out[f.name] = image_to_data_url(value)
                continue
            out[f.name] = value
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> GenerateRequest:
        kind = data.get("kind", "generate")
        cls = REQUEST_TYPES.get(kind)
        if cls is None:
            raise InvalidRequest(f"Unknown request kind {kind!r}.", "Known: " + ", ".join(REQUEST_TYPES))
        known = set(cls.field_names())
        kwargs = {k: v for k, v in data.items() if k in known}
        if "loras" in kwargs:
            kwargs["loras"] = tuple((str(p), float(w)) for p, w in kwargs["loras"])
        for name in _IMAGE_FIELDS:
            if isinstance(kwargs.get(name), str):
                kwargs[name] = image_from_data_url(kwargs[name])
        return cls(**kwargs)


def _check_mask(image: Image.Image | None, mask: Image.Image | None, required: bool) -> None:
    if mask is None:
        if required:
            raise InvalidRequest("Inpainting needs a mask.", "Paint the area to change on the canvas.")
        return
    if image is not None and mask.size != image.size:
        raise InvalidRequest(
            f"The mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}.",
            "Use a mask of the same size as the image.",
        )
    if mask.convert("L").getextrema()[1] == 0:
        raise InvalidRequest("The mask is empty.", "Paint the area to change on the canvas.")


def _check_image(image: Image.Image | None, what: str) -> None:
    if image is None:
        raise InvalidRequest(f"{what} needs a source image.", "Open an image first.")


def _check_resize_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise InvalidRequest(f"Unknown resize mode {mode!r}.", "Choose one of: " + ", ".join(RESIZE_MODES))


def _check_mask_grow(grow: int) -> None:
    if not isinstance(grow, int) or isinstance(grow, bool):
        raise InvalidRequest(
            f"Mask grow must be a whole number of pixels, not {grow!r}.", "Use 0 to keep the mask as painted."
        )
    _check_range(
        "Mask grow", grow, 0, 256, "0 keeps the mask as painted; a few pixels let the change spill over its edge."
    )


@dataclass(frozen=True)
class Img2ImgRequest(GenerateRequest):
    """Image to image: the source is noised to `strength` and denoised under the prompt."""

    kind: ClassVar[str] = "img2img"
    image: Image.Image | None = field(default=None, compare=False)
    strength: float = 0.6
    resize_mode: str = DEFAULT_RESIZE_MODE

    def _validate_images(self) -> None:
        _check_image(self.image, "Image to image")
        _check_resize_mode(self.resize_mode)
        _check_range("Strength", self.strength, 0, 1, "0.3 keeps most of the image, 0.8 changes much.")


@dataclass(frozen=True)
class InpaintRequest(GenerateRequest):
    """Only the painted region changes: the feather lies inside it, so every unpainted pixel stays the source's.

    `mask_grow` grows the painted mask outward by that many pixels first (the change may then spill over)."""

    kind: ClassVar[str] = "inpaint"
    image: Image.Image | None = field(default=None, compare=False)
    mask: Image.Image | None = field(default=None, compare=False)
    strength: float = 1.0
    mask_blur: int = 4
    only_masked: bool = False
    only_masked_padding: int = 32
    mask_grow: int = 0
    resize_mode: str = DEFAULT_RESIZE_MODE

    def _validate_images(self) -> None:
        _check_image(self.image, "Inpainting")
        _check_mask(self.image, self.mask, required=True)
        _check_range("Strength", self.strength, 0, 1, "Use 1.0 to repaint the masked area fully.")
        _check_range("Mask blur", self.mask_blur, 0, 64, "A few pixels of feather is usual.")
        _check_mask_grow(self.mask_grow)
        _check_resize_mode(self.resize_mode)


@dataclass(frozen=True)
class EditRequest(GenerateRequest):
    """Inversion-based edit: invert `image` under `source_prompt` to t0, regenerate under `prompt`."""

    kind: ClassVar[str] = "edit"
    image: Image.Image | None = field(default=None, compare=False)
    mask: Image.Image | None = field(default=None, compare=False)
    source_prompt: str = ""
    t0: int | None = None
    strength: float | None = None
    method: str = "direct"
    mask_blur: int = 4
    mask_grow: int = 0
    resize_mode: str = DEFAULT_RESIZE_MODE

    def _validate_images(self) -> None:
        _check_image(self.image, "Editing")
        _check_mask(self.image, self.mask, required=False)
        _check_range("Mask blur", self.mask_blur, 0, 64, "A few pixels of feather is usual.")
        _check_mask_grow(self.mask_grow)
        _check_resize_mode(self.resize_mode)
        if self.method not in EDIT_METHODS:
            raise InvalidRequest(f"Unknown edit method {self.method!r}.", "Choose one of: " + ", ".join(EDIT_METHODS))
        if self.t0 is not None:
            _check_range("t0", self.t0, 1, 999, "t0 is a timestep between 1 and 999 (deeper changes more).")
        if self.strength is not None:
            _check_range("Strength", self.strength, 0, 1, "0.5 to 0.8 suits most edits.")


Request = GenerateRequest
REQUEST_TYPES: dict[str, type[GenerateRequest]] = {
    cls.kind: cls for cls in (GenerateRequest, Img2ImgRequest, InpaintRequest, EditRequest)
}
