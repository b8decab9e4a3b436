"""The timestep slider's state: one axis, diffusion time, from noise (t = T - 1) to the image (t = 0).

Before a run with a source image ("t0" mode) the slider sets how deep the next img2img / inpaint / edit
goes (strength = t0 / T, one value per mode) and the canvas shows the source's forward process at that
point, in closed form on the GUI thread once the worker has encoded the source. After a run
("trajectory" mode) it scrubs the trajectory of the image shown, for every image of a batch: a cheap
latent preview while dragging, the full VAE decode (cached) when it rests.

Flow models (SD 3.x, Flux) have sigma in 0..1 for time: the slider keeps its 0..T-1 positions (T = 1000, sigma =
t / 1000, strength = sigma0) and `axis` says "sigma", so the panel reads "σ 0.70" where an SD model reads "t 700".
The axis is the trajectory's (after a run) or the forward process's (before one), else the current model's family:
`family_of(source)` when the window gives one, else what the worker's preloads reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from desktop_app.core.modelinfo import is_flow
from desktop_app.model.document import Document

IMAGE_MODES = ("img2img", "inpaint", "edit")
DEFAULT_STRENGTH = {"img2img": 0.6, "inpaint": 1.0, "edit": 0.7}
DEFAULT_T = 1000  # DDPM-family schedules; a model's own T replaces it once known


class Timeline(QObject):
    changed = Signal()  # mode, range, t0 or the trajectory: a bound slider reads everything again
    strengthChanged = Signal(str, float)  # job mode, strength
    message = Signal(str)  # a note for the status bar (why a frame shows only the cheap preview)

    def __init__(
        self,
        worker: Any,
        document: Document,
        current_model: Callable[[], str],
        parent: QObject | None = None,
        family_of: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(parent)
        self.worker = worker
        self.document = document
        self._current_model = current_model
        self._family_of = family_of
        self._families: dict[str, str] = {}  # model source -> family, as the worker's preloads reported it
        self.T = DEFAULT_T
        self._mode = "off"
        self._job_mode = "generate"
        self._strength = dict(DEFAULT_STRENGTH)
        self._index = -1
        self._batch = 0
        self.which = "x0"
        self._trajectory: Any = None
        self._decoded: dict[tuple[int, int, int, str], Any] = {}  # (id(trajectory), batch, step, which) -> image
        self._forward: Any = None
        self._forward_key: Any = None
        self._services: dict[int, tuple[str, Any]] = {}
        document.sourceChanged.connect(self._on_source_changed)
        document.resultChanged.connect(self._on_result_changed)
        document.shownChanged.connect(self._on_shown_changed)
        worker.serviceDone.connect(self._on_service_done)
        worker.serviceFailed.connect(self._on_service_failed)

    # -- state --------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @property
    def axis(self) -> str:
        """The slider's axis: "sigma" for a flow model's noise level, "t" for diffusion timesteps."""
        if self._mode == "trajectory" and self._trajectory is not None:
            return "sigma" if getattr(self._trajectory, "axis", "t") == "sigma" else "t"
        return self.start_axis

    @property
    def start_axis(self) -> str:
        """The axis of the next image job's start (t0 / sigma0): the forward process's, else the current model's."""
        if self._forward is not None:
            return "sigma" if getattr(self._forward, "axis", "t") == "sigma" else "t"
        return "sigma" if is_flow(self.family()) else "t"

    def family(self, source: str | None = None) -> str:
        """The family of `source` (the current model by default), "" while unknown."""
        source = source if source is not None else self._current_model()
        found = self._family_of(source) if self._family_of is not None else None
        return found or self._families.get(source, "")

    @property
    def sigma0(self) -> float:
        """The start noise level of the next image job on a flow model (its strength)."""
        return self.t0 / self.T

    def start_sigma(self) -> float | None:
        """The noise level the run starts from after the model's shift, when the forward process knows it."""
        forward: Any = self._forward
        return float(forward.sigma(self.t0)) if callable(getattr(forward, "sigma", None)) else None

    def step_sigma(self, index: int) -> float:
        """The noise level of step `index` of a flow run."""
        return float(self.timesteps[index]) / self.T

    @property
    def timesteps(self) -> list[int]:
        return list(getattr(self._trajectory, "timesteps", None) or [])

    @property
    def index(self) -> int:
        return self._index

    def strength(self, mode: str | None = None) -> float:
        return self._strength.get(mode or self._job_mode, DEFAULT_STRENGTH["img2img"])

    def set_strength(self, value: float, mode: str | None = None) -> None:
        mode = mode or self._job_mode
        value = float(max(0.0, min(1.0, value)))
        if abs(self._strength.get(mode, -1) - value) < 1e-9:
            return
        self._strength[mode] = value
        self.strengthChanged.emit(mode, value)
        if mode == self._job_mode:
            self.changed.emit()

    @property
    def t0(self) -> int:
        """The start timestep of the next image job: the current mode's strength on the model's schedule."""
        return int(max(1, min(self.T - 1, round(self.strength() * self.T))))

    def set_t0(self, t0: int) -> None:
        self.set_strength(max(1, min(self.T - 1, int(t0))) / self.T)

    def t0_available(self) -> bool:
        return self._job_mode in IMAGE_MODES and self.document.source is not None

    def set_job_mode(self, mode: str) -> None:
        """The prompt panel's mode: which strength the slider sets, and whether it has a source to noise."""
        self._job_mode = mode
        self._settle()
        self.changed.emit()
        self.strengthChanged.emit(mode, self.strength())

    def set_mode(self, mode: str) -> None:
        """'t0' or 'trajectory' as the user picks them (falls back to what is available)."""
        if mode == "t0" and not self.t0_available():
            mode = "trajectory"
        if mode == "trajectory" and not self.timesteps:
            mode = "t0" if self.t0_available() else "off"
        if mode != self._mode:
            self._mode = mode
            if mode == "trajectory":
                self._index = len(self.timesteps) - 1
            self.changed.emit()
            if mode == "t0":
                self.scrub(self.t0)
                self.rest(self.t0)
            elif mode == "trajectory":
                self.document.show_result()

    def _settle(self) -> None:
        if self._mode == "t0" and not self.t0_available():
            self._mode = "trajectory" if self.timesteps else "off"
        elif self._mode == "off" and self.t0_available():
            self._mode = "t0"
        elif self._mode == "trajectory" and not self.timesteps:
            self._mode = "t0" if self.t0_available() else "off"

    def set_which(self, which: str) -> None:
        self.which = "xt" if which == "xt" else "x0"
        if self._mode == "trajectory" and self._index >= 0:
            self.scrub(self._index)
            self.rest(self._index)

    # -- the slider moves / rests -------------------------------------------------------------
    def scrub(self, value: int) -> None:
        """While dragging: the cheap preview (numpy, this thread)."""
        if self._mode == "t0":
            self.set_t0(value)
            if self._ensure_forward():
                try:
                    self.document.show_view(self._forward.preview(self.t0))
                except Exception as exc:  # noqa: BLE001 - the slider keeps working without a picture
                    self.message.emit(f"No preview: {exc}")
        elif self._mode == "trajectory" and self._trajectory is not None:
            self._index = int(max(0, min(len(self.timesteps) - 1, value)))
            self.changed.emit()
            cached = self._decoded.get(self._key(self._index))
            if cached is not None:
                self.document.show_view(cached)
                return
            try:
                self.document.show_view(self._trajectory.previews(self._index, self.which, self.document.index))
            except Exception as exc:  # noqa: BLE001
                self.message.emit(f"No preview for this step: {exc}")

    def rest(self, value: int) -> None:
        """The slider rests: the full VAE decode on the worker thread."""
        if self._mode == "t0":
            if not self._ensure_forward():
                return
            try:
                latent = self._forward.latent(self.t0)
            except Exception:  # noqa: BLE001 - the cheap preview stays
                return
            job_id, _ = self.worker.decode_latent(latent, self._forward_key[1])
            self._services[job_id] = ("decode_latent", self.t0)
        elif self._mode == "trajectory" and self._trajectory is not None:
            key = self._key(self._index)
            if key in self._decoded:
                return
            result = self.document.result
            model = getattr(getattr(result, "request", None), "model", "") or ""
            if model and model != self._current_model():
                # Decoding with the VAE of the model that made it would load that model over the chosen one.
                self.message.emit("This result was made with another model: the slider shows its cheap preview only.")
                return
            job_id, _ = self.worker.decode_trajectory(self._trajectory, self._index, self.which, self.document.index)
            self._services[job_id] = ("decode_trajectory", key)

    def _key(self, index: int) -> tuple[int, int, int, str]:
        return (id(self._trajectory), self.document.index, index, self.which)

    def _ensure_forward(self) -> bool:
        """The forward process of the source is computed once per (source, model) on the worker thread."""
        source = self.document.source
        if source is None:
            return False
        key = (id(source), self._current_model())
        if self._forward is not None and self._forward_key == key:
            return True
        if self._forward_key != key:
            self._forward_key = key
            self._forward = None
            job_id, _ = self.worker.forward_process(source, key[1])
            self._services[job_id] = ("forward", key)
        return False

    def model_changed(self) -> None:
        """Another model: the source's latent and schedule are its own (and its axis may be sigma)."""
        self._forward = None
        self._forward_key = None
        self.changed.emit()

    # -- document and worker signals ----------------------------------------------------------
    @Slot()
    def _on_source_changed(self) -> None:
        self._forward = None
        self._forward_key = None
        self._settle()
        self.changed.emit()

    @Slot()
    def _on_result_changed(self) -> None:
        result = self.document.result
        trajectory = getattr(result, "trajectory", None) if result is not None else None
        try:
            ok = trajectory is not None and len(trajectory) > 0
        except TypeError:
            ok = False
        self._trajectory = trajectory if ok else None
        self._decoded.clear()
        self._batch = self.document.index
        if self._trajectory is not None:
            self._mode = "trajectory"
            self._index = len(self.timesteps) - 1
        else:
            self._settle()
        self.changed.emit()

    @Slot()
    def _on_shown_changed(self) -> None:
        # another image of the batch shown: the slider now scrubs that image's own trajectory, from its end
        if self._batch != self.document.index:
            self._batch = self.document.index
            if self._mode == "trajectory":
                self._index = len(self.timesteps) - 1
                self.changed.emit()

    @Slot(int, str, object)
    def _on_service_done(self, job_id: int, kind: str, value: Any) -> None:
        if kind == "preload":  # a ModelInfo: its family says which axis the slider has for that model
            source, family = getattr(value, "source", None), getattr(value, "family", None)
            if isinstance(source, str) and isinstance(family, str):
                self._families[source] = family
                if source == self._current_model():
                    self.changed.emit()
        entry = self._services.pop(job_id, None)
        if entry is None:
            return
        what, key = entry
        if what == "forward":
            if key == self._forward_key:
                self._forward = value
                T = int(getattr(value, "num_train_timesteps", DEFAULT_T) or DEFAULT_T)  # noqa: N806
                if T != self.T:
                    self.T = T
                    self.changed.emit()
                if self._mode == "t0":
                    self.scrub(self.t0)
                    self.rest(self.t0)
        elif what == "decode_trajectory":
            if value is not None and key[0] == id(self._trajectory):
                self._decoded[key] = value
                if self._mode == "trajectory" and key == self._key(self._index):
                    self.document.show_view(value)
        elif what == "decode_latent" and self._mode == "t0" and self.t0 == key and value is not None:
            self.document.show_view(value)

    @Slot(int, str, str, str)
    def _on_service_failed(self, job_id: int, kind: str, message: str, hint: str) -> None:
        entry = self._services.pop(job_id, None)
        if entry is None:
            return
        if entry[0] == "forward" and entry[1] == self._forward_key:
            self._forward_key = None
        self.message.emit(message)


__all__ = ["DEFAULT_STRENGTH", "Timeline"]
