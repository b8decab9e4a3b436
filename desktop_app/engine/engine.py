"""Engine.run(request, on_event, cancel) -> Result: the one entry point for every job; the local `Backend`."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from desktop_app.backend import PARTS_PREFIX, parts_of, run_reporting
from desktop_app.core import paths
from desktop_app.core.errors import JobCancelled, ModelError, OutOfMemory, UserError
from desktop_app.core.events import Event, Notice, Progress, Result
from desktop_app.core.imaging import (
    Placement,
    feather_mask,
    from_work,
    grow_mask,
    paste_back,
    plan_work_size,
    to_work,
)
from desktop_app.core.latents import FlowForwardProcess, ForwardProcess, Trajectory, flow_shift
from desktop_app.core.model_registry import list_rows
from desktop_app.core.modelinfo import BUILTIN, ModelInfo, is_flow, model_defaults
from desktop_app.core.outpaint import CanvasPlan, plan_only_masked, plan_outpaint
from desktop_app.core.requests import (
    EDIT_METHOD_NAMES,
    EDIT_METHODS,
    FLOW_EDIT_METHODS,
    JUST_RESIZE,
    MASKED_CONTENT,
    MAX_SEED,
    RESIZE_MODES,
    EditRequest,
    GenerateRequest,
    Img2ImgRequest,
    InpaintRequest,
)
from desktop_app.engine import embeddings, hub
from desktop_app.engine.blending import blend_back
from desktop_app.engine.device import MemoryOptions, flow_memory_hint, free_memory, pick_device, pick_dtype
from desktop_app.engine.encoding import decode_images, encode_image, prompt_report
from desktop_app.engine.encoding import encode_image as encode  # noqa: F401 - the name bench/inversion_eval.py imports
from desktop_app.engine.inversion import run_edit, suggest_mask
from desktop_app.engine.lora import apply_loras
from desktop_app.engine.masked_content import fill_masked, masked_content_notice
from desktop_app.engine.models import LoadedModel, ModelManager
from desktop_app.engine.prompts import merge_loras, request_lora_tags, resolve_loras
from desktop_app.engine.regions import check_regions, prepare_regions
from desktop_app.engine.sampling import run_pipeline

log = logging.getLogger(__name__)
OnEvent = Callable[[Event], None]

__all__ = ["Engine", "ForwardProcess", "JobCancelled"]


class Engine:
    """Runs requests on the local device. Models load lazily on first use and stay loaded."""

    def __init__(
        self,
        device: str | None = None,
        dtype: str | None = None,
        memory: MemoryOptions | None = None,
        allow_pickle: bool = False,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.models = ModelManager(self.device, self.dtype, memory, allow_pickle=allow_pickle, requested_dtype=dtype)
        self._lock = threading.Lock()
        self._cancel = threading.Event()  # `cancel()`: stops the running job, whatever per-job event it was given

    # -- the entry point -----------------------------------------------------------
    def run(
        self,
        request: GenerateRequest,
        on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None,
        source: Result | GenerateRequest | None = None,
    ) -> Result:
        """Emit Progress / Preview / Notice, then exactly one of Finished (returns the Result), Cancelled (raises
        JobCancelled) or Failed (re-raises the error).

        `source`: for an edit, the Result (or seeded GenerateRequest) that made the source image, so its DDIM
        trajectory is replayed instead of inverted and the reconstruction is exact."""
        emit = on_event or (lambda event: None)

        def job() -> Result:
            with self._lock:
                self._cancel.clear()
                return self._run(request, emit, _Either(cancel, self._cancel), source)

        def out_of_memory(exc: Exception) -> UserError | None:
            if not isinstance(exc, torch.OutOfMemoryError):
                return None
            free_memory(self.device)
            return OutOfMemory(
                f"The {self.device.type.upper()} ran out of memory for this job.",
                memory_hint(self.models.memory, request, self.models.loaded),
            )

        return run_reporting(job, emit, "engine", log, out_of_memory)

    def cancel(self) -> None:
        """Stop the running job within one step (it reports Cancelled); a no-op when none runs."""
        self._cancel.set()

    def _run(self, request: GenerateRequest, emit: OnEvent, cancel: _Either, source: object = None) -> Result:
        request.validate()
        check_regions(request)
        # an outpaint runs as an inpaint of the extended canvas (core/outpaint.py); its result is that canvas
        # and "only masked" runs on the masked area's box cut from the source at full resolution (core/outpaint.py)
        outpaint = None
        if isinstance(request, InpaintRequest) and request.outpaints:
            outpaint = plan_outpaint(request)
        elif isinstance(request, InpaintRequest) and request.only_masked:
            outpaint = plan_only_masked(request)
        if outpaint is not None:
            request = outpaint.request
        # <lora:NAME:W> tags: found in the LoRA folder before the model loads (a missing one fails fast)
        tags, tag_notices = request_lora_tags(request)
        loras = merge_loras(request.loras, resolve_loras(tags, paths.loras_dir())) if tags else list(request.loras)
        loaded = self.models.get(request.model, emit=emit, cancel=cancel)
        lora_info = {}
        if loras or loaded.loras:
            lora_info = apply_loras(loaded, loras, allow_pickle=self.models.allow_pickle)
        texts = [request.prompt, request.negative_prompt, getattr(request, "source_prompt", "")]
        embeddings.prepare(loaded, texts, allow_pickle=self.models.allow_pickle)
        image: Image.Image | None = getattr(request, "image", None)
        placement = None
        notices: list[str] = _inpaint_notices(request, outpaint)
        if image is not None:
            image = image.convert("RGB")
            native = (int(loaded.defaults.get("width") or 512), int(loaded.defaults.get("height") or 512))
            (width, height), scaled = plan_work_size(image.size, native, (request.width, request.height))
            request = request.replace(width=width, height=height)
            placement = Placement(getattr(request, "resize_mode", JUST_RESIZE), image.size, (width, height))
            if scaled:
                notices.append(_scaled_notice(image.size, native, (width, height), placement.mode, loaded))
            elif image.width % 8 or image.height % 8:
                notices.append(
                    f"The image is {image.width}x{image.height}, not a multiple of 8: worked at {width}x{height} and scaled back."
                )
        if isinstance(request, EditRequest):  # an edit's own recommended settings win over the generation ones
            edit = dict(loaded.defaults.get("edit") or {})
            if request.t0 is not None or request.strength is not None:  # the depth asked for is the depth
                edit = {k: v for k, v in edit.items() if k not in ("t0", "strength")}
            request = request.with_defaults(**{**loaded.defaults, **edit})
        request = request.with_defaults(**loaded.defaults)
        if isinstance(request, EditRequest) and request.method is None:
            request = request.replace(method=default_edit_method(loaded))
        if request.seed is None:
            request = request.replace(seed=random.randint(0, MAX_SEED))
        request.validate()
        prompt_notices, used_embeddings = prompt_report(loaded, request)
        if is_flow(loaded.family):  # SD-only options (clip skip, samplers, regions, ...) that a flow model leaves out
            from desktop_app.engine.flow_sampling import flow_option_notices

            prompt_notices += flow_option_notices(loaded, request)
        notices = tag_notices + prompt_notices + notices
        for message in notices:
            emit(Notice(message))
        assert request.seed is not None  # given a random one above
        seeds = [(request.seed + i) % (MAX_SEED + 1) for i in range(request.batch)]
        trajectory: Trajectory | None
        if isinstance(request, (Img2ImgRequest, InpaintRequest)) and request.strength == 0:
            # strength 0 keeps the image: nothing to denoise
            assert image is not None
            images, trajectory, info = [image.copy() for _ in seeds], None, {"Denoising strength": 0.0}
        else:
            work, region_notices = prepare_regions(_work_request(request, image, placement, outpaint))
            for message in region_notices:
                emit(Notice(message))
            notices += region_notices
            if isinstance(work, EditRequest):  # work is of request's class
                images, trajectory, info = run_any_edit(loaded, work, seeds, emit, cancel, source)
            elif is_flow(loaded.family):  # SD 3.x and Flux: their own pipelines, sigma time (engine/flow_sampling.py)
                from desktop_app.engine.flow_sampling import run_flow_pipeline

                images, trajectory, info = run_flow_pipeline(loaded, work, seeds, emit, cancel)
            else:
                images, trajectory, info = run_pipeline(loaded, work, seeds, emit, cancel)
            if image is not None and placement is not None:
                images = _back_to_source(images, request, image, placement)
        if outpaint is not None:
            images = outpaint.finish(images)
        if placement is not None and placement.mode != JUST_RESIZE:
            info = {**info, "Resize mode": RESIZE_MODES[placement.mode]}
        info = {**info, **_inpaint_info(request, outpaint), **lora_info}
        if loaded.family.startswith("flux") and loaded.family != "flux-schnell" and request.guidance is not None:
            info["Distilled CFG Scale"] = request.guidance  # not CFG: the infotext writes it as Forge does
        if used_embeddings:
            info["TI hashes"] = embeddings.ti_hashes(loaded, used_embeddings)
        return Result(
            request=request if outpaint is None else outpaint.result_request(request),
            images=images,
            seeds=seeds,
            model_id=loaded.model_id,
            model_hash=loaded.model_hash,
            notices=notices,
            trajectory=trajectory,
            info=info,
        )

    # -- services for the timestep slider, the mask and the model picker -------------
    def preload(self, model: str | None) -> ModelInfo:
        with self._lock:
            return model_info(self.models.get(model), model)

    def suggest_mask(
        self,
        image: Image.Image,
        source_prompt: str,
        target_prompt: str,
        model: str | None = None,
        how: str = "diffedit",
    ) -> Image.Image:
        """Where the two prompts disagree (DiffEdit, or the changed words' cross-attention with how="attention"):
        a mask the user can accept and correct with the brush."""
        with self._lock:
            loaded = self.models.get(model)
            if is_flow(loaded.family):
                raise ModelError(
                    f"Suggest mask reads a UNet's noise or cross-attention; {loaded.model_id} is a flow model.",
                    "Paint the mask with the brush, or suggest it with an SD model.",
                )
            return suggest_mask(loaded, image, source_prompt, target_prompt, how=how)

    def decode_latent(self, latent: np.ndarray, model: str | None = None) -> Image.Image:
        """Full VAE decode of one scaled latent (C, h, w)."""
        with self._lock:
            loaded = self.models.get(model) if model is not None else self._current()
            tensor = torch.from_numpy(np.ascontiguousarray(latent, dtype=np.float32))[None]  # (1, C, h, w)
            return decode_images(loaded, tensor)[0]

    def decode_trajectory(
        self, trajectory: Trajectory, index: int, which: str = "x0", batch_index: int = 0
    ) -> Image.Image:
        """Full decode of one step of a run's trajectory, with the VAE of the model that made it."""
        return self.decode_latent(trajectory.latent(index, which, batch_index), trajectory.model or None)

    def encode_image(self, image: Image.Image, model: str | None = None) -> np.ndarray:
        """Scaled latent (C, h, w) float32 of an image, at its size rounded down to a multiple of 8."""
        with self._lock:
            loaded = self.models.get(model)
            return encode_image(loaded, image)[0].float().cpu().numpy()

    def forward_process(self, image: Image.Image, model: str | None = None) -> ForwardProcess | FlowForwardProcess:
        """The source's path to noise in closed form, for the slider before a run (numpy; no network call after
        this): q(x_t | x_0) on SD models, (1 - sigma) x0 + sigma noise on flow models (SD 3.x, Flux)."""
        with self._lock:
            loaded = self.models.get(model)
            latent = encode_image(loaded, image)[0].float().cpu().numpy()  # (C, h, w)
        rng = np.random.default_rng(0)  # one fixed noise: dragging the slider shows one consistent path
        noise = rng.standard_normal(latent.shape).astype(np.float32)
        if is_flow(loaded.family):
            config = loaded.scheduler_config
            return FlowForwardProcess(
                x0=latent,
                noise=noise,
                previewer=loaded.previewer,
                model_id=loaded.model_id,
                shift=flow_shift(config, (latent.shape[1], latent.shape[2])),
                num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            )
        return ForwardProcess(
            x0=latent,
            noise=noise,
            alphas_cumprod=np.asarray(loaded.pipe.scheduler.alphas_cumprod, dtype=np.float64),
            previewer=loaded.previewer,
            model_id=loaded.model_id,
        )

    def list_models(self) -> list[dict]:
        """The built-in model, then the ones used before, then the curated hub list."""
        builtin = {
            "id": BUILTIN,
            "name": model_defaults(BUILTIN).get("name", "Built-in"),
            "kind": "builtin",
            "family": "sd1",
            "missing": False,
        }
        return [builtin] + list_rows()

    def download_model(self, repo: str, on_progress: Callable[[Progress], None], cancel: threading.Event) -> Path:
        """Fetch a hub model (owner/name[@revision][:subfolder]) into the hub cache without taking the job lock,
        so it runs beside jobs. Progress has phase 'download' (step/total in bytes); cancel raises JobCancelled.

        A parts id ("parts:flux", "parts:sd3", backend.parts_of) fetches only the text encoders, tokenizers and VAE
        of that family's base repo (flow_files.download_parts), where a transformer file's load finds them."""
        parts = parts_of(repo.strip())
        if parts is None and repo.strip().startswith(PARTS_PREFIX):
            raise ModelError(f"{repo!r} names no family's parts.", "Use parts:flux (FLUX.1) or parts:sd3 (SD 3.x).")
        match = hub.HUB_ID.fullmatch(repo.strip())
        if parts is None and match is None:
            raise ModelError(f"{repo!r} is not a hub id.", "Use owner/name, optionally @revision and :subfolder.")
        try:
            if parts is not None:
                from desktop_app.engine import flow_files

                return flow_files.download_parts(
                    parts.family, progress=hub.progress_to_events(on_progress), cancel=cancel
                )
            assert match is not None
            return hub.download_model(
                match["repo"],
                revision=match["revision"],
                subfolder=match["subfolder"],
                progress=hub.progress_to_events(on_progress),
                cancel=cancel,
                prefer_fp16=self.device.type != "cpu",
            )
        except hub.DownloadCancelled as exc:
            raise JobCancelled() from exc

    def _current(self) -> LoadedModel:
        if self.models.loaded is None:
            return self.models.get(None)
        return self.models.loaded


class _Either:
    """Set when either event is: the job's own cancel and the engine-wide `Engine.cancel()`."""

    def __init__(self, job: threading.Event | None, engine: threading.Event) -> None:
        self.job, self.engine = job, engine

    def is_set(self) -> bool:
        return self.engine.is_set() or (self.job is not None and self.job.is_set())


def run_any_edit(loaded: LoadedModel, work: EditRequest, seeds: list[int], emit: OnEvent, cancel, source=None):
    """The edit by its method: an inversion on SD (engine/inversion.py), LEDITS++ (engine/ledits.py), a flow
    inversion on SD 3.x / Flux (engine/flow_inversion.py) or a Kontext instruction edit (engine/flow_sampling.py)."""
    method = work.method or default_edit_method(loaded)
    check_edit_method(loaded, method)
    if method == "ledits":
        from desktop_app.engine.ledits import run_ledits

        return run_ledits(loaded, work, seeds, emit, cancel)
    if method in FLOW_EDIT_METHODS:  # Prompt-to-Prompt reads a UNet's cross-attention maps: SD models only
        asked = [
            name
            for name, on in (
                ("Prompt-to-Prompt", work.attention_control == "p2p"),
                ("re-weighting", bool(work.reweight.strip())),
                ("local blend", bool(work.local_blend)),
            )
            if on
        ]
        if asked:
            emit(
                Notice(
                    f"{', '.join(asked).capitalize()} is not applied on {loaded.model_id}: attention control works on "
                    f"SD 1.x / 2.x / XL edits; {EDIT_METHOD_NAMES.get(method, method)} keeps the structure its own way."
                )
            )
    if method == "kontext":
        from desktop_app.engine.flow_sampling import run_kontext

        return run_kontext(loaded, work, seeds, emit, cancel)
    if method in FLOW_EDIT_METHODS:
        from desktop_app.engine.flow_inversion import run_flow_edit

        return run_flow_edit(loaded, work, seeds, emit, cancel, source=source)
    return run_edit(loaded, work, seeds, emit, cancel, source=source)


def check_edit_method(loaded: LoadedModel, method: str) -> None:
    """An edit method of the model's kind: SD's inversions on SD models, the flow ones on SD 3.x / Flux."""
    label = EDIT_METHOD_NAMES.get(method, method)
    if is_flow(loaded.family):
        if method == "kontext" and "kontext" not in loaded.family:
            raise ModelError(
                f"A Kontext edit needs a FLUX.1 Kontext model; {loaded.model_id} is not one.",
                "Load FLUX.1 Kontext (black-forest-labs/FLUX.1-Kontext-dev), or choose FireFlow, RF-Solver or "
                "RF-Inversion for this model.",
            )
        if method not in FLOW_EDIT_METHODS:
            raise ModelError(
                f"{label} edits Stable Diffusion 1.x / 2.x / XL models; {loaded.model_id} is a flow model.",
                "Choose FireFlow, RF-Solver or RF-Inversion (or Kontext on a Kontext model).",
            )
    elif method in FLOW_EDIT_METHODS:
        raise ModelError(
            f"{label} edits flow models (SD 3.5, Flux); {loaded.model_id} is a Stable Diffusion model.",
            "Choose direct inversion, DDIM, negative-prompt inversion or LEDITS++ for this model.",
        )


def default_edit_method(loaded: LoadedModel) -> str:
    """The model's recommended edit method (its settings' "method"), else its family's."""
    method = (loaded.defaults.get("edit") or {}).get("method")
    if isinstance(method, str) and method in EDIT_METHODS:
        return method
    if loaded.family.startswith(("flux", "sd3")):
        return "kontext" if "kontext" in loaded.family else "fireflow"
    return "direct"


def model_info(loaded: LoadedModel, source: str | None) -> ModelInfo:
    return ModelInfo(
        source=source or BUILTIN,
        model_id=loaded.model_id,
        family=loaded.family,
        model_hash=loaded.model_hash,
        defaults=dict(loaded.defaults),
    )


def _scaled_notice(
    size: tuple[int, int], native: tuple[int, int], work: tuple[int, int], mode: str, loaded: LoadedModel
) -> str:
    who = "the built-in model" if loaded.source.kind == "builtin" else loaded.model_id
    how = "" if mode == JUST_RESIZE else f" ({RESIZE_MODES[mode]})"
    return (
        f"The image is {size[0]}x{size[1]}; {who} works at {native[0]}x{native[1]}: "
        f"worked at {work[0]}x{work[1]}{how} and scaled back to {size[0]}x{size[1]}."
    )


def _model_mask(request: GenerateRequest) -> Image.Image | None:
    """The region the model may repaint at the source's size: the painted mask, grown by mask_grow."""
    mask = getattr(request, "mask", None)
    if mask is None:
        return None
    return grow_mask(mask.convert("L"), int(getattr(request, "mask_grow", 0) or 0))


def _work_request(
    request: GenerateRequest,
    image: Image.Image | None,
    placement: Placement | None,
    outpaint: CanvasPlan | None = None,
) -> GenerateRequest:
    """The request as the model runs it: the source (and the mask) mapped onto the work size.

    An outpaint's model repaints its whole overlap band (`outpaint.model_mask`, hard) while the paste-back ramps
    across it; with soft inpainting the ramp's grey levels are per-pixel strengths instead. Masked content "fill"
    prefills the masked pixels with their surroundings here, before the pipeline encodes the image."""
    if image is None or placement is None:
        return request
    changes: dict = {"image": to_work(image, placement)}
    mask = _model_mask(request)
    if outpaint is not None and mask is not None and not getattr(request, "soft_mask", False):
        mask = outpaint.model_mask
    if mask is not None:
        work_mask = to_work(mask, placement, Image.Resampling.BILINEAR)
        # any painted pixel is repainted; the paste-back keeps the unpainted ones (a soft mask keeps its greys:
        # they are per-pixel strengths)
        if work_mask.size != mask.size and not getattr(request, "soft_mask", False):
            work_mask = work_mask.point(lambda v: 255 if v else 0)
        changes["mask"] = work_mask
        if getattr(request, "masked_content", "original") == "fill":
            changes["image"] = fill_masked(changes["image"], work_mask)
    if request.regions:  # region masks follow the source onto the work canvas, soft edges kept
        changes["regions"] = tuple(
            dataclasses.replace(r, mask=to_work(r.mask.convert("L"), placement, Image.Resampling.BILINEAR))
            for r in request.regions
        )
    return request.replace(**changes)


def _inpaint_notices(request: GenerateRequest, outpaint: CanvasPlan | None) -> list[str]:
    """What an outpaint rounded, and masked content that will not show as asked."""
    notices = list(outpaint.notices) if outpaint is not None else []
    note = masked_content_notice(request) if isinstance(request, InpaintRequest) else None
    return notices + ([note] if note else [])


def _inpaint_info(request: GenerateRequest, outpaint: CanvasPlan | None) -> dict:
    """Infotext extras: "Outpaint: left 64, top 32, edge" and A1111's "Masked content" (when not original)."""
    info: dict = dict(outpaint.info) if outpaint is not None else {}
    mode = getattr(request, "masked_content", "original")
    if isinstance(request, InpaintRequest) and mode != "original":
        info["Masked content"] = MASKED_CONTENT[mode]
    return info


def _back_to_source(
    images: list[Image.Image], request: GenerateRequest, source: Image.Image, placement: Placement
) -> list[Image.Image]:
    """Results at the source's size; with a mask, the source pasted back through the inward feather, so every
    pixel outside the (grown) painted mask is the source's, bit for bit."""
    out = [from_work(im.convert("RGB"), source, placement) for im in images]
    mask = _model_mask(request)
    if mask is not None:
        feathered = feather_mask(mask, int(getattr(request, "mask_blur", 0) or 0))
        band, match = int(getattr(request, "blend_band", 0) or 0), bool(getattr(request, "color_match", False))
        if band or match:  # seamless edges (engine/blending.py): still the source's, bit for bit, past the band
            out = [blend_back(im, source, mask, feathered, band, match) for im in out]
        else:
            out = [paste_back(im, source, feathered) for im in out]
    return out


def memory_hint(memory: MemoryOptions, request: GenerateRequest, loaded: LoadedModel | None = None) -> str:
    """The one memory option that would help next, cheapest in speed first (a flow model's transformer is what does
    not fit: device.flow_memory_hint)."""
    if loaded is not None and is_flow(loaded.family):
        location = loaded.source.location.lower()
        quantized = location.endswith(".gguf") or "fp8" in location
        return flow_memory_hint(
            memory, width=request.width or 1024, height=request.height or 1024, batch=request.batch, quantized=quantized
        )
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
