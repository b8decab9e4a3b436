"""Run > Performance…: the local engine's device, precision and memory options (worker.EngineOptions).

They are kept in the settings and apply at the next model load: on OK the window gives them to the worker, which
hands them to its engine between jobs; the next job loads the model again with them.
"""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from desktop_app.ui.widgets import named
from desktop_app.worker import DEVICE_CHOICES, DTYPE_CHOICES, EngineOptions

DEVICE_LABELS = {
    "auto": "Automatic (CUDA, then Apple MPS, then the CPU)",
    "cuda": "CUDA GPU",
    "mps": "Apple GPU (MPS)",
    "cpu": "CPU",
}
DTYPE_LABELS = {
    "auto": "Automatic (GPU: fp16, bf16 for SD 3 / FLUX.1; CPU: fp32)",
    "bf16": "bf16 (Flux's own; recent GPUs)",
    "fp16": "fp16 (half the memory of fp32)",
    "fp32": "fp32 (most exact, most memory)",
}
SWITCHES = (
    ("attention_slicing", "Attention slicing", "Attention in slices: far less memory for attention, slower"),
    ("vae_tiling", "VAE tiling", "Large images decode and encode in tiles: less memory, the same picture"),
    (
        "cpu_offload",
        "Model CPU offload",
        "CUDA: only the part of the model that runs (text encoder, denoiser, VAE) is on the GPU; a little slower",
    ),
    (
        "sequential_offload",
        "Sequential CPU offload",
        "CUDA: the weights go to the GPU layer by layer: the least memory (big Flux models on small GPUs), much slower",
    ),
)
APPLIES = "Changes apply at the next model load: the next job loads the model again with them."


class PerformanceDialog(QDialog):
    def __init__(self, options: EngineOptions, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("performanceDialog")
        self.setWindowTitle("Performance")
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.device_combo = named(QComboBox(), "deviceCombo")
        self.device_combo.setAccessibleName("Device")
        for key in DEVICE_CHOICES:
            self.device_combo.addItem(DEVICE_LABELS[key], key)
        self.dtype_combo = named(QComboBox(), "dtypeCombo")
        self.dtype_combo.setAccessibleName("Precision")
        for key in DTYPE_CHOICES:
            self.dtype_combo.addItem(DTYPE_LABELS[key], key)
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.dtype_combo)
        self.checks: dict[str, QCheckBox] = {}
        for key, label, tip in SWITCHES:
            check = named(QCheckBox(label), key.replace("_", " ").title().replace(" ", "") + "Check")
            check.setToolTip(tip)
            self.checks[key] = check
            form.addRow(check)
        self.checks["sequential_offload"].toggled.connect(self._on_sequential)
        note = named(QLabel(APPLIES), "performanceNote")
        note.setWordWrap(True)
        note.setEnabled(False)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(note)
        lay.addWidget(buttons)
        self.set_options(options)

    def _on_sequential(self, on: bool) -> None:
        """Sequential offload moves every layer itself: model offload on top of it has nothing left to do."""
        cpu = self.checks["cpu_offload"]
        cpu.setEnabled(not on)
        if on:
            cpu.setChecked(False)

    def set_options(self, options: EngineOptions) -> None:
        self.device_combo.setCurrentIndex(max(0, self.device_combo.findData(options.device)))
        self.dtype_combo.setCurrentIndex(max(0, self.dtype_combo.findData(options.dtype)))
        for key, check in self.checks.items():
            check.setChecked(bool(getattr(options, key)))

    def options(self) -> EngineOptions:
        return EngineOptions(
            device=self.device_combo.currentData() or "auto",
            dtype=self.dtype_combo.currentData() or "auto",
            **{key: check.isChecked() for key, check in self.checks.items()},
        )
