"""UI stall benchmark: during a 50-step run, a 10 ms GUI-thread timer records its lateness; prints the worst stall.

    python bench/ui_stall.py [--model PATH] [--steps 50] [--size 256]

Without --model it uses the built-in model when it is installed, else builds the
tiny random test model in a temporary folder. Target: worst stall <= 50 ms.
The first run (model loading on the worker thread) is reported separately.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pick_model(arg: str | None) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import builtin_or_tiny

    return builtin_or_tiny(arg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=None, help="image size (default: the model's)")
    ap.add_argument("--interval-ms", type=float, default=10.0)
    args = ap.parse_args()

    import qasync
    from PySide6.QtCore import QElapsedTimer, QTimer
    from PySide6.QtWidgets import QApplication

    from desktop_app.app.application import create_main_window

    app = QApplication.instance() or QApplication(sys.argv[:1])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    model = pick_model(args.model)
    window = create_main_window(model=model, data_dir=tempfile.mkdtemp())
    window.show()
    pp = window.prompt_panel
    pp.prompt_edit.setPlainText("a red circle on a blue square")
    pp.steps_spin.setValue(args.steps)
    pp.seed_spin.setValue(1)
    if args.size:
        pp.width_spin.setValue(args.size)
        pp.height_spin.setValue(args.size)

    clock = QElapsedTimer()
    clock.start()
    lateness: list[float] = []
    last = [clock.nsecsElapsed()]
    timer = QTimer()
    timer.setTimerType(__import__("PySide6.QtCore", fromlist=["Qt"]).Qt.TimerType.PreciseTimer)
    timer.setInterval(int(args.interval_ms))

    marks: list[tuple[float, str]] = []  # (ms since start, what happened) to place the worst stall
    where: list[float] = []

    def tick() -> None:
        now = clock.nsecsElapsed()
        lateness.append(max(0.0, (now - last[0]) / 1e6 - args.interval_ms))
        where.append(last[0] / 1e6)
        last[0] = now

    from PySide6.QtCore import QObject, Slot

    class Marker(QObject):
        @Slot(int, object)
        def on_progress(self, job_id, ev):
            marks.append((clock.nsecsElapsed() / 1e6, f"step {ev.step}/{ev.total}"))

        @Slot(int, object)
        def on_started(self, job_id, request):
            marks.append((clock.nsecsElapsed() / 1e6, "job started"))

        @Slot(object)
        def on_result(self, result):
            marks.append((clock.nsecsElapsed() / 1e6, "result shown"))

    marker = Marker()
    window.worker.progress.connect(marker.on_progress)
    window.worker.jobStarted.connect(marker.on_started)
    window.resultReady.connect(marker.on_result)

    def locate(worst_index: int) -> str:
        if worst_index < 0:
            return ""
        t = where[worst_index]
        before = [m for m in marks if m[0] <= t + lateness[worst_index] + args.interval_ms]
        return f" (after '{before[-1][1]}')" if before else " (before the job started)"

    timer.timeout.connect(tick)

    async def run_once() -> tuple[float, list[float], float, str]:
        lateness.clear()
        where.clear()
        marks.clear()
        last[0] = clock.nsecsElapsed()
        timer.start()
        t0 = time.perf_counter()
        job_id = window.generate()
        if job_id is None:
            raise SystemExit(f"could not start: {window.last_error}")
        fut = asyncio.get_event_loop().create_future()
        window.resultReady.connect(lambda r: fut.done() or fut.set_result(r))
        window.worker.failed.connect(lambda *a: fut.done() or fut.set_exception(RuntimeError(str(a))))
        await fut
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(0.1)  # let the result paint
        timer.stop()
        worst_i = max(range(len(lateness)), key=lateness.__getitem__) if lateness else -1
        return max(lateness, default=0.0), list(lateness), elapsed, locate(worst_i)

    async def idle(seconds: float) -> tuple[float, float]:
        """The same timer with no job: what the machine itself costs (other processes, the scheduler)."""
        lateness.clear()
        last[0] = clock.nsecsElapsed()
        timer.start()
        await asyncio.sleep(seconds)
        timer.stop()
        late = list(lateness)
        p99 = statistics.quantiles(late, n=100)[98] if len(late) >= 100 else max(late, default=0.0)
        return max(late, default=0.0), p99

    async def bench() -> None:
        idle_worst, idle_p99 = await idle(3.0)
        worst1, _, e1, at1 = await run_once()
        worst2, late2, e2, at2 = await run_once()
        p99 = statistics.quantiles(late2, n=100)[98] if len(late2) >= 100 else max(late2, default=0.0)
        print(f"model: {model}  steps: {args.steps}  size: {pp.width_spin.value()}x{pp.height_spin.value()}")
        print(f"idle baseline (no job, 3 s): worst {idle_worst:.1f} ms, p99 {idle_p99:.1f} ms")
        print(f"first run (loads the model): {e1:.2f} s, worst GUI stall {worst1:.1f} ms{at1}")
        print(
            f"warm run: {e2:.2f} s, {len(late2)} ticks, worst GUI stall {worst2:.1f} ms{at2}, p99 {p99:.1f} ms, "
            f"median {statistics.median(late2) if late2 else 0:.1f} ms  (target <= 50 ms)"
        )
        window.close()
        app.quit()

    with loop:
        loop.run_until_complete(bench())
    return 0


if __name__ == "__main__":
    sys.exit(main())
