"""DownloadsIndicator: a model download running in the background, for the main window's status bar.

Bound to a `model.models.Models`: a compact progress bar, a label ("Downloading owner/repo 120 MB / 1.7 GB", or
"Downloading the FLUX.1 text encoders and VAE ..." for a transformer file's parts) and a
cancel button; hidden while nothing downloads. A download outlives the models dialog that started it, so this is
where it stays visible and can be stopped.
"""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QToolButton, QWidget

from desktop_app.core.model_registry import format_size
from desktop_app.model.models import Models, download_name


class DownloadsIndicator(QWidget):
    """objectName ``downloadsIndicator``; shows the first running download and how many more there are."""

    def __init__(self, models: Models, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("downloadsIndicator")
        self.models = models
        self.label = QLabel()
        self.label.setObjectName("downloadsLabel")
        self.bar = QProgressBar()
        self.bar.setObjectName("downloadsBar")
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setFixedWidth(120)
        self.bar.setMaximumHeight(14)
        self.cancel_button = QToolButton()
        self.cancel_button.setObjectName("downloadsCancel")
        self.cancel_button.setText("✕")
        self.cancel_button.setToolTip("Cancel this download (what was fetched is kept; a later download resumes)")
        self.cancel_button.clicked.connect(self.cancel)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.label)
        lay.addWidget(self.bar)
        lay.addWidget(self.cancel_button)
        models.downloadProgress.connect(self.refresh)
        models.downloadFinished.connect(self.refresh)
        self.refresh()

    def shown_download(self) -> str | None:
        """The repo the bar shows: the first download still running."""
        running = self.models.running_downloads()
        return running[0] if running else None

    def refresh(self, *_: object) -> None:
        repo = self.shown_download()
        self.setVisible(repo is not None)
        if repo is None:
            return
        done, total, state = self.models.downloads()[repo]
        more = len(self.models.running_downloads()) - 1
        name = download_name(repo)
        if state == "cancelling":
            text = f"Cancelling {name}…"
        elif total:
            text = f"Downloading {name} {format_size(done)} / {format_size(total)}"
        else:
            text = f"Downloading {name}…"
        self.label.setText(text + (f"  (+{more} more)" if more > 0 else ""))
        if total:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(1000 * min(done / total, 1.0)))
        else:
            self.bar.setRange(0, 0)  # size not known yet
        self.setToolTip(f"{name}: {100 * done / total:.0f} %" if total else name)
        self.cancel_button.setEnabled(state != "cancelling")

    def cancel(self) -> None:
        repo = self.shown_download()
        if repo is not None:
            self.models.cancel_download(repo)


__all__ = ["DownloadsIndicator"]
