"""Helpers for the UI tests: a qasync loop fixture and a fake engine that implements the Backend protocol.

Use from a test module:

    from tests.ui_conftest_helpers import FakeEngine, qloop  # noqa: F401  (qloop is a fixture)
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from desktop_app.backend import parts_for, parts_of
from desktop_app.core.errors import JobCancelled, ModelError, UserError
from desktop_app.core.events import Cancelled, Failed, Finished, Notice, Preview, Progress, Result
from desktop_app.core.latents import ForwardProcess, LatentPreviewer, Trajectory
from desktop_app.core.modelinfo import BUILTIN, ModelInfo, model_defaults
from desktop_app.core.outpaint import rounded_extend


@pytest.fixture
def qloop(qapp):
    """A qasync loop over pytest-qt's QApplication (never loop.stop(): it would quit the app)."""
    import qasync

    loop = qasync.QEventLoop(qapp, already_running=True)
    asyncio.set_event_loop(loop)
    yield loop
    for task in asyncio.all_tasks(loop):
        task.cancel()
    # Close without loop.stop() (which calls app.exit() and hangs later tests): mark it stopped by hand.
    try:
        qapp.aboutToQuit.disconnect(loop._after_run_forever)
    except (RuntimeError, TypeError):
        pass
    # qasync's own `self.__is_running`, reached by its mangled name; pyright does not model name mangling
    loop._QEventLoop__is_running = False  # pyright: ignore[reportAttributeAccessIssue]
    try:
        loop._after_run_forever()
    except Exception:  # noqa: BLE001 - best effort
        pass
    asyncio.events._set_running_loop(None)
    try:
        loop.close()
    finally:
        asyncio.set_event_loop(None)


# identity projection: a fake latent (3, h, w) in [-1, 1] previews as the RGB it holds
_IDENTITY = LatentPreviewer(np.concatenate([np.eye(3, dtype=np.float32), np.zeros((1, 3), np.float32)]))


def _to_latent(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (h, w, 3) -> a fake latent (3, h, w) float32 that `_IDENTITY` projects back to it."""
    return (np.asarray(rgb, np.float32).transpose(2, 0, 1) / 127.5 - 1.0).astype(np.float32)


class FakeTrajectory(Trajectory):
    """A real core Trajectory of fake latents: noise that turns into a flat shade over the steps."""

    def __init__(self, steps: int, size: tuple[int, int], seed: int, batch: int = 1) -> None:
        w, h = size
        timesteps = [int(round(999 - i * 999 / steps)) for i in range(steps)]
        xt, x0 = [], []
        for index in range(steps):
            frac = (index + 1) / steps
            rng = np.random.default_rng(seed + index)
            noise = rng.integers(0, 256, (h // 4 or 1, w // 4 or 1, 3))
            frames = [_to_latent(np.full_like(noise, base) * frac + noise * (1 - frac)) for base in (100, 200)]
            xt.append(np.stack([frames[0]] * batch))  # (B, 3, h/4, w/4)
            x0.append(np.stack([frames[1]] * batch))
        super().__init__(timesteps=timesteps, xt=xt, x0=x0, previewer=_IDENTITY, model="fake")


class FakeForwardProcess(ForwardProcess):
    """A real core ForwardProcess of a fake latent: the image at a quarter of its size."""

    def __init__(self, image: Image.Image) -> None:
        small = image.convert("RGB").resize((max(1, image.width // 4), max(1, image.height // 4)))
        x0 = _to_latent(np.asarray(small))
        noise = np.random.default_rng(0).standard_normal(x0.shape).astype(np.float32) * 0.5
        alphas = np.linspace(0.9999, 0.0047, 1000) ** 2
        super().__init__(x0=x0, noise=noise, alphas_cumprod=alphas, previewer=_IDENTITY, model_id="fake")


class FakeEngine:
    """A Backend (desktop_app.backend) like desktop_app.engine.engine.Engine, numpy only.

    step_delay: seconds per step; fail_next: an exception raised by the next run;
    the result is a solid colour from the seed (inpaint: source kept outside the mask; an outpaint (`extend`): at
    the extended size, rounded up to 8 as the engine does and said in a Notice, the source pasted at (left, top)).
    download_delay: seconds per simulated download chunk; notices: Notice messages every run emits first (as the
    engine does for a LoRA tag it cannot resolve). families: {source: family} that `preload` reports (else "sd1"),
    defaults: {source: recommended settings} over the folder's; suggested: (source prompt, target prompt, how) of
    every suggest_mask call. needs_parts: {source: family} of transformer files whose `preload` fails as
    flow_files' does until that family's parts ("parts:flux", backend.parts_of) were downloaded; downloads: the ids
    `download_model` was asked for, in order.
    """

    def __init__(self, step_delay: float = 0.0, progress_per_step: int = 1, download_delay: float = 0.0) -> None:
        self.step_delay = step_delay
        self.progress_per_step = progress_per_step
        self.download_delay = download_delay
        self.fail_next: BaseException | None = None
        self.notices: list[str] = []
        self.runs: list = []
        self.sources: list = []
        self.thread_names: list[str] = []
        self.started = threading.Event()
        self._cancel = threading.Event()
        self.families: dict[str, str] = {}
        self.defaults: dict[str, dict[str, Any]] = {}
        self.suggested: list[tuple[str, str, str]] = []
        self.needs_parts: dict[str, str] = {}
        self.downloads: list[str] = []
        self.parts_downloaded: set[str] = set()

    def run(self, request, on_event=None, cancel=None, source=None):
        emit = on_event or (lambda event: None)
        self.thread_names.append(threading.current_thread().name)
        self.runs.append(request)
        self.sources.append(source)
        self._cancel.clear()
        self.started.set()
        start = time.perf_counter()
        try:
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            request.validate()
            for message in self.notices:
                emit(Notice(message))
            steps = request.steps or 4
            width = request.width or 64
            height = request.height or 64
            image = getattr(request, "image", None)
            if image is not None:
                width, height = image.size
            extend = None
            if image is not None and getattr(request, "outpaints", False):
                extend = rounded_extend(image.size, request.extend)
                asked = (width + request.extend[0] + request.extend[2], height + request.extend[1] + request.extend[3])
                width, height = width + extend[0] + extend[2], height + extend[1] + extend[3]
                if (width, height) != asked:
                    emit(Notice(f"The extended canvas {asked[0]}x{asked[1]} is not a multiple of 8: rounded up to "
                                f"{width}x{height} (the extra pixels on the extended sides)."))  # fmt: skip
            seed = request.seed if request.seed is not None else 1234
            total = steps * self.progress_per_step
            for i in range(total):
                if (cancel is not None and cancel.is_set()) or self._cancel.is_set():
                    raise JobCancelled()
                if self.step_delay:
                    time.sleep(self.step_delay)
                emit(Progress(i + 1, total, int(999 - i * 999 / total), 10.0, (total - i - 1) / 10.0))
                if (i + 1) % self.progress_per_step == 0:
                    shade = int(255 * (i + 1) / total)
                    emit(Preview(i + 1, Image.new("RGB", (max(8, width // 8), max(8, height // 8)), (shade, 0, 0))))
            seeds = [seed + i for i in range(request.batch)]
            images = []
            for s in seeds:
                out = Image.new("RGB", (width, height), (s * 37 % 256, s * 91 % 256, s * 53 % 256))
                mask = getattr(request, "mask", None)
                if request.kind == "inpaint" and image is not None and extend is not None:
                    keep = Image.new("L", image.size, 255)
                    if mask is not None:  # a painted mask of the original is repainted too
                        keep = mask.convert("L").point(lambda v: 0 if v else 255)
                    out.paste(image.convert("RGB"), extend[:2], keep)
                elif request.kind == "inpaint" and image is not None and mask is not None:
                    out = Image.composite(out, image.convert("RGB"), mask.convert("L").point(lambda v: 255 if v else 0))
                images.append(out)
            result = Result(
                request=request.replace(seed=seed, steps=steps, width=width, height=height),
                images=images,
                seeds=seeds,
                model_id=request.model,
                elapsed=time.perf_counter() - start,
                trajectory=FakeTrajectory(steps, (width, height), seed, request.batch),
            )
        except JobCancelled:
            emit(Cancelled())
            raise
        except BaseException as exc:
            emit(Failed(*(exc.message, exc.hint) if isinstance(exc, UserError) else (str(exc), "")))
            raise
        emit(Finished(result))
        return result

    def cancel(self) -> None:
        self._cancel.set()

    def preload(self, model: str | None) -> ModelInfo:
        source = model or BUILTIN
        if "missing" in source:
            raise ModelError(f"No model at {source}.", "Choose a diffusers folder with model_index.json.")
        if source in self.needs_parts and parts_for(self.needs_parts[source]).id not in self.parts_downloaded:
            parts = parts_for(self.needs_parts[source])
            raise ModelError(  # as flow_files._missing_error words it
                f"{Path(source).name} is {parts.family_name} (the transformer only); not found: text_encoder, vae.",
                f"Download them once: Models… > Download the text encoders and VAE, or run `{parts.command}`.",
            )
        return ModelInfo(
            source=source,
            model_id=Path(source).name or source,
            family=self.families.get(source, self.needs_parts.get(source, "sd1")),
            model_hash="",
            defaults={**model_defaults(source), **self.defaults.get(source, {})},  # the folder's, as the engine reads
        )

    def suggest_mask(
        self,
        image: Image.Image,
        source_prompt: str,
        target_prompt: str,
        model: str | None = None,
        how: str = "diffedit",
    ) -> Image.Image:
        """The middle half of the image, or nothing when the prompts agree."""
        self.suggested.append((source_prompt, target_prompt, how))
        mask = Image.new("L", image.size, 0)
        if source_prompt != target_prompt:
            w, h = image.size
            mask.paste(255, (w // 4, h // 4, w - w // 4, h - h // 4))
        return mask

    def decode_trajectory(self, trajectory, index: int, which: str = "x0", batch_index: int = 0) -> Image.Image:
        arr = trajectory.previews(index, which, batch_index)
        return Image.fromarray(arr).resize((arr.shape[1] * 4, arr.shape[0] * 4))

    def forward_process(self, image: Image.Image, model: str | None = None) -> FakeForwardProcess:
        return FakeForwardProcess(image)

    def decode_latent(self, latent: np.ndarray, model: str | None = None) -> Image.Image:
        rgb = _IDENTITY.project(np.asarray(latent, np.float32)[:3])
        return Image.fromarray(rgb).resize((rgb.shape[1] * 4, rgb.shape[0] * 4))

    def list_models(self) -> list[dict]:
        return [
            {"id": BUILTIN, "name": "Shapes (built-in)", "kind": "builtin", "family": "sd1", "missing": False},
            {
                "id": "owner/fake-model",
                "name": "Fake",
                "kind": "hub (curated)",
                "family": "sd1",
                "download_gb": 0.1,
                "note": "",
            },
        ]

    def download_model(self, repo: str, on_progress, cancel: threading.Event) -> Path:
        """Four simulated chunks of 1 MB each; cancel between chunks raises JobCancelled. A parts id ("parts:flux")
        makes that family's transformer files load afterwards."""
        self.downloads.append(repo)
        total, chunks = 4 << 20, 4
        for i in range(chunks):
            if cancel.is_set():
                raise JobCancelled()
            if self.download_delay:
                time.sleep(self.download_delay)
            done = (i + 1) * total // chunks
            on_progress(Progress(done, total, 0, 1e6, (total - done) / 1e6, "download"))
        parts = parts_of(repo)
        if parts is not None:
            self.parts_downloaded.add(parts.id)
        folder = Path(tempfile.gettempdir()) / "fake-hub" / repo.replace("/", "--").replace(":", "-")
        folder.mkdir(parents=True, exist_ok=True)
        return folder


# -- driving the real window ------------------------------------------------------------------------
def make_window(qtbot, data_dir, engine, model=None):
    """The app's own window (its wiring, model objects and worker) over `engine`, shown."""
    from desktop_app.app.wiring import create_main_window

    w = create_main_window(model=model, data_dir=data_dir, engine_factory=lambda: engine)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    return w


def child(w, name) -> Any:
    """The window's widget of that objectName (it must exist)."""
    from PySide6.QtWidgets import QWidget

    found = w.findChild(QWidget, name)
    assert found is not None, name
    return found


def click_generate(qtbot, w, timeout=10000):
    """Click Generate and wait for the result; returns it."""
    from PySide6.QtCore import Qt

    with qtbot.waitSignal(w.resultReady, timeout=timeout) as blocker:
        qtbot.mouseClick(child(w, "generateButton"), Qt.MouseButton.LeftButton)
    return blocker.args[0]


def paint(qtbot, w, points_image, size=12):
    """A mouse stroke through `points_image` (image pixels) with a brush of `size`."""
    from PySide6.QtCore import QPoint, Qt

    canvas = w.canvas
    canvas.set_brush_size(size)
    pts = [canvas.image_to_widget(x, y) for x, y in points_image]
    pts = [QPoint(int(p.x()), int(p.y())) for p in pts]
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=pts[0])
    for p in pts[1:]:
        qtbot.mouseMove(canvas, pos=p)
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=pts[-1])


def choose(qtbot, combo, text):
    """Pick the item of that text in a combo box as a user does: open its list, click the item."""
    from PySide6.QtCore import Qt

    index = combo.findText(text)
    assert index >= 0, (text, [combo.itemText(i) for i in range(combo.count())])
    combo.showPopup()
    view = combo.view()
    qtbot.waitUntil(view.isVisible)
    model_index = view.model().index(index, 0)
    view.scrollTo(model_index)
    rect = view.visualRect(model_index)
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: not view.isVisible())


def type_into(qtbot, widget, text):
    """Select what a field holds and type `text` over it (spin boxes, line edits, prompts)."""
    from PySide6.QtCore import Qt

    widget.setFocus()
    qtbot.keyClick(widget, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(widget, text)
    qtbot.keyClick(widget, Qt.Key.Key_Tab)


def seed_colour(seed: int) -> tuple[int, int, int]:
    """The solid colour FakeEngine paints for a seed."""
    return (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)


def canvas_pixel(w, x: float, y: float) -> tuple[int, int, int]:
    """The colour the canvas draws at image point (x, y): what the user sees there."""
    w.canvas.repaint()
    image = w.canvas.grab().toImage()
    p = w.canvas.image_to_widget(x, y)
    c = image.pixelColor(int(p.x()), int(p.y()))
    return (c.red(), c.green(), c.blue())
