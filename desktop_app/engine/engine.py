"""Engine.run(request, on_event) -> Result: the one entry point for every job."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from desktop_app.core.errors import JobCancelled, ModelError, OutOfMemory, UserError
from desktop_app.core.events import Cancelled, Failed, Finished, Notice, Result
from desktop_app.core.requests import MAX_SEED, EditRequest, GenerateRequest
from desktop_app.engine.device import MemoryOptions, free_memory, pick_device, pick_dtype
from desktop_app.engine.models import LoadedModel, ModelManager, vae_decode, vae_encode
from desktop_app.engine.sampling import Trajectory, prompt_notices, run_pipeline, work_size

log = logging.getLogger(__name__)
OnEvent = Callable[[object], None]

__all__ = ["Engine", "JobCancelled", "ForwardProcess"]


@dataclass
class ForwardProcess:
    """q(x_t | x_0) of a source image in closed form: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps. numpy only."""

    x0: np.ndarray  # (C, h, w) scaled latent of the source
    noise: np.ndarray  # (C, h, w) fixed noise, so dragging shows one consistent path
    alphas_cumprod: np.ndarray  # (T,)
    previewer: object
    model_id: str

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def latent(self, t: int) -> np.ndarray:
        t = int(np.clip(t, 0, self.num_train_timesteps - 1))
        a = float(self.alphas_cumprod[t])
        return (np.sqrt(a) * self.x0 + np.sqrt(1.0 - a) * self.noise).astype(np.float32)

    def preview(self, t: int) -> np.ndarray:
        return self.previewer.project(self.latent(t))


class Engine:
    """Runs requests on the local device. Models load lazily on first use and stay loaded."""

    def __init__(self, device: str | None = None, dtype: str | None = None, memory: MemoryOptions | None = None, allow_pickle: bool = False) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.models = ModelManager(self.device, self.dtype, memory, allow_pickle=allow_pickle)
        self._lock = threading.Lock()

    # -- the entry point -----------------------------------------------------------
    def run(
        self, request: GenerateRequest, on_event: OnEvent | None = None, cancel: threading.Event | None = None, source: object = None
    ) -> Result:
        """Emit Progress / Preview / Notice, then Finished (returns the Result), Cancelled (raises JobCancelled) or Failed (re-raises).

        `source`: for an edit, the Result (or seeded GenerateRequest) that made the source image, so its DDIM
        trajectory is replayed instead of inverted and the reconstruction is exact."""
        emit = on_event or (lambda event: None)
        started = time.perf_counter()
        try:
            with self._lock:
                result = self._run(request, emit, cancel, source)
        except JobCancelled:
            emit(Cancelled())
            raise
        except UserError as exc:
            emit(Failed(exc.message, exc.hint))
            raise
        except torch.OutOfMemoryError as exc:
            free_memory(self.device)
            error = OutOfMemory(f"The {self.device.type.upper()} ran out of memory for this job.", memory_hint(self.models.memory, request))
            emit(Failed(error.message, error.hint))
            raise error from exc
        except Exception as exc:
            log.exception("engine failure")
            emit(Failed(f"The engine failed: {type(exc).__name__}: {exc}".splitlines()[0][:400], "See the log file for details; the next job will still run."))
            raise
        result.elapsed = time.perf_counter() - started
        emit(Finished(result))
        return result

    def _run(self, request: GenerateRequest, emit: OnEvent, cancel: threading.Event | None, source: object = None) -> Result:
        request.validate()
        loaded = self.models.get(request.model, emit=emit, cancel=cancel)
        lora_info = {}
        if request.loras or loaded.loras:
            from desktop_app.engine.lora import apply_loras

            lora_info = apply_loras(loaded, request.loras, allow_pickle=self.models.allow_pickle)
        image = getattr(request, "image", None)
        if image is not None and not (request.width and request.height):
            width, height = work_size(request, image)
            request = request.replace(width=width, height=height)
        request = request.with_defaults(**loaded.defaults)
        if request.seed is None:
            request = request.replace(seed=random.randint(0, MAX_SEED))
        request.validate()
        notices = prompt_notices(loaded.pipe, request)
        if image is not None and (image.width % 8 or image.height % 8):
            notices.append(f"The image is {image.width}x{image.height}, not a multiple of 8: worked at {request.width}x{request.height} and scaled back.")
        for message in notices:
            emit(Notice(message))
        seeds = [(request.seed + i) % (MAX_SEED + 1) for i in range(request.batch)]
        if isinstance(request, EditRequest):
            from desktop_app.engine.inversion import run_edit

            if loaded.family.startswith("sdxl"):
                raise ModelError(
                    "Editing by inversion works with SD 1.x / 2.x models and the built-in one, not yet with SDXL.",
                    "Use img2img or inpaint with this model, or pick an SD 1.x / 2.x model for Edit.",
                )

            images, trajectory, info = run_edit(loaded, request, seeds, emit, cancel, source=source)
        else:
            images, trajectory, info = run_pipeline(loaded, request, seeds, emit, cancel)
        info = {**info, **lora_info}
        return Result(
            request=request,
            images=images,
            seeds=seeds,
            model_id=loaded.model_id,
            model_hash=loaded.model_hash,
            notices=notices,
            trajectory=trajectory,
            info=info,
        )

    # -- services for the timestep slider and the model picker ---------------------
    def preload(self, model: str | None) -> LoadedModel:
        with self._lock:
            return self.models.get(model)

    def suggest_mask(self, image: Image.Image, source_prompt: str, target_prompt: str, model: str | None = None) -> Image.Image:
        """Where the two prompts disagree (DiffEdit): a mask the user can accept and correct with the brush."""
        from desktop_app.engine.inversion import suggest_mask

        with self._lock:
            loaded = self.models.get(model)
            return suggest_mask(loaded, image, source_prompt, target_prompt)

    def decode_latent(self, latent: np.ndarray | torch.Tensor, model: str | None = None) -> Image.Image:
        """Full VAE decode of one scaled latent (C, h, w)."""
        with self._lock:
            loaded = self.models.get(model) if model is not None else self.models.loaded
            pipe = loaded.pipe
            tensor = torch.as_tensor(np.asarray(latent) if not isinstance(latent, torch.Tensor) else latent)[None]
            with torch.inference_mode():
                pixels = vae_decode(loaded, tensor)
            return pipe.image_processor.postprocess(pixels, output_type="pil")[0]

    def decode_trajectory(self, trajectory: Trajectory, index: int, which: str = "x0", batch_index: int = 0) -> Image.Image:
        key = ("full", index, which, batch_index)
        if key not in trajectory._cache:
            trajectory._cache[key] = self.decode_latent(trajectory.latent(index, which, batch_index), trajectory.model or None)
        return trajectory._cache[key]

    def encode_image(self, image: Image.Image, model: str | None = None) -> torch.Tensor:
        """Scaled latent (1, C, h, w) of an image, at a size that is a multiple of 8."""
        with self._lock:
            loaded = self.models.get(model)
            return encode(loaded, image)

    def forward_process(self, image: Image.Image, model: str | None = None, seed: int = 0) -> ForwardProcess:
        latent = self.encode_image(image, model)[0].float().cpu().numpy()
        loaded = self.models.loaded
        rng = np.random.default_rng(seed)
        return ForwardProcess(
            x0=latent,
            noise=rng.standard_normal(latent.shape).astype(np.float32),
            alphas_cumprod=np.asarray(loaded.pipe.scheduler.alphas_cumprod, dtype=np.float64),
            previewer=loaded.previewer,
            model_id=loaded.model_id,
        )


def memory_hint(memory: MemoryOptions, request: GenerateRequest) -> str:
    """The one memory option that would help next, cheapest in speed first."""
    pixels = (request.width or 512) * (request.height or 512)
    if request.batch > 1:
        return "Make fewer images per job (batch 1)."
    if pixels > 1024 * 1024 and not memory.vae_tiling:
        return "Turn on VAE tiling: large images then decode in tiles."
    if not memory.attention_slicing:
        return "Turn on attention slicing: slower, but attention then needs far less memory."
    if not memory.vae_tiling:
        return "Turn on VAE tiling as well."
    if not memory.cpu_offload:
        return "Turn on model CPU offload: only the part that runs stays on the GPU."
    return "Make a smaller image: every memory option is already on."


def encode(loaded: LoadedModel, image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """VAE posterior mean, scaled: the deterministic latent inversion and previews need."""
    pipe = loaded.pipe
    width, height = size or (max(64, image.width - image.width % 8), max(64, image.height - image.height % 8))
    pixels = pipe.image_processor.preprocess(image, height=height, width=width).to(loaded.device)
    with torch.inference_mode():
        return vae_encode(loaded, pixels)
