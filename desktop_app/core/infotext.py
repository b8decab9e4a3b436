"""Generation parameters inside PNG files: write ours, read ours, AUTOMATIC1111's and InvokeAI's.

Two text chunks go into every PNG Diffusion Desk writes:

- ``parameters``: the AUTOMATIC1111 "infotext" that other tools read::

      a red cube on a table
      Negative prompt: blurry
      Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 1a2b3c4d5e, Model: builtin, Mode: generate

  Line 1 (and following) the prompt, then ``Negative prompt: ...`` (omitted when
  empty), then one line of ``key: value`` pairs. A value containing ``,``, ``:``
  or a newline is written JSON-quoted. Our own fields (mode, t0, edit method,
  source prompt) sit in the same line under their own keys.
- ``diffusion_desk``: our request as JSON, for exact replay.

Reading never raises anything but `MetadataError` (a `UserError`), whatever the
file holds. Plain data: no Qt, no torch.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from desktop_app.core.errors import ImageError, UserError
from desktop_app.core.metadata import (
    MAX_INFOTEXT_CHARS,
    MetadataError,
    ParsedInfo,
    model_name,
    nothing_readable,
    read_other_formats,
    read_sampler,
)
from desktop_app.core.requests import (
    ATTENTION_CONTROLS,
    DEFAULT_RESIZE_MODE,
    EDIT_METHOD_NAMES,
    MASKED_CONTENT,
    OUTPAINT_FILLS,
    REQUEST_TYPES,
    RESIZE_MODES,
    GenerateRequest,
    format_edit_concepts,
    parse_edit_concepts,
    sanitize_params,
)
from desktop_app.core.samplers import a1111_names

if TYPE_CHECKING:
    from desktop_app.core.events import Result

PARAMETERS_KEY = "parameters"
OUR_KEY = "diffusion_desk"
FORMAT_VERSION = 1
# "Resize mode: Crop and resize": the names AUTOMATIC1111's img2img tab shows (its infotext has no such key); ids too
_RESIZE_MODE_TO_ID = {**{sid: sid for sid in RESIZE_MODES}, **{name.lower(): sid for sid, name in RESIZE_MODES.items()}}


# --------------------------------------------------------------------------- format

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def quote(value: Any) -> str:
    """AUTOMATIC1111's quoting: JSON-quote values with ``,`` ``:`` or a newline (and ours that would misparse)."""
    text = str(value)
    if (
        "," not in text
        and ":" not in text
        and not _CONTROL_RE.search(text)
        and not text.startswith('"')
        and text == text.strip()
    ):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _image_size(request: GenerateRequest, size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is not None:
        return size
    if request.width and request.height:
        return request.width, request.height
    image = getattr(request, "image", None)
    return image.size if image is not None else None


def parameter_pairs(
    request: GenerateRequest,
    seed: int | None,
    model_id: str = "",
    model_hash: str = "",
    extra: dict[str, Any] | None = None,
    size: tuple[int, int] | None = None,
) -> list[tuple[str, Any]]:
    """The ``key: value`` pairs of the last infotext line, in order, before quoting."""
    pairs: list[tuple[str, Any]] = []
    pairs.append(("Steps", request.steps))
    if request.scheduler:
        try:
            sampler, schedule = a1111_names(request.scheduler, getattr(request, "schedule", None))
        except UserError:  # a request that skipped validation: say what it held
            sampler, schedule = request.scheduler, getattr(request, "schedule", None)
        pairs.append(("Sampler", sampler))
        pairs.append(("Schedule type", schedule))
    distilled = (extra or {}).get(DISTILLED_CFG)
    if distilled is not None:  # FLUX.1's guidance is distilled, not CFG: written as Forge writes it, CFG scale 1
        pairs.append(("CFG scale", 1))
        pairs.append((DISTILLED_CFG, _number(distilled)))
    elif request.guidance is not None:
        pairs.append(("CFG scale", _number(request.guidance)))
    pairs.append(("Seed", seed if seed is not None else request.seed))
    wh = _image_size(request, size)
    if wh:
        pairs.append(("Size", f"{wh[0]}x{wh[1]}"))
    pairs.append(("Model hash", model_hash))
    pairs.append(("Model", model_name(model_id or request.model)))
    strength = getattr(request, "strength", None)
    if request.kind != "generate" and strength is not None:
        pairs.append(("Denoising strength", _number(strength)))
    clip_skip = getattr(request, "clip_skip", None)
    if clip_skip is not None and clip_skip > 1:  # A1111 writes it only when it skips a layer
        pairs.append(("Clip skip", clip_skip))
    if request.kind in ("inpaint", "edit") and getattr(request, "mask", None) is not None:
        pairs.append(("Mask blur", getattr(request, "mask_blur", None)))
    if request.kind in ("inpaint", "edit") and getattr(request, "mask", None) is not None:
        # ours: AUTOMATIC1111 has no mask grow; absent means 0, the mask as painted
        pairs.append(("Mask grow", getattr(request, "mask_grow", 0) or None))
    if request.kind == "inpaint" and getattr(request, "only_masked", False):
        pairs.append(("Inpaint area", "Only masked"))
        pairs.append(("Masked area padding", getattr(request, "only_masked_padding", None)))
    resize_mode = getattr(request, "resize_mode", DEFAULT_RESIZE_MODE)
    if request.kind != "generate" and resize_mode != DEFAULT_RESIZE_MODE:  # absent means just resize
        pairs.append(("Resize mode", RESIZE_MODES.get(resize_mode, resize_mode)))
    pairs.append(("Mode", request.kind))
    if request.kind == "edit":
        used = (extra or {}).get("t0")  # the engine's: the first timestep of the schedule at or below the asked t0
        pairs.append(
            ("T0", used if isinstance(used, int) and not isinstance(used, bool) else getattr(request, "t0", None))
        )
        pairs.append(("Edit method", getattr(request, "method", None)))
        pairs.append(("Source prompt", getattr(request, "source_prompt", "")))
        pairs.extend(edit_pairs(request))
    # these say what the request says; a field the request left to the model (None) is written from what the
    # engine used (its info: e.g. the Prompt-to-Prompt shares of a model without edit settings)
    known = {k for k, v in pairs if v is not None and str(v) != ""} | {"Mask grow", "Resize mode", "t0"}
    for key, value in (extra or {}).items():
        key = str(key).strip()
        if key in known or not _is_key(key) or isinstance(value, (dict, list, tuple)):
            continue
        pairs.append((key, value))
    from desktop_app import __version__

    pairs.append(("Version", f"Diffusion Desk {__version__}"))
    return [(k, v) for k, v in pairs if v is not None and str(v) != ""]


# The name Forge writes FLUX.1's distilled guidance under (its "CFG scale" is then 1): we write and read it the same
DISTILLED_CFG = "Distilled CFG Scale"

# The flow-model inversions, by the solver's name ("Flow solver: FireFlow"); Kontext edits invert nothing
FLOW_SOLVERS = ("fireflow", "rf-solver", "rf-inversion")
_FLOW_SOLVER_TO_ID = {**{m: m for m in FLOW_SOLVERS}, **{EDIT_METHOD_NAMES[m].lower(): m for m in FLOW_SOLVERS}}
_ATTENTION_TO_ID = {**{k: k for k in ATTENTION_CONTROLS}, **{v.lower(): k for k, v in ATTENTION_CONTROLS.items()}}


def edit_pairs(request: GenerateRequest) -> list[tuple[str, Any]]:
    """An edit's attention control (Prompt-to-Prompt and its settings), LEDITS++ concepts and flow solver."""
    pairs: list[tuple[str, Any]] = []
    control = getattr(request, "attention_control", None)
    if control is not None:
        pairs.append(("Attention control", ATTENTION_CONTROLS.get(control, control)))
    if control == "p2p":
        for key, name in (("Cross replace", "cross_replace"), ("Self replace", "self_replace")):
            value = getattr(request, name, None)
            pairs.append((key, None if value is None else _number(round(float(value), 4))))
        blend = getattr(request, "local_blend", None)
        pairs.append(("Local blend", None if blend is None else str(bool(blend))))
        pairs.append(("Re-weight", getattr(request, "reweight", "") or None))
    concepts = getattr(request, "edit_concepts", ())
    if concepts:  # one line: "+ a blue hat @ 7; - a red scarf @ 5"
        pairs.append(("Edit concepts", format_edit_concepts(concepts).replace("\n", "; ")))
    method = getattr(request, "method", None)
    if method in FLOW_SOLVERS:
        pairs.append(("Flow solver", EDIT_METHOD_NAMES[method]))
    return pairs


def _edit_fields(params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What `edit_pairs` wrote, read back as request fields (and notices of what could not be read)."""
    data: dict[str, Any] = {}
    notices: list[str] = []
    if not params.get("Edit method") and params.get("Flow solver"):
        solver = _FLOW_SOLVER_TO_ID.get(str(params["Flow solver"]).strip().lower())
        if solver is not None:
            data["method"] = solver
    control = _ATTENTION_TO_ID.get(str(params.get("Attention control", "")).strip().lower())
    if control is not None:
        data["attention_control"] = control
    for key, name in (("Cross replace", "cross_replace"), ("Self replace", "self_replace")):
        if params.get(key) is not None:
            data[name] = params[key]
    if params.get("Local blend") is not None:
        data["local_blend"] = str(params["Local blend"]).strip().lower() == "true"
    if params.get("Re-weight"):
        data["reweight"] = str(params["Re-weight"])
    if params.get("Edit concepts"):
        try:
            data["edit_concepts"] = parse_edit_concepts(str(params["Edit concepts"]))
        except UserError as exc:
            notices.append(f"Edit concepts: {exc.message} Left out")
    return data, notices


_KEY_RE = re.compile(r"\w[\w \-/]+\Z")


def _is_key(key: str) -> bool:
    return bool(_KEY_RE.match(key)) and key.strip() == key


def format_parameters(
    request: GenerateRequest | Result,
    seed: int | None = None,
    model_id: str = "",
    model_hash: str = "",
    extra: dict[str, Any] | None = None,
    size: tuple[int, int] | None = None,
) -> str:
    """The AUTOMATIC1111 ``parameters`` text for one image of `request` made with `seed`.

    Given a `core.events.Result` instead of a request, describes its first image.
    """
    req: Any = request
    if hasattr(request, "images") and hasattr(request, "request"):
        result: Any = request
        req = result.request
        seed = result.seeds[0] if seed is None and result.seeds else seed
        model_id = model_id or result.model_id
        model_hash = model_hash or result.model_hash
        extra = _per_image(result.info, 0, len(result.images)) if extra is None else extra
        size = size or (result.images[0].size if result.images else None)
    lines = [req.prompt.replace("\x00", "")]
    if req.negative_prompt:
        lines.append(f"Negative prompt: {req.negative_prompt}".replace("\x00", ""))
    pairs = parameter_pairs(req, seed, model_id, model_hash, extra, size)
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in pairs))
    return "\n".join(lines)


def request_record(
    request: GenerateRequest,
    seed: int | None,
    model_id: str = "",
    model_hash: str = "",
    extra: dict[str, Any] | None = None,
    history: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Our JSON chunk: the request of this one image (its seed, batch 1), without embedded images."""
    req = request.to_dict(include_images=False)
    if seed is not None:
        req["seed"] = seed
    req["batch"] = 1
    record: dict[str, Any] = {
        "format": OUR_KEY,
        "version": FORMAT_VERSION,
        "request": req,
        "seed": seed if seed is not None else request.seed,
        "model_id": model_id,
        "model_hash": model_hash,
        "info": _jsonable(extra or {}),
    }
    if history:
        record["history"] = _jsonable(history)
    return record


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            value = str(value)
        out[str(key)] = value
    return out


def build_png_info(
    request: GenerateRequest,
    seed: int | None = None,
    model_id: str = "",
    model_hash: str = "",
    extra: dict[str, Any] | None = None,
    size: tuple[int, int] | None = None,
    history: dict[str, Any] | None = None,
) -> PngInfo:
    """Both chunks for one image; pass to ``image.save(path, pnginfo=...)``."""
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(request, seed, model_id, model_hash, extra, size))
    record = request_record(request, seed, model_id, model_hash, extra, history)
    info.add_text(OUR_KEY, json.dumps(record, ensure_ascii=False, separators=(",", ":")), zip=True)
    return info


def _per_image(info: dict[str, Any], index: int, count: int) -> dict[str, Any]:
    """Extra infotext fields of image `index`: a list with one value per image is indexed."""
    out = {}
    for key, value in (info or {}).items():
        if isinstance(value, (list, tuple)) and count > 1 and len(value) == count:
            value = value[index]
        out[key] = value
    return out


def png_info(result: Any, index: int = 0, history: dict[str, Any] | None = None) -> PngInfo:
    """Both chunks for image `index` of a `core.events.Result`."""
    image = result.images[index]
    seed = result.seeds[index] if index < len(result.seeds) else result.request.seed
    extra = _per_image(result.info, index, len(result.images))
    return build_png_info(result.request, seed, result.model_id, result.model_hash, extra, image.size, history)


# --------------------------------------------------------------------------- parse

_QUOTED_RE = re.compile(r'"(?:\\.|[^\\"])+"')
_KEYCHARS_RE = re.compile(r"[\w \-/]*")
_WORD_RE = re.compile(r"\w")
_IMAGESIZE_RE = re.compile(r"^(\d+)x(\d+)$")
# AUTOMATIC1111's own pattern; kept for reference and tests. Its findall is
# quadratic on long lines without colons, so `param_pairs` does the same in linear time.
A1111_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def param_pairs(line: str) -> list[tuple[str, str]]:
    """``A1111_PARAM_RE.findall(line)`` in linear time: each ``(key, raw value)``."""
    out: list[tuple[str, str]] = []
    n = len(line)
    pos = 0
    while pos < n:
        colon = line.find(":", pos)
        if colon < 0:
            break
        keychars = _KEYCHARS_RE.match(line[pos:colon][::-1])  # `*`: always matches, maybe empty
        run = keychars.end() if keychars is not None else 0
        word = _WORD_RE.search(line, colon - run, colon)
        if word is None or colon - word.start() < 2:
            pos = colon + 1
            continue
        key = line[word.start() : colon]
        start = colon + 1
        while start < n and line[start].isspace():
            start += 1
        quoted = _QUOTED_RE.match(line, start)
        if quoted and (quoted.end() == n or line[quoted.end()] == ","):
            end = quoted.end()
        else:
            comma = line.find(",", start)
            end = n if comma < 0 else comma
        # `$` also matches before a final newline; a line split on "\n" has none.
        out.append((key, line[start:end]))
        pos = end + 1
    return out


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse AUTOMATIC1111 infotext as its own parser does.

    Returns ``{"Prompt": ..., "Negative prompt": ..., "Steps": "20", ...}``: values as
    strings, quoted ones unquoted, ``WxH`` sizes split into ``Size-1`` and ``Size-2``
    (and kept whole as ``Size``). The last line counts as parameters only when it
    holds at least 3 ``key: value`` pairs.
    """
    if not isinstance(text, str):
        raise MetadataError("The generation parameters are not text.", "The image's metadata may be damaged.")
    if len(text) > MAX_INFOTEXT_CHARS:
        raise MetadataError(
            f"The generation parameters are too large ({len(text):,} characters).",
            "The image's metadata is not from a generator, or is damaged.",
        )
    if "\x00" in text:
        raise MetadataError("The generation parameters contain binary data.", "The image's metadata may be damaged.")
    res: dict[str, Any] = {}
    prompt = ""
    negative = ""
    done_with_prompt = False
    *lines, lastline = text.strip().split("\n")
    pairs = param_pairs(lastline)
    if len(pairs) < 3:
        lines.append(lastline)
        pairs = []
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative
    for key, value in pairs:
        if value[:1] == '"' and value[-1:] == '"':
            value = unquote(value)
        match = _IMAGESIZE_RE.match(value)
        if match is not None:
            res[f"{key}-1"] = match.group(1)
            res[f"{key}-2"] = match.group(2)
        res[key] = value
    return res


def _to_int(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number)


def _to_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parameters_to_request(params: dict[str, Any]) -> GenerateRequest:
    """Best-effort request (without images) from parsed A1111 parameters: what fills the prompt panel."""
    return _parameters_to_request(params)[0]


def _parameters_to_request(params: dict[str, Any]) -> tuple[GenerateRequest, list[str]]:
    """The request and the notices of what was clamped or left out: the text's values go to `sanitize_params`
    as written (99999999999999999999 stays that number in the notice)."""
    kind = str(params.get("Mode", "generate"))
    cls = REQUEST_TYPES.get(kind, GenerateRequest)
    data: dict[str, Any] = {
        "prompt": params.get("Prompt", ""),
        "negative_prompt": params.get("Negative prompt", ""),
        "steps": params.get("Steps"),
        # Forge and we write FLUX.1's distilled guidance apart from CFG scale (then 1): it is the model's guidance
        "guidance": params.get(DISTILLED_CFG, params.get("CFG scale")),
        "seed": params.get("Seed"),
        "width": params.get("Size-1"),
        "height": params.get("Size-2"),
    }
    if str(data["seed"]).strip() == "-1":  # A1111's "random"
        data["seed"] = None
    read_notices: list[str] = []
    sampler = str(params.get("Sampler", "")).strip()
    if sampler:
        data["scheduler"], data["schedule"], note = read_sampler(sampler, params.get("Schedule type"))
        if note:
            read_notices.append(note)
    if params.get("Clip skip") is not None:
        data["clip_skip"] = params["Clip skip"]
    if "Model" in params and params["Model"]:
        data["model"] = str(params["Model"])
    names = set(cls.field_names())
    if params.get("Denoising strength") is not None and "strength" in names:
        data["strength"] = params["Denoising strength"]
    if kind == "edit":
        data["t0"] = t0 = params.get("T0")
        try:
            deepest = t0 is not None and float(t0) >= 1000
        except (TypeError, ValueError):
            deepest = False
        if deepest:
            # a full-depth flow edit starts at sigma 1, timestep 1000: that is strength 1 (t0 is a step below T)
            data.pop("t0")
            data["strength"] = 1.0
        if params.get("Edit method"):
            data["method"] = str(params["Edit method"])
        data["source_prompt"] = str(params.get("Source prompt", ""))
        edit, edit_notices = _edit_fields(params)
        data.update(edit)
        read_notices.extend(edit_notices)
    for key, name in (
        ("Mask blur", "mask_blur"),
        ("Mask grow", "mask_grow"),
        ("Blend band", "blend_band"),
        ("Outpaint overlap", "outpaint_overlap"),
    ):
        if name in names and params.get(key) is not None:
            data[name] = params[key]
    # ours, and A1111's "Soft inpainting enabled"
    for key, name in (
        ("Soft inpainting", "soft_mask"),
        ("Soft inpainting enabled", "soft_mask"),
        ("Colour match", "color_match"),
    ):
        if name in names and key in params:
            data[name] = str(params[key]).strip().lower() == "true"
    regions = str(params.get("Regions", "")).lower()  # "2" (attention) or "2, latent": the masks are not in the text
    if "region_mode" in names and regions:
        data["region_mode"] = "latent" if "latent" in regions else "attention"
    masked = _MASKED_CONTENT_TO_ID.get(str(params.get("Masked content", "")).strip().lower())
    if "masked_content" in names and masked is not None:
        data["masked_content"] = masked
    if "extend" in names and params.get("Outpaint"):
        extend, fill = _outpaint_from_text(str(params["Outpaint"]))
        if extend is not None:
            data["extend"] = extend
        if fill is not None:
            data["outpaint_fill"] = fill
    resize_mode = _RESIZE_MODE_TO_ID.get(str(params.get("Resize mode", "")).strip().lower())
    if "resize_mode" in names and resize_mode is not None:  # another tool's mode ("latent upscale"): the default
        data["resize_mode"] = resize_mode
    concepts = data.pop("edit_concepts", ())  # already EditConcepts: sanitize_params passes them through
    clean, notices = sanitize_params({k: v for k, v in data.items() if k in names})
    if concepts and "edit_concepts" in names:
        clean["edit_concepts"] = concepts
    return cls(**clean), read_notices + notices


_MASKED_CONTENT_TO_ID = {name: key for key, name in MASKED_CONTENT.items()}
_SIDES = ("left", "top", "right", "bottom")


def _outpaint_from_text(text: str) -> tuple[tuple[int, int, int, int] | None, str | None]:
    """ "left 64, top 32, edge" (what the engine writes) -> ((64, 32, 0, 0), "edge"); parts it cannot read are
    left out."""
    extend = dict.fromkeys(_SIDES, 0)
    fill = None
    for part in (p.strip().lower() for p in text.split(",")):
        words = part.split()
        if len(words) == 2 and words[0] in extend and words[1].isdigit():
            extend[words[0]] = int(words[1])
        elif part in OUTPAINT_FILLS:
            fill = part
    values = tuple(extend[side] for side in _SIDES)
    return (values if any(values) else None), fill  # type: ignore[return-value]


def _record_to_info(text: str, params: dict[str, Any] | None) -> ParsedInfo:
    if len(text) > 4 * MAX_INFOTEXT_CHARS:
        raise MetadataError("The Diffusion Desk metadata is too large.", "The image's metadata may be damaged.")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MetadataError(
            "The Diffusion Desk metadata is not valid JSON.", "The image's metadata may be damaged."
        ) from exc
    if not isinstance(record, dict) or not isinstance(record.get("request"), dict):
        raise MetadataError("The Diffusion Desk metadata has no request.", "The image's metadata may be damaged.")
    kind = record["request"].get("kind", "generate")
    if not isinstance(kind, str) or kind not in REQUEST_TYPES:
        raise MetadataError(
            f"The Diffusion Desk metadata holds an unknown kind of request ({str(kind)[:40]!r}).",
            "It may come from a newer Diffusion Desk, or be damaged.",
        )
    clean, notices = sanitize_params(record["request"])
    try:
        try:
            request = GenerateRequest.from_dict(clean)
        except ImageError as exc:  # an embedded source or mask that is damaged or too large: the rest still counts
            notices.append(f"{exc.message} The embedded image was left out")
            request = GenerateRequest.from_dict({k: v for k, v in clean.items() if k not in ("image", "mask")})
        # A field of the wrong type must not pass for a request.
        for name in ("prompt", "negative_prompt", "model"):
            if not isinstance(getattr(request, name), str):
                raise TypeError(name)
    except UserError as exc:
        raise MetadataError(f"The Diffusion Desk metadata holds a bad request: {exc.message}", exc.hint) from exc
    except Exception as exc:  # TypeError and friends from odd field values
        raise MetadataError(
            "The Diffusion Desk metadata holds a bad request.", "The image's metadata may be damaged."
        ) from exc
    seed = record.get("seed", request.seed)
    return ParsedInfo(
        source=OUR_KEY,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        parameters=params or {},
        request=request,
        seed=seed if isinstance(seed, int) else None,
        model_id=str(record.get("model_id") or ""),
        model_hash=str(record.get("model_hash") or ""),
        data=record,
        notices=notices,
    )


def _params_to_info(text: str) -> ParsedInfo:
    params = parse_parameters(text)
    notices: list[str] = []
    try:
        request, notices = _parameters_to_request(params)
    except Exception:  # noqa: BLE001 - an odd value must not stop the prompt from being read
        request = None
    return ParsedInfo(
        source="a1111",
        prompt=params["Prompt"],
        negative_prompt=params["Negative prompt"],
        parameters=params,
        request=request,
        seed=request.seed if request is not None else None,
        model_id=str(params.get("Model", "")),
        model_hash=str(params.get("Model hash", "")),
        notices=notices,
    )


def _open_info(source: str | os.PathLike | bytes | Image.Image) -> dict[str, Any]:
    if isinstance(source, Image.Image):
        info: dict[str, Any] = {str(key): value for key, value in source.info.items()}
        text = getattr(source, "text", None)  # PNG chunks after the image data
        if isinstance(text, dict):
            for key, value in text.items():
                info.setdefault(key, value)
        return info
    label = "the image data" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        raise MetadataError(f"No image file at {label}.", "Check the path.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
            with Image.open(data) as img:
                info = dict(img.info)
                if img.format == "PNG" and not (OUR_KEY in info or PARAMETERS_KEY in info):
                    try:  # text chunks after IDAT: read through to the end of the file
                        text = img.text
                    except Exception:  # noqa: BLE001 - truncated image data; keep what we have
                        text = {}
                    for key, value in text.items():
                        info.setdefault(key, value)
                return info
    except MetadataError:
        raise
    except (ValueError, OSError, SyntaxError, zlib.error, EOFError, MemoryError, Image.DecompressionBombError) as exc:
        reason = str(exc) or type(exc).__name__
        if "too large" in reason.lower() or "too much memory" in reason.lower():
            raise MetadataError(
                f"{label} has a text chunk that is too large.", "The image's metadata is damaged."
            ) from exc
        raise MetadataError(f"Cannot read {label}: not an image or corrupt ({reason}).", "Use a PNG file.") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow can raise odd things on crafted files
        raise MetadataError(f"Cannot read {label}: {type(exc).__name__}.", "Use a PNG file.") from exc


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return str(value) if isinstance(value, str) else None


def read_png_metadata(source: str | os.PathLike | bytes | Image.Image) -> ParsedInfo:
    """How an image was made: our chunk first, then AUTOMATIC1111's ``parameters``, then what `core.metadata`
    reads (A1111 JPEG / WebP EXIF, ComfyUI, InvokeAI).

    Raises `MetadataError` (never anything else) when there is nothing usable.
    """
    info = _open_info(source)
    first_error: MetadataError | None = None
    params: dict[str, Any] | None = None
    params_text = _text(info.get(PARAMETERS_KEY))
    if params_text is not None:
        try:
            params = parse_parameters(params_text)
        except MetadataError as exc:
            first_error = exc
    ours = _text(info.get(OUR_KEY))
    if ours is not None:
        try:
            return _record_to_info(ours, params)
        except MetadataError as exc:
            first_error = first_error or exc
    if params is not None:
        try:
            return _params_to_info(params_text)  # type: ignore[arg-type]
        except MetadataError as exc:
            first_error = first_error or exc
    other, error = read_other_formats(info, _params_to_info)  # JPEG / WebP EXIF, ComfyUI, InvokeAI
    if other is not None:
        return other
    first_error = first_error or error
    if first_error is not None:
        raise first_error
    raise nothing_readable()


__all__ = [
    "MetadataError",
    "ParsedInfo",
    "build_png_info",
    "format_parameters",
    "parameter_pairs",
    "param_pairs",
    "parameters_to_request",
    "parse_parameters",
    "png_info",
    "quote",
    "read_png_metadata",
    "request_record",
    "unquote",
]
