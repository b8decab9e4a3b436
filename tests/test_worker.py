"""EngineWorker: jobs on a QThread, signals queued to the GUI thread, futures, cancel, failures."""

from __future__ import annotations

import asyncio
import threading

import pytest
from PySide6.QtCore import QObject, QThread, Slot

from desktop_app.core.errors import UserError
from desktop_app.core.requests import GenerateRequest
from desktop_app.worker import EngineWorker, JobCancelled
from tests.ui_conftest_helpers import FakeEngine, qloop  # noqa: F401


class Recorder(QObject):
    """A GUI-thread receiver: records what arrives and on which thread."""

    def __init__(self, worker: EngineWorker) -> None:
        super().__init__()
        self.progress: list = []
        self.previews: list = []
        self.finished: list = []
        self.failed: list = []
        self.cancelled: list = []
        self.queue: list[int] = []
        self.threads: set = set()
        worker.progress.connect(self.on_progress)
        worker.preview.connect(self.on_preview)
        worker.finished.connect(self.on_finished)
        worker.failed.connect(self.on_failed)
        worker.cancelled.connect(self.on_cancelled)
        worker.queueChanged.connect(self.on_queue)

    @Slot(int, object)
    def on_progress(self, job_id, ev):
        self.threads.add(QThread.currentThread())
        self.progress.append((job_id, ev))

    @Slot(int, object)
    def on_preview(self, job_id, ev):
        self.previews.append((job_id, ev))

    @Slot(int, object)
    def on_finished(self, job_id, result):
        self.threads.add(QThread.currentThread())
        self.finished.append((job_id, result))

    @Slot(int, str, str)
    def on_failed(self, job_id, message, hint):
        self.failed.append((job_id, message, hint))

    @Slot(int)
    def on_cancelled(self, job_id):
        self.cancelled.append(job_id)

    @Slot(int)
    def on_queue(self, n):
        self.queue.append(n)


@pytest.fixture
def fake_engine():
    """The fake engine the `worker` fixture's worker builds."""
    return FakeEngine()


@pytest.fixture
def worker(qapp, qloop, fake_engine):
    w = EngineWorker(engine_factory=lambda: fake_engine)
    w.start()
    yield w
    assert w.shutdown(5000)


def wait_future(qtbot, fut, timeout=5000):
    qtbot.waitUntil(fut.done, timeout=timeout)
    return fut


def test_submit_runs_on_worker_thread_and_resolves_future(qtbot, worker, fake_engine):
    rec = Recorder(worker)
    job_id, fut = worker.submit(GenerateRequest(prompt="a", steps=5, width=64, height=64, seed=3))
    wait_future(qtbot, fut)
    result = fut.result()
    assert result.images[0].size == (64, 64)
    qtbot.waitUntil(lambda: len(rec.finished) == 1)
    assert [ev.step for _, ev in rec.progress] == [1, 2, 3, 4, 5]
    assert len(rec.previews) == 5
    assert rec.threads == {qapp_thread()}  # slots ran on the GUI thread
    assert fake_engine.thread_names and fake_engine.thread_names[0] != threading.main_thread().name
    assert rec.queue[-1] == 0


def qapp_thread():
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    assert app is not None
    return app.thread()


def test_failure_becomes_signal_and_next_job_runs(qtbot, worker, fake_engine):
    rec = Recorder(worker)
    fake_engine.fail_next = UserError("Model broke.", "Pick another model.")
    _, fut = worker.submit(GenerateRequest(prompt="a", steps=2))
    wait_future(qtbot, fut)
    with pytest.raises(UserError):
        fut.result()
    assert rec.failed and rec.failed[0][1:] == ("Model broke.", "Pick another model.")
    fake_engine.fail_next = RuntimeError("boom")
    _, fut = worker.submit(GenerateRequest(prompt="a", steps=2))
    wait_future(qtbot, fut)
    assert isinstance(fut.exception(), RuntimeError)
    assert "boom" in rec.failed[1][1]
    _, fut = worker.submit(GenerateRequest(prompt="b", steps=2))
    wait_future(qtbot, fut)
    assert fut.result().images


def test_cancel_running_and_waiting_jobs(qtbot, worker, fake_engine):
    rec = Recorder(worker)
    fake_engine.step_delay = 0.02
    id1, f1 = worker.submit(GenerateRequest(prompt="a", steps=100))
    id2, f2 = worker.submit(GenerateRequest(prompt="b", steps=100))
    qtbot.waitUntil(lambda: len(rec.progress) >= 2, timeout=5000)
    assert worker.cancel(id2)  # waiting: dropped at once
    assert f2.done() and isinstance(f2.exception(), JobCancelled)
    assert worker.cancel(id1)
    wait_future(qtbot, f1)
    assert isinstance(f1.exception(), JobCancelled)
    assert sorted(rec.cancelled) == sorted([id1, id2])
    assert len(rec.progress) < 50  # stopped within a step or so
    assert len(fake_engine.runs) == 1  # the waiting job never reached the engine
    fake_engine.step_delay = 0.0
    _, f3 = worker.submit(GenerateRequest(prompt="c", steps=2))
    wait_future(qtbot, f3)
    assert f3.result().images


def test_engine_that_cannot_start_fails_and_thread_lives(qtbot, qapp, qloop):
    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise ImportError("no module named torch")
        return FakeEngine()

    w = EngineWorker(engine_factory=factory)
    rec = Recorder(w)
    _, f1 = w.submit(GenerateRequest(prompt="a", steps=1))
    wait_future(qtbot, f1)
    assert rec.failed and "engine could not start" in rec.failed[0][1]
    _, f2 = w.submit(GenerateRequest(prompt="a", steps=1))
    wait_future(qtbot, f2)
    assert f2.result().images
    assert w.shutdown(5000)


def test_5000_progress_signals_do_not_crash(qtbot, worker, fake_engine):
    rec = Recorder(worker)
    fake_engine.progress_per_step = 5000
    _, fut = worker.submit(GenerateRequest(prompt="a", steps=1))
    wait_future(qtbot, fut, timeout=20000)
    qtbot.waitUntil(lambda: len(rec.progress) == 5000, timeout=20000)
    assert [ev.step for _, ev in rec.progress] == list(range(1, 5001))


def test_services_run_on_worker_thread(qtbot, worker):
    job_id, fut = worker.submit(GenerateRequest(prompt="a", steps=3, width=64, height=64))
    wait_future(qtbot, fut)
    traj = fut.result().trajectory
    _, f = worker.decode_trajectory(traj, 1, "x0")
    wait_future(qtbot, f)
    assert f.result().size == (64, 64)
    _, f = worker.preload("/missing/model")
    wait_future(qtbot, f)
    assert isinstance(f.exception(), UserError)


def test_awaiting_the_future_in_a_coroutine(qtbot, worker, qloop):
    out = {}

    async def go():
        _, fut = worker.submit(GenerateRequest(prompt="a", steps=2))
        out["result"] = await fut

    task = asyncio.ensure_future(go())
    qtbot.waitUntil(task.done, timeout=5000)
    assert out["result"].images


def test_jobs_after_shutdown_are_cancelled_not_raised(qtbot, qapp, qloop):
    w = EngineWorker(engine_factory=FakeEngine)
    w.start()
    assert w.shutdown(5000)
    _, fut = w.decode_latent(None, "builtin")
    assert fut.done() and isinstance(fut.exception(), JobCancelled)


class _Raises:
    """A backend whose run raises `exc` without reporting a terminal event (as a buggy backend would)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def run(self, request, on_event=None, cancel=None, source=None):
        raise self.exc


def test_cancelled_is_told_by_its_class_not_by_its_name(qtbot, qapp, qloop):
    class JobCancelledLookalike(Exception):
        """Named like the real one; not it."""

    JobCancelledLookalike.__name__ = "JobCancelled"

    class Subclass(JobCancelled):
        pass

    for exc, want in ((Subclass("stop"), "cancelled"), (JobCancelledLookalike("boom"), "failed")):
        w = EngineWorker(engine_factory=lambda exc=exc: _Raises(exc))
        rec = Recorder(w)
        _, fut = w.submit(GenerateRequest(prompt="a", steps=1))
        wait_future(qtbot, fut)
        qtbot.waitUntil(lambda rec=rec: bool(rec.cancelled or rec.failed))
        assert (len(rec.cancelled), len(rec.failed)) == ((1, 0) if want == "cancelled" else (0, 1)), exc
        assert isinstance(fut.exception(), JobCancelled) == (want == "cancelled")
        assert w.shutdown(5000)


def test_download_model_goes_to_the_backend_on_the_calling_thread(qapp, qloop):
    calls = []

    class Backend(FakeEngine):
        def download_model(self, repo, on_progress, cancel):
            calls.append((repo, threading.current_thread().name, cancel))
            return super().download_model(repo, on_progress, cancel)

    w = EngineWorker(engine_factory=Backend)  # not started: a download needs no worker thread
    seen = []
    cancel = threading.Event()
    folder = w.download_model("owner/fake-model", seen.append, cancel)
    assert calls == [("owner/fake-model", threading.current_thread().name, cancel)]
    assert folder.name == "owner--fake-model"
    assert [p.step for p in seen] == [1 << 20, 2 << 20, 3 << 20, 4 << 20]
    cancel.set()
    with pytest.raises(JobCancelled):
        w.download_model("owner/fake-model", seen.append, cancel)
    assert w.shutdown(5000)


QUIET_IMPORT_PROBE = r"""
import gc, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from desktop_app import worker

loaded = worker.preload_torch_libraries()
maps = Path("/proc/self/maps").read_text()
assert "torch" not in sys.modules, "preloading imported torch"
assert "libtorch_cpu.so" in loaded and "libtorch_cpu.so" in maps, (loaded, "libtorch_cpu.so" in maps)

passes = []
gc.callbacks.append(lambda phase, info: phase == "start" and passes.append(info["generation"]))
assert gc.isenabled()
engine = worker.default_engine_factory()
assert "torch" in sys.modules and "diffusers.pipelines.stable_diffusion" in sys.modules
assert passes == [], f"the garbage collector ran during the import: {passes}"
assert gc.isenabled(), "the collector stays off after the import"
assert gc.get_freeze_count() > 50_000, gc.get_freeze_count()
gc.collect()
print("ok", len(loaded), gc.get_freeze_count())
"""


def test_the_engine_import_leaves_the_gil_to_the_gui(tmp_path):
    """Defect 8: libtorch is loaded with the GIL released before `import torch`, and no garbage-collector pass
    (100-200 ms each over the import's objects, GIL held) runs while the engine and what a model load needs are
    imported; what they made is frozen out of later passes. In a fresh process: torch must not be imported yet."""
    import subprocess
    import sys
    from pathlib import Path

    if not sys.platform.startswith("linux"):
        pytest.skip("the head start loads Linux shared libraries")
    pytest.importorskip("diffusers")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", QUIET_IMPORT_PROBE, str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok"), out.stdout


def test_the_quiet_import_touches_nothing_once_the_engine_is_imported():
    """A second engine (or a process that ran models already) must not freeze live garbage: a model's cycles."""
    import gc

    pytest.importorskip("torch")
    import desktop_app.engine.engine  # noqa: F401 - what a first engine imported
    from desktop_app.worker import quiet_import

    frozen, enabled = gc.get_freeze_count(), gc.isenabled()
    with quiet_import():
        assert gc.isenabled() == enabled
    assert gc.get_freeze_count() == frozen and gc.isenabled() == enabled
