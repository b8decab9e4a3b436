"""Choose a model: the built-in one, local diffusers folders and .safetensors checkpoints, models used before
(a moved or deleted one is shown as missing), and a short curated list to download from the hub, with progress."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core.model_registry import CURATED, ModelRegistry, format_size
from desktop_app.core.modelinfo import BUILTIN

CHECKPOINT_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
FAMILY_NAMES = {
    "sd1": "SD 1.x",
    "sd1-inpaint": "SD 1.x inpainting",
    "sd2": "SD 2.x",
    "sd2-v": "SD 2.x (v)",
    "sd2-inpaint": "SD 2.x inpainting",
    "sdxl": "SDXL",
    "sdxl-inpaint": "SDXL inpainting",
}

# downloader(repo, on_progress, cancel) -> a future (concurrent or asyncio) that resolves when the model is in the cache.
# on_progress gets an object with done_bytes, total_bytes, rate (bytes/s) and eta_seconds; it may be called from any thread.
Downloader = Callable[[str, Callable[[Any], None], threading.Event], Any]


def check_model_folder(path: str | Path) -> str | None:
    """None when `path` looks like a diffusers pipeline folder, else a reason."""
    p = Path(path)
    if not p.is_dir():
        return f"{p} is not a folder."
    if not (p / "model_index.json").is_file():
        return f"{p} has no model_index.json: choose a diffusers pipeline folder."
    return None


def check_model_file(path: str | Path, allow_pickle: bool = False) -> str | None:
    """None when `path` is a checkpoint file the app may open, else a reason."""
    p = Path(path)
    if not p.is_file():
        return f"{p} is not a file."
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        return f"{p.name} is a pickle checkpoint, which can hide code that runs when it is opened. Use a .safetensors version, or tick \u201cAllow pickle checkpoints\u201d if you trust where it came from."
    if suffix not in CHECKPOINT_SUFFIXES + PICKLE_SUFFIXES:
        return f"{p.name} is not a model checkpoint (.safetensors)."
    return None




class ModelsDialog(QDialog):
    # cross-thread: emitted from the download's thread, handled on the GUI thread (queued)
    allowPickleChanged = Signal(bool)  # the user's opt-in to pickle checkpoints; the window keeps it in the settings
    _progress = Signal(object)
    _done = Signal(str, str)  # repo, error message ("" when it worked; "cancelled")

    def __init__(
        self,
        models: list[str],
        current: str | None = None,
        parent: QWidget | None = None,
        *,
        downloader: Downloader | None = None,
        registry: ModelRegistry | None = None,
        allow_pickle: bool = False,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("modelsDialog")
        self.setWindowTitle("Models")
        self.resize(640, 560)
        self.downloader = downloader
        self.allow_pickle = allow_pickle
        self._cancel: threading.Event | None = None
        self._downloading: str | None = None
        self.list = QListWidget(objectName="modelsList")
        self.error_label = QLabel(objectName="modelsError")
        self.error_label.setStyleSheet("color: #ff8080;")
        self.error_label.setWordWrap(True)
        add = QPushButton("Add diffusers folder…", objectName="addModelFolderButton")
        add.clicked.connect(self._browse)
        add_file = QPushButton("Add checkpoint file…", objectName="addModelFileButton")
        add_file.clicked.connect(self._browse_file)
        self.allow_pickle_check = QCheckBox("Allow pickle checkpoints (.ckpt, .pt, .bin)", objectName="allowPickleCheck")
        self.allow_pickle_check.setToolTip("A pickle file can run any code on this computer when it is opened.\nTick only for files from a source you trust; prefer .safetensors.")
        self.allow_pickle_check.setChecked(allow_pickle)
        self.allow_pickle_check.toggled.connect(self._on_allow_pickle)

        self.curated = QListWidget(objectName="curatedList")
        for model in CURATED:
            item = QListWidgetItem(f"{model.name}   —   {FAMILY_NAMES.get(model.family, model.family)}, {model.size_gb:.1f} GB\n      {model.note}")
            item.setData(Qt.ItemDataRole.UserRole, model.repo)
            item.setToolTip(f"{model.repo}\n{model.size_gb:.1f} GB download on a GPU (half precision), {model.size_gb_fp32:.1f} GB on a CPU")
            self.curated.addItem(item)
        self.curated.setCurrentRow(0)
        self.download_button = QPushButton("Download" if downloader else "Use (downloads on first run)", objectName="downloadButton")
        self.download_button.clicked.connect(self._download_selected)
        self.cancel_button = QPushButton("Cancel download", objectName="cancelDownloadButton")
        self.cancel_button.clicked.connect(self.cancel_download)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar(objectName="downloadProgress")
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setVisible(False)
        self.download_status = QLabel(objectName="downloadStatus")
        self.download_status.setWordWrap(True)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Pick the model for the next jobs:"))
        lay.addWidget(self.list, 3)
        row = QHBoxLayout()
        row.addWidget(add)
        row.addWidget(add_file)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addWidget(self.allow_pickle_check)
        lay.addWidget(self.error_label)
        lay.addWidget(QLabel("Or download one from the Hugging Face hub:"))
        lay.addWidget(self.curated, 2)
        drow = QHBoxLayout()
        drow.addWidget(self.download_button)
        drow.addWidget(self.cancel_button)
        drow.addWidget(self.progress, 1)
        lay.addLayout(drow)
        lay.addWidget(self.download_status)
        lay.addWidget(buttons)
        self.list.itemDoubleClicked.connect(lambda *_: self.accept())
        self._progress.connect(self._on_progress)
        self._done.connect(self._on_done)

        for m in [BUILTIN, *[m for m in models if m != BUILTIN]]:
            self._add_item(m)
        try:
            known = (registry or ModelRegistry()).all()
        except Exception:  # noqa: BLE001 - the list of known models is a convenience
            known = []
        for model in known:
            item = self._add_item(model.location)
            self._describe(item, model.family, model.model_hash, model.missing)
        self.select(current or BUILTIN)

    # -- the list ---------------------------------------------------------------------------------
    def _add_item(self, source: str) -> QListWidgetItem:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == source:
                return self.list.item(i)
        if source == BUILTIN:
            label = "Built-in (shapes)"
        elif Path(source).is_absolute():
            label = f"{Path(source).name}   —   {source}"
        else:
            label = f"{source}   —   hub"
        item = QListWidgetItem(label)
        item.setData(Qt.ItemDataRole.UserRole, source)
        item.setData(Qt.ItemDataRole.UserRole + 1, label)
        self.list.addItem(item)
        return item

    def _describe(self, item: QListWidgetItem, family: str, model_hash: str, missing: bool) -> None:
        base = item.data(Qt.ItemDataRole.UserRole + 1)
        extra = ", ".join(x for x in (FAMILY_NAMES.get(family, family), f"hash {model_hash}" if model_hash else "") if x)
        item.setText(f"{base}   ({extra})" if extra else base)
        item.setData(Qt.ItemDataRole.UserRole + 2, missing)
        if missing:
            item.setText(f"{item.text()}   — missing: moved or deleted")
            item.setForeground(QColor("#909090"))
            item.setToolTip("This model is no longer where it was. Add it again from its new place, or remove it.")
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsSelectable)

    def is_missing(self, source: str) -> bool:
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == source:
                return bool(item.data(Qt.ItemDataRole.UserRole + 2))
        return False

    def select(self, source: str) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == source and not self.list.item(i).data(Qt.ItemDataRole.UserRole + 2):
                self.list.setCurrentRow(i)
                return

    def add_folder(self, path: str) -> bool:
        """Add a diffusers folder; shows why not when it is not one."""
        return self._add_checked(path, check_model_folder(path))

    def add_file(self, path: str) -> bool:
        """Add a single-file checkpoint; a pickle one only when the user allowed pickles."""
        return self._add_checked(path, check_model_file(path, self.allow_pickle))

    def _add_checked(self, path: str, problem: str | None) -> bool:
        if problem:
            self.error_label.setText(problem)
            return False
        self.error_label.clear()
        self.list.setCurrentItem(self._add_item(str(Path(path).resolve())))
        return True

    def _on_allow_pickle(self, allowed: bool) -> None:
        self.allow_pickle = allowed
        self.allowPickleChanged.emit(allowed)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a diffusers model folder")
        if path:
            self.add_folder(path)

    def _browse_file(self) -> None:
        patterns = "Checkpoints (*.safetensors" + (" *.ckpt *.pt *.pth *.bin" if self.allow_pickle else "") + ")"
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model checkpoint", "", patterns)
        if path:
            self.add_file(path)

    def chosen(self) -> str | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def models(self) -> list[str]:
        """Every usable model in the list (missing ones left out)."""
        items = [self.list.item(i) for i in range(self.list.count())]
        return [item.data(Qt.ItemDataRole.UserRole) for item in items if not item.data(Qt.ItemDataRole.UserRole + 2)]

    # -- downloads ------------------------------------------------------------------------------
    def _download_selected(self) -> None:
        item = self.curated.currentItem()
        if item is not None:
            self.download(item.data(Qt.ItemDataRole.UserRole))

    def download(self, repo: str) -> None:
        """Fetch `repo` with the downloader (progress, cancel), or, without one, just pick it: it downloads on first use."""
        if self.downloader is None:
            self.list.setCurrentItem(self._add_item(repo))
            self.download_status.setText(f"{repo} will download when it is first used; the progress shows in the main window.")
            return
        if self._downloading:
            return
        self._downloading = repo
        self._cancel = threading.Event()
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.download_button.setEnabled(False)
        self.download_status.setText(f"Starting the download of {repo}…")
        try:
            future = self.downloader(repo, self._progress.emit, self._cancel)
        except Exception as exc:  # noqa: BLE001 - shown, never a crash
            self._done.emit(repo, str(exc) or type(exc).__name__)
            return
        future.add_done_callback(lambda fut, repo=repo: self._done.emit(repo, _outcome(fut)))

    def cancel_download(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.download_status.setText("Cancelling… what was fetched is kept, and the next download resumes from it.")

    def _on_progress(self, p: Any) -> None:
        total = max(int(getattr(p, "total_bytes", 0)), 1)
        done = int(getattr(p, "done_bytes", 0))
        self.progress.setValue(int(1000 * min(done / total, 1.0)))
        rate = float(getattr(p, "rate", 0.0))
        eta = float(getattr(p, "eta_seconds", 0.0))
        eta_text = f"{eta / 60:.0f} min" if eta >= 90 else f"{eta:.0f} s"
        self.download_status.setText(f"{self._downloading}: {format_size(done)} of {format_size(total)}   {format_size(rate)}/s   ETA {eta_text}")

    def _on_done(self, repo: str, error: str) -> None:
        self._downloading = None
        self._cancel = None
        self.cancel_button.setEnabled(False)
        self.download_button.setEnabled(True)
        if error == "cancelled":
            self.download_status.setText(f"The download of {repo} was cancelled; it resumes where it stopped next time.")
            return
        if error:
            self.download_status.setText(f"The download of {repo} failed: {error}")
            return
        self.progress.setValue(1000)
        self.download_status.setText(f"{repo} is downloaded.")
        self.list.setCurrentItem(self._add_item(repo))


def _outcome(future: Any) -> str:
    """'' for success, 'cancelled', or the error's message."""
    try:
        if future.cancelled():
            return "cancelled"
        exc = future.exception()
    except BaseException:  # noqa: BLE001 - CancelledError from some future kinds
        return "cancelled"
    if exc is None:
        return ""
    name = type(exc).__name__
    if "Cancel" in name:
        return "cancelled"
    message = getattr(exc, "message", None) or str(exc) or name
    hint = getattr(exc, "hint", "")
    return f"{message} ({hint})" if hint else message
