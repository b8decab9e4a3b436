"""Helpers for the UI tests: a qasync loop fixture and a fake engine with the real engine's interface.

Use from a test module:

    from tests.ui_conftest_helpers import FakeEngine, qloop  # noqa: F401  (qloop is a fixture)
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from PIL import Image

from desktop_app.core.errors import JobCancelled, ModelError, UserError
from desktop_app.core.events import Cancelled, Failed, Finished, Preview, Progress, Result


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
    loop._QEventLoop__is_running = False
    try:
        loop._after_run_forever()
    except Exception:  # noqa: BLE001 - best effort
        pass
    asyncio.events._set_running_loop(None)
    try:
        loop.close()
    finally:
        asyncio.set_event_loop(None)


class FakeTrajectory:
    def __init__(self, steps: int, size: tuple[int, int], seed: int) -> None:
        self.timesteps = [int(round(999 - i * 999 / steps)) for i in range(steps)]
        self._size = size
        self._seed = seed

    def __len__(self) -> int:
        return len(self.timesteps)

    def previews(self, index: int, which: str) -> np.ndarray:
        w, h = self._size
        frac = (index + 1) / len(self)
        rng = np.random.default_rng(self._seed + index)
        noise = rng.integers(0, 256, (h // 4 or 1, w // 4 or 1, 3))
        base = np.full_like(noise, 200 if which == "x0" else 100)
        return (base * frac + noise * (1 - frac)).astype(np.uint8)


class FakeForwardProcess:
    num_train_timesteps = 1000

    def __init__(self, image: Image.Image) -> None:
        self._x0 = np.asarray(image.convert("RGB").resize((max(1, image.width // 4), max(1, image.height // 4))), np.float32)
        self._noise = np.random.default_rng(0).normal(128, 60, self._x0.shape)

    def preview(self, t: int) -> np.ndarray:
        a = 1.0 - t / 1000.0
        return np.clip(self._x0 * a + self._noise * (1 - a), 0, 255).astype(np.uint8)

    def latent(self, t: int) -> np.ndarray:
        return self.preview(t)


class FakeEngine:
    """Same interface as desktop_app.engine.engine.Engine, numpy only.

    step_delay: seconds per step; fail_next: an exception raised by the next run;
    the result is a solid colour from the seed (inpaint: source kept outside the mask).
    """

    def __init__(self, step_delay: float = 0.0, progress_per_step: int = 1) -> None:
        self.step_delay = step_delay
        self.progress_per_step = progress_per_step
        self.fail_next: BaseException | None = None
        self.runs: list = []
        self.thread_names: list[str] = []
        self.started = threading.Event()

    def run(self, request, on_event, cancel):
        self.thread_names.append(threading.current_thread().name)
        self.runs.append(request)
        self.started.set()
        start = time.perf_counter()
        try:
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            request.validate()
            steps = request.steps or 4
            width = request.width or 64
            height = request.height or 64
            image = getattr(request, "image", None)
            if image is not None:
                width, height = image.size
            seed = request.seed if request.seed is not None else 1234
            total = steps * self.progress_per_step
            for i in range(total):
                if cancel.is_set():
                    on_event(Cancelled())
                    raise JobCancelled()
                if self.step_delay:
                    time.sleep(self.step_delay)
                on_event(Progress(i + 1, total, int(999 - i * 999 / total), 10.0, (total - i - 1) / 10.0))
                if (i + 1) % self.progress_per_step == 0:
                    shade = int(255 * (i + 1) / total)
                    on_event(Preview(i + 1, Image.new("RGB", (max(8, width // 8), max(8, height // 8)), (shade, 0, 0))))
            seeds = [seed + i for i in range(request.batch)]
            images = []
            for s in seeds:
                out = Image.new("RGB", (width, height), (s * 37 % 256, s * 91 % 256, s * 53 % 256))
                mask = getattr(request, "mask", None)
                if request.kind == "inpaint" and image is not None and mask is not None:
                    out = Image.composite(out, image.convert("RGB"), mask.convert("L").point(lambda v: 255 if v else 0))
                images.append(out)
            result = Result(
                request=request.replace(seed=seed, steps=steps, width=width, height=height),
                images=images,
                seeds=seeds,
                model_id=request.model,
                elapsed=time.perf_counter() - start,
                trajectory=FakeTrajectory(steps, (width, height), seed),
            )
        except JobCancelled:
            raise
        except BaseException as exc:
            on_event(Failed(*(exc.message, exc.hint) if isinstance(exc, UserError) else (str(exc), "")))
            raise
        on_event(Finished(result))
        return result

    def preload(self, model: str) -> None:
        if "missing" in model:
            raise ModelError(f"No model at {model}.", "Choose a diffusers folder with model_index.json.")

    def decode_trajectory(self, trajectory, index: int, which: str) -> Image.Image:
        arr = trajectory.previews(index, which)
        return Image.fromarray(arr).resize((arr.shape[1] * 4, arr.shape[0] * 4))

    def forward_process(self, image, model: str) -> FakeForwardProcess:
        return FakeForwardProcess(image)

    def decode_latent(self, latent, model: str) -> Image.Image:
        return Image.fromarray(np.asarray(latent, np.uint8)).resize((latent.shape[1] * 4, latent.shape[0] * 4))
