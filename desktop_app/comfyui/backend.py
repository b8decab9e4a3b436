"""ComfyBackend: the `Backend` that runs jobs on ComfyUI servers (one, or a pool) and keeps everything else local.

The request becomes a graph of core nodes (graphs.py); the image and mask are uploaded, progress and per-step
previews come over the job's own WebSocket, results are fetched over HTTP and mapped back to the source's size
(inpainting pastes the source back through the same inward feather as the local engine, so every unpainted
pixel is the source's). Model ids are `comfyui:<checkpoint name as the server lists it>`.

What needs this app's own engine (the slider's trajectory, forward process, inversion edits, suggested masks) is
refused with a reason: a remote job has no latents here.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops

from desktop_app.backend import run_reporting
from desktop_app.comfyui import PREFIX, is_remote
from desktop_app.comfyui.client import ComfyClient, ServerError, ServerGone, decode_image
from desktop_app.comfyui.graphs import GraphJob, build_graph, sampler_names, samplers_in
from desktop_app.comfyui.pool import ComfyPool, ServerState
from desktop_app.core.errors import InvalidRequest, JobCancelled, ModelError, UserError
from desktop_app.core.events import Event, Notice, Preview, Progress, Result
from desktop_app.core.imaging import feather_mask, grow_mask, paste_back
from desktop_app.core.latents import FlowForwardProcess, ForwardProcess, Trajectory
from desktop_app.core.modelinfo import GENERIC_DEFAULTS, ModelInfo
from desktop_app.core.outpaint import plan_only_masked, plan_outpaint
from desktop_app.core.requests import (
    JUST_RESIZE,
    MASKED_CONTENT,
    MAX_SEED,
    RESIZE_MODES,
    EditRequest,
    GenerateRequest,
    Img2ImgRequest,
    InpaintRequest,
)

log = logging.getLogger(__name__)

JOB_TIMEOUT = 30 * 60.0  # a job that has not finished after this long is given up (a server that never says done)
IDLE_TIMEOUT = 20.0  # no WebSocket news for this long: ask the queue whether the job is still there
CANCEL_WAIT = 15.0
PREVIEW_PIXELS = 1024 * 1024


def checkpoint_of(model: str) -> str:
    name = model[len(PREFIX) :] if model.startswith(PREFIX) else model
    if not name.strip():
        raise ModelError(
            "A ComfyUI model id needs a checkpoint name.", "Use comfyui:<checkpoint>, e.g. comfyui:v1-5.safetensors."
        )
    return name


def engine_only(what: str) -> UserError:
    return UserError(
        f"{what} needs this app's own engine; the model runs on a ComfyUI server.",
        "Pick a local model for this, or run the job again and use the result as a new source.",
    )


class _Requeue(Exception):
    """The server went away before the job started there: another server may take it."""

    def __init__(self, server: ServerState, why: str) -> None:
        super().__init__(why)
        self.server = server
        self.why = why


class ComfyBackend:
    """Runs requests for `comfyui:` models on a pool of ComfyUI servers. Thread-safe: jobs may run in parallel
    (one per server is what makes a pool worth it)."""

    def __init__(
        self,
        pool: ComfyPool | list[ComfyClient],
        job_timeout: float = JOB_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.pool = pool if isinstance(pool, ComfyPool) else ComfyPool(pool)
        self.job_timeout = job_timeout
        self.idle_timeout = idle_timeout
        self._cancel = threading.Event()
        self.placements: list[tuple[str, str]] = []  # (prompt id, server url) of every job sent, for tests and logs

    # -- Backend -------------------------------------------------------------------
    def run(
        self,
        request: GenerateRequest,
        on_event: Callable[[Event], None],
        cancel: threading.Event,
        source: Result | GenerateRequest | None = None,
    ) -> Result:
        emit = on_event or (lambda event: None)
        cancel = cancel or threading.Event()
        self._cancel.clear()
        return run_reporting(lambda: self._run(request, emit, cancel), emit, "ComfyUI job", log)

    def cancel(self) -> None:
        self._cancel.set()

    def preload(self, model: str | None) -> ModelInfo:
        name = checkpoint_of(model or "")
        found = self.pool.checkpoints()
        if name not in found:
            if not any(s.up for s in self.pool.servers):
                self.pool.acquire(name)  # raises the "no server answers" error
            raise ModelError(
                f"No ComfyUI server has the checkpoint {name!r}.",
                "The servers have: " + (", ".join(sorted(found)[:8]) or "no checkpoints"),
            )
        return ModelInfo(
            source=PREFIX + name, model_id=PREFIX + name, family="", model_hash="", defaults=remote_defaults(name)
        )

    def suggest_mask(
        self,
        image: Image.Image,
        source_prompt: str,
        target_prompt: str,
        model: str | None = None,
        how: str = "diffedit",
    ) -> Image.Image:
        raise engine_only("Suggesting a mask")

    def decode_trajectory(
        self, trajectory: Trajectory, index: int, which: str = "x0", batch_index: int = 0
    ) -> Image.Image:
        raise engine_only("Scrubbing through the steps")

    def forward_process(self, image: Image.Image, model: str | None = None) -> ForwardProcess | FlowForwardProcess:
        raise engine_only("The slider's preview of the noised source")

    def decode_latent(self, latent: np.ndarray, model: str | None = None) -> Image.Image:
        raise engine_only("Decoding a latent")

    def list_models(self) -> list[dict]:
        rows = []
        for name, servers in sorted(self.pool.checkpoints().items()):
            rows.append(
                {
                    "id": PREFIX + name,
                    "name": f"{Path(name).stem} (ComfyUI)",
                    "kind": "comfyui",
                    "family": "",
                    "servers": servers,
                }
            )
        return rows

    def download_model(self, repo: str, on_progress: Callable[[Progress], None], cancel: threading.Event) -> Path:
        raise UserError(
            "Models for a ComfyUI server are downloaded on the server.",
            "Put the checkpoint in the server's models/checkpoints folder; it then shows in the model list.",
        )

    # -- one job ----------------------------------------------------------------------
    def _run(self, request: GenerateRequest, emit: Callable[[Event], None], cancel: threading.Event) -> Result:
        request.validate()
        if isinstance(request, EditRequest):
            raise engine_only("Editing by inversion")
        if request.regions:
            raise UserError(
                "Regional prompts run on this app's own engine, not yet on a ComfyUI server.",
                "Clear the regions, or pick a local model.",
            )
        # an outpaint runs as an inpaint of the extended canvas, planned here exactly as the local engine plans it
        # and "only masked" on the mask's box cut from the source at full resolution
        outpaint = None
        if isinstance(request, InpaintRequest) and request.outpaints:
            outpaint = plan_outpaint(request)
        elif isinstance(request, InpaintRequest) and request.only_masked:
            outpaint = plan_only_masked(request)
        paste_mask: Image.Image | None = None
        if outpaint is not None:
            paste_mask = outpaint.request.mask  # ramps across the overlap band: the original beyond it stays
            request = outpaint.request.replace(mask=outpaint.model_mask)  # the model repaints new area + band
        if isinstance(request, InpaintRequest):
            _refuse_engine_only_inpaint(request)
        ckpt = checkpoint_of(request.model)
        source: Image.Image | None = getattr(request, "image", None)
        notices: list[str] = list(outpaint.notices) if outpaint is not None else []
        if source is not None:
            source = source.convert("RGB")
            size = work_size(source.size)
            if size != source.size:
                if getattr(request, "resize_mode", JUST_RESIZE) != JUST_RESIZE:
                    mode = RESIZE_MODES[request.resize_mode]  # type: ignore[attr-defined]
                    raise UserError(
                        f"'{mode}' runs on this app's own engine; on a ComfyUI server the image is worked at "
                        f"{size[0]}x{size[1]} by 'Just resize'.",
                        "Choose 'Just resize', or pick a local model.",
                    )
                notices.append(
                    f"The image is {source.width}x{source.height}: worked at {size[0]}x{size[1]} and scaled back."
                )
            request = request.replace(width=size[0], height=size[1])
        request = request.with_defaults(**remote_defaults(ckpt))
        if request.seed is None:
            request = request.replace(seed=random.randint(0, MAX_SEED))
        request.validate()
        for message in notices:
            emit(Notice(message))
        assert request.seed is not None and request.width and request.height and request.steps
        seeds = [(request.seed + i) % (MAX_SEED + 1) for i in range(request.batch)]
        tried: list[ServerState] = []
        while True:
            if cancel.is_set() or self._cancel.is_set():
                raise JobCancelled()
            server = self.pool.acquire(ckpt, exclude=tried)
            try:
                images = self._run_on(server, request, ckpt, seeds, source, emit, cancel)
            except _Requeue as moved:
                self.pool.release(server, done=False)
                self.pool.mark_down(server, moved.why)
                tried.append(server)
                emit(Notice(f"{server.name} went away before the job started: trying another server."))
                continue
            except ServerGone as exc:
                self.pool.release(server, done=False)
                self.pool.mark_down(server, exc.message)
                raise
            except BaseException:
                self.pool.release(server, done=False)
                raise
            self.pool.release(server)
            break
        if source is not None:
            images = [
                im if im.size == source.size else im.resize(source.size, Image.Resampling.LANCZOS) for im in images
            ]
        info: dict[str, Any] = {}
        if isinstance(request, (Img2ImgRequest, InpaintRequest)):
            info["Denoising strength"] = request.strength
        if isinstance(request, InpaintRequest):
            assert source is not None and request.mask is not None
            info["Mask blur"] = request.mask_blur
            if request.mask_grow:
                info["Mask grow"] = request.mask_grow
            mask = paste_mask if paste_mask is not None else grow_mask(request.mask, request.mask_grow)
            images = [paste_back(im, source, feather_mask(mask, request.mask_blur)) for im in images]
        if outpaint is not None:
            images = outpaint.finish(images)  # at the extended canvas's size
            info.update(outpaint.info)
            request = outpaint.result_request(request)  # as asked (the original image, extend): it replays
        if request.loras:
            info["Lora hashes"] = ", ".join(f"{Path(p).stem}: remote" for p, _ in request.loras)
        return Result(
            request=request,
            images=images,
            seeds=seeds,
            model_id=PREFIX + ckpt,
            model_hash="",
            notices=notices,
            trajectory=None,
            info=info,
        )

    def _run_on(
        self,
        server: ServerState,
        request: GenerateRequest,
        ckpt: str,
        seeds: list[int],
        source: Image.Image | None,
        emit: Callable[[Event], None],
        cancel: threading.Event,
    ) -> list[Image.Image]:
        client = server.client
        assert request.width and request.height and request.steps
        size = (request.width, request.height)
        sampler, scheduler = sampler_names(request.scheduler, request.schedule)
        loras = tuple((self._lora_name(server, path), weight) for path, weight in request.loras)
        uploaded = None
        denoise = 1.0
        inpaint = isinstance(request, InpaintRequest)
        try:
            if source is not None:
                work = source if source.size == size else source.resize(size, Image.Resampling.LANCZOS)
                if isinstance(request, InpaintRequest):
                    assert request.mask is not None
                    mask = grow_mask(request.mask, request.mask_grow)
                    if mask.size != size:  # any painted pixel is repainted; the paste-back keeps the others
                        mask = mask.resize(size, Image.Resampling.BILINEAR).point(lambda v: 255 if v else 0)
                    work = work.convert("RGBA")
                    work.putalpha(ImageChops.invert(mask))  # transparent = masked: LoadImage's MASK is 1 - alpha
                uploaded = client.upload_image(work, f"diffusion-desk-{uuid.uuid4().hex}.png")
                denoise = float(getattr(request, "strength", 1.0))
            graph, outputs = build_graph(
                GraphJob(
                    ckpt=ckpt,
                    prompt=request.prompt,
                    negative=request.negative_prompt,
                    steps=request.steps,
                    cfg=float(request.guidance if request.guidance is not None else 7.0),
                    sampler=sampler,
                    scheduler=scheduler,
                    width=size[0],
                    height=size[1],
                    seeds=tuple(seeds),
                    denoise=denoise,
                    clip_skip=request.clip_skip,
                    loras=loras,
                    image=uploaded,
                    inpaint=inpaint,
                )
            )
            client_id = uuid.uuid4().hex
            ws = client.open_websocket(client_id)
        except ServerGone as exc:
            raise _Requeue(server, exc.message) from None
        try:
            prompt_id = str(uuid.uuid4())
            try:
                client.queue_prompt(graph, client_id, prompt_id)
            except ServerGone as exc:
                raise _Requeue(server, exc.message) from None
            self.placements.append((prompt_id, server.url))
            log.info("job %s queued on %s", prompt_id, server.name)
            try:
                self._watch(server, ws, prompt_id, graph, request, emit, cancel)
            except _Requeue:
                self._drop_on_server(client, prompt_id)  # it may still be waiting there: run once, elsewhere
                raise
        finally:
            try:
                ws.close(timeout=1.0)
            except Exception:  # noqa: BLE001 - a dead socket closes as it can
                pass
        return self._fetch(server, prompt_id, outputs, size)

    def _lora_name(self, server: ServerState, path: str) -> str:
        names = self.pool.loras(server)
        wanted = path[len(PREFIX) :] if path.startswith(PREFIX) else path
        for name in names:
            if name == wanted or Path(name).name == Path(wanted).name:
                return name
        raise ModelError(
            f"The ComfyUI server {server.name} has no LoRA {Path(wanted).name!r}.",
            "Put it in the server's models/loras folder, or remove it from the job."
            + (f" It has: {', '.join(names[:6])}" if names else ""),
        )

    def _watch(
        self,
        server: ServerState,
        ws: Any,
        prompt_id: str,
        graph: dict[str, Any],
        request: GenerateRequest,
        emit: Callable[[Event], None],
        cancel: threading.Event,
    ) -> None:
        """Follow the job on the WebSocket until ComfyUI says it is done; progress and previews on the way."""
        import websocket

        client = server.client
        chains = samplers_in(graph)
        steps = int(request.steps or 1)
        total = steps * max(1, len(chains))
        started = False
        step = 0
        done_per_chain: dict[str, int] = {}
        began = time.monotonic()
        last_news = began
        first_step_at: float | None = None
        ws.settimeout(0.25)
        while True:
            now = time.monotonic()
            if cancel.is_set() or self._cancel.is_set():
                self._cancel_on_server(client, ws, prompt_id)
                raise JobCancelled()
            if now - began > self.job_timeout:
                self._drop_on_server(client, prompt_id)
                raise ServerError(
                    f"The ComfyUI server {server.name} did not finish the job within {self.job_timeout:.0f} s.",
                    "It may be stuck: check the server; nothing here was lost.",
                )
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                if now - last_news > self.idle_timeout:
                    if self._finished_quietly(server, prompt_id):
                        return
                    last_news = now
                continue
            except (websocket.WebSocketException, OSError) as exc:
                if not started:
                    raise _Requeue(server, f"its WebSocket closed: {exc}") from None
                raise ServerGone(
                    f"The ComfyUI server {server.name} went away during the job (step {step}/{total}).",
                    "Run the job again; it goes to another server, or to this one when it is back.",
                ) from None
            if opcode == 0x8:  # close frame
                if not started:
                    raise _Requeue(server, "its WebSocket closed")
                raise ServerGone(
                    f"The ComfyUI server {server.name} went away during the job (step {step}/{total}).",
                    "Run the job again; it goes to another server, or to this one when it is back.",
                )
            last_news = now
            if opcode == 0x2:
                if request.previews and len(data) > 8 and int.from_bytes(data[:4], "big") == 1:
                    try:
                        image = decode_image(bytes(data[8:]), server.name, PREVIEW_PIXELS)
                    except ServerError:
                        continue  # a bad preview is not worth failing the job for
                    emit(Preview(step, image))
                continue
            if opcode != 0x1:
                continue
            message = _message(data, server.name)
            kind, body = message.get("type"), message.get("data")
            if not isinstance(body, dict) or body.get("prompt_id") not in (prompt_id, None):
                continue
            if body.get("prompt_id") is None:
                continue  # status broadcasts: nothing about this job
            if kind == "execution_start":
                started = True
            elif kind == "progress":
                started = True
                # ComfyUI runs the chains in an order of its own: the job's step is the sum over them
                done_per_chain[str(body.get("node"))] = min(steps, _int(body.get("value")))
                step = min(total, sum(done_per_chain.values()))
                first_step_at = first_step_at or now
                rate = (step - 0) / max(1e-6, now - first_step_at) if step > 1 else 0.0
                eta = (total - step) / rate if rate else 0.0
                emit(Progress(step=step, total=total, timestep=0, its_per_sec=rate, eta_seconds=eta))
            elif kind == "execution_error":
                raise ServerError(
                    f"ComfyUI failed in {body.get('node_type') or 'a node'} on {server.name}: "
                    f"{str(body.get('exception_message') or 'no message').strip()[:300]}",
                    "See the server's own log for details.",
                )
            elif kind == "execution_interrupted":
                if cancel.is_set() or self._cancel.is_set():
                    raise JobCancelled()
                raise ServerError(
                    f"The job was interrupted on {server.name} (by someone else using that server).",
                    "Run it again.",
                )
            elif kind == "executing" and body.get("node") is None:
                return  # sent after the history is written (execution_success comes before it)
            elif kind == "execution_success":
                last_news = now - self.idle_timeout + 2.0  # should `executing` not follow, ask the queue in 2 s

    def _finished_quietly(self, server: ServerState, prompt_id: str) -> bool:
        """No news for a while: True when the job is done (its messages were missed), False when it is still queued
        or running; ServerError when the server no longer knows it."""
        try:
            running, pending = server.client.queue()
            if prompt_id in running or prompt_id in pending:
                return False
            entry = server.client.history(prompt_id)
        except ServerGone as exc:
            raise ServerGone(
                f"The ComfyUI server {server.name} stopped answering during the job.",
                "Run the job again; it goes to another server, or to this one when it is back.",
            ) from exc
        status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
        if entry.get("outputs") and (status or {}).get("completed", True):
            return True
        raise ServerError(
            f"The ComfyUI server {server.name} lost the job (it is neither queued nor in its history).",
            "Run it again.",
        )

    def _cancel_on_server(self, client: ComfyClient, ws: Any, prompt_id: str) -> None:
        """Take the job off the queue, or interrupt it when it runs; wait (a little) for the server to say so."""
        import websocket

        try:
            client.delete_from_queue(prompt_id)
            running, pending = client.queue()
            if prompt_id not in running:  # it was waiting (now deleted) or is done already
                return
            client.interrupt(prompt_id)
        except ServerError:
            return  # it is gone anyway
        deadline = time.monotonic() + CANCEL_WAIT
        while time.monotonic() < deadline:
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                return
            if opcode != 0x1:
                continue
            try:
                message = json.loads(data)
            except ValueError:
                continue
            body = message.get("data") if isinstance(message, dict) else None
            if isinstance(body, dict) and body.get("prompt_id") == prompt_id:
                kind = message.get("type")
                if kind in ("execution_interrupted", "execution_success", "execution_error"):
                    return
                if kind == "executing" and body.get("node") is None:
                    return

    def _drop_on_server(self, client: ComfyClient, prompt_id: str) -> None:
        try:
            client.delete_from_queue(prompt_id)
            client.interrupt(prompt_id)
        except ServerError:
            pass

    def _fetch(
        self, server: ServerState, prompt_id: str, outputs: list[str], size: tuple[int, int]
    ) -> list[Image.Image]:
        entry = server.client.history(prompt_id)
        for _ in range(20):  # a server that said done a moment before it wrote the history
            if entry.get("outputs"):
                break
            time.sleep(0.25)
            entry = server.client.history(prompt_id)
        got = entry.get("outputs")
        if not isinstance(got, dict):
            raise ServerError(f"The ComfyUI server {server.name} has no results for the job.", "Run it again.")
        images = []
        for node in outputs:
            items = (got.get(node) or {}).get("images") if isinstance(got.get(node), dict) else None
            if not isinstance(items, list) or not items or not isinstance(items[0], dict):
                raise ServerError(f"The ComfyUI server {server.name} sent no image for the job.", "Run it again.")
            item = items[0]
            image = server.client.view(
                str(item.get("filename", "")), str(item.get("subfolder", "")), str(item.get("type", "output"))
            )
            if image.size != size:
                raise ServerError(
                    f"The ComfyUI server {server.name} sent a {image.width}x{image.height} image for a "
                    f"{size[0]}x{size[1]} job.",
                    "Check the server: it is not sending this job's result.",
                )
            images.append(image)
        return images


# -- helpers ---------------------------------------------------------------------------
def remote_defaults(ckpt: str) -> dict[str, Any]:
    """What a remote checkpoint runs with when the request leaves it open (the server does not say its family)."""
    defaults = dict(GENERIC_DEFAULTS)
    if "xl" in ckpt.lower():
        defaults.update(width=1024, height=1024)
    return defaults


def work_size(size: tuple[int, int]) -> tuple[int, int]:
    """The source's size as a job can run it: multiples of 8, 64 to 2048 pixels a side."""

    def side(v: int) -> int:
        return max(64, min(2048, v - v % 8))

    return side(size[0]), side(size[1])


def _refuse_engine_only_inpaint(request: InpaintRequest) -> None:
    """Soft inpainting works per step inside the sampler, and masked content other than the original, the blend
    band and colour match are this app's engine's: a ComfyUI server with core nodes only cannot do them."""
    asked = [
        name
        for name, on in (
            ("soft inpainting", request.soft_mask),
            (f"masked content '{MASKED_CONTENT[request.masked_content]}'", request.masked_content != "original"),
            ("the blend band", request.blend_band > 0),
            ("colour match", request.color_match),
        )
        if on
    ]
    if asked:
        raise UserError(
            "These need this app's own engine, not a ComfyUI server: " + ", ".join(asked) + ".",
            "Turn them off for this job, or pick a local model.",
        )


def _message(data: Any, server: str) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ServerError(
            f"The ComfyUI server {server} sent a WebSocket message that is not JSON.", "Check that it is ComfyUI."
        ) from None
    if not isinstance(message, dict):
        raise ServerError(f"The ComfyUI server {server} sent a WebSocket message of the wrong shape.", "Check it.")
    return message


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


__all__ = [
    "PREFIX",
    "ComfyBackend",
    "checkpoint_of",
    "engine_only",
    "feather_mask",
    "grow_mask",
    "InvalidRequest",
    "is_remote",
    "remote_defaults",
    "work_size",
]
