"""Jobs: submit, queue, progress, cancel; the one place the window's job futures live.

A request is built from the document and the prompt panel's parameters (`build_request`), handed to the
worker, and the worker's signals come back here: progress becomes a status text, previews are coalesced
into the document's view, and a finished job's result is put into the document and announced with
`resultReady` (the history saver and the timeline listen to that, not to the worker).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from desktop_app.core.errors import JobCancelled, UserError
from desktop_app.core.events import Progress, Result
from desktop_app.core.model_registry import format_size
from desktop_app.core.modelinfo import BUILTIN
from desktop_app.core.requests import (
    DEFAULT_RESIZE_MODE,
    EditRequest,
    GenerateRequest,
    Img2ImgRequest,
    InpaintRequest,
    RegionPrompt,
    parse_edit_concepts,
)
from desktop_app.model.document import Document
from desktop_app.model.models import display_name

IMAGE_MODES = ("img2img", "inpaint", "edit")
MODE_LABELS = {"generate": "Generate", "img2img": "Img2Img", "inpaint": "Inpaint", "edit": "Edit"}


def region_prompts(
    mode: str, document: Document, size: tuple[int, int], notices: list[str]
) -> tuple[RegionPrompt, ...]:
    """The document's regions as the request carries them: masks ("L", 255 inside) at the picture's `size`.

    A region without paint or without a prompt is left out, and Edit mode takes none; each is said in `notices`."""
    regions = document.regions
    if not regions:
        return ()
    if mode == "edit":
        notices.append("Regions do not apply in Edit mode: the edit ran on the prompt alone")
        return ()
    from PIL import Image

    out = []
    for i, region in enumerate(regions, 1):
        if not region.has_paint():
            notices.append(f"Region {i} has no paint: left out")
            continue
        if not region.prompt.strip():
            notices.append(f"Region {i} has no prompt: left out")
            continue
        mask = Image.fromarray(region.mask.copy(), "L")
        if mask.size != size:  # painted over a source, generating from text at another size: the same places
            mask = mask.resize(size, Image.Resampling.NEAREST)
        out.append(RegionPrompt(region.prompt.strip(), mask, round(float(region.weight), 3)))
    return tuple(out)


def build_request(
    mode: str,
    params: dict[str, Any],
    document: Document,
    t0: int,
    strength: float,
    notices: list[str] | None = None,
) -> GenerateRequest:
    """The validated request for `mode` from the prompt panel's `params` and the document; raises UserError.

    Image modes take the source's size (the engine maps it to the model's size by `resize_mode`). What was left
    out (a region without paint or prompt) is appended to `notices`."""
    notices = notices if notices is not None else []
    params = dict(params)
    extra = {k: params.pop(k) for k in list(params) if k not in GenerateRequest.field_names()}
    if mode != "inpaint" and any(document.extension):
        notices.append("The canvas extension (outpainting) applies in Inpaint mode only: left out")
    if mode in IMAGE_MODES:
        if document.source is None:
            raise UserError(
                "This mode needs a source image.", "Open an image (Ctrl+O), paste one, or switch to Generate."
            )
        params["width"], params["height"] = None, None
        size = document.source.size
    else:
        size = (int(params.get("width") or document.blank_size[0]), int(params.get("height") or document.blank_size[1]))
    params["regions"] = region_prompts(mode, document, size, notices)
    if params["regions"]:  # the mode says how they apply; without regions the request keeps the default
        params["region_mode"] = document.region_mode
    image_fields = {"image": document.source, "resize_mode": extra.get("resize_mode") or DEFAULT_RESIZE_MODE}
    if mode == "generate":
        request: GenerateRequest = GenerateRequest(**params)
    elif mode == "img2img":
        request = Img2ImgRequest(**params, **image_fields, strength=round(strength, 3))
    elif mode == "inpaint":
        request = InpaintRequest(
            **params,
            **image_fields,
            mask=document.mask_image(),
            strength=round(strength, 3),
            mask_blur=int(extra.get("mask_blur", 4)),
            mask_grow=int(extra.get("mask_grow", 0)),
            only_masked=bool(extra.get("only_masked", False)),
            only_masked_padding=int(extra.get("only_masked_padding", 32)),
            **inpaint_fields(extra),
            extend=document.extension,
        )
    elif mode == "edit":
        request = EditRequest(
            **params,
            **image_fields,
            mask=document.mask_image(),
            t0=int(t0),
            source_prompt=str(extra.get("source_prompt", "")),
            mask_blur=int(extra.get("mask_blur", 4)),
            mask_grow=int(extra.get("mask_grow", 0)),
            **edit_fields(extra),
        )
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return request.validate()


def edit_fields(extra: dict[str, Any]) -> dict[str, Any]:
    """The method, attention control and LEDITS++ concepts of an edit request from the prompt panel's values:
    None leaves a field to the model's recommended edit settings; the concepts' text is parsed here (a malformed
    line raises InvalidRequest, shown like any other bad value)."""
    method = extra.get("method") or None
    control = extra.get("attention_control") or None
    p2p = control == "p2p"

    def share(name: str) -> float | None:
        value = extra.get(name)
        return round(float(value), 3) if p2p and value is not None else None

    return {
        "method": None if method is None else str(method),
        "attention_control": None if control is None else str(control),
        "cross_replace": share("cross_replace"),
        "self_replace": share("self_replace"),
        "local_blend": bool(extra["local_blend"]) if p2p and extra.get("local_blend") is not None else None,
        "reweight": str(extra.get("reweight") or "").strip() if p2p else "",
        "edit_concepts": parse_edit_concepts(str(extra.get("edit_concepts") or "")) if method == "ledits" else (),
    }


def inpaint_fields(extra: dict[str, Any]) -> dict[str, Any]:
    """The seam and outpaint fields of an inpaint request from the prompt panel's mode values (defaults: today's
    hard, unblended inpainting)."""
    return {
        "masked_content": str(extra.get("masked_content", "original")),
        "soft_mask": bool(extra.get("soft_mask", False)),
        "color_match": bool(extra.get("color_match", False)),
        "blend_band": int(extra.get("blend_band", 0)),
        "outpaint_fill": str(extra.get("outpaint_fill", "edge")),
        "outpaint_overlap": int(extra.get("outpaint_overlap", 16)),
    }


def repeat_requests(request: GenerateRequest, repeat: int) -> list[GenerateRequest]:
    """Repeat N: N copies of `request` with consecutive seeds (each run takes `batch` of them), so the N runs
    together are the images one batch of N x batch would make. A random seed is drawn once, here."""
    repeat = max(1, int(repeat))
    if repeat == 1:
        return [request]
    import random

    from desktop_app.core.requests import MAX_SEED

    batch = max(1, int(request.batch))
    seed = request.seed if request.seed is not None else random.randint(0, MAX_SEED - repeat * batch)
    seed = min(seed, MAX_SEED - repeat * batch + 1)
    return [request.replace(seed=seed + k * batch) for k in range(repeat)]


@dataclass
class _Job:
    request: GenerateRequest
    replay: bool  # an edit that replays the source's own trajectory
    image: Any  # the source it was made from (None for text to image)
    future: Any = None
    entry_id: int | None = None  # the history entry the source came from
    made_by: Any = None  # (Result, index) of this session that the source is
    group: int | None = None  # the "repeat N" these jobs belong to: their results share the staging strip


class Jobs(QObject):
    started = Signal(int)
    statusChanged = Signal(str)  # what the progress line says: "Loading model…", "Step 3/20 …", "Done"
    progressChanged = Signal(int, int)  # value, maximum (0, 0 = busy)
    noticed = Signal(str)
    resultReady = Signal(object)  # a finished job's Result, after it is in the document
    failed = Signal(str, str)  # message, hint
    cancelled = Signal(int)
    queueChanged = Signal(int)  # jobs waiting or running
    runningChanged = Signal(bool)

    def __init__(
        self,
        worker: Any,
        document: Document,
        entries_for: Callable[[Result], list[Any]] | None = None,
        parent: QObject | None = None,
    ) -> None:
        """`entries_for(result)`: the history entries a result was saved as (the HistorySaver's), so a result
        made from another one is saved as its child."""
        super().__init__(parent)
        self.worker = worker
        self.document = document
        self._entries_for = entries_for
        self._parents: dict[int, int | None] = {}  # id(Result) -> parent entry id, until it is saved
        self._jobs: dict[int, _Job] = {}
        self._running: int | None = None
        self._total = 1
        self._warm: set[str] = set()  # models that ran a step in this session: their jobs start without a load
        self._preview_size: tuple[int, int] | None = None
        self._preview_rect: tuple[int, int, int, int] | None = None  # an outpaint's preview: the extended canvas
        self._groups = 0
        self._staged_group: int | None = None  # the repeat whose results are in the strip
        self._pending_preview: Any = None
        self.status = "Idle"
        worker.jobStarted.connect(self._on_started)
        worker.progress.connect(self._on_progress)
        worker.preview.connect(self._on_preview)
        worker.notice.connect(self._on_notice)
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        worker.queueChanged.connect(self.queueChanged)

    # -- the API ------------------------------------------------------------------------
    def submit_repeat(self, requests: list[GenerateRequest]) -> list[int]:
        """Queue the runs of a "repeat N" (`repeat_requests`): their results gather in one staging strip."""
        if len(requests) == 1:
            return [self.submit(requests[0])]
        self._groups += 1
        return [self.submit(request, group=self._groups) for request in requests]

    def submit(self, request: GenerateRequest, group: int | None = None) -> int:
        """Queue a validated request; an edit of one of this session's results replays its trajectory."""
        source = self.document.edit_source() if isinstance(request, EditRequest) else None
        image = getattr(request, "image", None)
        job_id, future = (
            self.worker.submit(request, source=source) if source is not None else self.worker.submit(request)
        )
        made_by = self.document.made_by if image is not None else None
        entry_id = self.document.source_entry_id if image is not None else None
        self._jobs[job_id] = _Job(request, source is not None, image, future, entry_id, made_by, group)
        return job_id

    def parent_of(self, result: Result) -> int | None:
        """The history entry `result` was made from (for its row's parent), once, as it is saved."""
        return self._parents.pop(id(result), None)

    def _parent(self, job: _Job) -> int | None:
        if job.entry_id is not None:
            return job.entry_id
        if job.made_by is not None and self._entries_for is not None:
            result, index = job.made_by
            entries = self._entries_for(result)
            if index < len(entries):
                return getattr(entries[index], "id", None)
        return None

    async def wait(self, job_id: int) -> Result | None:
        """The job's Result; None when it failed (already reported) or was cancelled."""
        import asyncio  # not at import time: the window paints before asyncio loads

        job = self._jobs.get(job_id)
        if job is None or job.future is None:
            return None
        try:
            return await job.future
        except (JobCancelled, asyncio.CancelledError):
            return None
        except Exception:  # noqa: BLE001 - reported through `failed`
            return None

    @property
    def running_id(self) -> int | None:
        return self._running

    def is_running(self) -> bool:
        return self._running is not None

    def pending(self) -> int:
        return self.worker.pending()

    def cancel_current(self) -> bool:
        job = self.worker.current_job_id
        if job is None:
            return False
        self.worker.cancel(job)
        self._set_status("Cancelling…")
        return True

    def cancel_all(self) -> None:
        self.worker.cancel_all()

    # -- worker signals (GUI thread) -------------------------------------------------------
    def _set_status(self, text: str, value: int | None = None, maximum: int | None = None) -> None:
        self.status = text
        self.statusChanged.emit(text)
        if value is not None and maximum is not None:
            if maximum > 0:
                self._total = maximum
            self.progressChanged.emit(value, maximum)

    @Slot(int, object)
    def _on_started(self, job_id: int, request: Any) -> None:
        self._running = job_id
        self._preview_size = None
        if request is not None and getattr(request, "image", None) is None and getattr(request, "width", None):
            self._preview_size = (request.width, request.height)
        self._preview_rect = None
        extend = getattr(request, "extend", None)
        image = getattr(request, "image", None)
        if extend and any(extend) and image is not None:
            left, top, right, bottom = extend
            self._preview_rect = (-left, -top, image.width + left + right, image.height + top + bottom)
        model = getattr(request, "model", "") or BUILTIN
        name = "the built-in model" if model == BUILTIN else display_name(model)
        self._total = 1
        self._set_status(f"Loading {name}…" if model not in self._warm else "Starting…", 0, 0)
        self.started.emit(job_id)
        self.runningChanged.emit(True)

    @Slot(int, object)
    def _on_progress(self, job_id: int, ev: Progress) -> None:
        eta = f" · ETA {_duration(ev.eta_seconds)}" if ev.eta_seconds and ev.eta_seconds >= 1 else ""
        total = max(1, int(ev.total))
        if ev.phase == "download":  # bytes, may pass 2**31: per mille
            self._set_status(
                f"Downloading {format_size(ev.step)} / {format_size(total)} · {format_size(ev.its_per_sec)}/s{eta}",
                int(1000 * min(ev.step, total) / total),
                1000,
            )
            return
        job = self._jobs.get(job_id)
        if job is not None:
            self._warm.add(job.request.model)
        if ev.phase == "replay" or (ev.phase == "invert" and job is not None and job.replay):
            label = "Replaying the source"
        elif ev.phase == "invert":
            label = "Inverting"
        else:
            label = "Step"
        self._set_status(
            f"{label} {ev.step}/{ev.total} · t={ev.timestep} · {ev.its_per_sec:.1f} it/s{eta}", int(ev.step), total
        )

    @Slot(int, object)
    def _on_preview(self, job_id: int, ev: Any) -> None:
        # Coalesce: when the GUI thread falls behind, only the newest preview is drawn.
        pending = self._pending_preview is not None
        self._pending_preview = ev.image
        if not pending:
            QTimer.singleShot(0, self._show_pending_preview)

    def _show_pending_preview(self) -> None:
        image, self._pending_preview = self._pending_preview, None
        if image is not None and self._running is not None:
            self.document.show_view(image, size=self._preview_size, rect=self._preview_rect)

    @Slot(int, str)
    def _on_notice(self, job_id: int, message: str) -> None:
        self.noticed.emit(message)

    @Slot(int, object)
    def _on_finished(self, job_id: int, result: Result) -> None:
        job = self._jobs.pop(job_id, None)
        self._end(job_id, f"Done in {result.elapsed:.1f} s", done=True)
        from_source = job is not None and job.image is not None and job.image is self.document.source
        if job is not None:
            self._parents[id(result)] = self._parent(job)
        group = job.group if job is not None else None
        gather = group is not None and group == self._staged_group
        self._staged_group = group
        self.document.set_result(result, from_source=from_source, gather=gather)
        self.resultReady.emit(result)
        self._parents.pop(id(result), None)

    @Slot(int, str, str)
    def _on_failed(self, job_id: int, message: str, hint: str) -> None:
        self._jobs.pop(job_id, None)
        self._end(job_id, "Failed")
        self.failed.emit(message, hint)

    @Slot(int)
    def _on_cancelled(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)
        if job_id == self._running:
            self._end(job_id, "Cancelled")
            self._pending_preview = None
            if self.document.result_image() is not None:
                self.document.show_result()
            else:
                self.document.show_source()
        self.cancelled.emit(job_id)

    def _end(self, job_id: int, text: str, done: bool = False) -> None:
        if job_id != self._running:
            return
        self._running = None
        self._set_status(text, self._total if done else 0, self._total)
        self.runningChanged.emit(False)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


__all__ = ["IMAGE_MODES", "MODE_LABELS", "Jobs", "build_request", "inpaint_fields", "repeat_requests"]
