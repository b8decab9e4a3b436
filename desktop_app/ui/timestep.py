"""The timestep slider, bound to a `Timeline` (desktop_app.model.timeline): noise on the left, the image on the right.

It only shows the timeline's state and reports the user's drags: `Timeline.scrub` while the handle moves
(a cheap preview), `Timeline.rest` once it has rested for REST_MS or is released (the full decode). On a flow model
(the timeline's axis "sigma") it reads noise levels, "σ 0.70", where an SD model reads timesteps, "t 700".
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QSlider, QToolButton, QWidget

from desktop_app.model.timeline import Timeline
from desktop_app.ui.widgets import named

REST_MS = 220
SLIDER_TIPS = {
    "t": "Diffusion time: pure noise at the left end (t = T), the image at the right end (t = 0)",
    "sigma": "Noise level of a flow model: pure noise at the left end (σ = 1), the image at the right end (σ = 0)",
}
START_TIPS = {
    "t": "Use the slider to set the start timestep (strength) of the next img2img / inpaint / edit",
    "sigma": "Use the slider to set the start noise level σ₀ (strength) of the next img2img / inpaint / edit",
}


class TimestepPanel(QWidget):
    def __init__(self, timeline: Timeline, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("timestepPanel")
        self.timeline = timeline
        self._syncing = False

        self.slider = named(QSlider(Qt.Orientation.Horizontal), "timestepSlider")
        self.slider.setAccessibleName("Diffusion timestep")
        self.slider.setToolTip(SLIDER_TIPS["t"])
        self.slider.setMinimumWidth(160)
        self.slider.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.label = named(QLabel(), "timestepLabel")
        self.label.setMinimumWidth(self.label.fontMetrics().horizontalAdvance("step 150/150 · t 999") + 6)
        self.label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        # a compact toggle, not a combo box: the row must fit beside a slider of useful length at scale 1.5
        self.which_button = named(QToolButton(), "trajectoryWhich")
        self.which_button.setCheckable(True)
        self.which_button.setToolTip(
            "Show the predicted clean image x̂₀ (up) or the noisy latent xₜ (down) at this step"
        )
        self.which_button.setAccessibleName("Show the noisy latent")
        self.t0_button = named(QToolButton(), "startTimestepButton")
        self.t0_button.setText("Start t")
        self.t0_button.setToolTip(START_TIPS["t"])
        self.t0_button.setCheckable(True)

        row = QHBoxLayout(self)
        row.setContentsMargins(8, 2, 8, 2)
        row.addWidget(self.slider, 1)
        row.addWidget(self.label)
        row.addWidget(self.which_button)
        row.addWidget(self.t0_button)

        self._rest = QTimer(self)
        self._rest.setSingleShot(True)
        self._rest.setInterval(REST_MS)
        self._rest.timeout.connect(self._emit_rest)
        self.slider.valueChanged.connect(self._on_value)
        self.slider.sliderReleased.connect(self._emit_rest_now)
        self.which_button.toggled.connect(lambda down: timeline.set_which("xt" if down else "x0"))
        self.t0_button.toggled.connect(self._on_t0_button)
        timeline.changed.connect(self.sync)
        self.sync()

    # -- read-outs (tests, the window) --------------------------------------------------
    @property
    def mode(self) -> str:
        return self.timeline.mode

    @property
    def t0(self) -> int:
        return self.timeline.t0

    def set_t0(self, t0: int) -> None:
        self.timeline.set_t0(t0)

    @property
    def which(self) -> str:
        return self.timeline.which

    @property
    def index(self) -> int:
        return self.timeline.index if self.timeline.mode == "trajectory" else -1

    def stop_timers(self) -> None:
        self._rest.stop()

    # -- binding ------------------------------------------------------------------------
    def sync(self) -> None:
        """Show the timeline's state (mode, range, value, label) without reporting it back."""
        tl = self.timeline
        mode = tl.mode
        self._syncing = True
        try:
            if mode == "t0":
                self.slider.setRange(1, tl.T - 1)
                self.slider.setInvertedAppearance(True)  # left = T (noise), right = 0 (image)
                self.slider.setSingleStep(10)
                self.slider.setPageStep(100)
                self.slider.setValue(tl.t0)
            elif mode == "trajectory":
                n = len(tl.timesteps)
                self.slider.setInvertedAppearance(False)  # step 1 (noisy) left, last step right
                self.slider.setRange(0, n - 1)
                self.slider.setSingleStep(1)
                self.slider.setPageStep(max(1, n // 10))
                self.slider.setValue(max(0, tl.index))
            else:
                self.slider.setRange(0, 0)
            self.slider.setEnabled(mode != "off")
            self.which_button.setVisible(mode == "trajectory")
            self.which_button.setChecked(tl.which == "xt")
            self.which_button.setText("xₜ" if tl.which == "xt" else "x̂₀")
            self.t0_button.setEnabled(tl.t0_available())
            self.t0_button.setChecked(mode == "t0")
            axis, start = tl.axis, tl.start_axis  # what the slider shows now; what the next job starts from
            self.slider.setToolTip(SLIDER_TIPS[axis])
            self.slider.setAccessibleName("Noise level" if axis == "sigma" else "Diffusion timestep")
            self.t0_button.setText("Start σ" if start == "sigma" else "Start t")
            self.t0_button.setToolTip(START_TIPS[start])
        finally:
            self._syncing = False
        self._update_label()

    def _update_label(self) -> None:
        tl = self.timeline
        flow = tl.axis == "sigma"
        if tl.mode == "t0" and flow:
            tip = f"Start noise level σ₀ = {tl.sigma0:.2f} of 1: strength {tl.strength():.2f}"
            start = tl.start_sigma()
            if start is not None and abs(start - tl.sigma0) > 5e-3:
                tip += f" (after the model's timestep shift the run starts at σ {start:.2f})"
            self.label.setText(f"σ₀ = {tl.sigma0:.2f}")
            self.label.setToolTip(tip)
        elif tl.mode == "t0":
            self.label.setText(f"t₀ = {tl.t0} · {tl.strength():.2f}")
            self.label.setToolTip(f"Start timestep t₀ = {tl.t0} of {tl.T}: strength {tl.strength():.2f}")
        elif tl.mode == "trajectory" and tl.timesteps:
            i = max(0, min(len(tl.timesteps) - 1, tl.index))
            n = len(tl.timesteps)
            if flow:
                self.label.setText(f"step {i + 1}/{n} · σ {tl.step_sigma(i):.2f}")
                self.label.setToolTip(f"Step {i + 1} of {n} of the run, at noise level σ = {tl.step_sigma(i):.3f}")
            else:
                self.label.setText(f"step {i + 1}/{n} · t {tl.timesteps[i]}")
                self.label.setToolTip(f"Step {i + 1} of {n} of the run, at timestep {tl.timesteps[i]}")
        else:
            self.label.setText("σ: run a job" if flow else "t: run a job")
            self.label.setToolTip("Run a job, or open an image in an image mode, to use the slider")

    def _on_value(self, value: int) -> None:
        if self._syncing or self.timeline.mode == "off":
            return
        self.timeline.scrub(value)
        self._update_label()
        self._rest.start()

    def _emit_rest_now(self) -> None:
        self._rest.stop()
        self._emit_rest()

    def _emit_rest(self) -> None:
        if self.slider.isSliderDown():
            self._rest.start()
            return
        self.timeline.rest(self.slider.value())

    def _on_t0_button(self, checked: bool) -> None:
        if not self._syncing:
            self.timeline.set_mode("t0" if checked else "trajectory")
