"""EngineWorker: the one place where Qt meets a backend (the local engine, or later a remote one).

A `QThread` runs a loop that takes jobs from a priority queue and calls the
backend (`desktop_app.backend.Backend`); the local engine (and with it torch
and diffusers) is imported and created lazily, on that thread, when the first
job needs it, so the window shows before torch is imported.

News from a job becomes Qt signals. They are emitted on the worker thread and
reach receivers that live on the GUI thread through queued connections (the
`EngineWorker` object itself lives on the GUI thread, so its own slots, which
resolve the asyncio futures, run there too). Connect signals to methods of
GUI-thread objects, not to lambdas.

    job_id, future = worker.submit(request)   # future: asyncio (qasync) future -> Result
    worker.cancel(job_id)                     # the engine stops within one step
    worker.set_engine_options(EngineOptions(...))  # device, precision, memory: from the next model load

The engine is made with the window's Performance settings (`EngineOptions`); changed later, they reach it
between jobs, on the worker thread: its model is let go and the next job loads it with them.

Signals (all carry the job id first):
    jobStarted(int job_id, object request)
    progress(int job_id, object Progress)
    preview(int job_id, object Preview)       # Preview.image is a small PIL RGB image
    notice(int job_id, str message)
    finished(int job_id, object Result)
    failed(int job_id, str message, str hint)
    cancelled(int job_id)
    queueChanged(int n)                       # jobs waiting or running
    serviceDone(int job_id, str kind, object value)
    serviceFailed(int job_id, str kind, str message, str hint)

The terminal signal of a run (finished / failed / cancelled) is the backend's own
terminal event, forwarded; the worker derives one only when a backend raised
without reporting (a bug), so every job ends with exactly one.

A job's future resolves with its Result, or raises the engine's exception
(`UserError` for user-fixable problems) or `JobCancelled`. Futures exist only
when an asyncio event loop is set for the GUI thread (qasync); without one
`submit` returns None for the future and the signals still work.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import itertools
import logging
import os
import queue
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from desktop_app.core.errors import JobCancelled, UserError
from desktop_app.core.events import Cancelled, Failed, Finished, Notice, Preview, Progress

if TYPE_CHECKING:
    from desktop_app.backend import Backend

log = logging.getLogger(__name__)

_PRIORITY_SERVICE = 0  # decodes, previews, preloads go before queued generation jobs
_PRIORITY_JOB = 1


DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class EngineOptions:
    """How the local engine runs (the window's Performance settings, plain data: no torch).

    "auto" picks the device (CUDA, then MPS, then the CPU) and its precision (fp16 on GPUs, fp32 on the CPU); the
    switches trade speed for memory. They apply from the next model load."""

    device: str = "auto"  # a key of DEVICE_CHOICES
    dtype: str = "auto"  # a key of DTYPE_CHOICES
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False  # model CPU offload: only the part that runs stays on the GPU
    sequential_offload: bool = False  # sequential CPU offload: layer by layer, least memory, slowest

    def engine_kwargs(self) -> dict[str, Any]:
        """`Engine(**kwargs)`: device and dtype (None for auto) and the MemoryOptions (imports torch)."""
        return {
            "device": None if self.device == "auto" else self.device,
            "dtype": None if self.dtype == "auto" else self.dtype,
            "memory": self.memory_options(),
        }

    def memory_options(self) -> Any:
        """engine.device.MemoryOptions of these switches (imports torch)."""
        from desktop_app.engine.device import MemoryOptions

        return MemoryOptions(
            attention_slicing=self.attention_slicing,
            vae_tiling=self.vae_tiling,
            cpu_offload=self.cpu_offload,
            sequential_offload=self.sequential_offload,
        )


_engine_options = EngineOptions()  # what the next engine default_engine_factory makes is built with


def engine_options() -> EngineOptions:
    """The options the next engine is made with (EngineWorker.set_engine_options sets them)."""
    return _engine_options


def default_engine_factory(options: EngineOptions | None = None) -> Any:
    """Import and build the real engine: called on the worker thread, the first time a job needs it, with the
    options the window set (`engine_options()`) unless given."""
    with quiet_import():
        from desktop_app.engine.engine import Engine  # imports torch: never on the GUI thread

        import_lazy_dependencies()

    leave_a_core_for_the_gui()
    return Engine(**(options or engine_options()).engine_kwargs())


def reconfigure_engine(engine: Any, options: EngineOptions) -> None:
    """Give a made engine (engine.engine.Engine) other options, between jobs: its model is let go, and the next
    job loads it again on that device, in that precision, with those memory options."""
    from desktop_app.engine.device import pick_device, pick_dtype

    kwargs = options.engine_kwargs()
    device = pick_device(kwargs["device"])  # UserError when asked for a device this machine does not have
    dtype = pick_dtype(device, kwargs["dtype"])
    models = engine.models
    models.unload()
    engine.device, engine.dtype = device, dtype
    models.device, models.dtype, models.memory = device, dtype, kwargs["memory"]


# torch's native libraries, in load order; loaded ahead of `import torch` where they exist (see quiet_import)
_TORCH_LIBRARIES = (
    "libtorch_global_deps.so",
    "libc10.so",
    "libc10_cuda.so",
    "libtorch_cpu.so",
    "libtorch_cuda.so",
    "libtorch.so",
)


# What loading a model imports lazily (diffusers and transformers resolve these names on first use: some
# 2,000 modules, transformers, peft, accelerate, scipy and sympy among them): imported with the engine, inside
# quiet_import, so that a model load later imports next to nothing.
_LAZY_DEPENDENCIES = (
    ("diffusers", "StableDiffusionPipeline"),
    ("diffusers", "StableDiffusionImg2ImgPipeline"),
    ("diffusers", "StableDiffusionInpaintPipeline"),
    ("diffusers", "StableDiffusionXLPipeline"),
    ("diffusers", "DDIMScheduler"),
    ("diffusers", "DDIMInverseScheduler"),
    ("diffusers", "DPMSolverMultistepScheduler"),
    ("diffusers", "EulerAncestralDiscreteScheduler"),
    ("diffusers", "EulerDiscreteScheduler"),
    ("diffusers", "UNet2DModel"),
    ("transformers", "CLIPTokenizer"),
    ("transformers", "CLIPTextModel"),
)


def import_lazy_dependencies() -> None:
    """Resolve `_LAZY_DEPENDENCIES` now (each one that is there; a missing one is the model load's business)."""
    try:
        from desktop_app.engine.models import quiet_libraries

        quiet_libraries()  # their import notices (no torchvision...) are for developers, as the model load's are
    except Exception:  # noqa: BLE001
        pass
    for module, name in _LAZY_DEPENDENCIES:
        try:
            getattr(importlib.import_module(module), name)
        except Exception:  # noqa: BLE001 - only a head start
            log.debug("could not import %s.%s ahead of the model load", module, name, exc_info=True)


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Import torch and diffusers on the worker thread without stalling the GUI thread (defect 8).

    Two things held the GIL for 100-200 ms at a time while the engine was imported, and the GUI thread, which
    needs the GIL for every Python slot and paint, stood still meanwhile:
    - the loader mapping and relocating libtorch_cpu (`import torch._C` dlopens it while holding the GIL):
      the libraries are loaded first through libc's dlopen called by ctypes, which releases the GIL;
    - the cyclic garbage collector's full passes over the millions of objects the import creates: it is off
      during the import, and what the import made is then frozen (gc.freeze), so later full passes skip it.

    Only the first time does anything (a second engine imports nothing), and the freeze only in a process where
    torch was not imported yet: freezing also keeps whatever cyclic garbage is alive from ever being collected,
    which in a process that already ran models (tests) could be a model's tensors.
    """
    if "desktop_app.engine.engine" in sys.modules:
        yield
        return
    fresh = "torch" not in sys.modules
    if fresh:
        preload_torch_libraries()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if fresh:
            gc.freeze()  # the modules live as long as the process: never scan them again
        if was_enabled:
            gc.enable()


def preload_torch_libraries() -> list[str]:
    """dlopen torch's big native libraries with the GIL released; the names loaded (none when torch is missing,
    not a Linux wheel, or anything fails: `import torch` then loads them itself)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        import ctypes

        spec = importlib.util.find_spec("torch")  # finds the package without importing it
        if spec is None or spec.origin is None:
            return []
        lib_dir = Path(spec.origin).parent / "lib"
        libc = ctypes.CDLL(None)  # a CDLL's functions release the GIL while they run (PyDLL's would not)
        dlopen = libc.dlopen
        dlopen.restype = ctypes.c_void_p
        dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    except Exception:  # noqa: BLE001 - only a head start
        return []
    loaded = []
    for name in _TORCH_LIBRARIES:
        path = lib_dir / name
        # RTLD_LOCAL as the import's own load would: torch._C then finds them loaded and only links
        if path.is_file() and dlopen(os.fsencode(path), os.RTLD_NOW | os.RTLD_LOCAL):
            loaded.append(name)
    return loaded


def leave_a_core_for_the_gui() -> None:
    """CPU inference uses every core by default and the GUI thread then waits for one (stalls while
    painting previews): keep one core free unless the user chose a thread count (OMP_NUM_THREADS)."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("DIFFUSION_DESK_ALL_CORES"):
        return
    try:
        import torch

        cores = os.cpu_count() or 1
        if cores > 2 and torch.get_num_threads() >= cores:  # on two cores halving the speed costs more than a stall
            torch.set_num_threads(cores - 1)
    except Exception:  # noqa: BLE001 - only a tuning
        pass


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    job_id: int = field(compare=False)
    kind: str = field(compare=False)  # "run" or a service name
    request: Any = field(compare=False, default=None)
    source: Any = field(compare=False, default=None)  # an edit's source Result, for the exact replay
    call: Callable[[Any], Any] | None = field(compare=False, default=None)
    cancel: threading.Event = field(compare=False, default_factory=threading.Event)
    future: Any = field(compare=False, default=None)
    done: bool = field(compare=False, default=False)
    started: bool = field(compare=False, default=False)  # handed to the backend (on this thread or its own)


class _WorkerThread(QThread):
    def __init__(self, worker: EngineWorker) -> None:
        super().__init__()
        self._worker = worker
        self.setObjectName("engineWorkerThread")

    def run(self) -> None:  # noqa: D401 - the thread body
        self._worker._loop()


class EngineWorker(QObject):
    jobStarted = Signal(int, object)
    progress = Signal(int, object)
    preview = Signal(int, object)
    notice = Signal(int, str)
    finished = Signal(int, object)
    failed = Signal(int, str, str)
    cancelled = Signal(int)
    queueChanged = Signal(int)
    serviceDone = Signal(int, str, object)
    serviceFailed = Signal(int, str, str, str)
    # internal: carries exceptions to the GUI thread so futures get the original exception
    _jobError = Signal(int, object)

    def __init__(
        self, engine_factory: Callable[[], Any] | None = None, parent: QObject | None = None, backend: Any = None
    ) -> None:
        """`backend`: one made already (cheap to make: the routing backend, which creates the engine itself on
        first use) instead of `engine_factory`."""
        super().__init__(parent)
        self._engine_factory = engine_factory or default_engine_factory
        # Pickle checkpoints can run code when opened: loaded only after the user opted in (the Models dialog)
        self.allow_pickle = False
        self._engine: Any = backend
        self._owns_engine = backend is None  # made by the factory here (else the backend makes its local engine)
        self._options = EngineOptions()
        self._options_changed = False  # applied on the worker thread before the next job or service
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._jobs: dict[int, _Job] = {}  # not yet finished, GUI-thread bookkeeping
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._current: _Job | None = None
        self._parallel_slots: threading.BoundedSemaphore | None = None
        self._thread = _WorkerThread(self)
        self._stopping = False
        # Resolve futures on the GUI thread (queued: self lives on the GUI thread).
        self.finished.connect(self._on_finished)
        self.cancelled.connect(self._on_cancelled)
        self._jobError.connect(self._on_job_error)
        self.serviceDone.connect(self._on_service_done)

    # -- life cycle ------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (cheap: nothing is imported until a job comes)."""
        if not self._thread.isRunning():
            self._stopping = False
            self._thread.start()

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel everything, stop the thread; True when it stopped in time."""
        self._stopping = True
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        self._queue.put(_Job(-1, -1, 0, "stop"))
        if not self._thread.isRunning():
            return True
        ok = self._thread.wait(timeout_ms)
        for job in jobs:
            if job.future is not None and not job.future.done():
                job.future.cancel()
        return bool(ok)

    def is_running(self) -> bool:
        """Whether the worker thread is alive (it may still be in an engine call after a timed-out shutdown)."""
        return self._thread.isRunning()

    @property
    def engine_loaded(self) -> bool:
        return self._engine is not None

    @property
    def current_job_id(self) -> int | None:
        job = self._current
        return job.job_id if job is not None else None

    def pending(self) -> int:
        """Generation jobs waiting or running."""
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.kind == "run" and not j.done)

    # -- engine options (the window's Performance settings) ----------------------------------
    @property
    def engine_options(self) -> EngineOptions:
        return self._options

    def set_engine_options(self, options: EngineOptions) -> None:
        """Device, precision and memory options for the local engine. Before it exists they are what it is made
        with; after, they apply between jobs, at the next model load (the running job finishes as it started)."""
        global _engine_options
        if options == self._options and options == _engine_options:
            return
        _engine_options = options
        with self._lock:
            self._options = options
            self._options_changed = True

    def _apply_engine_options(self) -> None:
        """On the worker thread, between jobs: a made local engine takes the new options (its model loads
        again at the next job); one not made yet is made with them."""
        with self._lock:
            if not self._options_changed:
                return
            self._options_changed = False
            options = self._options
        if self._engine is None:
            return
        local = self._local_engine()
        if local is not None and callable(getattr(getattr(local, "models", None), "unload", None)):
            try:
                reconfigure_engine(local, options)
            except UserError as exc:
                raise UserError(exc.message, "Choose another device in Run > Performance…") from exc
        elif self._owns_engine:
            self._engine = None  # a factory's engine without a model manager: made anew with the options

    def _local_engine(self) -> Any:
        """The local engine if it was made: the backend itself, or the routing backend's local one."""
        engine = self._engine
        if callable(getattr(engine, "local", None)):  # the routing backend: its local engine, only if made
            return engine.local() if callable(getattr(engine.models, "unload", None)) else None
        return engine

    # -- submitting ------------------------------------------------------------
    def submit(self, request: Any, source: Any = None) -> tuple[int, Any]:
        """Queue a generation job; returns (job_id, future of its Result). `source`: see Engine.run."""
        job = self._enqueue(_PRIORITY_JOB, "run", request=request, source=source)
        self.queueChanged.emit(self.pending())
        return job.job_id, job.future

    def cancel(self, job_id: int | None = None) -> bool:
        """Cancel a job (the running one when job_id is None). A waiting job is dropped at once."""
        with self._lock:
            if job_id is None:
                job = self._current
            else:
                job = self._jobs.get(job_id)
            if job is None or job.done:
                return False
            job.cancel.set()
            started = job.started or job is self._current
            if not started:
                job.done = True
                self._jobs.pop(job.job_id, None)
        if not started:
            # Never reached the engine: report it now, from the GUI thread.
            if job.future is not None and not job.future.done():
                job.future.set_exception(JobCancelled(f"job {job.job_id} cancelled"))
            if job.kind == "run":
                self.cancelled.emit(job.job_id)
        return True

    def cancel_all(self) -> None:
        with self._lock:
            ids = [j.job_id for j in self._jobs.values()]
        for job_id in ids:
            self.cancel(job_id)

    # -- services on the worker thread ----------------------------------------
    def call(self, kind: str, fn: Callable[[Any], Any]) -> tuple[int, Any]:
        """Run fn(engine) on the worker thread ahead of waiting jobs; serviceDone/serviceFailed report it."""
        job = self._enqueue(_PRIORITY_SERVICE, kind, call=fn)
        return job.job_id, job.future

    def warm_up(self):
        """Create the engine (imports torch and diffusers) now, on the worker thread, without loading a model."""
        return self.call("warm_up", lambda engine: None)

    def preload(self, model: str):
        return self.call("preload", lambda engine: engine.preload(model))

    def suggest_mask(
        self, image: Any, source_prompt: str, target_prompt: str, model: str | None = None, how: str = "diffedit"
    ):
        """A DiffEdit-style mask of where the target prompt differs from the source; (id, future of a PIL 'L' image)."""
        return self.call(
            "suggest_mask", lambda engine: engine.suggest_mask(image, source_prompt, target_prompt, model, how)
        )

    def download_model(self, repo: str, on_progress: Callable[[Any], None], cancel: threading.Event) -> Any:
        """Fetch a hub model, or a flow family's text encoders and VAE ("parts:flux", backend.parts_of), on the
        calling thread, beside any running job (never on the job queue): the Models object calls this from a
        download thread of its own."""
        return self.backend().download_model(repo, on_progress, cancel)

    def decode_trajectory(self, trajectory: Any, index: int, which: str = "x0", batch_index: int = 0):
        """Full VAE decode of step `index` of batch image `batch_index` -> PIL image."""
        return self.call(
            "decode_trajectory", lambda engine: engine.decode_trajectory(trajectory, index, which, batch_index)
        )

    def forward_process(self, image: Any, model: str):
        """A ForwardProcess for a source image (VAE encode); its .preview(t) is cheap numpy."""
        return self.call("forward_process", lambda engine: engine.forward_process(image, model))

    def decode_latent(self, latent: Any, model: str):
        return self.call("decode_latent", lambda engine: engine.decode_latent(latent, model))

    # -- internals (GUI thread) --------------------------------------------------
    def _make_future(self) -> Any:
        import asyncio  # not at import time: the window paints before asyncio / qasync load

        try:
            loop = asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            return None
        if loop.is_closed():
            return None
        fut = loop.create_future()
        fut.add_done_callback(_consume_exception)
        return fut

    def _enqueue(
        self, priority: int, kind: str, request: Any = None, call: Callable | None = None, source: Any = None
    ) -> _Job:
        job = _Job(priority, next(self._seq), next(self._ids), kind, request=request, call=call, source=source)
        job.future = self._make_future()
        if self._stopping:  # after shutdown (a late timer while the window closes): never runs
            job.done = True
            job.cancel.set()
            if job.future is not None:
                job.future.set_exception(JobCancelled("the engine worker has been shut down"))
            return job
        self.start()
        with self._lock:
            self._jobs[job.job_id] = job
        self._queue.put(job)
        return job

    def _finish(self, job_id: int) -> _Job | None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is not None:
                job.done = True
        return job

    @Slot(int, object)
    def _on_finished(self, job_id: int, result: Any) -> None:
        job = self._finish(job_id)
        if job is not None and job.future is not None and not job.future.done():
            job.future.set_result(result)
        self.queueChanged.emit(self.pending())

    @Slot(int)
    def _on_cancelled(self, job_id: int) -> None:
        job = self._finish(job_id)
        if job is not None and job.future is not None and not job.future.done():
            job.future.set_exception(JobCancelled(f"job {job_id} cancelled"))
        if job is None or job.kind == "run":
            self.queueChanged.emit(self.pending())

    @Slot(int, object)
    def _on_job_error(self, job_id: int, exc: Any) -> None:
        job = self._finish(job_id)
        if job is not None and job.future is not None and not job.future.done():
            job.future.set_exception(exc)
        if job is None or job.kind == "run":
            self.queueChanged.emit(self.pending())

    @Slot(int, str, object)
    def _on_service_done(self, job_id: int, kind: str, value: Any) -> None:
        job = self._finish(job_id)
        if job is not None and job.future is not None and not job.future.done():
            job.future.set_result(value)

    # -- the worker thread ---------------------------------------------------------
    def backend(self) -> Backend:
        """The backend, created on first use (on whichever thread asks first: the worker's, or a download's)."""
        return self._get_engine()

    def _get_engine(self) -> Any:
        with self._create_lock:
            if self._engine is None:
                self._engine = self._engine_factory()
        models = getattr(self._engine, "models", None)
        if models is not None:  # the user's opt-in, as it stands when this job starts
            models.allow_pickle = self.allow_pickle
        return self._engine

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job.kind == "stop":
                return
            with self._lock:
                if job.done or job.cancel.is_set():
                    continue  # cancelled while waiting: already reported
                job.started = True
            if job.kind == "run" and self._runs_in_parallel(job):
                self._start_parallel(job)
                continue
            with self._lock:
                self._current = job
            try:
                if job.kind == "run":
                    self._run_job(job)
                else:
                    self._run_service(job)
            except BaseException:  # never let the thread die
                log.exception("worker loop error")
            finally:
                with self._lock:
                    self._current = None

    def _runs_in_parallel(self, job: _Job) -> bool:
        """Remote jobs (a backend that says so: the routing backend for ComfyUI models) run on threads of their own,
        so that a pool of servers works on several at once and a local job need not wait for a remote one."""
        try:
            ask = getattr(self._engine, "runs_in_parallel", None)  # not created here: that is the job's business
            return bool(ask(job.request)) if callable(ask) else False
        except Exception:  # noqa: BLE001 - in doubt, the one worker thread
            return False

    def _start_parallel(self, job: _Job) -> None:
        slots = self._parallel_slots
        if slots is None:
            slots = self._parallel_slots = threading.BoundedSemaphore(int(getattr(self._engine, "max_parallel", 4)))

        def body() -> None:
            with slots:
                try:
                    if not job.cancel.is_set():
                        self._run_job(job)
                    elif not job.done:
                        self.cancelled.emit(job.job_id)
                except BaseException:  # never let it die silently
                    log.exception("remote job error")

        threading.Thread(target=body, name=f"remoteJob{job.job_id}", daemon=True).start()

    def _run_job(self, job: _Job) -> None:
        job_id = job.job_id
        self.jobStarted.emit(job_id, job.request)
        ended: list[Any] = []  # the backend's terminal event, forwarded as it comes

        def on_event(event: Any) -> None:
            if isinstance(event, Progress):
                self.progress.emit(job_id, event)
            elif isinstance(event, Preview):
                self.preview.emit(job_id, event)
            elif isinstance(event, Notice):
                self.notice.emit(job_id, event.message)
            elif isinstance(event, (Finished, Failed, Cancelled)) and not ended:
                ended.append(event)
                if isinstance(event, Finished):
                    self.finished.emit(job_id, event.result)
                elif isinstance(event, Failed):
                    self.failed.emit(job_id, event.message, event.hint)
                else:
                    self.cancelled.emit(job_id)

        try:
            self._apply_engine_options()
            backend = self._get_engine()
            if job.cancel.is_set():
                raise JobCancelled()
            kwargs = {"source": job.source} if job.source is not None else {}
            result = backend.run(job.request, on_event=on_event, cancel=job.cancel, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a signal
            cancelled = isinstance(exc, JobCancelled) or job.cancel.is_set()
            if not isinstance(exc, (UserError, JobCancelled)):
                log.error("engine error in job %s:\n%s", job_id, "".join(traceback.format_exception(exc)))
            if not ended:  # the backend raised before it could report: say it here, once
                on_event(Cancelled() if cancelled else Failed(*describe_error(exc)))
            if isinstance(ended[0], Failed):
                message = ended[0].message
                self._jobError.emit(job_id, exc if isinstance(exc, Exception) else RuntimeError(message))
            return
        if not ended:
            on_event(Finished(result))

    def _run_service(self, job: _Job) -> None:
        try:
            self._apply_engine_options()
            value = job.call(self._get_engine())  # type: ignore[misc]
        except BaseException as exc:  # noqa: BLE001
            message, hint = describe_error(exc)
            if not isinstance(exc, UserError):
                log.error("engine error in %s:\n%s", job.kind, "".join(traceback.format_exception(exc)))
            self.serviceFailed.emit(job.job_id, job.kind, message, hint)
            self._jobError.emit(job.job_id, exc if isinstance(exc, Exception) else RuntimeError(message))
            return
        self.serviceDone.emit(job.job_id, job.kind, value)


def describe_error(exc: BaseException) -> tuple[str, str]:
    """A readable message and hint for any exception from the engine."""
    if isinstance(exc, UserError):
        return exc.message, exc.hint
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if "out of memory" in low:
        return ("The device ran out of memory.", "Use a smaller size or batch, or close other programs using the GPU.")
    if isinstance(exc, (ImportError, ModuleNotFoundError)):
        return (f"The engine could not start: {text}", "Check the installation (torch and diffusers).")
    return (f"The engine failed: {type(exc).__name__}: {text}", "See the log for details; the next job will still run.")


def _consume_exception(fut: Any) -> None:
    """Mark a future's exception as retrieved (nobody may await a fire-and-forget job)."""
    if not fut.cancelled():
        fut.exception()


__all__ = [
    "EngineOptions",
    "EngineWorker",
    "JobCancelled",
    "default_engine_factory",
    "describe_error",
    "engine_options",
    "reconfigure_engine",
]
