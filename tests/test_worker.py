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
def worker(qapp, qloop):
    engine = FakeEngine()
    w = EngineWorker(engine_factory=lambda: engine)
    w.engine = engine
    w.start()
    yield w
    assert w.shutdown(5000)


def wait_future(qtbot, fut, timeout=5000):
    qtbot.waitUntil(fut.done, timeout=timeout)
    return fut


def test_submit_runs_on_worker_thread_and_resolves_future(qtbot, worker):
    rec = Recorder(worker)
    job_id, fut = worker.submit(GenerateRequest(prompt="a", steps=5, width=64, height=64, seed=3))
    wait_future(qtbot, fut)
    result = fut.result()
    assert result.images[0].size == (64, 64)
    qtbot.waitUntil(lambda: len(rec.finished) == 1)
    assert [ev.step for _, ev in rec.progress] == [1, 2, 3, 4, 5]
    assert len(rec.previews) == 5
    assert rec.threads == {qapp_thread()}  # slots ran on the GUI thread
    assert worker.engine.thread_names and worker.engine.thread_names[0] != threading.main_thread().name
    assert rec.queue[-1] == 0


def qapp_thread():
    from PySide6.QtWidgets import QApplication

    return QApplication.instance().thread()


def test_failure_becomes_signal_and_next_job_runs(qtbot, worker):
    rec = Recorder(worker)
    worker.engine.fail_next = UserError("Model broke.", "Pick another model.")
    _, fut = worker.submit(GenerateRequest(prompt="a", steps=2))
    wait_future(qtbot, fut)
    with pytest.raises(UserError):
        fut.result()
    assert rec.failed and rec.failed[0][1:] == ("Model broke.", "Pick another model.")
    worker.engine.fail_next = RuntimeError("boom")
    _, fut = worker.submit(GenerateRequest(prompt="a", steps=2))
    wait_future(qtbot, fut)
    assert isinstance(fut.exception(), RuntimeError)
    assert "boom" in rec.failed[1][1]
    _, fut = worker.submit(GenerateRequest(prompt="b", steps=2))
    wait_future(qtbot, fut)
    assert fut.result().images


def test_cancel_running_and_waiting_jobs(qtbot, worker):
    rec = Recorder(worker)
    worker.engine.step_delay = 0.02
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
    assert len(worker.engine.runs) == 1  # the waiting job never reached the engine
    worker.engine.step_delay = 0.0
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


def test_5000_progress_signals_do_not_crash(qtbot, worker):
    rec = Recorder(worker)
    worker.engine.progress_per_step = 5000
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
