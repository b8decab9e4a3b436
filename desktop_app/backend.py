"""The Backend protocol: everything the worker calls on whatever runs the jobs (the local engine, a remote server).

Only plain data crosses it (core requests, events, results, numpy latents, PIL images), so the worker and
the window never see torch. Implementations: `desktop_app.engine.engine.Engine`; the tests' FakeEngine.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from PIL import Image

from desktop_app.core.errors import JobCancelled, UserError
from desktop_app.core.events import Cancelled, Event, Failed, Finished, Progress, Result
from desktop_app.core.modelinfo import ModelInfo
from desktop_app.core.requests import GenerateRequest

if TYPE_CHECKING:  # numpy only in annotations: the window imports this module before its first paint
    import numpy as np

    from desktop_app.core.latents import FlowForwardProcess, ForwardProcess, Trajectory


@runtime_checkable
class Backend(Protocol):
    def run(
        self,
        request: GenerateRequest,
        on_event: Callable[[Event], None],
        cancel: threading.Event,
        source: Result | GenerateRequest | None = None,
    ) -> Result:
        """Run one job. Emits Progress / Preview / Notice, then exactly one terminal event: Finished(result),
        Failed(message, hint) or Cancelled(); then returns the Result, or raises (JobCancelled after Cancelled,
        UserError or any other exception after Failed). `cancel` is checked every step.

        `source`: for an edit, the Result or seeded GenerateRequest that made the source image (exact replay)."""
        ...

    def cancel(self) -> None:
        """Stop the running job within one step, whatever its own cancel event (it then reports Cancelled)."""
        ...

    def preload(self, model: str | None) -> ModelInfo:
        """Load a model now (None: the built-in one) and say what it is; UserError when it cannot be loaded."""
        ...

    def suggest_mask(
        self,
        image: Image.Image,
        source_prompt: str,
        target_prompt: str,
        model: str | None = None,
        how: str = "diffedit",
    ) -> Image.Image:
        """A mode 'L' mask (0 / 255) of the image's size: where an edit from one prompt to the other should happen.
        `how`: "diffedit" (where the noise predicted under the two prompts differs) or "attention" (where the
        changed words' cross-attention falls)."""
        ...

    def decode_trajectory(
        self, trajectory: Trajectory, index: int, which: str = "x0", batch_index: int = 0
    ) -> Image.Image:
        """Full decode of step `index` of a run ("x0": its predicted clean image, "xt": the noisy latent)."""
        ...

    def forward_process(self, image: Image.Image, model: str | None = None) -> ForwardProcess | FlowForwardProcess:
        """The source image's forward process in closed form, for the slider before a run."""
        ...

    def decode_latent(self, latent: np.ndarray, model: str | None = None) -> Image.Image:
        """Full decode of one scaled latent (C, h, w) float32."""
        ...

    def list_models(self) -> list[dict]:
        """Rows for the model picker: the built-in model, the ones used before, the curated hub list."""
        ...

    def download_model(self, repo: str, on_progress: Callable[[Progress], None], cancel: threading.Event) -> Path:
        """Fetch a hub model into the cache; the folder. Safe beside a running job, from another thread.
        Progress has phase "download" (step / total in bytes); cancel raises JobCancelled.

        `repo`: a hub id (owner/name[@revision][:subfolder]), or a parts id (`parts_id`: "parts:flux",
        "parts:sd3"): only the text encoders, tokenizers and VAE a transformer file of that family needs."""
        ...


# -- the parts of a flow family: a download named by a repo form, not a hub id --------------------
PARTS_PREFIX = "parts:"  # hub ids always have a slash, so "parts:flux" is never one


@dataclass(frozen=True)
class PartsDownload:
    """The text encoders, tokenizers and VAE every transformer file of a flow family shares, fetched alone from
    one base repo (its transformer stays on the hub)."""

    kind: str  # "flux" or "sd3"
    family_name: str  # in words: "FLUX.1", "SD 3.x"
    family: str  # the shipped config whose model_index.json lists the parts (core.modelinfo.FLOW_FAMILIES)
    repo: str  # where they come from
    size_gb: float  # the download: the parts' .safetensors files and tokenizers
    gated: bool

    @property
    def id(self) -> str:
        """What `Backend.download_model` and `Models.download` take for it: "parts:flux"."""
        return PARTS_PREFIX + self.kind

    @property
    def label(self) -> str:
        return f"the {self.family_name} text encoders and VAE"

    @property
    def command(self) -> str:
        return f"diffusion-desk-cli models --download-parts {self.kind}"


# sizes: the repos' text_encoder*/, tokenizer*/ and vae/ files (FLUX.1 schnell: CLIP-L 0.25 + T5-XXL 9.52 + VAE
# 0.17 GB; SD 3.5 Medium: CLIP-L 0.25 + CLIP-G 1.39 + T5-XXL 9.52 + VAE 0.17 GB)
PARTS: dict[str, PartsDownload] = {
    "flux": PartsDownload("flux", "FLUX.1", "flux-schnell", "black-forest-labs/FLUX.1-schnell", 9.9, gated=False),
    "sd3": PartsDownload("sd3", "SD 3.x", "sd3", "stabilityai/stable-diffusion-3.5-medium", 11.3, gated=True),
}
_PARTS_COMMAND = re.compile(r"--download-parts (flux|sd3)\b")


def parts_for(family: str) -> PartsDownload:
    """The parts a transformer file of `family` ("flux-dev", "sd3", or the kinds "flux" / "sd3") needs."""
    return PARTS["flux" if family.startswith("flux") else "sd3"]


def parts_of(repo: str) -> PartsDownload | None:
    """The parts a download id names ("parts:flux", "parts:flux-dev", "parts:sd3"), None for a hub id."""
    if not repo.startswith(PARTS_PREFIX):
        return None
    family = repo[len(PARTS_PREFIX) :].strip()
    return parts_for(family) if family.startswith(("flux", "sd3")) else None


def parts_named_in(text: str) -> PartsDownload | None:
    """The parts a missing-parts error's hint offers to download (it names `PartsDownload.command`), else None."""
    found = _PARTS_COMMAND.search(text or "")
    return PARTS[found.group(1)] if found else None


def run_reporting(
    job: Callable[[], Result],
    emit: Callable[[Event], None],
    what: str,
    log: logging.Logger,
    user_error: Callable[[Exception], UserError | None] = lambda exc: None,
) -> Result:
    """Run `job` and emit exactly one terminal event, as `Backend.run` promises: Finished(result), Cancelled()
    (then JobCancelled is raised), or Failed(message, hint) (then the error is raised). `user_error` may turn a
    backend's own exception (the engine's out of memory) into a UserError with a hint; anything else unexpected is
    logged and reported as "The {what} failed: ..." (the next job still runs)."""
    started = time.perf_counter()
    try:
        result = job()
    except JobCancelled:
        emit(Cancelled())
        raise
    except UserError as exc:
        emit(Failed(exc.message, exc.hint))
        raise
    except Exception as exc:
        error = user_error(exc)
        if error is not None:
            emit(Failed(error.message, error.hint))
            raise error from exc
        log.exception("%s failure", what)
        message = f"The {what} failed: {type(exc).__name__}: {exc}".splitlines()[0][:400]
        emit(Failed(message, "See the log file for details; the next job will still run."))
        raise
    result.elapsed = time.perf_counter() - started
    emit(Finished(result))
    return result


__all__ = [
    "PARTS",
    "PARTS_PREFIX",
    "Backend",
    "PartsDownload",
    "parts_for",
    "parts_named_in",
    "parts_of",
    "run_reporting",
]
