"""Start-up benchmark: process start to first paint of the main window, median of 5, beside a bare PySide6 window.

    python bench/startup.py [--runs 5]

Each run is a fresh Python process; the child reports the wall-clock time of its
window's first paint event. Target: ratio (ours / bare) <= 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD_COMMON = r"""
import sys, time
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication
class FirstPaint(QObject):
    done = False
    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.Type.Paint and not FirstPaint.done:
            FirstPaint.done = True
            print("PAINT", time.time(), flush=True)
            QTimer.singleShot(0, QApplication.instance().quit)
        return False
app = QApplication.instance() or QApplication(sys.argv[:1])
"""

CHILD_BARE = (
    CHILD_COMMON
    + r"""
from PySide6.QtWidgets import QMainWindow, QLabel
w = QMainWindow(); w.setCentralWidget(QLabel("hello")); w.resize(1320, 820)
f = FirstPaint(); w.installEventFilter(f)
w.show(); app.exec()
"""
)

CHILD_APP = (
    CHILD_COMMON
    + r"""
# the real start-up path: desktop_app.app.application.run_gui, with a hook that watches the window's first paint
from desktop_app.app import application as gui
f = FirstPaint()
gui.window_created_hooks.append(lambda w: w.installEventFilter(f))
gui.run_gui(data_dir=sys.argv[1])
print("TORCH", "torch" in sys.modules, "NUMPY", "numpy" in sys.modules, flush=True)
"""
)


def measure(code: str, data_dir: str) -> tuple[float, str, float]:
    """(seconds from spawn to first paint, stdout, CPU seconds the child used in all)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, out = _measure(code, data_dir)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, out, cpu


def _measure(code: str, data_dir: str) -> tuple[float, str]:
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"), "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: byte code cached after the first run
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code, data_dir], capture_output=True, text=True, env=env, timeout=120)
    for line in out.stdout.splitlines():
        if line.startswith("PAINT "):
            return float(line.split()[1]) - start, out.stdout
    raise RuntimeError(f"no paint reported:\n{out.stdout}\n{out.stderr}")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    data_dir = tempfile.mkdtemp()
    measure(CHILD_APP, data_dir)  # warm the file cache (and write the settings file) once
    bare, ours, torch_loaded = [], [], False
    bare_cpu, ours_cpu = [], []
    for _ in range(args.runs):
        t, _, cpu = measure(CHILD_BARE, data_dir)
        bare.append(t)
        bare_cpu.append(cpu)
        t, out, cpu = measure(CHILD_APP, data_dir)
        ours.append(t)
        ours_cpu.append(cpu)
        torch_loaded |= "TORCH True" in out
    mb, mo = statistics.median(bare), statistics.median(ours)
    print(f"bare PySide6 window: median {mb * 1000:.0f} ms  ({', '.join(f'{x * 1000:.0f}' for x in bare)})")
    print(f"Diffusion Desk:      median {mo * 1000:.0f} ms  ({', '.join(f'{x * 1000:.0f}' for x in ours)})")
    print(f"ratio {mo / mb:.2f} (target <= 2); torch imported before first paint: {torch_loaded}")
    cb, co = statistics.median(bare_cpu), statistics.median(ours_cpu)
    print(
        f"CPU time of the whole child process, start to exit (ours includes the history, asyncio and qasync loading after the paint): bare {cb * 1000:.0f} ms, "
        f"ours {co * 1000:.0f} ms, ratio {co / cb:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
