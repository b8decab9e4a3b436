"""Generation parameters other tools write, read into the same `ParsedInfo` as ours and A1111's PNG text.

- AUTOMATIC1111 / Forge JPEG and WebP: the infotext in the EXIF UserComment ("UNICODE" + UTF-16, as piexif
  writes it), or a JPEG comment.
- ComfyUI PNGs: the `prompt` chunk (the API graph that ran) or, without it, the `workflow` chunk (the editor's
  graph). The sampler node is found, and its inputs followed to the prompt texts, the checkpoint, the LoRAs and
  the latent size.
- InvokeAI 3 and later (`invokeai_metadata`), InvokeAI 2.x (`sd-metadata`) and 2.2 and earlier (`Dream`).

ComfyUI and InvokeAI graphs are parsed here by hand: no maintained library reads them outside those apps.
All values end in `requests.sanitize_params`; what could not be used is said in `notices`. `ParsedInfo` and
`MetadataError` live here so that `core.infotext` (our PNG chunks and A1111's text) imports this module and not
the other way round; infotext re-exports them. Plain data.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from desktop_app.core.errors import UserError
from desktop_app.core.requests import REQUEST_TYPES, GenerateRequest, sanitize_params
from desktop_app.core.samplers import from_comfy, parse_sampler

MAX_INFOTEXT_CHARS = 256 * 1024  # real infotexts are a few KB; PIL caps a chunk at 1 MB


class MetadataError(UserError):
    """An image's embedded generation parameters are missing, too large or malformed."""


@dataclass
class ParsedInfo:
    """What an image says about how it was made."""

    source: str  # "diffusion_desk", "a1111" or "invokeai"
    prompt: str
    negative_prompt: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # A1111-style keys, when present
    request: GenerateRequest | None = None  # without images
    seed: int | None = None
    model_id: str = ""
    model_hash: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # our JSON chunk, when source == "diffusion_desk"
    notices: list[str] = field(default_factory=list)  # values clamped or left out of `request` (sanitize_params)


_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


def model_name(model: str) -> str:
    """The model as A1111 writes `Model:`: a checkpoint file's name without its folder and extension
    ("v1-5-pruned-emaonly"); anything else (a Hub id, a diffusers folder, the built-in name) as it is."""
    text = str(model or "")
    base = re.split(r"[\\/]", text)[-1]
    return base.rsplit(".", 1)[0] if base.lower().endswith(_MODEL_SUFFIXES) else text


def read_sampler(sampler: str, schedule: Any = None) -> tuple[str | None, str | None, str]:
    """(sampler id, schedule id, notice) from a file's names: what this app cannot run is left to the model's
    default, and the notice says so."""
    sched_text = str(schedule).strip() if schedule is not None else None
    try:
        sid, sch = parse_sampler(sampler, sched_text)
        return sid, sch, ""
    except UserError:
        pass
    try:
        sid, _ = parse_sampler(sampler)
    except UserError:
        return None, None, f"Sampler {sampler!r} is not one this app has: the model's default is used"
    return sid, None, f"Schedule type {sched_text!r} does not suit {sampler}: its own schedule is used"


_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_MAX_GRAPH_CHARS = 8 * MAX_INFOTEXT_CHARS  # big workflows are a few hundred KB
_MAX_DEPTH = 40  # links followed from the sampler; a graph deeper than this is not a prompt chain


def _damaged(what: str) -> MetadataError:
    return MetadataError(f"The {what} metadata is malformed.", "The image's metadata may be damaged.")


# --------------------------------------------------------------------------- A1111 JPEG / WebP


def decode_user_comment(raw: Any) -> str | None:
    """The text of an EXIF UserComment: an 8-byte charset prefix, then the text. piexif (what A1111 uses) writes
    "UNICODE\\0" + UTF-16 big-endian; some tools write little-endian, which the zero bytes give away."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        return None
    prefix, body = bytes(raw[:8]), bytes(raw[8:])
    if prefix == b"UNICODE\0":
        little = body[1::2].count(0) > body[0::2].count(0)
        text = body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    elif prefix in (b"ASCII\0\0\0", b"\0" * 8):
        text = body.decode("utf-8", errors="replace")
    else:
        text = bytes(raw).decode("utf-8", errors="replace")
    return text.rstrip("\0").strip() or None


def exif_parameters(info: dict[str, Any]) -> str | None:
    """A1111's infotext from an image's EXIF (JPEG, WebP) or JPEG comment; None when there is none."""
    raw = info.get("exif")
    if isinstance(raw, (bytes, bytearray)) and raw:
        try:
            exif = Image.Exif()
            exif.load(bytes(raw))
            text = decode_user_comment(exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT))
        except Exception:  # noqa: BLE001 - a damaged EXIF block is "no EXIF parameters", not a crash
            text = None
        if text:
            return text
    comment = info.get("comment")
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", errors="replace")
    return comment.strip() if isinstance(comment, str) and "Steps:" in comment else None


# --------------------------------------------------------------------------- ComfyUI

_SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
# Widget names of the editor's (`workflow`) nodes, in order, for the nodes a prompt chain goes through.
_WIDGETS: dict[str, tuple[str, ...]] = {
    "KSampler": ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": (
        "add_noise",
        "noise_seed",
        "control_after_generate",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "start_at_step",
        "end_at_step",
        "return_with_leftover_noise",
    ),
    "CLIPTextEncode": ("text",),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    "RandomNoise": ("noise_seed", "control_after_generate"),
    "CFGGuider": ("cfg",),
}
_NOT_CONDITIONING = {
    "clip",
    "model",
    "vae",
    "image",
    "pixels",
    "mask",
    "control_net",
    "latent",
    "samples",
    "style_model",
}


def _is_sampler(class_type: str) -> bool:
    return class_type in _SAMPLER_CLASSES or "KSampler" in class_type or "SamplerCustom" in class_type


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) and isinstance(value[1], int)
    )


def workflow_to_graph(workflow: Any) -> dict[str, dict[str, Any]]:
    """The editor's graph (`nodes` with `widgets_values`, `links`) as the API graph the `prompt` chunk holds."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise _damaged("ComfyUI workflow")
    links: dict[int, list[Any]] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, list) and len(link) >= 4 and isinstance(link[0], int):
            links[link[0]] = [str(link[1]), int(link[2]) if isinstance(link[2], int) else 0]
    graph: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        if not isinstance(node, dict) or "id" not in node:
            continue
        class_type = str(node.get("type", ""))
        inputs: dict[str, Any] = {}
        widgets = node.get("widgets_values")
        names = _WIDGETS.get(class_type)
        if names is None and _is_sampler(class_type):
            names = _WIDGETS["KSampler"]
        if isinstance(widgets, list) and names:
            inputs.update(dict(zip(names, widgets)))
        elif isinstance(widgets, dict):
            inputs.update(widgets)
        for slot in node.get("inputs") or []:
            if isinstance(slot, dict) and isinstance(slot.get("link"), int) and slot["link"] in links:
                inputs[str(slot.get("name", ""))] = links[slot["link"]]
        if node.get("mode") in (2, 4):  # muted or bypassed: not part of what ran
            continue
        graph[str(node["id"])] = {"class_type": class_type, "inputs": inputs}
    return graph


class _Comfy:
    """Walks one API graph from a sampler node."""

    def __init__(self, graph: dict[str, Any]) -> None:
        self.graph = {str(k): v for k, v in graph.items() if isinstance(v, dict)}
        self.notices: list[str] = []

    def node(self, link: Any) -> dict[str, Any] | None:
        node = self.graph.get(str(link[0])) if _is_link(link) else None
        return node if isinstance(node, dict) and isinstance(node.get("inputs", {}), dict) else None

    @staticmethod
    def inputs(node: dict[str, Any]) -> dict[str, Any]:
        inputs = node.get("inputs")
        return inputs if isinstance(inputs, dict) else {}

    def value(self, value: Any, names: tuple[str, ...], depth: int = 0) -> Any:
        """A widget value, or the value of the primitive / custom node a link brings it from."""
        if not _is_link(value):
            return value
        node = self.node(value)
        if node is None or depth > _MAX_DEPTH:
            return None
        inputs = self.inputs(node)
        for name in (*names, "value", "seed", "int", "float", "string", "text", "number"):
            if name in inputs:
                return self.value(inputs[name], names, depth + 1)
        return None

    def texts(self, link: Any, polarity: str, seen: set[str] | None = None, depth: int = 0) -> list[str]:
        """The prompt texts a conditioning link comes from, through reroutes, combiners and ControlNets."""
        seen = set() if seen is None else seen
        node = self.node(link)
        if node is None or depth > _MAX_DEPTH or str(link[0]) in seen:
            return []
        seen.add(str(link[0]))
        inputs = self.inputs(node)
        for name in ("text", "text_g", "prompt"):  # CLIPTextEncode, CLIPTextEncodeSDXL, custom encoders
            if name in inputs:
                text = self.value(inputs[name], (name,))
                if isinstance(text, str):
                    return [text]
        if "positive" in inputs and "negative" in inputs:  # ControlNetApplyAdvanced and the like
            return self.texts(inputs[polarity], polarity, seen, depth + 1)
        out: list[str] = []
        for name, value in inputs.items():
            if _is_link(value) and name not in _NOT_CONDITIONING:
                out += [t for t in self.texts(value, polarity, seen, depth + 1) if t not in out]
        return out

    def model(self, link: Any, loras: list[tuple[str, float]], depth: int = 0) -> str:
        """The checkpoint the model link comes from; the LoRA loaders on the way go into `loras`."""
        node = self.node(link)
        if node is None or depth > _MAX_DEPTH:
            return ""
        inputs = self.inputs(node)
        for name in ("ckpt_name", "unet_name", "model_name", "model_path"):
            if isinstance(inputs.get(name), str):
                return inputs[name]
        if isinstance(inputs.get("lora_name"), str):
            weight = self.value(inputs.get("strength_model", 1.0), ("strength_model",))
            weight = float(weight) if isinstance(weight, (int, float)) and not isinstance(weight, bool) else 1.0
            loras.insert(0, (inputs["lora_name"], weight))
        return self.model(inputs.get("model"), loras, depth + 1) if "model" in inputs else ""

    def latent(self, link: Any, depth: int = 0) -> dict[str, Any]:
        """Size and batch of an empty latent; {"img2img": True} for an encoded image."""
        node = self.node(link)
        if node is None or depth > _MAX_DEPTH:
            return {}
        inputs = self.inputs(node)
        if "width" in inputs and "height" in inputs and "samples" not in inputs:
            return {
                "width": self.value(inputs["width"], ("width",)),
                "height": self.value(inputs["height"], ("height",)),
                "batch": self.value(inputs.get("batch_size", 1), ("batch_size",)),
            }
        if "pixels" in inputs or "image" in inputs:
            return {"img2img": True}
        for name in ("samples", "latent", "latent_image"):
            if name in inputs:
                return self.latent(inputs[name], depth + 1)
        return {}

    def sampler_settings(self, node: dict[str, Any]) -> dict[str, Any]:
        """seed, steps, cfg, sampler_name, scheduler, denoise and the positive / negative links of any sampler."""
        inputs = self.inputs(node)
        out: dict[str, Any] = {
            "seed": self.value(inputs.get("seed", inputs.get("noise_seed")), ("seed", "noise_seed")),
            "steps": self.value(inputs.get("steps"), ("steps",)),
            "cfg": self.value(inputs.get("cfg"), ("cfg",)),
            "sampler_name": self.value(inputs.get("sampler_name"), ("sampler_name",)),
            "scheduler": self.value(inputs.get("scheduler"), ("scheduler",)),
            "denoise": self.value(inputs.get("denoise", 1.0), ("denoise",)),
            "positive": inputs.get("positive"),
            "negative": inputs.get("negative"),
            "model": inputs.get("model"),
        }
        if "guider" in inputs:  # SamplerCustomAdvanced: CFGGuider holds cfg and the conditioning
            guider = self.node(inputs["guider"]) or {}
            g = self.inputs(guider)
            out["cfg"] = self.value(g.get("cfg"), ("cfg",))
            out["positive"] = g.get("positive", g.get("conditioning"))
            out["negative"] = g.get("negative")
            out["model"] = g.get("model")
        if "noise" in inputs:
            noise = self.inputs(self.node(inputs["noise"]) or {})
            out["seed"] = self.value(noise.get("noise_seed"), ("noise_seed",))
        if "sampler" in inputs:  # KSamplerSelect
            out["sampler_name"] = self.value(self.inputs(self.node(inputs["sampler"]) or {}).get("sampler_name"), ())
        if "sigmas" in inputs:  # BasicScheduler, KarrasScheduler, ExponentialScheduler
            sigmas = self.node(inputs["sigmas"]) or {}
            s = self.inputs(sigmas)
            kind = str(sigmas.get("class_type", ""))
            out["steps"] = self.value(s.get("steps"), ("steps",))
            out["denoise"] = self.value(s.get("denoise", 1.0), ("denoise",))
            out["scheduler"] = self.value(s.get("scheduler"), ("scheduler",)) or {
                "KarrasScheduler": "karras",
                "ExponentialScheduler": "exponential",
            }.get(kind, kind)
            out["model"] = out["model"] or s.get("model")
        return out


def comfy_to_info(graph: Any, source_key: str = "prompt") -> ParsedInfo:
    """How a ComfyUI graph made its image; several samplers: the first pass (from an empty latent), said so."""
    if not isinstance(graph, dict):
        raise _damaged("ComfyUI")
    walker = _Comfy(graph)
    samplers = sorted(
        ((nid, str(node.get("class_type", ""))) for nid, node in walker.graph.items()),
        key=lambda item: (int(item[0]) if item[0].isdigit() else 10**9, item[0]),
    )
    samplers = [(nid, ct) for nid, ct in samplers if _is_sampler(ct)]
    if not samplers:
        raise MetadataError(
            f"The ComfyUI {source_key} has no sampler node (KSampler, KSamplerAdvanced, SamplerCustom).",
            "Only the prompt of a workflow with a sampler can be read.",
        )
    notices = walker.notices
    pick = samplers[0]
    if len(samplers) > 1:
        first_pass = [
            (nid, ct)
            for nid, ct in samplers
            if "width" in walker.latent(walker.inputs(walker.graph[nid]).get("latent_image"))
        ]
        pick = first_pass[0] if first_pass else samplers[0]
        names = ", ".join(f"{ct} #{nid}" for nid, ct in samplers)
        notices.append(f"The ComfyUI workflow has {len(samplers)} samplers ({names}): {pick[1]} #{pick[0]} was read")
    node = walker.graph[pick[0]]
    settings = walker.sampler_settings(node)
    positive = walker.texts(settings["positive"], "positive")
    negative = walker.texts(settings["negative"], "negative")
    for what, texts in (("positive", positive), ("negative", negative)):
        if len(texts) > 1:
            notices.append(f"The {what} conditioning combines {len(texts)} prompts: they were joined")
    loras: list[tuple[str, float]] = []
    checkpoint = walker.model(settings["model"], loras)
    prompt = ", ".join(positive)
    if loras:  # as A1111 tags, which load the same LoRAs by name from the LoRA folder
        prompt += "".join(f" <lora:{model_name(name)}:{weight:g}>" for name, weight in loras)
    latent = walker.latent(walker.inputs(node).get("latent_image"))
    sampler_name, scheduler = settings["sampler_name"], settings["scheduler"]
    sampler_id, schedule_id = from_comfy(str(sampler_name or ""), str(scheduler or ""))
    if sampler_name and sampler_id is None:
        notices.append(f"The ComfyUI sampler {sampler_name!r} is not one this app has: the model's default is used")
    if scheduler and schedule_id is None and str(scheduler) != "normal":
        notices.append(f"The ComfyUI scheduler {scheduler!r} is not one this app has: the sampler's own is used")
    denoise = settings["denoise"]
    img2img = bool(latent.get("img2img")) or (isinstance(denoise, (int, float)) and denoise < 1)
    data: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": ", ".join(negative),
        "seed": settings["seed"],
        "steps": settings["steps"],
        "guidance": settings["cfg"],
        "width": latent.get("width"),
        "height": latent.get("height"),
        "scheduler": sampler_id,
        "schedule": schedule_id,
        "model": model_name(checkpoint) if checkpoint else None,
    }
    if img2img:
        data["strength"] = denoise
        notices.append("The workflow changes an existing image, which the file does not hold: add the source image")
    params = {
        "Prompt": data["prompt"],
        "Negative prompt": data["negative_prompt"],
        "Steps": data["steps"],
        "Sampler": sampler_name,
        "Scheduler": scheduler,
        "CFG scale": data["guidance"],
        "Seed": data["seed"],
        "Denoise": denoise,
        "Model": checkpoint,
    }
    return _info("comfyui", data, "img2img" if img2img else "generate", notices, str(checkpoint or ""), params, graph)


# --------------------------------------------------------------------------- InvokeAI


def _info(
    source: str,
    data: dict[str, Any],
    kind: str,
    notices: list[str],
    model_id: str,
    params: dict[str, Any],
    raw: Any,
) -> ParsedInfo:
    cls = REQUEST_TYPES.get(kind, GenerateRequest)
    names = set(cls.field_names())
    clean, more = sanitize_params({k: v for k, v in data.items() if k in names and v is not None or k == "prompt"})
    clean["prompt"] = str(clean.get("prompt") or "")
    request = cls(**clean)
    return ParsedInfo(
        source=source,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        parameters={k: v for k, v in params.items() if v is not None and v != ""},
        request=request,
        seed=request.seed,
        model_id=model_id,
        data=raw if isinstance(raw, dict) else {},
        notices=notices + more,
    )


def _model_from(meta: dict[str, Any]) -> str:
    model = meta.get("model", meta.get("model_weights"))
    if isinstance(model, dict):  # InvokeAI 3.0: model_name; 4+: name (and key, hash, base)
        return str(model.get("name") or model.get("model_name") or model.get("key") or "")
    return str(model or "")


def _invoke_sampler(name: Any, notices: list[str]) -> tuple[str | None, str | None]:
    if not isinstance(name, str) or not name:
        return None, None
    sampler_id, schedule_id, note = read_sampler(name)
    if note:
        notices.append(f"The InvokeAI {note[0].lower()}{note[1:]}")
    return sampler_id, schedule_id


def invokeai_to_info(text: str) -> ParsedInfo:
    """InvokeAI 3 and later (`invokeai_metadata`): prompts, seed, steps, CFG, scheduler, model, strength, size."""
    meta = _json(text, "InvokeAI")
    notices: list[str] = []
    prompt = meta.get("positive_prompt", meta.get("prompt", ""))
    if isinstance(prompt, list):  # 2.x: [{"prompt": ..., "weight": ...}]
        prompt = " ".join(str(p.get("prompt", "")) if isinstance(p, dict) else str(p) for p in prompt)
    loras = []
    for item in meta.get("loras") or []:
        if isinstance(item, dict):
            model = item.get("model", item.get("lora"))
            name = model.get("name") or model.get("model_name") if isinstance(model, dict) else None
            weight = item.get("weight", 1.0)
            if isinstance(name, str) and isinstance(weight, (int, float)):
                loras.append(f" <lora:{name}:{float(weight):g}>")
    sampler_id, schedule_id = _invoke_sampler(meta.get("scheduler", meta.get("sampler")), notices)
    mode = str(meta.get("generation_mode", meta.get("type", "txt2img")))
    img2img = "img2img" in mode or "inpaint" in mode
    clip_skip = meta.get("clip_skip")
    data = {
        "prompt": str(prompt or "") + "".join(loras),
        "negative_prompt": str(meta.get("negative_prompt") or ""),
        "seed": meta.get("seed"),
        "steps": meta.get("steps"),
        "guidance": meta.get("cfg_scale"),
        "width": meta.get("width"),
        "height": meta.get("height"),
        "scheduler": sampler_id,
        "schedule": schedule_id,
        # InvokeAI counts the layers skipped (0: none); A1111's Clip skip counts from 1
        "clip_skip": clip_skip + 1 if isinstance(clip_skip, int) and not isinstance(clip_skip, bool) else None,
        "strength": meta.get("strength") if img2img else None,
        "model": _model_from(meta) or None,
    }
    if img2img:
        notices.append("The image was made from another image, which the file does not hold: add the source image")
    return _info("invokeai", data, "img2img" if img2img else "generate", notices, _model_from(meta), meta, meta)


def _json(text: str, what: str) -> dict[str, Any]:
    if len(text) > _MAX_GRAPH_CHARS:
        raise MetadataError(f"The {what} metadata is too large.", "The image's metadata may be damaged.")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MetadataError(f"The {what} metadata is not valid JSON.", "The image's metadata may be damaged.") from exc
    if not isinstance(data, dict):
        raise MetadataError(f"The {what} metadata is not an object.", "The image's metadata may be damaged.")
    return data


def sd_metadata_to_info(text: str) -> ParsedInfo:
    """InvokeAI 2.x's `sd-metadata`: {"model_weights": ..., "image": {"prompt": [...], "sampler": ...}}."""
    meta = _json(text, "InvokeAI")
    image = meta.get("image")
    if not isinstance(image, dict):
        raise _damaged("InvokeAI")
    return invokeai_to_info(json.dumps({**image, "model": meta.get("model_weights", "")}))


_DREAM_FLAGS = {
    "-s": "steps",
    "--steps": "steps",
    "-S": "seed",
    "--seed": "seed",
    "-W": "width",
    "--width": "width",
    "-H": "height",
    "--height": "height",
    "-C": "guidance",
    "--cfg_scale": "guidance",
    "-A": "sampler",
    "--sampler": "sampler",
    "-f": "strength",
    "--strength": "strength",
    "-m": "model",
    "--model": "model",
}


def dream_to_info(text: str) -> ParsedInfo:
    """InvokeAI 2.2 and earlier (`Dream`): `"a cat [blurry]" -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms`; the
    words in square brackets are its negative prompt."""
    if len(text) > MAX_INFOTEXT_CHARS:
        raise MetadataError("The InvokeAI Dream metadata is too large.", "The image's metadata may be damaged.")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise _damaged("InvokeAI Dream") from exc
    if not words:
        raise _damaged("InvokeAI Dream")
    prompt_words: list[str] = []
    values: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word in _DREAM_FLAGS and i + 1 < len(words):
            values[_DREAM_FLAGS[word]] = words[i + 1]
            i += 2
            continue
        if re.fullmatch(r"-[A-Za-z]\S*", word):  # a flag we do not use (-I init image, -n iterations, ...)
            i += 1
            continue
        prompt_words.append(word)
        i += 1
    full = " ".join(prompt_words)
    negative = ", ".join(part.strip() for part in re.findall(r"\[([^\[\]]*)\]", full) if part.strip())
    prompt = re.sub(r"\s*\[[^\[\]]*\]\s*", " ", full).strip()
    notices: list[str] = []
    sampler_id, schedule_id = _invoke_sampler(values.get("sampler"), notices)
    img2img = "strength" in values or "-I" in words or "--init_img" in words
    data = {
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": values.get("seed"),
        "steps": values.get("steps"),
        "guidance": values.get("guidance"),
        "width": values.get("width"),
        "height": values.get("height"),
        "scheduler": sampler_id,
        "schedule": schedule_id,
        "strength": values.get("strength"),
        "model": values.get("model"),
    }
    params = {"Prompt": prompt, "Negative prompt": negative, **{k.capitalize(): v for k, v in values.items()}}
    return _info("invokeai", data, "img2img" if img2img else "generate", notices, values.get("model", ""), params, {})


# --------------------------------------------------------------------------- dispatch


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return value if isinstance(value, str) else None


def read_other_formats(
    info: dict[str, Any], a1111: Callable[[str], ParsedInfo]
) -> tuple[ParsedInfo | None, MetadataError | None]:
    """What a file's chunks / EXIF hold in another tool's format: (info, None), or (None, the first error), or
    (None, None) when there is nothing of theirs. `a1111` reads an infotext (infotext's reader, passed in so
    this module does not import it back). Never raises."""
    first_error: MetadataError | None = None
    readers = [
        ("exif", lambda: exif_parameters(info), a1111),
        ("prompt", lambda: _text(info.get("prompt")), lambda t: comfy_to_info(_json(t, "ComfyUI"), "prompt")),
        (
            "workflow",
            lambda: _text(info.get("workflow")),
            lambda t: comfy_to_info(workflow_to_graph(_json(t, "ComfyUI")), "workflow"),
        ),
        ("invokeai_metadata", lambda: _text(info.get("invokeai_metadata")), invokeai_to_info),
        ("sd-metadata", lambda: _text(info.get("sd-metadata")), sd_metadata_to_info),
        ("Dream", lambda: _text(info.get("Dream")), dream_to_info),
    ]
    for _key, get, parse in readers:
        try:
            text = get()
            if text is None:
                continue
            return parse(text), None
        except MetadataError as exc:
            first_error = first_error or exc
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError):
            first_error = first_error or _damaged(_key)
    return None, first_error


def nothing_readable() -> MetadataError:
    return MetadataError(
        "This image holds no generation parameters.",
        "Images from Diffusion Desk, AUTOMATIC1111 / Forge (PNG, JPEG, WebP), ComfyUI and InvokeAI carry them; "
        "this one has none (another program may have saved it without them).",
    )


__all__ = [
    "nothing_readable",
    "MAX_INFOTEXT_CHARS",
    "MetadataError",
    "ParsedInfo",
    "comfy_to_info",
    "model_name",
    "decode_user_comment",
    "dream_to_info",
    "exif_parameters",
    "invokeai_to_info",
    "read_other_formats",
    "sd_metadata_to_info",
    "workflow_to_graph",
]
