"""Make resources/screenshot.png: the real window under Xvfb with a source image, a painted mask and a result.

    python tools/screenshot.py [--model PATH] [--out resources/screenshot.png]

Uses the built-in model when it is installed (else --model, else the tiny random
test model, whose results are noise). Starts its own Xvfb when there is no
DISPLAY (Debian: apt-get install xvfb libxcb-icccm4 libxcb-keysyms1
libxkbcommon-x11-0 libxcb-cursor0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_xvfb(size: str = "1366x768x24") -> subprocess.Popen | None:
    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        return None
    for n in range(97, 120):
        if not Path(f"/tmp/.X{n}-lock").exists():
            proc = subprocess.Popen(
                ["Xvfb", f":{n}", "-screen", "0", size, "-nolisten", "tcp"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(50):
                if Path(f"/tmp/.X11-unix/X{n}").exists():
                    break
                time.sleep(0.1)
            os.environ["DISPLAY"] = f":{n}"
            os.environ["QT_QPA_PLATFORM"] = "xcb"
            return proc
    return None


def pick_model(arg: str | None) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import builtin_or_tiny  # pyright: ignore[reportMissingImports] - tests/ is on sys.path

    return builtin_or_tiny(arg)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--out", default=str(ROOT / "resources" / "screenshot.png"))
    ap.add_argument("--width", type=int, default=0, help="window width (default: the size the app opens at)")
    ap.add_argument("--height", type=int, default=0)
    args = ap.parse_args()
    xvfb = start_xvfb()
    try:
        return shoot(args)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(5)


def shoot(args) -> int:
    import qasync
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from desktop_app.app.application import create_main_window
    from desktop_app.core.modelinfo import model_defaults
    from tools.shapes import caption, make_spec, render

    app = QApplication.instance() or QApplication(sys.argv[:1])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    model = pick_model(args.model)
    size = int(model_defaults(model).get("width", 64))
    window = create_main_window(model=model, data_dir=tempfile.mkdtemp())
    if args.width and args.height:
        window.resize(args.width, args.height)
    window.show()

    source = render(make_spec("circle", "red", "blue", "centre"), size=size)
    target = make_spec("triangle", "yellow", "blue")
    pp = window.prompt_panel
    window.set_source_image(source)
    pp.set_mode("inpaint")
    pp.prompt_edit.setPlainText(caption(target))
    pp.negative_prompt_edit.setPlainText("blurry, noisy")
    pp.seed_spin.setValue(7)
    pp.mask_blur_spin.setValue(2)

    async def run() -> None:
        await asyncio.sleep(0.3)
        canvas = window.canvas
        canvas.set_brush_size(max(4, size // 5))
        # paint over the circle with the mouse, as a user would
        canvas.set_mask_opacity(0.3)
        pts = [
            (0.22, 0.25),
            (0.78, 0.25),
            (0.78, 0.45),
            (0.22, 0.45),
            (0.22, 0.62),
            (0.78, 0.62),
            (0.78, 0.78),
            (0.22, 0.78),
        ]
        wpts = [canvas.image_to_widget(x * size, y * size) for x, y in pts]
        QTest.mousePress(
            canvas,
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.NoModifier,
            QPoint(int(wpts[0].x()), int(wpts[0].y())),
        )
        for p in wpts[1:]:
            QTest.mouseMove(canvas, QPoint(int(p.x()), int(p.y())))
            await asyncio.sleep(0.02)
        QTest.mouseRelease(
            canvas,
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.NoModifier,
            QPoint(int(wpts[-1].x()), int(wpts[-1].y())),
        )
        if canvas.mask_image() is None:  # platforms that drop synthetic moves: paint the same strokes directly
            for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
                canvas._stamp_segment((x0 * size, y0 * size), (x1 * size, y1 * size))
        done = asyncio.get_event_loop().create_future()
        window.resultReady.connect(lambda r: done.done() or done.set_result(r))
        window.worker.failed.connect(lambda *a: done.done() or done.set_exception(RuntimeError(str(a))))
        if window.generate() is None:
            raise RuntimeError(f"could not start: {window.last_error}")
        await done
        await asyncio.sleep(0.5)
        window.canvas.zoom_fit()
        await asyncio.sleep(0.2)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        window.grab().save(str(out))
        print(f"wrote {out} ({window.width()}x{window.height()}), model {model}")
        window.close()

    with loop:
        loop.run_until_complete(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
