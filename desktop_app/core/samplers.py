"""The one table of samplers and schedule types, and their names in AUTOMATIC1111 / Forge / ComfyUI / InvokeAI.

A sampler id ("dpmpp_2m") picks a diffusers scheduler class; a schedule id ("karras") picks its noise levels
(`use_karras_sigmas`, ...). None for the schedule means the sampler's default: whatever the model's scheduler
config says. Reading is forgiving (any case, old combined A1111 names such as "DPM++ 2M Karras", ComfyUI's
`sampler_name` + `scheduler`, InvokeAI's "dpmpp_2m_k"); writing uses A1111's names, which every tool reads.
"""

from __future__ import annotations

import re

from desktop_app.core.errors import InvalidRequest

# Sampler id -> the name A1111 writes as "Sampler" (Forge and Civitai write the same).
SAMPLERS: dict[str, str] = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_sde": "DPM++ SDE",
    "unipc": "UniPC",
    "lcm": "LCM",
    "ddim": "DDIM",
}
# Schedule id -> the name A1111 (1.9 and later) writes as "Schedule type".
SCHEDULES: dict[str, str] = {
    "normal": "Normal",
    "karras": "Karras",
    "exponential": "Exponential",
}
# The schedules each sampler's diffusers scheduler can do: DDIM, Euler a and LCM take no sigma schedule there.
SUPPORTED_SCHEDULES: dict[str, tuple[str, ...]] = {
    "euler": ("normal", "karras", "exponential"),
    "euler_a": ("normal",),
    "dpmpp_2m": ("normal", "karras", "exponential"),
    "dpmpp_2m_sde": ("normal", "karras", "exponential"),
    "dpmpp_sde": ("normal", "karras", "exponential"),
    "unipc": ("normal", "karras", "exponential"),
    "lcm": ("normal",),
    "ddim": ("normal",),
}

# Sampler id -> ComfyUI `sampler_name`.
_COMFY_SAMPLERS: dict[str, str] = {
    "euler": "euler",
    "euler_a": "euler_ancestral",
    "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_sde": "dpmpp_2m_sde",
    "dpmpp_sde": "dpmpp_sde",
    "unipc": "uni_pc",
    "lcm": "lcm",
    "ddim": "ddim",
}
# ComfyUI names that run the same sampler another way (GPU noise, another UniPC variant).
_COMFY_ALIASES: dict[str, str] = {
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "dpmpp_sde_gpu": "dpmpp_sde",
    "uni_pc_bh2": "unipc",
}
_COMFY_DEFAULT_SCHEDULER = "normal"  # ComfyUI's KSampler default; it has no "the sampler's own"

# Every spelling users and tools write for a sampler, lower-cased with single spaces.
_SAMPLER_NAMES: dict[str, str] = {}
for _sid, _name in SAMPLERS.items():
    _SAMPLER_NAMES[_sid] = _sid
    _SAMPLER_NAMES[_name.lower()] = _sid
for _sid, _name in _COMFY_SAMPLERS.items():
    _SAMPLER_NAMES[_name] = _sid
for _name, _sid in _COMFY_ALIASES.items():
    _SAMPLER_NAMES[_name] = _sid
_SAMPLER_NAMES.update(
    {
        # Forge / older A1111 / Civitai spellings
        "euler ancestral": "euler_a",
        "uni pc": "unipc",
        "dpm++ 2m sde gpu": "dpmpp_2m_sde",
        "dpm++ sde gpu": "dpmpp_sde",
        # InvokeAI 2.x (k-diffusion names)
        "k_euler": "euler",
        "k_euler_a": "euler_a",
        "k_dpmpp_2": "dpmpp_2m",
        # diffusers class names, as diffusers-based tools write them
        "ddimscheduler": "ddim",
        "eulerdiscretescheduler": "euler",
        "eulerancestraldiscretescheduler": "euler_a",
        "dpmsolvermultistepscheduler": "dpmpp_2m",
        "dpmsolversdescheduler": "dpmpp_sde",
        "unipcmultistepscheduler": "unipc",
        "lcmscheduler": "lcm",
    }
)
# Every spelling of a schedule; "automatic" (A1111) and "default" mean the sampler's own.
_SCHEDULE_NAMES: dict[str, str | None] = {"automatic": None, "default": None, "": None}
for _sid, _name in SCHEDULES.items():
    _SCHEDULE_NAMES[_sid] = _sid
    _SCHEDULE_NAMES[_name.lower()] = _sid


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _hint() -> str:
    return (
        "Known samplers: "
        + ", ".join(SAMPLERS.values())
        + " (or ComfyUI's "
        + ", ".join(_COMFY_SAMPLERS.values())
        + "); schedules: "
        + ", ".join(SCHEDULES.values())
        + "."
    )


def parse_schedule(text: str | None) -> str | None:
    """A schedule id from "Karras", "karras", "Automatic" (None: the sampler's own)."""
    if text is None:
        return None
    key = _norm(text)
    if key not in _SCHEDULE_NAMES:
        raise InvalidRequest(f"Unknown schedule type {text!r}.", _hint())
    return _SCHEDULE_NAMES[key]


def check_pair(sampler_id: str, schedule_id: str | None) -> None:
    """Raise InvalidRequest naming both when this sampler cannot use this schedule."""
    if sampler_id not in SAMPLERS:
        raise InvalidRequest(f"Unknown sampler {sampler_id!r}.", _hint())
    if schedule_id is None:
        return
    if schedule_id not in SCHEDULES:
        raise InvalidRequest(f"Unknown schedule type {schedule_id!r}.", _hint())
    if schedule_id not in SUPPORTED_SCHEDULES[sampler_id]:
        others = ", ".join(SAMPLERS[s] for s, ok in SUPPORTED_SCHEDULES.items() if schedule_id in ok)
        raise InvalidRequest(
            f"The sampler {SAMPLERS[sampler_id]} has no {SCHEDULES[schedule_id]} schedule.",
            f"Use it with the {', '.join(SCHEDULES[s] for s in SUPPORTED_SCHEDULES[sampler_id])} schedule, "
            f"or pick one of {others} for {SCHEDULES[schedule_id]}.",
        )


def parse_sampler(text: str, schedule: str | None = None) -> tuple[str, str | None]:
    """(sampler id, schedule id) from what users and tools write: "DPM++ 2M Karras", "Euler a", "dpmpp_2m" with
    schedule "karras", "euler_ancestral", "dpmpp_2m_k" (InvokeAI). A separate schedule wins over one in the name,
    except A1111's "Automatic", which leaves the name's. Raises InvalidRequest for unknown names or pairs."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"No sampler given ({text!r}).", _hint())
    key = _norm(text)
    named_schedule: str | None = None
    sampler_id = _SAMPLER_NAMES.get(key)
    if sampler_id is None:
        for sid, name in SCHEDULES.items():  # old combined A1111 names: "DPM++ 2M Karras", "DPM++ 2M SDE Exponential"
            suffix = " " + name.lower()
            if key.endswith(suffix) and key[: -len(suffix)] in _SAMPLER_NAMES:
                sampler_id, named_schedule = _SAMPLER_NAMES[key[: -len(suffix)]], sid
                break
    if sampler_id is None and key.endswith("_k") and key[:-2] in _SAMPLER_NAMES:  # InvokeAI: "euler_k"
        sampler_id, named_schedule = _SAMPLER_NAMES[key[:-2]], "karras"
    if sampler_id is None:
        raise InvalidRequest(f"Unknown sampler {text!r}.", _hint())
    chosen = parse_schedule(schedule)
    if chosen is None:
        chosen = named_schedule
    check_pair(sampler_id, chosen)
    return sampler_id, chosen


def a1111_names(sampler_id: str, schedule_id: str | None) -> tuple[str, str | None]:
    """What A1111 writes as `Sampler:` and `Schedule type:` (None: leave the schedule out, the sampler's own)."""
    check_pair(sampler_id, schedule_id)
    return SAMPLERS[sampler_id], SCHEDULES[schedule_id] if schedule_id is not None else None


def comfy_sampler(sampler_id: str, schedule_id: str | None) -> tuple[str, str]:
    """ComfyUI's (`sampler_name`, `scheduler`); the sampler's own schedule is ComfyUI's "normal"."""
    check_pair(sampler_id, schedule_id)
    return _COMFY_SAMPLERS[sampler_id], schedule_id or _COMFY_DEFAULT_SCHEDULER


def from_comfy(sampler_name: str, scheduler: str | None) -> tuple[str | None, str | None]:
    """(sampler id, schedule id) from ComfyUI's names; None for a name this app has no equivalent of ("heun",
    "sgm_uniform"), so the caller can say what it left to the model's default."""
    key = _norm(sampler_name) if isinstance(sampler_name, str) else ""
    sampler_id = _COMFY_ALIASES.get(key) or next((s for s, n in _COMFY_SAMPLERS.items() if n == key), None)
    sched_key = _norm(scheduler) if isinstance(scheduler, str) else ""
    schedule_id = sched_key if sched_key in SCHEDULES else None
    if sampler_id is not None and schedule_id is not None and schedule_id not in SUPPORTED_SCHEDULES[sampler_id]:
        schedule_id = None  # ComfyUI can do e.g. euler_ancestral + karras; here it runs on the sampler's own
    return sampler_id, schedule_id


def label(sampler_id: str, schedule_id: str | None) -> str:
    """The name as A1111 (before 1.9) listed it: "DPM++ 2M Karras"; "DPM++ 2M" for the sampler's own schedule."""
    name, sched = a1111_names(sampler_id, schedule_id)
    return f"{name} {sched}" if sched else name


def labels() -> list[tuple[str, str | None, str]]:
    """(sampler id, schedule id, label) for the window's list: each sampler on its own schedule, then with each
    other schedule it can do ("Normal" is left out: it is what the sampler's own schedule is for most models)."""
    out: list[tuple[str, str | None, str]] = []
    for sampler_id in SAMPLERS:
        out.append((sampler_id, None, label(sampler_id, None)))
        for schedule_id in SUPPORTED_SCHEDULES[sampler_id]:
            if schedule_id != "normal":
                out.append((sampler_id, schedule_id, label(sampler_id, schedule_id)))
    return out
