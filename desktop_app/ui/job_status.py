"""The line under the canvas: what runs now (a model loading included, in words), its progress, the queue."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QSizePolicy, QWidget

from desktop_app.model.jobs import Jobs
from desktop_app.ui.widgets import named


class JobStatus(QWidget):
    def __init__(self, jobs: Jobs, models: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("jobStatus")
        self.jobs = jobs
        self.models = models
        self.label = named(QLabel("Idle"), "jobStatusLabel")
        self.label.setMinimumWidth(80)
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.bar = named(QProgressBar(), "progressBar")
        self.bar.setAccessibleName("Progress")
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(False)
        self.bar.setMaximumWidth(220)
        self.bar.setMinimumWidth(80)
        self.bar.setVisible(False)  # only while something runs; the text beside it always says what happens
        self.queue_label = named(QLabel("Queue: 0"), "queueLabel")
        row = QHBoxLayout(self)
        row.setContentsMargins(8, 0, 8, 6)
        row.addWidget(self.label, 1)
        row.addWidget(self.bar, 1)
        row.addWidget(self.queue_label)
        jobs.statusChanged.connect(self.label.setText)
        jobs.progressChanged.connect(self._on_progress)
        jobs.runningChanged.connect(self._on_running)
        jobs.queueChanged.connect(lambda n: self.queue_label.setText(f"Queue: {n}"))
        models.stateChanged.connect(self._on_model_state)

    def _on_progress(self, value: int, maximum: int) -> None:
        if self.bar.maximum() != maximum or self.bar.minimum() != 0:
            self.bar.setRange(0, maximum)
        self.bar.setValue(value)

    def _on_running(self, running: bool) -> None:
        self.bar.setVisible(running or self.models.state() == "loading")

    def _on_model_state(self, state: str, message: str) -> None:
        if self.jobs.is_running():
            return  # the job's own status says more
        if state == "loading":
            self.label.setText(message or "Loading the model…")
            self.bar.setRange(0, 0)
            self.bar.setVisible(True)
        elif state in ("ready", "failed"):
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.bar.setVisible(False)
            self.label.setText(message or ("Model ready" if state == "ready" else "Idle"))
