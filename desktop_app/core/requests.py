"""Plain-data job requests: frozen, validated, JSON-serialisable.

One request carries everything a job needs, so the same object drives the UI,
the CLI, the history (exact replay) and, later, a remote worker.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from PIL import Image

from desktop_app.core.errors import InvalidRequest
from desktop_app.core.images import image_from_data_url, image_to_data_url
from desktop_app.core.samplers import SAMPLERS, SCHEDULES, check_pair

SCHEDULERS = SAMPLERS  # the old name: sampler id -> the name AUTOMATIC1111 writes as "Sampler"
# Edit methods by model family: the Stable Diffusion (DDPM-time) inversions and LEDITS++; the flow-model ones
# (SD 3.5, Flux): ODE inversions (FireFlow, RF-Solver, RF-Inversion) and Kontext instruction edits.
SD_EDIT_METHODS = ("ddim", "negative-prompt", "direct", "ledits")
FLOW_EDIT_METHODS = ("fireflow", "rf-solver", "rf-inversion", "kontext")
EDIT_METHODS = SD_EDIT_METHODS + FLOW_EDIT_METHODS
EDIT_METHOD_NAMES: dict[str, str] = {
    "ddim": "Plain DDIM inversion",
    "negative-prompt": "Negative-prompt inversion",
    "direct": "Direct inversion",
    "ledits": "LEDITS++",
    "fireflow": "FireFlow",
    "rf-solver": "RF-Solver",
    "rf-inversion": "RF-Inversion",
    "kontext": "Kontext instruction",
}
# Attention control over an inversion edit: "off", or Prompt-to-Prompt (word swap / refinement by the prompts'
# token alignment, re-weighting by `reweight`, local blend by `local_blend`, self-attention injection).
ATTENTION_CONTROLS: dict[str, str] = {"off": "Off", "p2p": "Prompt-to-Prompt"}
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
MAX_CLIP_SKIP = 12
# How regional prompts act (A1111 Regional Prompter's names): "attention" masks cross-attention per region in one
# UNet call; "latent" runs the UNet once per region, on the region's box, and blends the predictions by the masks.
REGION_MODES: dict[str, str] = {"attention": "Attention", "latent": "Latent"}
DEFAULT_REGION_MODE = "attention"
# What fills the masked area before denoising (A1111's "Masked content").
MASKED_CONTENT: dict[str, str] = {
    "original": "original",
    "fill": "fill",
    "latent_noise": "latent noise",
    "latent_nothing": "latent nothing",
}
# What fills the new area of an outpaint before it is generated.
OUTPAINT_FILLS: dict[str, str] = {"edge": "Edge stretch", "blur": "Blurred edge", "noise": "Noise"}
MAX_CANVAS = 2048


@dataclass(frozen=True)
class RegionPrompt:
    """One painted region with its own prompt: `mask` (mode "L", 255 = in the region) is at the size of the
    picture the job makes (the source image's, or width x height for text to image); `weight` scales how strongly
    the region's prompt wins over the base prompt inside it."""

    prompt: str
    mask: Image.Image = field(compare=False)
    weight: float = 1.0

    def to_dict(self, include_images: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.prompt, "weight": self.weight}
        if include_images:
            out["mask"] = image_to_data_url(self.mask)
        return out

    @staticmethod
    def from_dict(data: Any) -> RegionPrompt:
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("prompt"), str)
            or not isinstance(data.get("mask"), (str, Image.Image))
        ):
            raise InvalidRequest(
                f"A region is not a prompt with a mask: {_show(data)}.", "Paint the regions again on the canvas."
            )
        weight = _as_number(data.get("weight", 1.0))
        if weight is None:
            raise InvalidRequest(f"A region's weight is not a number: {_show(data.get('weight'))}.", "Use 1.0.")
        mask = data["mask"]
        mask = image_from_data_url(mask) if isinstance(mask, str) else mask
        return RegionPrompt(data["prompt"], mask.convert("L"), float(weight))


@dataclass(frozen=True)
class EditConcept:
    """One LEDITS++ edit concept: a text to add (or, with `remove`, to take away), its own guidance, and the
    threshold of its implicit mask (0.9 keeps the top 10% of the concept's attention; lower edits a wider area)."""

    prompt: str
    guidance: float = 7.0
    remove: bool = False
    threshold: float = 0.9

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "guidance": self.guidance, "remove": self.remove, "threshold": self.threshold}

    @staticmethod
    def from_dict(data: Any) -> EditConcept:
        if isinstance(data, EditConcept):
            return data
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise InvalidRequest(f"An edit concept is not a prompt: {_show(data)}.", "Write the edit concepts again.")
        guidance, threshold = _as_number(data.get("guidance", 7.0)), _as_number(data.get("threshold", 0.9))
        remove = data.get("remove", False)
        if guidance is None or threshold is None or not isinstance(remove, bool):
            raise InvalidRequest(
                f"An edit concept's guidance, threshold or direction is not valid: {_show(data)}.",
                "Use a guidance such as 7, a threshold such as 0.9 and remove true or false.",
            )
        return EditConcept(data["prompt"], float(guidance), remove, float(threshold))


def parse_edit_concepts(text: str) -> tuple[EditConcept, ...]:
    """Edit concepts as the CLI and the window write them, one per line (or `;`-separated):
    `+ a blue hat` adds, `- a red scarf` removes, an optional `@ 9` sets its guidance and `@ 9 / 0.8` the threshold
    too; a line without a sign adds."""
    concepts = []
    for raw in text.replace(";", "\n").splitlines():
        line = raw.strip()
        if not line:
            continue
        remove = line.startswith("-")
        line = line[1:].strip() if line[:1] in "+-" else line
        guidance, threshold = 7.0, 0.9
        if "@" in line:
            line, _, tail = line.rpartition("@")
            numbers = [part.strip() for part in tail.split("/")]
            try:
                guidance = float(numbers[0])
                if len(numbers) > 1:
                    threshold = float(numbers[1])
            except ValueError:
                raise InvalidRequest(
                    f"The edit concept {raw.strip()!r} has no number after @.",
                    "Write it as '+ a blue hat @ 7' (guidance) or '+ a blue hat @ 7 / 0.9' (and threshold).",
                ) from None
        line = line.strip()
        if not line:
            raise InvalidRequest(f"The edit concept {raw.strip()!r} has no words.", "Write what to add or remove.")
        concepts.append(EditConcept(line, guidance, remove, threshold))
    return tuple(concepts)


def format_edit_concepts(concepts: tuple[EditConcept, ...]) -> str:
    """The text form `parse_edit_concepts` reads back (one concept per line)."""
    lines = []
    for c in concepts:
        tail = f" @ {c.guidance:g}" + (f" / {c.threshold:g}" if c.threshold != 0.9 else "")
        lines.append(f"{'-' if c.remove else '+'} {c.prompt}{tail}")
    return "\n".join(lines)


def parse_reweight(text: str) -> tuple[tuple[str, float], ...]:
    """Prompt-to-Prompt re-weighting as written: `blue:2, circle:0.5` (word or words, then the attention scale)."""
    pairs = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        word, sep, number = part.rpartition(":")
        try:
            weight = float(number) if sep else math.nan
        except ValueError:
            weight = math.nan
        if not sep or not word.strip() or not math.isfinite(weight):
            raise InvalidRequest(
                f"The re-weighting {part!r} is not a word and a scale.", "Write it as 'blue:2' or 'blue:2, circle:0.5'."
            )
        pairs.append((word.strip(), weight))
    return tuple(pairs)


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
    scheduler: str | None = None  # a sampler id of core.samplers (None: the model's own)
    schedule: str | None = None  # a schedule id of core.samplers: "karras", "exponential", ... (None: the sampler's)
    clip_skip: int | None = None  # A1111's "Clip skip": 1 uses the text encoder's last layer, 2 the one before
    regions: tuple[RegionPrompt, ...] = field(default=(), compare=False)  # regional prompts over the base prompt
    region_mode: str = DEFAULT_REGION_MODE  # a key of REGION_MODES
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
        """Raise InvalidRequest naming the first parameter of the wrong type or out of range; return self."""
        self.check_types()
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
        if self.scheduler is not None and self.scheduler not in SAMPLERS:
            raise InvalidRequest(
                f"Unknown sampler (scheduler) {self.scheduler!r}.", "Choose one of: " + ", ".join(SAMPLERS)
            )
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise InvalidRequest(f"Unknown schedule type {self.schedule!r}.", "Choose one of: " + ", ".join(SCHEDULES))
        if self.scheduler is not None:
            check_pair(self.scheduler, self.schedule)
        for _path, weight in self.loras:
            _check_range("LoRA weight", weight, -4, 4, "0.5 to 1 suits most LoRAs.")
        if self.clip_skip is not None:
            _check_range(
                "Clip skip", self.clip_skip, 1, MAX_CLIP_SKIP, "1 (none) suits most models; 2 some anime ones."
            )
        self._validate_images()
        self._validate_regions()
        return self

    def _validate_images(self) -> None:
        pass

    def _validate_regions(self) -> None:
        """Every region's mask has the size of the picture: the source image's, else width x height."""
        if self.region_mode not in REGION_MODES:
            raise InvalidRequest(
                f"Unknown region mode {self.region_mode!r}.", "Choose one of: " + ", ".join(REGION_MODES)
            )
        if not self.regions:
            return
        image = getattr(self, "image", None)
        size = image.size if image is not None else (self.width, self.height)
        for i, region in enumerate(self.regions, 1):
            _check_range(f"Region {i}'s weight", region.weight, 0, 4, "1.0 is a region as strong as the base prompt.")
            if None not in size and region.mask.size != size:
                raise InvalidRequest(
                    f"Region {i}'s mask is {region.mask.width}x{region.mask.height} but the picture is "
                    f"{size[0]}x{size[1]}.",
                    "Paint the regions on this picture again.",
                )

    # -- serialisation -------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self, include_images: bool = True) -> dict[str, Any]:
        """JSON-ready dict; images become PNG data URLs (or are left out)."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "regions":
                out[f.name] = [region.to_dict(include_images) for region in value]
                continue
            if f.name == "edit_concepts":
                out[f.name] = [concept.to_dict() for concept in value]
                continue
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
            kwargs["loras"] = _loras(kwargs["loras"])
        if "regions" in kwargs:
            regions = kwargs["regions"]
            if not isinstance(regions, (list, tuple)):
                raise InvalidRequest(f"Regions must be a list, not {_show(regions)}.", "Paint the regions again.")
            # written without images (our PNG chunk, a history row: to_dict(include_images=False)) a region is a
            # prompt and weight with no mask: it cannot be rebuilt and is left out, so the rest of the request (its
            # region mode too) still reads, instead of the whole request being refused
            kwargs["regions"] = tuple(
                RegionPrompt.from_dict(region)
                for region in regions
                if not (isinstance(region, dict) and "mask" not in region and isinstance(region.get("prompt"), str))
            )
        if "edit_concepts" in kwargs:
            concepts = kwargs["edit_concepts"]
            if not isinstance(concepts, (list, tuple)):
                raise InvalidRequest(f"Edit concepts must be a list, not {_show(concepts)}.", "Write them again.")
            kwargs["edit_concepts"] = tuple(EditConcept.from_dict(c) for c in concepts)
        if "extend" in kwargs:
            extend = kwargs["extend"]
            if not isinstance(extend, (list, tuple)) or len(extend) != 4:
                raise InvalidRequest(
                    f"Extend must be four numbers, not {_show(extend)}.", "Use left, top, right, bottom."
                )
            kwargs["extend"] = tuple(extend)
        for name in _IMAGE_FIELDS:
            if isinstance(kwargs.get(name), str):
                kwargs[name] = image_from_data_url(kwargs[name])
        request = cls(**kwargs)
        request.check_types()
        return request

    def check_types(self) -> None:
        """Raise InvalidRequest naming the first field whose value has the wrong type (metadata may hold
        `{"batch": null}` or `{"width": "x"}`); None passes only where it means the model's default."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = _FIELD_TYPES.get(f.name)
            if kind is None or (value is None and f.default is None):
                continue
            if kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif kind is float:
                ok = (isinstance(value, int) and not isinstance(value, bool)) or (
                    isinstance(value, float) and math.isfinite(value)
                )
            else:
                ok = isinstance(value, kind)
            if not ok:
                what = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}[kind]
                raise InvalidRequest(
                    f"{_LABELS.get(f.name, f.name)} must be {what}, not {_show(value)}.",
                    "The parameters may come from a damaged or foreign file; set this one by hand.",
                )


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
    masked_content: str = "original"  # a key of MASKED_CONTENT
    soft_mask: bool = False  # grey levels are per-pixel strength (differential diffusion); False: as painted, hard
    color_match: bool = False  # match the generated region's colours to its surroundings
    blend_band: int = 0  # px of a blend band at the mask's border, outside it (0: none)
    # Outpainting: pixels added (left, top, right, bottom) around the image; the new area (plus `outpaint_overlap`
    # px into the image, feathered) is filled with `outpaint_fill` and generated. The mask is then optional.
    extend: tuple[int, int, int, int] = (0, 0, 0, 0)
    outpaint_fill: str = "edge"  # a key of OUTPAINT_FILLS
    outpaint_overlap: int = 16

    @property
    def outpaints(self) -> bool:
        return any(self.extend)

    def _validate_images(self) -> None:
        _check_image(self.image, "Inpainting")
        _check_mask(self.image, self.mask, required=not self.outpaints)
        _check_range("Strength", self.strength, 0, 1, "Use 1.0 to repaint the masked area fully.")
        _check_range("Mask blur", self.mask_blur, 0, 64, "A few pixels of feather is usual.")
        _check_mask_grow(self.mask_grow)
        _check_resize_mode(self.resize_mode)
        if self.masked_content not in MASKED_CONTENT:
            raise InvalidRequest(
                f"Unknown masked content {self.masked_content!r}.", "Choose one of: " + ", ".join(MASKED_CONTENT)
            )
        if self.outpaint_fill not in OUTPAINT_FILLS:
            raise InvalidRequest(
                f"Unknown outpaint fill {self.outpaint_fill!r}.", "Choose one of: " + ", ".join(OUTPAINT_FILLS)
            )
        _check_range("Blend band", self.blend_band, 0, 64, "8 to 16 px hides a seam; 0 keeps every pixel outside.")
        _check_range("Outpaint overlap", self.outpaint_overlap, 0, 256, "16 to 32 px blends the new area in.")
        if len(self.extend) != 4 or any(not isinstance(v, int) or isinstance(v, bool) for v in self.extend):
            raise InvalidRequest(
                f"Extend must be four whole numbers, not {_show(self.extend)}.", "Use left, top, right, bottom."
            )
        for side, value in zip(("left", "top", "right", "bottom"), self.extend):
            _check_range(f"Extend {side}", value, 0, MAX_CANVAS, "Add at most 2048 px on a side.")
        if self.image is not None and self.outpaints:
            width = self.image.width + self.extend[0] + self.extend[2]
            height = self.image.height + self.extend[1] + self.extend[3]
            if width > MAX_CANVAS or height > MAX_CANVAS:
                raise InvalidRequest(
                    f"The extended canvas would be {width}x{height}; at most {MAX_CANVAS}x{MAX_CANVAS} is supported.",
                    "Extend by less, or outpaint in several steps on a smaller image.",
                )


@dataclass(frozen=True)
class EditRequest(GenerateRequest):
    """Inversion-based edit: invert `image` under `source_prompt` to t0, regenerate under `prompt`."""

    kind: ClassVar[str] = "edit"
    image: Image.Image | None = field(default=None, compare=False)
    mask: Image.Image | None = field(default=None, compare=False)
    source_prompt: str = ""
    t0: int | None = None
    strength: float | None = None
    method: str | None = None  # a key of EDIT_METHODS; None: the model's recommended one (engine fills it)
    mask_blur: int = 4
    mask_grow: int = 0
    resize_mode: str = DEFAULT_RESIZE_MODE
    # Prompt-to-Prompt attention control over ddim / negative-prompt / direct (None: the model's default)
    attention_control: str | None = None  # a key of ATTENTION_CONTROLS
    cross_replace: float | None = None  # share of the steps (from t0) the source's cross-attention maps are kept
    self_replace: float | None = None  # share of the steps the source's self-attention is injected (structure)
    local_blend: bool | None = None  # only where the changed words attend may the latent change
    reweight: str = ""  # "word:scale, ...": scale the target's attention to these words (parse_reweight)
    edit_concepts: tuple[EditConcept, ...] = ()  # LEDITS++: what to add and remove, each with its guidance

    def _validate_images(self) -> None:
        _check_image(self.image, "Editing")
        _check_mask(self.image, self.mask, required=False)
        _check_range("Mask blur", self.mask_blur, 0, 64, "A few pixels of feather is usual.")
        _check_mask_grow(self.mask_grow)
        _check_resize_mode(self.resize_mode)
        if self.method is not None and self.method not in EDIT_METHODS:
            raise InvalidRequest(f"Unknown edit method {self.method!r}.", "Choose one of: " + ", ".join(EDIT_METHODS))
        if self.attention_control is not None and self.attention_control not in ATTENTION_CONTROLS:
            raise InvalidRequest(
                f"Unknown attention control {self.attention_control!r}.",
                "Choose one of: " + ", ".join(ATTENTION_CONTROLS),
            )
        for name, value in (
            ("Cross-attention replace", self.cross_replace),
            ("Self-attention replace", self.self_replace),
        ):
            if value is not None:
                _check_range(name, value, 0, 1, "A share of the steps: 0.8 for cross-attention, 0.4 for self.")
        parse_reweight(self.reweight)  # raises on a malformed one
        for concept in self.edit_concepts:
            _check_range("An edit concept's guidance", concept.guidance, 0, 30, "5 to 10 suits most concepts.")
            _check_range(
                "An edit concept's threshold", concept.threshold, 0, 1, "0.9 edits a small area, 0.5 a wide one."
            )
        if self.method == "ledits" and not self.edit_concepts:
            raise InvalidRequest(
                "A LEDITS++ edit needs at least one edit concept.",
                "Add one, such as '+ a blue circle' (add) or '- a red circle' (remove).",
            )
        if self.t0 is not None:
            _check_range("t0", self.t0, 1, 999, "t0 is a timestep between 1 and 999 (deeper changes more).")
        if self.strength is not None:
            _check_range("Strength", self.strength, 0, 1, "0.5 to 0.8 suits most edits.")
            if (
                self.strength == 0
            ):  # refused before the model loads (img2img at 0 returns the source; an edit has no depth)
                raise InvalidRequest(
                    "Strength 0 would edit nothing: an edit inverts the image to a depth above 0.",
                    "Use a strength of 0.5 to 1 (deeper changes more).",
                )


Request = GenerateRequest

# -- requests read from files: types and ranges ---------------------------------------------------------------------
_FIELD_TYPES: dict[str, type] = {
    "prompt": str,
    "negative_prompt": str,
    "model": str,
    "steps": int,
    "guidance": float,
    "width": int,
    "height": int,
    "seed": int,
    "batch": int,
    "scheduler": str,
    "schedule": str,
    "clip_skip": int,
    "region_mode": str,
    "masked_content": str,
    "soft_mask": bool,
    "color_match": bool,
    "blend_band": int,
    "outpaint_fill": str,
    "outpaint_overlap": int,
    "previews": bool,
    "trajectory": bool,
    "strength": float,
    "resize_mode": str,
    "mask_blur": int,
    "only_masked": bool,
    "only_masked_padding": int,
    "mask_grow": int,
    "source_prompt": str,
    "t0": int,
    "method": str,
    "attention_control": str,
    "cross_replace": float,
    "self_replace": float,
    "local_blend": bool,
    "reweight": str,
}
# The ranges `validate` enforces (and the window's fields hold).
_RANGES: dict[str, tuple[float, float]] = {
    "steps": (1, 150),
    "guidance": (0, 30),
    "width": (64, 2048),
    "height": (64, 2048),
    "seed": (0, MAX_SEED),
    "batch": (1, 16),
    "strength": (0, 1),
    "mask_blur": (0, 64),
    "mask_grow": (0, 256),
    "only_masked_padding": (0, 256),
    "t0": (1, 999),
    "clip_skip": (1, MAX_CLIP_SKIP),
    "blend_band": (0, 64),
    "outpaint_overlap": (0, 256),
}
_LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "model": "Model",
    "steps": "Steps",
    "guidance": "Guidance",
    "width": "Width",
    "height": "Height",
    "seed": "Seed",
    "batch": "Batch",
    "scheduler": "Sampler",
    "schedule": "Schedule type",
    "clip_skip": "Clip skip",
    "regions": "Regions",
    "region_mode": "Region mode",
    "masked_content": "Masked content",
    "soft_mask": "Soft inpainting",
    "color_match": "Colour match",
    "blend_band": "Blend band",
    "extend": "Extend",
    "outpaint_fill": "Outpaint fill",
    "outpaint_overlap": "Outpaint overlap",
    "strength": "Strength",
    "resize_mode": "Resize mode",
    "mask_blur": "Mask blur",
    "only_masked": "Only masked",
    "only_masked_padding": "Padding",
    "mask_grow": "Mask grow",
    "source_prompt": "Source prompt",
    "t0": "t0",
    "method": "Edit method",
    "attention_control": "Attention control",
    "cross_replace": "Cross-attention replace",
    "self_replace": "Self-attention replace",
    "local_blend": "Local blend",
    "reweight": "Re-weight",
    "edit_concepts": "Edit concepts",
    "kind": "Mode",
    "loras": "LoRAs",
    "previews": "Previews",
    "trajectory": "Trajectory",
}
# None means "the model's default" (or "random" for the seed) for these; elsewhere it is a value that is missing.
_OPTIONAL = frozenset(
    {
        "steps",
        "guidance",
        "width",
        "height",
        "seed",
        "scheduler",
        "schedule",
        "clip_skip",
        "t0",
        "strength",
        "method",
        "attention_control",
        "cross_replace",
        "self_replace",
        "local_blend",
    }
)
_CHOICES: dict[str, Any] = {
    "scheduler": SAMPLERS,
    "schedule": SCHEDULES,
    "method": EDIT_METHODS,
    "attention_control": ATTENTION_CONTROLS,
    "resize_mode": RESIZE_MODES,
    "region_mode": REGION_MODES,
    "masked_content": MASKED_CONTENT,
    "outpaint_fill": OUTPAINT_FILLS,
}
MAX_TEXT_CHARS = 20_000  # a prompt longer than this is cut (metadata can hold megabytes)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "…"


def _show_number(value: Any) -> str:
    """A number as the file wrote it (a numeric string without its quotes)."""
    return _show(value.strip()).strip("'") if isinstance(value, str) else _show(value)


def _as_number(value: Any) -> float | int | None:
    """A number from a number or a numeric string; None when it is neither (bools, NaN, infinities, "x")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 64:
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return None


def _loras(value: Any) -> tuple[tuple[str, float], ...]:
    """(path, weight) pairs; raises InvalidRequest on anything else."""
    if not isinstance(value, (list, tuple)):
        raise InvalidRequest(f"LoRAs must be a list of (file, weight), not {_show(value)}.", "Add the LoRAs by hand.")
    out = []
    for item in value:
        weight = _as_number(item[1]) if isinstance(item, (list, tuple)) and len(item) == 2 else None
        if weight is None or not isinstance(item[0], str):
            raise InvalidRequest(f"A LoRA entry is not (file, weight): {_show(item)}.", "Add the LoRAs by hand.")
        out.append((item[0], float(weight)))
    return tuple(out)


def sanitize_params(data: Any) -> tuple[dict[str, Any], list[str]]:
    """Request fields read from a file (our JSON, AUTOMATIC1111 text, InvokeAI, settings) made safe to use.

    Returns the fields with typed values (numeric strings become numbers, whole-number fields ints) and a notice
    for each change: a value out of range is clamped to it ("Steps 99999999999999999999 is out of range (1 to
    150): 150 is used"); one of the wrong type, an unknown sampler / mode / method, NaN or infinity is left out
    (the field keeps what it had). Keys it does not know are passed through; images are left to `from_dict`.
    Never raises."""
    if not isinstance(data, dict):
        return {}, [f"The parameters are not a set of fields ({type(data).__name__}); none were used."]
    out: dict[str, Any] = {}
    notices: list[str] = []

    def drop(name: str, value: Any, why: str) -> None:
        notices.append(f"{_LABELS.get(name, name)} {_show(value)} {why}: left out")

    for key, value in data.items():
        name = str(key)
        if name == "kind":
            if isinstance(value, str) and value in REQUEST_TYPES:
                out[name] = value
            else:
                drop(name, value, "is not a mode")
            continue
        kind = _FIELD_TYPES.get(name)
        if name == "loras":
            try:
                loras = _loras(value)
            except InvalidRequest:
                drop(name, value, "is not a list of (file, weight)")
                continue
            if any(not -4 <= weight <= 4 for _path, weight in loras):
                notices.append("A LoRA weight is out of range (-4 to 4): clamped")
            out[name] = tuple((path, min(4.0, max(-4.0, weight))) for path, weight in loras)
            continue
        if kind is None:
            out[name] = value  # unknown keys, images: not ours to judge here
            continue
        if value is None:
            if name in _OPTIONAL:
                out[name] = None
            elif kind is str:
                out[name] = ""
            else:
                notices.append(f"{_LABELS.get(name, name)} is empty: left out")
            continue
        if kind is str:
            if not isinstance(value, str):
                drop(name, value, "is not text")
                continue
            if len(value) > MAX_TEXT_CHARS:
                notices.append(f"{_LABELS[name]} is {len(value):,} characters long: cut to {MAX_TEXT_CHARS:,}")
                value = value[:MAX_TEXT_CHARS]
            choices = _CHOICES.get(name)
            if choices is not None and value not in choices:
                if name in ("scheduler", "schedule") and value == "":
                    out[name] = None
                    continue
                drop(name, value, "is not known")
                continue
            out[name] = value
            continue
        if kind is bool:
            flag = _as_bool(value)
            if flag is None:
                drop(name, value, "is not true or false")
            else:
                out[name] = flag
            continue
        number = _as_number(value)
        if number is None:
            drop(name, value, "is not a number")
            continue
        if kind is int:
            if isinstance(number, float):
                if number != int(number):
                    number = round(number)
                number = int(number)
        else:
            number = float(number)
        low, high = _RANGES.get(name, (-math.inf, math.inf))
        if name == "seed" and not low <= number <= high:
            notices.append(f"Seed {_show_number(value)} is out of range (0 to {MAX_SEED}): a random seed is used")
            out[name] = None
            continue
        if number < low or number > high:
            clamped = type(number)(min(max(number, low), high))
            notices.append(
                f"{_LABELS[name]} {_show_number(value)} is out of range ({_number_text(low)} to {_number_text(high)}): "
                f"{_number_text(clamped)} is used"
            )
            number = clamped
        if name in ("width", "height") and number % 8:
            rounded = max(64, min(2048, int(round(number / 8)) * 8))
            notices.append(f"{_LABELS[name]} {number} is not a multiple of 8: {rounded} is used")
            number = rounded
        out[name] = number
    return out, notices


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


REQUEST_TYPES: dict[str, type[GenerateRequest]] = {
    cls.kind: cls for cls in (GenerateRequest, Img2ImgRequest, InpaintRequest, EditRequest)
}
