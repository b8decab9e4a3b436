"""Several ComfyUI servers as one: each job goes to the least busy server that has its checkpoint.

A server that cannot be reached is marked down and probed again after a backoff that doubles with each failure
(1 s, 2 s, 4 s ... up to a minute); when a job has nowhere else to go, the down servers are probed at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from desktop_app.comfyui.client import ComfyClient, ServerError, ServerGone, ServerInfo
from desktop_app.core.errors import ModelError

INFO_MAX_AGE = 30.0  # seconds a server's model list is trusted before it is asked again


@dataclass
class ServerState:
    client: ComfyClient
    up: bool = False
    probed: bool = False
    failures: int = 0
    retry_at: float = 0.0
    info: ServerInfo | None = None
    info_at: float = -1e9
    running: int = 0  # this app's jobs on it now
    jobs_done: int = 0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def name(self) -> str:
        return self.client.name


class ComfyPool:
    def __init__(
        self,
        clients: Iterable[ComfyClient],
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = [ServerState(c) for c in clients]
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._clock = clock
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.servers)

    # -- health ----------------------------------------------------------------
    def probe(self, server: ServerState, force: bool = False) -> bool:
        """Ask the server how it is (and which models it has, when that is old); True when it answered."""
        with server.lock:
            now = self._clock()
            if not force and server.probed and not server.up and now < server.retry_at:
                return False
            try:
                if force or server.info is None or now - server.info_at > INFO_MAX_AGE or not server.up:
                    server.info = server.client.info()
                    server.info_at = now
                else:
                    server.client.queue_remaining()
            except ServerError as exc:
                self._down(server, exc.message)
                return False
            server.up, server.probed, server.failures, server.last_error = True, True, 0, ""
            return True

    def mark_down(self, server: ServerState, why: str) -> None:
        with server.lock:
            self._down(server, why)

    def _down(self, server: ServerState, why: str) -> None:
        server.up, server.probed = False, True
        server.failures += 1
        server.retry_at = self._clock() + min(self.backoff_max, self.backoff * 2 ** (server.failures - 1))
        server.last_error = why

    def refresh(self) -> list[ServerState]:
        """Probe every server that is due (all of them the first time); the servers that are up."""
        return [s for s in self.servers if self.probe(s)]

    # -- models ------------------------------------------------------------------
    def checkpoints(self) -> dict[str, list[str]]:
        """checkpoint name -> the names of the servers (up now) that have it."""
        found: dict[str, list[str]] = {}
        for server in self.refresh():
            for name in server.info.checkpoints if server.info else []:
                found.setdefault(name, []).append(server.name)
        return found

    def loras(self, server: ServerState) -> list[str]:
        return list(server.info.loras) if server.info else []

    # -- placing jobs --------------------------------------------------------------
    def acquire(self, checkpoint: str, exclude: Iterable[ServerState] = ()) -> ServerState:
        """The least busy server that is up and has `checkpoint` (its count of running jobs is taken); raises
        ServerGone when none answers, ModelError when none has the checkpoint."""
        excluded = {id(s) for s in exclude}
        candidates = [s for s in self.servers if id(s) not in excluded]
        up = [s for s in candidates if self.probe(s)]
        if not up:  # nowhere to go: try the down ones now, whatever their backoff
            up = [s for s in candidates if self.probe(s, force=True)]
        if not up:
            names = ", ".join(s.name for s in candidates) or "none left"
            errors = "; ".join(s.last_error for s in candidates if s.last_error)
            raise ServerGone(
                f"No ComfyUI server answers ({names}).{' ' + errors if errors else ''}",
                "Start the server or check its address in the Servers dialog; the app retries it.",
            )
        having = [s for s in up if s.info and checkpoint in s.info.checkpoints]
        if not having:  # the lists may be old: ask again once
            for s in up:
                self.probe(s, force=True)
            having = [s for s in up if s.up and s.info and checkpoint in s.info.checkpoints]
        if not having:
            known = sorted({c for s in up for c in (s.info.checkpoints if s.info else [])})
            raise ModelError(
                f"No ComfyUI server has the checkpoint {checkpoint!r}.",
                ("The servers have: " + ", ".join(known[:8]) + ("…" if len(known) > 8 else ""))
                if known
                else "Put a checkpoint in the server's models/checkpoints folder.",
            )
        with self._lock:
            best = min(having, key=lambda s: (self._load(s), s.jobs_done))
            best.running += 1
        return best

    def _load(self, server: ServerState) -> int:
        """Jobs ahead of a new one there: its queue (everyone's jobs) or at least this app's own running ones."""
        try:
            remote = server.client.queue_remaining()
        except ServerError:
            remote = 0
        return max(remote, server.running)

    def release(self, server: ServerState, done: bool = True) -> None:
        with self._lock:
            server.running = max(0, server.running - 1)
            if done:
                server.jobs_done += 1

    def find(self, url: str) -> ServerState | None:
        return next((s for s in self.servers if s.url == url), None)


__all__ = ["ComfyPool", "ServerState"]
