"""UI stall benchmark: while jobs run, a 10 ms GUI-thread timer records its lateness; prints the worst stalls.

    python bench/ui_stall.py [--model PATH] [--steps 50] [--size 256] [--idle-s 3] [--trace]

Without --model it uses the built-in model when it is installed, else builds the tiny random test model in a
temporary folder. Three phases in one process, each with the same timer:
- first run: Generate is pressed as soon as the window shows, so the run waits for the worker thread to import
  torch and diffusers and load the model (what a user who starts the app and generates at once sees);
- warm run: the same request again, the model loaded;
- idle baseline: the same window with nothing running: what the machine itself costs (other processes, the
  scheduler). Each run is also given as a ratio to it.
Target: worst stall <= 50 ms in both runs. --trace says what the other threads did during the worst stalls
(imports begun, garbage-collector passes), to find their cause.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.abc
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_MS = 50.0


def pick_model(arg: str | None) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import builtin_or_tiny

    return builtin_or_tiny(arg)


@dataclass
class Phase:
    """The timer's record of one phase: lateness of every tick and where each tick started."""

    name: str
    elapsed: float = 0.0
    lateness: list[float] = field(default_factory=list)  # ms
    at: list[float] = field(default_factory=list)  # perf_counter of the tick before the late one
    steps: str = "-"  # steps done / steps asked, from the progress events
    started: float | None = None  # perf_counter when the job started on the worker (the model loaded before it)

    def worst(self) -> float:
        return max(self.lateness, default=0.0)

    def split(self) -> tuple[float, float]:
        """The worst stall before the job started (the import and the model load) and from then on (the steps)."""
        if self.started is None:
            return 0.0, self.worst()
        before = [late for late, at in zip(self.lateness, self.at) if at < self.started]
        after = [late for late, at in zip(self.lateness, self.at) if at >= self.started]
        return max(before, default=0.0), max(after, default=0.0)

    def p99(self) -> float:
        late = self.lateness
        return statistics.quantiles(late, n=100)[98] if len(late) >= 100 else self.worst()

    def worst_ticks(self, n: int) -> list[int]:
        return sorted(range(len(self.lateness)), key=self.lateness.__getitem__, reverse=True)[:n]


class Trace:
    """Timestamps of what happened (job marks from the GUI thread; with --trace, imports and GC passes on every
    thread), to say what a stall overlapped."""

    def __init__(self, deep: bool) -> None:
        self.marks: list[tuple[float, str]] = []
        self.events: list[tuple[float, float, str]] = []  # (start, end, what) from any thread
        self._gc_start: dict[int, float] = {}
        if deep:
            sys.meta_path.insert(0, _ImportRecorder(self))
            gc.callbacks.append(self._on_gc)

    def mark(self, what: str) -> None:
        self.marks.append((time.perf_counter(), what))

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        ident = threading.get_ident()
        now = time.perf_counter()
        if phase == "start":
            self._gc_start[ident] = now
        else:
            start = self._gc_start.pop(ident, now)
            if now - start > 0.005:
                name = threading.current_thread().name
                self.events.append(
                    (start, now, f"gc gen {info.get('generation')} on {name} {1e3 * (now - start):.0f} ms")
                )

    def describe(self, start: float, late_ms: float, interval_ms: float) -> str:
        end = start + (interval_ms + late_ms) / 1e3
        before = [m for m in self.marks if m[0] <= end]
        text = f"after '{before[-1][1]}'" if before else "before the job started"
        during = [what for (s, e, what) in self.events if s <= end and e >= start]
        if during:
            shown = during[:6] + ([f"... {len(during) - 6} more"] if len(during) > 6 else [])
            text += "; during: " + ", ".join(shown)
        return text


class _ImportRecorder(importlib.abc.MetaPathFinder):
    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        now = time.perf_counter()
        self.trace.events.append((now, now, f"import {fullname} on {threading.current_thread().name}"))
        return None  # only watches: the real finders go on


def plain_engine_factory() -> Any:
    """The engine as it was built before the quiet import: `import torch` with the GIL held through the load of
    its libraries, and the garbage collector on."""
    from desktop_app.engine.engine import Engine

    return Engine(device=None)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=None, help="image size (default: the model's)")
    ap.add_argument("--interval-ms", type=float, default=10.0)
    ap.add_argument("--idle-s", type=float, default=3.0, help="length of the idle baseline")
    ap.add_argument("--trace", action="store_true", help="say what ran on other threads during the worst stalls")
    ap.add_argument(
        "--plain-import",
        action="store_true",
        help="build the engine without the worker's quiet import (desktop_app.worker.quiet_import), to compare",
    )
    args = ap.parse_args()

    import qasync
    from PySide6.QtCore import QObject, Qt, QTimer, Slot
    from PySide6.QtWidgets import QApplication

    from desktop_app.app.application import create_main_window

    app = QApplication.instance() or QApplication(sys.argv[:1])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    trace = Trace(args.trace)
    model = pick_model(args.model)
    phase = Phase("setup")
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        phase.lateness.append(max(0.0, (now - last[0]) * 1e3 - args.interval_ms))
        phase.at.append(last[0])
        last[0] = now

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(int(args.interval_ms))
    timer.timeout.connect(tick)

    def begin(name: str) -> Phase:
        nonlocal phase
        phase = Phase(name)
        last[0] = time.perf_counter()
        timer.start()
        return phase

    factory = plain_engine_factory if args.plain_import else None
    # starts loading the model on the worker thread
    window = create_main_window(model=model, data_dir=tempfile.mkdtemp(), engine_factory=factory)
    window.show()
    pp = window.prompt_panel

    def apply_parameters() -> None:
        """Before every run: the model's recommended defaults (`defaultsReady`, when its load ends) replace the
        panel's steps, so parameters set once before the load would not reach the second run."""
        pp.prompt_edit.setPlainText("a red circle on a blue square")
        pp.steps_spin.setValue(args.steps)
        pp.seed_spin.setValue(1)
        if args.size:
            pp.width_spin.setValue(args.size)
            pp.height_spin.setValue(args.size)

    progress: list[tuple[int, int]] = []

    class Marker(QObject):
        @Slot(int, object)
        def on_progress(self, job_id: int, ev: Any) -> None:
            progress.append((ev.step, ev.total))
            trace.mark(f"step {ev.step}/{ev.total}")

        @Slot(int, object)
        def on_started(self, job_id: int, request: Any) -> None:
            trace.mark("job started")
            if phase.started is None:
                phase.started = time.perf_counter()

        @Slot(str, str)
        def on_model_state(self, state: str, message: str) -> None:
            trace.mark(f"model {state}")

        @Slot(object)
        def on_result(self, result: Any) -> None:
            trace.mark("result shown")

    marker = Marker()
    window.worker.progress.connect(marker.on_progress)
    window.worker.jobStarted.connect(marker.on_started)
    window.models.stateChanged.connect(marker.on_model_state)
    window.resultReady.connect(marker.on_result)

    async def run_once(name: str) -> Phase:
        apply_parameters()
        progress.clear()
        run = begin(name)
        t0 = time.perf_counter()
        fut = asyncio.get_event_loop().create_future()

        def done(result: Any) -> None:
            if not fut.done():
                fut.set_result(result)

        def failed(message: str, hint: str) -> None:
            if not fut.done():
                fut.set_exception(RuntimeError(f"{message} {hint}"))

        window.resultReady.connect(done)
        window.jobs.failed.connect(failed)
        if window.generate() is None:
            raise SystemExit(f"could not start: {window.last_error}")
        try:
            await fut
        finally:
            window.resultReady.disconnect(done)
            window.jobs.failed.disconnect(failed)
        run.elapsed = time.perf_counter() - t0
        await asyncio.sleep(0.1)  # let the result paint
        timer.stop()
        asked = pp.steps_spin.value() if not progress else progress[-1][1]
        run.steps = f"{progress[-1][0] if progress else 0}/{asked} (asked {args.steps})"
        return run

    async def idle(seconds: float) -> Phase:
        base = begin("idle")
        await asyncio.sleep(seconds)
        timer.stop()
        return base

    results: list[Phase] = []

    async def bench() -> None:
        results.append(await run_once("first run (imports torch, loads the model)"))
        window.history_saver.wait(30.0)  # the first result's PNG is written before the next phase
        results.append(await run_once("warm run"))
        window.history_saver.wait(30.0)
        await asyncio.sleep(0.5)  # the second result's thumbnail and paint settle
        results.append(await idle(args.idle_s))
        window.close()
        app.quit()

    with loop:
        loop.run_until_complete(bench())

    first, warm, base = results
    size = f"{pp.width_spin.value()}x{pp.height_spin.value()}"
    how = "plain import" if args.plain_import else "quiet import"
    print(f"model: {model}  size: {size}  engine: {how}  python {sys.version.split()[0]}  cores: {os.cpu_count()}")
    print(
        f"idle baseline (no job, {args.idle_s:g} s): {len(base.lateness)} ticks, worst {base.worst():.1f} ms, "
        f"p99 {base.p99():.1f} ms"
    )
    floor = max(base.worst(), 1.0)  # a ratio to under a millisecond says nothing
    for run in (first, warm):
        worst_i = run.worst_ticks(1)
        where = trace.describe(run.at[worst_i[0]], run.worst(), args.interval_ms) if worst_i else ""
        print(
            f"{run.name}: {run.elapsed:.2f} s, steps {run.steps}, {len(run.lateness)} ticks, "
            f"worst GUI stall {run.worst():.1f} ms ({where}), p99 {run.p99():.1f} ms, "
            f"median {statistics.median(run.lateness) if run.lateness else 0:.1f} ms, "
            f"{run.worst() / floor:.1f}x the idle worst  [{'ok' if run.worst() <= TARGET_MS else 'over'}: "
            f"target <= {TARGET_MS:.0f} ms]"
        )
        loading, stepping = run.split()
        print(
            f"    worst before the job started (import, model load): {loading:.1f} ms; during the steps: {stepping:.1f} ms"
        )
        if args.trace:
            for i in run.worst_ticks(4):
                print(f"    {run.lateness[i]:6.1f} ms: {trace.describe(run.at[i], run.lateness[i], args.interval_ms)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
