"""Choose a model: the built-in one, local diffusers folders and .safetensors checkpoints, models used before
(a moved or deleted one is shown as missing), and a short curated list to download from the hub, with progress.

``ModelsDialog(models, parent=None)`` binds to a `model.models.Models`: the list is its `sources()` and `known()`,
adding, removing, the pickle opt-in and downloads go to it, and OK selects the chosen model (`models.select`,
which preloads it). A download belongs to `Models`, not to the dialog: closing the dialog while one runs asks
whether to keep it in the background (the main window's DownloadsIndicator shows it) or cancel it.

FLUX.1 / SD 3.x transformer files (`flux1-dev-Q8_0.gguf`) come without their text encoders and VAE: one button per
flow family fetches only those (`Models.download_parts`), and a file whose load failed for want of them is offered
"Download the text encoders and VAE (about N GB)", after which it loads."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from desktop_app.backend import PARTS, parts_of
from desktop_app.core.model_registry import CURATED, format_size
from desktop_app.core.modelinfo import BUILTIN
from desktop_app.model.lora_library import FAMILY_NAMES
from desktop_app.model.models import Models, display_name, download_name

CHECKPOINT_SUFFIXES = (".safetensors", ".sft", ".gguf")  # .sft / .gguf: SD 3.x and FLUX.1 transformers
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


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
        return f"{p.name} is not a model checkpoint (.safetensors, or .gguf for a FLUX.1 / SD 3.x transformer)."
    return None


DIALOG_SIZE = QSize(640, 580)
FRAME_ROOM = QSize(16, 48)  # a window manager's frame and title bar around the dialog

SourceRole = Qt.ItemDataRole.UserRole
LabelRole = Qt.ItemDataRole.UserRole + 1
MissingRole = Qt.ItemDataRole.UserRole + 2


class ModelsDialog(QDialog):
    """The models dialog; see the module docstring. objectName ``modelsDialog``."""

    def __init__(self, models: Models, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("modelsDialog")
        self.setWindowTitle("Models")
        self.models = models
        self._watching: str | None = None  # the download whose progress this dialog shows
        self._shown = False
        self.list = QListWidget()
        self.list.setObjectName("modelsList")
        self.error_label = QLabel()
        self.error_label.setObjectName("modelsError")
        self.error_label.setStyleSheet("color: #ff8080;")
        self.error_label.setWordWrap(True)
        add = QPushButton("Add diffusers folder…")
        add.setObjectName("addModelFolderButton")
        add.clicked.connect(self._browse)
        add_file = QPushButton("Add checkpoint file…")
        add_file.setObjectName("addModelFileButton")
        add_file.clicked.connect(self._browse_file)
        self.remove_button = QPushButton("Remove from list")
        self.remove_button.setObjectName("removeModelButton")
        self.remove_button.setToolTip("Take the model out of this list (its files stay where they are)")
        self.remove_button.clicked.connect(self.remove_selected)
        self.allow_pickle_check = QCheckBox("Allow pickle checkpoints (.ckpt, .pt, .bin)")
        self.allow_pickle_check.setObjectName("allowPickleCheck")
        self.allow_pickle_check.setToolTip(
            "A pickle file can run any code on this computer when it is opened.\nTick only for files from a source you trust; prefer .safetensors."
        )
        self.allow_pickle_check.setChecked(models.allow_pickle)
        self.allow_pickle_check.toggled.connect(models.set_allow_pickle)

        self.curated = QListWidget()
        self.curated.setObjectName("curatedList")
        for model in CURATED:
            item = QListWidgetItem(
                f"{model.name}   —   {FAMILY_NAMES.get(model.family, model.family)}, {model.size_gb:.1f} GB\n      {model.note}"
            )
            item.setData(SourceRole, model.repo)
            item.setToolTip(
                f"{model.repo}\n{model.size_gb:.1f} GB download on a GPU (half precision), {model.size_gb_fp32:.1f} GB on a CPU"
            )
            self.curated.addItem(item)
        self.curated.setCurrentRow(0)
        self.download_button = QPushButton("Download" if models.can_download() else "Use (downloads on first run)")
        self.download_button.setObjectName("downloadButton")
        self.download_button.clicked.connect(self._download_selected)
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.setObjectName("cancelDownloadButton")
        self.cancel_button.clicked.connect(self.cancel_download)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setObjectName("downloadProgress")
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setVisible(False)
        self.download_status = QLabel()
        self.download_status.setObjectName("downloadStatus")
        self.download_status.setWordWrap(True)
        # the text encoders and VAE of FLUX.1 / SD 3.x transformer files: one button per family, and the offer
        self.parts_buttons: dict[str, QPushButton] = {}
        for kind, parts in PARTS.items():
            button = QPushButton(f"{parts.family_name}: download (about {parts.size_gb:.1f} GB)")
            button.setObjectName(f"partsButton_{kind}")
            button.setToolTip(
                f"What every {parts.family_name} transformer file (.safetensors, .gguf) needs besides itself: the text "
                f"encoders, tokenizers and VAE of {parts.repo}, not its transformer."
                + ("\nGated: accept its license on the hub and log in first (hf auth login)." if parts.gated else "")
            )
            button.clicked.connect(lambda _=False, part_id=parts.id: self.download(part_id))
            self.parts_buttons[kind] = button
        self.parts_label = QLabel()
        self.parts_label.setObjectName("partsMissingLabel")
        self.parts_label.setWordWrap(True)
        self.parts_offer = QPushButton()
        self.parts_offer.setObjectName("downloadPartsButton")
        self.parts_offer.clicked.connect(self.download_offered_parts)
        self._offer: str | None = None  # the model the offer is for

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self._buttons = buttons
        buttons.setObjectName("modelsButtons")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        # the body scrolls and OK / Cancel stay below it: at a large scale factor the dialog is taller than the
        # screen, and OK must still be reachable
        body = self._body = QWidget()
        body.setObjectName("modelsBody")
        self.body_scroll = QScrollArea()
        self.body_scroll.setObjectName("modelsScroll")
        self.body_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.body_scroll.setWidgetResizable(True)
        self.body_scroll.setWidget(body)
        outer = self._outer = QVBoxLayout(self)
        outer.addWidget(self.body_scroll, 1)
        outer.addWidget(buttons)
        lay = QVBoxLayout(body)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel("Pick the model for the next jobs:"))
        lay.addWidget(self.list, 3)
        row = QHBoxLayout()
        row.addWidget(add)
        row.addWidget(add_file)
        row.addStretch(1)
        row.addWidget(self.remove_button)
        lay.addLayout(row)
        lay.addWidget(self.allow_pickle_check)
        lay.addWidget(self.error_label)
        orow = QHBoxLayout()
        orow.addWidget(self.parts_label, 1)
        orow.addWidget(self.parts_offer)
        lay.addLayout(orow)
        lay.addWidget(QLabel("Or download one from the Hugging Face hub:"))
        lay.addWidget(self.curated, 2)
        drow = QHBoxLayout()
        drow.addWidget(self.download_button)
        drow.addWidget(self.cancel_button)
        drow.addWidget(self.progress, 1)
        lay.addLayout(drow)
        parts_title = QLabel("The text encoders and VAE that FLUX.1 / SD 3.x transformer files need:")
        parts_title.setWordWrap(True)
        lay.addWidget(parts_title)
        prow = QHBoxLayout()
        for button in self.parts_buttons.values():
            prow.addWidget(button)
        prow.addStretch(1)
        lay.addLayout(prow)
        lay.addWidget(self.download_status)
        # Enter is OK wherever the focus is, not a click on the last button used ("Add diffusers folder…" again)
        for button in self.findChildren(QPushButton):
            button.setAutoDefault(False)
        self.ok_button.setDefault(True)
        self._fit_to_screen()
        self.list.itemDoubleClicked.connect(lambda *_: self.accept())
        self.list.currentItemChanged.connect(self._update_buttons)
        models.sourcesChanged.connect(self._fill)
        models.downloadProgress.connect(self._on_progress)
        models.downloadFinished.connect(self._on_finished)
        models.partsMissing.connect(self._update_buttons)
        self._fill()
        self.select(models.current())
        running = models.running_downloads()
        if running:  # started before, kept in the background: show it again
            self._watch(running[0])

    # -- size ---------------------------------------------------------------------------------------
    def _fit_to_screen(self) -> None:
        """As large as the body wants (at least 640x580), but never larger than the screen it opens on, window
        frame included: the rest scrolls."""
        body = self._body.sizeHint()
        margins = self._outer.contentsMargins()
        bar = self.body_scroll.verticalScrollBar().sizeHint().width()  # room for it, should the body scroll
        buttons = self._buttons.sizeHint().height() + self._outer.spacing()
        want = QSize(
            max(DIALOG_SIZE.width(), body.width() + margins.left() + margins.right() + bar),
            max(DIALOG_SIZE.height(), body.height() + buttons + margins.top() + margins.bottom()),
        )
        parent = self.parentWidget()
        screen = (parent.screen() if parent is not None else None) or self.screen() or QGuiApplication.primaryScreen()
        if screen is not None:
            avail = screen.availableGeometry()
            want = want.boundedTo(QSize(avail.width() - FRAME_ROOM.width(), avail.height() - FRAME_ROOM.height()))
        self.resize(want)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802
        if not self._shown:  # the screen it shows on may differ from the one guessed when it was built
            self._shown = True
            self._fit_to_screen()
        super().showEvent(event)

    # -- the list ---------------------------------------------------------------------------------
    def _fill(self) -> None:
        chosen = self.chosen()
        self.list.blockSignals(True)
        self.list.clear()
        for source in self.models.sources():
            item = self._add_item(source)
            info = self.models.info(source)
            if info is not None:
                self._describe(
                    item, str(getattr(info, "family", "") or ""), str(getattr(info, "model_hash", "") or ""), False
                )
        for known in self.models.known():
            item = self._add_item(known.location)
            if self.models.info(known.location) is None:
                self._describe(item, known.family, known.model_hash, known.missing)
        self.list.blockSignals(False)
        self.select(chosen or self.models.current())
        self._update_buttons()

    def _add_item(self, source: str) -> QListWidgetItem:
        for i in range(self.list.count()):
            if self.list.item(i).data(SourceRole) == source:
                return self.list.item(i)
        if source == BUILTIN:
            label = "Built-in (shapes)"
        elif Path(source).is_absolute():
            label = f"{Path(source).name}   —   {source}"
        else:
            label = f"{source}   —   hub"
        item = QListWidgetItem(label)
        item.setData(SourceRole, source)
        item.setData(LabelRole, label)
        self.list.addItem(item)
        return item

    def _describe(self, item: QListWidgetItem, family: str, model_hash: str, missing: bool) -> None:
        base = item.data(LabelRole)
        extra = ", ".join(
            x for x in (FAMILY_NAMES.get(family, family), f"hash {model_hash}" if model_hash else "") if x
        )
        item.setText(f"{base}   ({extra})" if extra else base)
        item.setData(MissingRole, missing)
        if missing:
            item.setText(f"{item.text()}   — missing: moved or deleted")
            item.setForeground(QColor("#909090"))
            item.setToolTip("This model is no longer where it was. Add it again from its new place, or remove it.")

    def _item(self, source: str) -> QListWidgetItem | None:
        for i in range(self.list.count()):
            if self.list.item(i).data(SourceRole) == source:
                return self.list.item(i)
        return None

    def is_missing(self, source: str) -> bool:
        item = self._item(source)
        return bool(item is not None and item.data(MissingRole))

    def select(self, source: str | None) -> None:
        """Highlight `source` in the list (a missing one cannot be chosen, but can be highlighted to remove it)."""
        item = self._item(source) if source else None
        if item is not None:
            self.list.setCurrentItem(item)

    def highlighted(self) -> str | None:
        item = self.list.currentItem()
        return item.data(SourceRole) if item is not None else None

    def chosen(self) -> str | None:
        """The model OK would select: the highlighted one, unless it is missing."""
        item = self.list.currentItem()
        if item is None or item.data(MissingRole):
            return None
        return item.data(SourceRole)

    def sources(self) -> list[str]:
        """Every usable model in the list (missing ones left out)."""
        items = [self.list.item(i) for i in range(self.list.count())]
        return [item.data(SourceRole) for item in items if not item.data(MissingRole)]

    def _update_buttons(self, *_: object) -> None:
        source = self.highlighted()
        self.remove_button.setEnabled(bool(source) and source != BUILTIN)
        self._update_offer()

    # -- the parts of a transformer file ------------------------------------------------------------
    def _update_offer(self) -> None:
        """Offer the parts of the highlighted model when its load failed for want of them, else of the latest
        model that did."""
        source = self.highlighted()
        if source is None or self.models.parts_missing(source) is None:
            source = self.models.parts_wanted()
        parts = self.models.parts_missing(source) if source else None
        self._offer = source if parts is not None else None
        self.parts_label.setVisible(parts is not None)
        self.parts_offer.setVisible(parts is not None)
        if parts is None or source is None:
            return
        name = display_name(source)
        if self.models.waiting_for_parts(source):
            self.parts_label.setText(f"{name} loads once {parts.label} are downloaded.")
        else:
            self.parts_label.setText(
                f"{name} is a {parts.family_name} transformer file: {parts.label} it needs are not on this computer."
            )
        self.parts_offer.setText(f"Download the text encoders and VAE (about {parts.size_gb:.1f} GB)")
        self.parts_offer.setToolTip(
            f"Only the text encoders, tokenizers and VAE of {parts.repo}, not its transformer; then {name} loads."
            + ("\nGated: accept its license on the hub and log in first (hf auth login)." if parts.gated else "")
        )
        self.parts_offer.setEnabled(self.models.can_download() and parts.id not in self.models.running_downloads())

    def download_offered_parts(self) -> None:
        """Fetch the text encoders and VAE the offered file needs, then load it."""
        source = self._offer
        parts = self.models.parts_missing(source) if source else None
        if source is None or parts is None:
            return
        if not self.models.can_download():
            self.download(parts.id)
            return
        if self.models.download_parts(parts.kind, then_load=source):
            self._watch(parts.id)
            self.download_status.setText(f"Starting the download of {parts.label}; then {display_name(source)} loads…")
        self._update_offer()

    def add_folder(self, path: str) -> bool:
        """Add a diffusers folder; shows why not when it is not one."""
        return self._add_checked(path, check_model_folder(path))

    def add_file(self, path: str) -> bool:
        """Add a single-file checkpoint; a pickle one only when the user allowed pickles."""
        return self._add_checked(path, check_model_file(path, self.models.allow_pickle))

    def _add_checked(self, path: str, problem: str | None) -> bool:
        if problem:
            self.error_label.setText(problem)
            return False
        self.error_label.clear()
        source = str(Path(path).resolve())
        self.models.add(source)
        self._fill()
        self.select(source)
        return True

    def remove_selected(self) -> bool:
        """Take the highlighted model out of the list (the built-in stays); its files are not touched."""
        source = self.highlighted()
        if not source or source == BUILTIN or not self.models.remove(source):
            return False
        self._fill()
        self.error_label.clear()
        return True

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a diffusers model folder")
        if path:
            self.add_folder(path)

    def _browse_file(self) -> None:
        patterns = (
            "Checkpoints (*.safetensors *.sft *.gguf"
            + (" *.ckpt *.pt *.pth *.bin" if self.models.allow_pickle else "")
            + ")"
        )
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model checkpoint", "", patterns)
        if path:
            self.add_file(path)

    # -- closing -----------------------------------------------------------------------------------
    def done(self, result: int) -> None:  # accept, reject, Escape and the close button all end here
        running = self.models.running_downloads()
        if running and not self._keep_in_background(running):
            for repo in running:
                self.models.cancel_download(repo)
        chosen = self.chosen()
        if (
            result == QDialog.DialogCode.Accepted
            and chosen
            and (chosen != self.models.current() or self.models.state() == "failed")
            and not self.models.waiting_for_parts(chosen)  # it loads once they are in
        ):
            self.models.select(chosen)
        super().done(result)

    def _keep_in_background(self, repos: list[str]) -> bool:
        names = ", ".join(download_name(r) for r in repos)
        answer = QMessageBox.question(
            self,
            "Download in progress",
            f"{names} {'is' if len(repos) == 1 else 'are'} still downloading.\n\n"
            "Keep downloading in the background? The progress shows in the main window's status bar.\n"
            "No cancels the download; what was fetched is kept and a later download resumes from it.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.Yes,
        )
        return answer == QMessageBox.StandardButton.Yes

    # -- downloads ------------------------------------------------------------------------------
    def _download_selected(self) -> None:
        item = self.curated.currentItem()
        if item is not None:
            self.download(item.data(SourceRole))

    def download(self, repo: str) -> None:
        """Fetch `repo` beside the jobs (Models owns it), or, without a downloader, pick it: it downloads on first use."""
        parts = parts_of(repo)
        if parts is not None and not self.models.can_download():
            self.download_status.setText(
                f"{parts.label[0].upper()}{parts.label[1:]} cannot be downloaded from here: run `{parts.command}`."
            )
            return
        if not self.models.can_download():
            self.models.add(repo)
            self._fill()
            self.select(repo)
            self.download_status.setText(
                f"{repo} will download when it is first used; the progress shows in the main window."
            )
            return
        if self.models.download(repo):
            self._watch(repo)
            self.download_status.setText(f"Starting the download of {download_name(repo)}…")

    def _watch(self, repo: str) -> None:
        self._watching = repo
        done, total, _state = self.models.downloads().get(repo, (0.0, 0.0, "running"))
        self.progress.setValue(int(1000 * min(done / total, 1.0)) if total else 0)
        self.progress.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.download_button.setEnabled(False)
        for button in self.parts_buttons.values():
            button.setEnabled(False)

    def cancel_download(self) -> None:
        if self._watching is not None and self.models.cancel_download(self._watching):
            self.download_status.setText("Cancelling… what was fetched is kept, and the next download resumes from it.")

    def _on_progress(self, repo: str, done: float, total: float) -> None:
        if repo != self._watching or self.models.downloads().get(repo, (0, 0, ""))[2] == "cancelling":
            return
        self.progress.setValue(int(1000 * min(done / total, 1.0)) if total else 0)
        if total:
            self.download_status.setText(f"{download_name(repo)}: {format_size(done)} of {format_size(total)}")

    def _on_finished(self, repo: str, path: str, error: str) -> None:
        if repo != self._watching:
            return
        self._watching = None
        self.cancel_button.setEnabled(False)
        self.download_button.setEnabled(True)
        for button in self.parts_buttons.values():
            button.setEnabled(True)
        name = download_name(repo)
        self._update_offer()
        if error == "cancelled":
            self.download_status.setText(
                f"The download of {name} was cancelled; it resumes where it stopped next time."
            )
            return
        if error:
            self.download_status.setText(f"The download of {name} failed: {error}")
            return
        self.progress.setValue(1000)
        parts = parts_of(repo)
        if parts is not None:  # no model of their own: the files of the family now load
            self.download_status.setText(
                f"{name[0].upper()}{name[1:]} are downloaded: {parts.family_name} files load now."
            )
            return
        self.download_status.setText(f"{repo} is downloaded.")
        self._fill()
        self.select(repo)


__all__ = ["ModelsDialog", "check_model_file", "check_model_folder"]
