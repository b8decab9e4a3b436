"""Typed news from a running job, and its result: plain data the UI, CLI and history share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from desktop_app.core.requests import GenerateRequest

if TYPE_CHECKING:  # numpy stays out of the window's start-up
    from desktop_app.core.latents import Trajectory


@dataclass(frozen=True)
class Progress:
    step: int  # steps done, 1-based
    total: int
    timestep: int
    its_per_sec: float
    eta_seconds: float
    phase: str = "denoise"  # "invert" during an edit's inversion


@dataclass(frozen=True)
class Preview:
    step: int
    image: Image.Image  # small RGB


@dataclass(frozen=True)
class Notice:
    """Something the user should know that does not stop the job (a truncated prompt)."""

    message: str


@dataclass
class Result:
    """What a finished job made. `request` has its defaults and seed filled in. Plain data: no torch tensors."""

    request: GenerateRequest
    images: list[Image.Image]
    seeds: list[int]
    model_id: str = ""
    model_hash: str = ""
    elapsed: float = 0.0
    notices: list[str] = field(default_factory=list)
    trajectory: Trajectory | None = None  # numpy latents of every step, for the timestep slider
    info: dict[str, Any] = field(default_factory=dict)  # extra fields for the infotext

    @property
    def seed(self) -> int:
        return self.seeds[0]


@dataclass(frozen=True)
class Finished:
    result: Result


@dataclass(frozen=True)
class Failed:
    message: str
    hint: str = ""


@dataclass(frozen=True)
class Cancelled:
    pass


Event = Progress | Preview | Notice | Finished | Failed | Cancelled
