"""The timestep slider: one axis, diffusion time t, noisy on the left, clean on the right.

Two uses (see DESIGN.md):
  * "t0" mode, before a run with a source image: the slider sets the start
    timestep t0 (img2img strength = t0 / 1000); while dragging, `t0Changed`
    asks for the closed-form forward-process preview; `t0Rested` asks for a
    full decode once the slider rests.
  * "trajectory" mode, after a run: the slider scrubs the run's steps;
    `frameChanged(index, which)` while dragging (cheap preview), then
    `frameRested(index, which)` (full decode). `which` is "xt" or "x0".
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSlider, QToolButton, QWidget

REST_MS = 220
T_MAX = 1000


class TimestepPanel(QWidget):
    t0Changed = Signal(int)
    t0Rested = Signal(int)
    frameChanged = Signal(int, str)
    frameRested = Signal(int, str)
    modeChanged = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("timestepPanel")
        self._mode = "off"
        self._t0 = 600
        self._timesteps: list[int] = []

        self.slider = QSlider(Qt.Orientation.Horizontal, objectName="timestepSlider")
        self.slider.setAccessibleName("Diffusion timestep")
        self.slider.setToolTip("Diffusion time: noise on the left (t = T), the image on the right (t = 0)")
        self.label = QLabel(objectName="timestepLabel")
        self.label.setMinimumWidth(230)
        self.which_combo = QComboBox(objectName="trajectoryWhich")
        self.which_combo.addItem("predicted x̂₀", "x0")
        self.which_combo.addItem("noisy xₜ", "xt")
        self.which_combo.setToolTip("Show the predicted clean image or the noisy latent at this step")
        self.t0_button = QToolButton(objectName="startTimestepButton")
        self.t0_button.setText("Start t")
        self.t0_button.setToolTip("Use the slider to set the start timestep of the next img2img / edit run")
        self.t0_button.setCheckable(True)
        self.left_label = QLabel("noise")
        self.right_label = QLabel("image")
        for lab in (self.left_label, self.right_label):
            lab.setStyleSheet("color: #8a8f98;")

        row = QHBoxLayout(self)
        row.setContentsMargins(8, 2, 8, 2)
        row.addWidget(self.left_label)
        row.addWidget(self.slider, 1)
        row.addWidget(self.right_label)
        row.addWidget(self.label)
        row.addWidget(self.which_combo)
        row.addWidget(self.t0_button)

        self._rest = QTimer(self)
        self._rest.setSingleShot(True)
        self._rest.setInterval(REST_MS)
        self._rest.timeout.connect(self._emit_rest)
        self.slider.valueChanged.connect(self._on_value)
        self.slider.sliderReleased.connect(self._emit_rest_now)
        self.which_combo.currentIndexChanged.connect(self._on_which)
        self.t0_button.toggled.connect(self._on_t0_button)
        self.set_mode("off")

    # -- state -----------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @property
    def t0(self) -> int:
        """The start timestep for the next img2img / edit run (1..999)."""
        return self._t0

    def set_t0(self, t0: int) -> None:
        self._t0 = int(max(1, min(T_MAX - 1, t0)))
        if self._mode == "t0":
            self.slider.setValue(self._t0)
        self._update_label()

    @property
    def which(self) -> str:
        return self.which_combo.currentData()

    @property
    def index(self) -> int:
        return self.slider.value() if self._mode == "trajectory" else -1

    def has_trajectory(self) -> bool:
        return bool(self._timesteps)

    def set_trajectory(self, timesteps: list[int] | None) -> None:
        """Switch to scrubbing a run's steps (None: forget the trajectory)."""
        self._timesteps = [int(t) for t in (timesteps or [])]
        if self._timesteps:
            self.set_mode("trajectory")
        elif self._mode == "trajectory":
            self.set_mode("off")

    def set_mode(self, mode: str) -> None:
        """'off', 't0' or 'trajectory'."""
        if mode == "trajectory" and not self._timesteps:
            mode = "off"
        self._mode = mode
        self._rest.stop()
        self.slider.blockSignals(True)
        if mode == "t0":
            self.slider.setRange(1, T_MAX - 1)
            self.slider.setInvertedAppearance(True)  # left = T (noise), right = 0 (image)
            self.slider.setSingleStep(10)
            self.slider.setPageStep(100)
            self.slider.setValue(self._t0)
        elif mode == "trajectory":
            n = len(self._timesteps)
            self.slider.setInvertedAppearance(False)  # step 1 (noisy) left, last step right
            self.slider.setRange(0, n - 1)
            self.slider.setSingleStep(1)
            self.slider.setPageStep(max(1, n // 10))
            self.slider.setValue(n - 1)
        else:
            self.slider.setRange(0, 0)
        self.slider.blockSignals(False)
        self.slider.setEnabled(mode != "off")
        self.which_combo.setVisible(mode == "trajectory")
        self.t0_button.blockSignals(True)
        self.t0_button.setChecked(mode == "t0")
        self.t0_button.blockSignals(False)
        self._update_label()
        self.modeChanged.emit(mode)

    def set_t0_available(self, available: bool) -> None:
        """Whether the current mode has a source to set t0 for (enables the "Set t0" button)."""
        self.t0_button.setEnabled(available)
        if not available and self._mode == "t0":
            self.set_mode("trajectory" if self._timesteps else "off")
        elif available and self._mode == "off":
            self.set_mode("t0")

    def stop_timers(self) -> None:
        self._rest.stop()

    # -- internals -------------------------------------------------------------
    def _update_label(self) -> None:
        if self._mode == "t0":
            self.label.setText(f"t₀ = {self._t0} / {T_MAX}  ·  strength {self._t0 / T_MAX:.2f}")
        elif self._mode == "trajectory":
            i = self.slider.value()
            n = len(self._timesteps)
            self.label.setText(f"step {i + 1} / {n}  ·  t = {self._timesteps[i]}")
        else:
            self.label.setText("t: run a job, or open an image in Img2Img / Edit")

    def _on_value(self, value: int) -> None:
        if self._mode == "t0":
            self._t0 = value
            self._update_label()
            self.t0Changed.emit(value)
        elif self._mode == "trajectory":
            self._update_label()
            self.frameChanged.emit(value, self.which)
        else:
            return
        self._rest.start()

    def _on_which(self, *_: object) -> None:
        if self._mode == "trajectory":
            self.frameChanged.emit(self.slider.value(), self.which)
            self._rest.start()

    def _emit_rest_now(self) -> None:
        self._rest.stop()
        self._emit_rest()

    def _emit_rest(self) -> None:
        if self.slider.isSliderDown():
            self._rest.start()
            return
        if self._mode == "t0":
            self.t0Rested.emit(self._t0)
        elif self._mode == "trajectory":
            self.frameRested.emit(self.slider.value(), self.which)

    def _on_t0_button(self, checked: bool) -> None:
        self.set_mode("t0" if checked else ("trajectory" if self._timesteps else "off"))
