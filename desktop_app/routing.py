"""RoutingBackend: `comfyui:` models go to the pool of ComfyUI servers, every other model to the local engine.

The local engine is created on first use (it imports torch), so a user who only runs remote jobs never loads it.
Remote jobs may run in parallel (the worker asks `runs_in_parallel`): that is what makes a pool of servers pay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from desktop_app.comfyui import PREFIX, is_remote
from desktop_app.core.events import Event, Notice, Progress, Result
from desktop_app.core.modelinfo import BUILTIN, ModelInfo
from desktop_app.core.requests import GenerateRequest

if TYPE_CHECKING:  # the remote backend (urllib, websocket) and numpy load when a server is added, not at start
    import numpy as np

    from desktop_app.comfyui.backend import ComfyBackend
    from desktop_app.core.latents import FlowForwardProcess, ForwardProcess, Trajectory


class _Options:
    """Holds the worker's `models.allow_pickle` until the local engine exists."""

    allow_pickle = False


class RoutingBackend:
    def __init__(
        self,
        local_factory: Callable[[], Any],
        remote: ComfyBackend | None = None,
        remote_all: bool = False,
        max_parallel: int = 4,
    ) -> None:
        """`remote_all`: every job goes to the servers (the CLI's --backend), the built-in model meaning the first
        checkpoint they list."""
        self._local_factory = local_factory
        self._local: Any = None
        self._remote = remote
        self.remote_all = remote_all
        self.max_parallel = max_parallel
        self._lock = threading.Lock()
        self._options = _Options()

    # -- which backend -------------------------------------------------------------
    @property
    def remote(self) -> ComfyBackend | None:
        return self._remote

    def set_remote(self, remote: ComfyBackend | None) -> None:
        """New servers (the Connections changed): jobs from now on use them; running ones finish where they are."""
        self._remote = remote

    def local(self) -> Any:
        with self._lock:
            if self._local is None:
                self._local = self._local_factory()
                models = getattr(self._local, "models", None)
                if models is not None:
                    models.allow_pickle = self._options.allow_pickle
            return self._local

    @property
    def models(self) -> Any:
        """The local engine's model manager once it exists (the worker sets allow_pickle on it)."""
        return getattr(self._local, "models", None) if self._local is not None else self._options

    def _goes_remote(self, model: str | None) -> bool:
        return is_remote(model) or (self.remote_all and self._remote is not None)

    def _remote_or_fail(self) -> ComfyBackend:
        remote = self._remote
        if remote is None:
            from desktop_app.core.errors import UserError

            raise UserError(
                "This model is on a ComfyUI server, but no server is set up.", "Add one with Run > Servers…."
            )
        return remote

    def _for(self, model: str | None) -> Any:
        return self._remote_or_fail() if self._goes_remote(model) else self.local()

    def runs_in_parallel(self, request: Any) -> bool:
        return self._goes_remote(getattr(request, "model", None)) and self._remote is not None

    # -- Backend -------------------------------------------------------------------
    def run(
        self,
        request: GenerateRequest,
        on_event: Callable[[Event], None],
        cancel: threading.Event,
        source: Result | GenerateRequest | None = None,
    ) -> Result:
        if self._goes_remote(request.model):
            remote = self._remote_or_fail()
            if self.remote_all and request.model in (BUILTIN, ""):
                first = next(iter(sorted(remote.pool.checkpoints())), None)
                if first is not None:
                    request = request.replace(model=PREFIX + first)
                    on_event(Notice(f"Runs on the ComfyUI servers with their checkpoint {first}."))
            return remote.run(request, on_event, cancel, source)
        return self.local().run(request, on_event, cancel, source)

    def cancel(self) -> None:
        if self._remote is not None:
            self._remote.cancel()
        if self._local is not None:
            self._local.cancel()

    def preload(self, model: str | None) -> ModelInfo:
        return self._for(model).preload(model)

    def suggest_mask(
        self,
        image: Image.Image,
        source_prompt: str,
        target_prompt: str,
        model: str | None = None,
        how: str = "diffedit",
    ) -> Image.Image:
        return self._for(model).suggest_mask(image, source_prompt, target_prompt, model, how)

    def decode_trajectory(
        self, trajectory: Trajectory, index: int, which: str = "x0", batch_index: int = 0
    ) -> Image.Image:
        # only local results carry a trajectory
        return self.local().decode_trajectory(trajectory, index, which, batch_index)

    def forward_process(self, image: Image.Image, model: str | None = None) -> ForwardProcess | FlowForwardProcess:
        return self._for(model).forward_process(image, model)

    def decode_latent(self, latent: np.ndarray, model: str | None = None) -> Image.Image:
        return self._for(model).decode_latent(latent, model)

    def list_models(self) -> list[dict]:
        from desktop_app.core.model_registry import list_rows  # what the local engine lists, without loading it

        rows = [] if self.remote_all else list_rows()
        if self._remote is not None:
            rows = self._remote.list_models() + rows
        return rows

    def download_model(self, repo: str, on_progress: Callable[[Progress], None], cancel: threading.Event) -> Path:
        return self.local().download_model(repo, on_progress, cancel)


__all__ = ["RoutingBackend"]
