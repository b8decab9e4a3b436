"""`diffusion-desk --smoke`: the installed app, end to end, in a few seconds and without a screen.

Opens the real main window (offscreen unless QT_QPA_PLATFORM says otherwise) on a
QApplication + qasync loop, makes one small image with the built-in model by
clicking the Generate button, waits until the result is on the canvas, and exits.
Exit status 0 means a user's first click would work: the package, its resources,
the model, torch, diffusers and Qt are all there and talk to each other.

    run_smoke()                          # the built-in model
    run_smoke(model="/path/to/diffusers-folder", timeout=60)

DIFFUSION_DESK_SMOKE_MODEL and DIFFUSION_DESK_SMOKE_TIMEOUT (seconds) override the
defaults when the caller passes none (so `diffusion-desk --smoke` can be pointed at
another model, e.g. a tiny test model, without a new option).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODEL_ENV = "DIFFUSION_DESK_SMOKE_MODEL"
TIMEOUT_ENV = "DIFFUSION_DESK_SMOKE_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # first import of torch + diffusers and the model load on a slow, busy CPU
SMOKE_STEPS = 4
SMOKE_PROMPT = "a red circle on a blue background"
SMOKE_SEED = 1234

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 3


def _say(text: str) -> None:
    log.info("smoke: %s", text)
    stream = sys.stdout if sys.stdout is not None else None  # pythonw / gui-scripts have no stdout
    if stream is not None:
        print(f"smoke: {text}", file=stream, flush=True)


def run_smoke(
    model: str | os.PathLike | None = None, timeout: float | None = None, data_dir: str | os.PathLike | None = None
) -> int:
    """Make one image through the real window; 0 when it shows on the canvas, non-zero on any failure or timeout."""
    if model is None:
        model = os.environ.get(MODEL_ENV) or None
    if timeout is None:
        try:
            timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        except ValueError:
            timeout = DEFAULT_TIMEOUT
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the smoke test never reaches for the network
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    started = time.perf_counter()
    try:
        if data_dir is not None:
            return _run(model, timeout, Path(data_dir), started)
        with tempfile.TemporaryDirectory(prefix="diffusion-desk-smoke-") as tmp:
            return _run(model, timeout, Path(tmp), started)
    except Exception:  # noqa: BLE001 - any failure is a failed smoke test, with the reason on stderr and in the log
        log.exception("smoke test failed")
        if sys.stderr is not None:
            traceback.print_exc()
        _say(f"FAILED after {time.perf_counter() - started:.1f} s")
        return EXIT_FAILED


def _run(model: str | os.PathLike | None, timeout: float, data_dir: Path, started: float) -> int:
    import asyncio

    from PySide6.QtCore import QCoreApplication
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from desktop_app.core import paths
    from desktop_app.core.modelinfo import BUILTIN, builtin_model_path

    if model in (None, "", BUILTIN):
        model_arg = None
        where = builtin_model_path()
        if not (where / "model_index.json").is_file():
            _say(f"FAILED: the built-in model is missing ({where})")
            return EXIT_FAILED
        label = f"builtin ({where})"
    else:
        model_arg = str(model)
        label = model_arg

    previous_data_dir = paths._override  # noqa: SLF001 - restored below: run_smoke may run inside a bigger process (tests)
    paths.set_data_dir(data_dir)
    QCoreApplication.setOrganizationName("diffusion-desk")
    QCoreApplication.setApplicationName("Diffusion Desk")
    app = QGuiApplication.instance() or QApplication([sys.argv[0] if sys.argv else "diffusion-desk"])
    assert isinstance(app, QGuiApplication)
    _say(f"Qt platform {app.platformName()}, model {label}, data in {data_dir}")

    import qasync

    from desktop_app.app.application import create_main_window

    window = create_main_window(model=model_arg, data_dir=data_dir)
    loop = qasync.QEventLoop(app, already_running=False)
    asyncio.set_event_loop(loop)
    try:
        with loop:
            return loop.run_until_complete(_drive(window, timeout, started))
    finally:
        try:
            window.history_saver.wait(30.0)  # the history's writes end before the temporary data folder goes
            window.close()
            window.deleteLater()
        except RuntimeError:  # already deleted
            pass
        asyncio.set_event_loop(None)
        paths.set_data_dir(previous_data_dir)


async def _drive(window: Any, timeout: float, started: float) -> int:
    import asyncio

    import numpy as np
    from PySide6.QtWidgets import QPushButton

    loop = asyncio.get_event_loop()
    done: asyncio.Future = loop.create_future()

    def on_result(result: Any) -> None:
        if not done.done():
            done.set_result(result)

    def on_failed(job_id: int, message: str, hint: str) -> None:
        if not done.done():
            done.set_exception(RuntimeError(f"the job failed: {message} {hint}".strip()))

    window.resultReady.connect(on_result)
    window.worker.failed.connect(on_failed)
    # The window's HistorySaver writes each result in the background: the smoke test waits for that too (and
    # checks that it worked).
    saved: asyncio.Future = loop.create_future()
    saver = window.history_saver

    def on_saved(entries: list) -> None:
        if not saved.done():
            saved.set_result(entries)

    def on_save_failed(message: str, hint: str) -> None:
        if not saved.done():
            saved.set_exception(RuntimeError(f"{message} {hint}".strip()))

    if saver.store() is not None:
        saver.saved.connect(on_saved)
        saver.failed.connect(on_save_failed)
    else:
        saved.set_result(None)  # the history could not be opened: the window works without it
    window.show()
    await asyncio.sleep(0)  # let the first paint happen

    panel = window.prompt_panel
    panel.set_mode("generate")
    panel.prompt_edit.setPlainText(SMOKE_PROMPT)
    panel.steps_spin.setValue(SMOKE_STEPS)
    panel.batch_spin.setValue(1)
    panel.seed_spin.setValue(SMOKE_SEED)
    button = window.findChild(QPushButton, "generateButton")
    if button is None or not button.isEnabled():
        _say("FAILED: no enabled Generate button in the window")
        return EXIT_FAILED
    _say(
        f"window up after {time.perf_counter() - started:.1f} s; clicking Generate ({SMOKE_STEPS} steps, "
        f"{panel.width_spin.value()}x{panel.height_spin.value()})"
    )
    clicked = time.perf_counter()
    button.click()
    if window.last_error is not None:
        _say(f"FAILED: {window.last_error[0]} {window.last_error[1]}")
        return EXIT_FAILED
    try:
        result = await asyncio.wait_for(done, timeout=max(1.0, timeout - (time.perf_counter() - started)))
    except asyncio.TimeoutError:
        _say(f"FAILED: no result within {timeout:.0f} s")
        window.jobs.cancel_all()
        return EXIT_TIMEOUT
    except RuntimeError as exc:
        _say(f"FAILED: {exc}")
        return EXIT_FAILED
    await asyncio.sleep(0)
    images = list(getattr(result, "images", []) or [])
    if not images:
        _say("FAILED: the result has no image")
        return EXIT_FAILED
    shown = window.canvas.shown_image()
    image = images[0].convert("RGB")
    if (
        shown is None
        or shown.size != image.size
        or not np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(image))
    ):
        _say("FAILED: the result is not what the canvas shows")
        return EXIT_FAILED
    pixels = np.asarray(image)
    if pixels.std() == 0:
        _say("FAILED: the image is blank")
        return EXIT_FAILED
    try:
        entries = await asyncio.wait_for(saved, timeout=60.0)
    except asyncio.TimeoutError:
        _say("FAILED: the result was not saved to the history within 60 s")
        return EXIT_FAILED
    except RuntimeError as exc:
        _say(f"FAILED: saving to the history: {exc}")
        return EXIT_FAILED
    if entries is not None and len(entries) != len(images):
        _say(f"FAILED: {len(images)} image(s) made, {len(entries)} history entries written")
        return EXIT_FAILED
    kept = "" if entries is None else f", saved to the history ({len(entries)} entry)"
    _say(
        f"ok: {image.width}x{image.height} image on the canvas in {time.perf_counter() - clicked:.1f} s{kept} "
        f"(total {time.perf_counter() - started:.1f} s)"
    )
    return EXIT_OK


__all__ = ["run_smoke", "MODEL_ENV", "TIMEOUT_ENV"]
