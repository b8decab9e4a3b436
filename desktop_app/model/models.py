"""Models: the model picker's state, the preload of a chosen model, and hub downloads.

The picker and the models dialog bind to one `Models`; neither keeps a list of its own.

- `sources()`: the built-in model first, then the user's (kept in the settings, "model/known").
- `select(source)` preloads it on the worker: state "loading" ("Loading <name>…"), then "ready", or "failed". A model
  that fails to load never stays selected: the current model goes back to the last one that worked, which stays
  usable, and `failed(message, hint)` says why. `defaultsReady(source, defaults)` (steps, guidance, scheduler, size)
  is emitted only once a model loaded (or for the built-in at `start()`), so a broken checkpoint never overwrites
  what the prompt panel holds.
- `download(repo)` runs the injected downloader on a thread of its own, never on the worker's job queue: a
  generation runs while a model downloads, several downloads may run at once, and a download outlives the dialog
  that started it. A finished download joins `sources()`.
- The parts of a flow family (`download("parts:flux")`, or `download_parts(family, then_load=file)`): a
  FLUX.1 / SD 3.x transformer file whose load failed because its text encoders and VAE are missing is remembered
  (`parts_missing(source)`, `partsMissing(source, parts id)`); once its parts are downloaded it loads (`select`).
  The parts never join `sources()`: they are no model of their own.

Signals: sourcesChanged(), currentChanged(str), stateChanged(str state, str message), failed(str, str),
defaultsReady(str, dict), allowPickleChanged(bool), downloadProgress(str repo, float done, float total),
downloadFinished(str repo, str path, str error: "" when it worked, "cancelled", or the reason),
partsMissing(str source, str parts id).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, Signal, Slot

from desktop_app.backend import PartsDownload, parts_for, parts_named_in, parts_of
from desktop_app.core.errors import UserError
from desktop_app.core.model_registry import ModelRegistry, curated
from desktop_app.core.modelinfo import BUILTIN, is_flow, model_defaults
from desktop_app.core.requests import EDIT_METHODS

# downloader(repo, on_progress, cancel) -> the local folder; blocking (Models runs it on a thread of its own).
# on_progress gets objects with done_bytes and total_bytes (engine.hub.DownloadProgress) from that thread;
# a cancelled download raises (JobCancelled or any exception) once `cancel` is set.
Downloader = Callable[[str, Callable[[Any], None], threading.Event], Path]

KNOWN_KEY = "model/known"
CURRENT_KEY = "model/current"
PICKLE_KEY = "models/allow_pickle"
STATES = ("idle", "loading", "ready", "failed")
RUNNING = ("running", "cancelling")


def display_name(source: str) -> str:
    """How a model is named in messages: the built-in's name, a file or folder's name, or the hub id."""
    if source == BUILTIN:
        return str(model_defaults(BUILTIN).get("name") or "Built-in (shapes)")
    known = curated(source)
    if known is not None:
        return known.name
    parts = parts_of(source)
    if parts is not None:
        return parts.label
    path = Path(source)
    return path.name if path.is_absolute() and path.name else source


def download_name(repo: str) -> str:
    """How a download is named in progress text: the hub id, or what a parts id fetches."""
    parts = parts_of(repo)
    return parts.label if parts is not None else repo


# The edit methods each kind of model takes, in the order the window lists them (engine.check_edit_method)
SD_METHOD_ORDER = ("direct", "negative-prompt", "ddim", "ledits")
FLOW_METHOD_ORDER = ("fireflow", "rf-solver", "rf-inversion")
P2P_METHODS = ("direct", "negative-prompt", "ddim")  # the inversions Prompt-to-Prompt attention control runs over


def edit_methods(family: str | None) -> tuple[str, ...]:
    """The edit methods a model of `family` takes: SD's inversions and LEDITS++, or the flow inversions (and
    Kontext instructions on a FLUX.1 Kontext model)."""
    if is_flow(family):
        return FLOW_METHOD_ORDER + (("kontext",) if "kontext" in (family or "") else ())
    return SD_METHOD_ORDER


def default_edit_method(family: str | None, defaults: dict[str, Any] | None = None) -> str:
    """The model's recommended edit method (its settings' "edit" object), else its family's: Kontext on a Kontext
    model, FireFlow on other flow models, direct inversion on Stable Diffusion."""
    methods = edit_methods(family)
    edit = (defaults or {}).get("edit")
    for method in ((edit or {}).get("method") if isinstance(edit, dict) else None, (defaults or {}).get("method")):
        if isinstance(method, str) and method in EDIT_METHODS and method in methods:
            return method
    if is_flow(family):
        return "kontext" if "kontext" in methods else "fireflow"
    return "direct"


def _as_list(value: Any) -> list[str]:
    """QSettings gives a list, a single string or None depending on the backend and how many there were."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if v]


class _Download:
    __slots__ = ("repo", "cancel", "thread", "done", "total", "state")

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None
        self.done = 0.0
        self.total = 0.0
        self.state = "running"


class Models(QObject):
    """The model picker's state; see the module docstring."""

    sourcesChanged = Signal()
    currentChanged = Signal(str)
    stateChanged = Signal(str, str)
    failed = Signal(str, str)
    defaultsReady = Signal(str, dict)
    allowPickleChanged = Signal(bool)
    downloadProgress = Signal(str, float, float)
    downloadFinished = Signal(str, str, str)
    partsMissing = Signal(str, str)
    # emitted on a download's thread; self lives on the GUI thread, so they arrive queued
    _progressed = Signal(str, float, float)
    _ended = Signal(str, str, str)

    def __init__(
        self,
        worker: Any,
        settings: QSettings,
        downloader: Downloader | None = None,
        parent: QObject | None = None,
        *,
        registry: ModelRegistry | None = None,
    ) -> None:
        super().__init__(parent)
        self.worker = worker
        self.settings = settings
        self.downloader = downloader
        self.registry = registry if registry is not None else ModelRegistry()
        known = [s for s in _as_list(settings.value(KNOWN_KEY, [])) if s != BUILTIN]
        self._sources: list[str] = [BUILTIN, *dict.fromkeys(known)]
        saved = str(settings.value(CURRENT_KEY, BUILTIN) or BUILTIN)
        self._current = saved if saved in self._sources else BUILTIN
        self._good = BUILTIN  # the last model that loaded (the built-in always can)
        self._state = "idle"
        self._message = ""
        self._job: tuple[int, str] | None = None  # the preload in flight: (job id, source)
        self._info: dict[str, Any] = {}  # what the engine said about each model it loaded
        self._downloads: dict[str, _Download] = {}
        self._parts_missing: dict[str, str] = {}  # source -> the parts id its last load missed
        self._after_parts: dict[str, str] = {}  # parts id -> the source to load once they are downloaded
        self._allow_pickle = str(settings.value(PICKLE_KEY, "false")).lower() == "true"
        worker.allow_pickle = self._allow_pickle
        worker.serviceDone.connect(self._on_service_done)
        worker.serviceFailed.connect(self._on_service_failed)
        self._progressed.connect(self._on_progressed)
        self._ended.connect(self._on_ended)

    # -- state ---------------------------------------------------------------------------
    def sources(self) -> list[str]:
        return list(self._sources)

    def current(self) -> str:
        return self._current

    def state(self) -> str:
        return self._state

    def message(self) -> str:
        return self._message

    def info(self, source: str) -> Any:
        """What the engine reported when `source` loaded (a ModelInfo: family, model_hash, defaults), or None."""
        return self._info.get(source)

    def family(self, source: str | None = None) -> str:
        """A model's family ("sd1", "sdxl", "flux-dev", ...): the engine's word once it loaded, else the curated
        list's or the known models' ("" when nothing says)."""
        source = source or self._current
        found = getattr(self._info.get(source), "family", "")
        if found:
            return str(found)
        if source == BUILTIN:
            return "sd1"
        hub = curated(source)
        if hub is not None:
            return hub.family
        known = next((k for k in self.known() if getattr(k, "location", None) == source), None)
        return str(getattr(known, "family", "") or "")

    def known(self) -> list[Any]:
        """Models the app has met (core.model_registry.KnownModel: family, hash, missing), most recent first."""
        try:
            return self.registry.all()
        except (OSError, ValueError):  # the list of known models is a convenience
            return []

    def defaults(self, source: str | None = None) -> dict[str, Any]:
        """Recommended settings of a model: the engine's word once it loaded, else the curated list's or its files'."""
        source = source or self._current
        info = self._info.get(source)
        found = getattr(info, "defaults", None)
        if isinstance(found, dict) and found:
            return dict(found)
        hub = curated(source)
        return hub.defaults() if hub is not None else model_defaults(source)

    def _set_state(self, state: str, message: str) -> None:
        self._state, self._message = state, message
        self.stateChanged.emit(state, message)

    def _set_current(self, source: str) -> None:
        if source != self._current:
            self._current = source
            self.currentChanged.emit(source)

    # -- the list -----------------------------------------------------------------------------
    def add(self, source: str) -> bool:
        """Put `source` in the list (kept in the settings); False when it was there already."""
        source = str(source)
        if not source or source in self._sources:
            return False
        self._sources.append(source)
        self._save_sources()
        self.sourcesChanged.emit()
        return True

    def remove(self, source: str) -> bool:
        """Take `source` out of the list and out of the known models; the built-in stays. The current one falls back
        to the built-in."""
        if source == BUILTIN:
            return False
        listed = source in self._sources
        if listed:
            self._sources.remove(source)
            self._save_sources()
        try:
            forgotten = self.registry.remove(source)
        except OSError:
            forgotten = False
        if not (listed or forgotten):
            return False
        self._info.pop(source, None)
        self._parts_missing.pop(source, None)
        if self._good == source:
            self._good = BUILTIN
        self.sourcesChanged.emit()
        if self._current == source:
            self.select(BUILTIN)
        return True

    def _save_sources(self) -> None:
        self.settings.setValue(KNOWN_KEY, [s for s in self._sources if s != BUILTIN])

    # -- choosing and loading -----------------------------------------------------------------
    def start(self) -> None:
        """At launch: the built-in's defaults at once, or the model chosen last time loaded (as `select`)."""
        if self._current == BUILTIN:
            self.defaultsReady.emit(BUILTIN, self.defaults(BUILTIN))
        else:
            self.select(self._current)

    def select(self, source: str) -> None:
        """Choose `source` for the next jobs and load it now, so a broken one is found before a job needs it."""
        source = str(source)
        self.add(source)
        self._set_current(source)
        job_id, _future = self.worker.preload(source)
        self._job = (job_id, source)
        self._set_state("loading", f"Loading {display_name(source)}…")

    @Slot(int, str, object)
    def _on_service_done(self, job_id: int, kind: str, value: Any) -> None:
        if kind != "preload" or self._job is None or self._job[0] != job_id:
            return
        source = self._job[1]
        self._job = None
        if value is not None:
            self._info[source] = value
        self._parts_missing.pop(source, None)
        self._good = source
        self.settings.setValue(CURRENT_KEY, source)  # only a model that loaded is remembered for the next launch
        self._set_state("ready", f"{display_name(source)} is ready")
        self.defaultsReady.emit(source, self.defaults(source))

    @Slot(int, str, str, str)
    def _on_service_failed(self, job_id: int, kind: str, message: str, hint: str) -> None:
        if kind != "preload" or self._job is None or self._job[0] != job_id:
            return
        source = self._job[1]
        self._job = None
        back = self._good if self._good != source else BUILTIN
        self._set_current(back)
        self._set_state("failed", f"{display_name(source)} could not be loaded: {message}")
        parts = parts_named_in(hint) or parts_named_in(message)
        if parts is not None:  # a transformer file without its text encoders and VAE (flow_files' ModelError)
            self._parts_missing.pop(source, None)
            self._parts_missing[source] = parts.id  # the latest last
            self.partsMissing.emit(source, parts.id)
        self.failed.emit(message, hint)

    # -- the parts of a transformer file -------------------------------------------------------------
    def parts_missing(self, source: str) -> PartsDownload | None:
        """The parts `source`'s last load missed (its text encoders and VAE), None when it did not fail for that."""
        found = self._parts_missing.get(source)
        return parts_of(found) if found else None

    def parts_wanted(self) -> str | None:
        """The latest listed model whose load failed for missing parts that are not downloaded since."""
        waiting = [s for s in self._parts_missing if s in self._sources]
        return waiting[-1] if waiting else None

    def waiting_for_parts(self, source: str) -> bool:
        """Whether `source` loads once a running parts download ends."""
        return any(s == source and p in self.running_downloads() for p, s in self._after_parts.items())

    def download_parts(self, family: str, then_load: str | None = None) -> bool:
        """Fetch the text encoders and VAE of `family` ("flux-dev", "flux", "sd3", ...) beside the jobs; then
        `then_load` is selected (loaded). False when there is no downloader."""
        if self.downloader is None:
            return False
        parts = parts_for(family)
        if then_load:
            self._after_parts[parts.id] = then_load
        if parts.id in self.running_downloads():
            return True
        started = self.download(parts.id)
        if not started:
            self._after_parts.pop(parts.id, None)
        return started

    # -- pickle opt-in --------------------------------------------------------------------------
    @property
    def allow_pickle(self) -> bool:
        """Whether pickle checkpoints (.ckpt, .pt, .bin) may be opened: they can run code when they load."""
        return self._allow_pickle

    @allow_pickle.setter
    def allow_pickle(self, allowed: bool) -> None:
        allowed = bool(allowed)
        self.worker.allow_pickle = allowed
        self.settings.setValue(PICKLE_KEY, "true" if allowed else "false")
        if allowed != self._allow_pickle:
            self._allow_pickle = allowed
            self.allowPickleChanged.emit(allowed)

    def set_allow_pickle(self, allowed: bool) -> None:
        self.allow_pickle = allowed

    # -- downloads ---------------------------------------------------------------------------------
    def can_download(self) -> bool:
        return self.downloader is not None

    def download(self, repo: str) -> bool:
        """Fetch `repo` beside the jobs; False when there is no downloader or it is downloading already."""
        if self.downloader is None:
            return False
        running = self._downloads.get(repo)
        if running is not None and running.state in RUNNING:
            return False
        item = _Download(repo)
        self._downloads[repo] = item
        downloader, progressed, ended = self.downloader, self._progressed, self._ended

        def on_progress(p: Any) -> None:
            done = getattr(p, "done_bytes", None)
            total = getattr(p, "total_bytes", None)
            if done is None:  # a core.events.Progress of the "download" phase
                done, total = getattr(p, "step", 0), getattr(p, "total", 0)
            try:
                progressed.emit(repo, float(done or 0), float(total or 0))
            except RuntimeError:  # Models is gone (quitting)
                pass

        def run() -> None:
            path, error = "", ""
            try:
                path = str(downloader(repo, on_progress, item.cancel))
            except BaseException as exc:  # noqa: BLE001 - every end is reported
                if item.cancel.is_set() or "Cancel" in type(exc).__name__:
                    error = "cancelled"
                elif isinstance(exc, UserError):
                    error = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
                else:
                    error = str(exc) or type(exc).__name__
            if item.cancel.is_set() and not error:
                error = "cancelled"
            try:
                ended.emit(repo, path, error)
            except RuntimeError:
                pass

        item.thread = threading.Thread(target=run, name=f"download-{repo}", daemon=True)
        self.downloadProgress.emit(repo, 0.0, 0.0)
        item.thread.start()
        return True

    def cancel_download(self, repo: str) -> bool:
        """Stop a download; what was fetched stays in the cache and the next download of it resumes there."""
        item = self._downloads.get(repo)
        if item is None or item.state not in RUNNING:
            return False
        item.cancel.set()
        item.state = "cancelling"
        self.downloadProgress.emit(repo, item.done, item.total)
        return True

    def cancel_downloads(self) -> None:
        for repo in self.running_downloads():
            self.cancel_download(repo)

    def downloads(self) -> dict[str, tuple[float, float, str]]:
        """{repo: (done bytes, total bytes, state)}, state in running, cancelling, done, failed, cancelled."""
        return {repo: (d.done, d.total, d.state) for repo, d in self._downloads.items()}

    def running_downloads(self) -> list[str]:
        return [repo for repo, d in self._downloads.items() if d.state in RUNNING]

    def wait_downloads(self, timeout: float = 10.0) -> bool:
        """Block until the download threads end (tests, quitting); downloadFinished follows through the event loop."""
        for item in list(self._downloads.values()):
            if item.thread is not None:
                item.thread.join(timeout)
                if item.thread.is_alive():
                    return False
        return True

    @Slot(str, float, float)
    def _on_progressed(self, repo: str, done: float, total: float) -> None:
        item = self._downloads.get(repo)
        if item is None or item.state not in RUNNING:
            return
        item.done, item.total = done, total
        self.downloadProgress.emit(repo, done, total)

    @Slot(str, str, str)
    def _on_ended(self, repo: str, path: str, error: str) -> None:
        item = self._downloads.get(repo)
        if item is not None:
            item.state = "done" if not error else ("cancelled" if error == "cancelled" else "failed")
            if not error and item.total:
                item.done = item.total
        parts = parts_of(repo)
        then_load = self._after_parts.pop(repo, None) if parts is not None else None
        if parts is not None and not error:  # every file of the family finds them now
            self._parts_missing = {s: p for s, p in self._parts_missing.items() if p != repo}
        elif not error:
            self.add(repo)  # the engine loads it by its hub id, from the cache
        self.downloadFinished.emit(repo, path, error)
        if then_load and not error and then_load in self._sources:
            self.select(then_load)


__all__ = ["Downloader", "Models", "default_edit_method", "display_name", "download_name", "edit_methods"]
