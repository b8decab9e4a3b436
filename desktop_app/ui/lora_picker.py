"""The LoRA picker: the LoRAs in the LoRA folder with their family and a weight each, inserted into the prompt as
A1111's `<lora:NAME:WEIGHT>` tag at the cursor (the engine loads the LoRA the tag names when the job runs).

Bound to a `LoraLibrary` (the list, the weights, the model's family); a LoRA of another family than the current
model's says so in its row, and again when it is inserted.
"""

from __future__ import annotations

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.model.lora_library import FAMILY_NAMES, MAX_WEIGHT, MIN_WEIGHT, LoraLibrary
from desktop_app.ui.widgets import named

WARN = QColor(230, 160, 60)


class LoraPicker(QWidget):
    noticed = Signal(str)  # for the status bar: what was inserted, or why it will not load

    def __init__(self, library: LoraLibrary, prompt: QPlainTextEdit, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("loraPicker")
        self.library = library
        self.prompt = prompt
        self._syncing = False

        self.list = named(QListWidget(), "loraList")
        self.list.setAccessibleName("LoRAs")
        self.list.setMaximumHeight(110)
        self.empty_label = named(QLabel(), "loraEmptyLabel")
        self.empty_label.setWordWrap(True)
        self.empty_label.setEnabled(False)
        self.note_label = named(QLabel(), "loraNoteLabel")  # why the selected LoRA does not fit the model
        self.note_label.setWordWrap(True)
        self.note_label.setStyleSheet(f"color: {WARN.name()};")
        self.weight_spin = named(QDoubleSpinBox(), "loraWeightSpin")
        self.weight_spin.setAccessibleName("LoRA weight")
        self.weight_spin.setRange(MIN_WEIGHT, MAX_WEIGHT)
        self.weight_spin.setSingleStep(0.05)
        self.weight_spin.setDecimals(2)
        self.weight_spin.setValue(1.0)
        self.weight_spin.setToolTip("The selected LoRA's weight in its tag (0.5 to 1 suits most)")
        self.insert_button = named(QPushButton("Insert"), "insertLoraButton")
        self.insert_button.setToolTip("Insert the selected LoRA's tag at the prompt's cursor (or double-click it)")
        self.folder_button = named(QToolButton(), "openLoraFolderButton")
        self.folder_button.setText("Folder")
        self.folder_button.setToolTip("Open the LoRA folder: put .safetensors LoRAs there")
        self.refresh_button = named(QToolButton(), "refreshLorasButton")
        self.refresh_button.setText("Refresh")
        self.refresh_button.setToolTip("List the LoRA folder again")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Weight"))
        row.addWidget(self.weight_spin, 1)
        row.addWidget(self.insert_button)
        tools = QHBoxLayout()
        tools.setContentsMargins(0, 0, 0, 0)
        tools.addStretch(1)
        tools.addWidget(self.folder_button)
        tools.addWidget(self.refresh_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.list)
        lay.addWidget(self.empty_label)
        lay.addWidget(self.note_label)
        lay.addLayout(row)
        lay.addLayout(tools)

        self.list.currentRowChanged.connect(self._on_row)
        self.list.itemDoubleClicked.connect(lambda *_: self.insert_selected())
        self.insert_button.clicked.connect(self.insert_selected)
        self.refresh_button.clicked.connect(library.refresh)
        self.folder_button.clicked.connect(self.open_folder)
        self.weight_spin.valueChanged.connect(self._on_weight)
        library.changed.connect(self.sync)
        library.weightChanged.connect(self._on_weight_changed)
        self.sync()

    def selected(self):
        row = self.list.currentRow()
        loras = self.library.loras()
        return loras[row] if 0 <= row < len(loras) else None

    # -- user input ------------------------------------------------------------------------------------
    def _on_row(self, row: int) -> None:
        if self._syncing:
            return
        lora = self.selected()
        self._syncing = True
        self.weight_spin.setValue(self.library.weight(lora.name) if lora is not None else 1.0)
        self._syncing = False
        self._update_buttons()

    def _on_weight(self, value: float) -> None:
        lora = self.selected()
        if not self._syncing and lora is not None:
            self.library.set_weight(lora.name, value)

    def _on_weight_changed(self, name: str, weight: float) -> None:
        """A weight changed (here while typing, or elsewhere): the row's tag says it; the spin is left as typed."""
        for row, lora in enumerate(self.library.loras()):
            item = self.list.item(row)
            if lora.name == name and item is not None:
                item.setToolTip(self._tooltip(lora))
        lora = self.selected()
        if lora is not None and lora.name == name and abs(self.weight_spin.value() - weight) > 1e-6:
            self._syncing = True
            self.weight_spin.setValue(weight)
            self._syncing = False

    def _tooltip(self, lora) -> str:
        tip = f"{lora.path}\n{self.library.tag(lora.name)}"
        if getattr(lora, "reason", ""):
            tip += f"\n{lora.reason}"
        why = self.library.mismatch(lora)
        return tip + (f"\n{why}" if why else "")

    def insert_selected(self) -> str | None:
        """Insert the selected LoRA's tag at the prompt's cursor, spaced from the words around it."""
        lora = self.selected()
        if lora is None:
            return None
        text = self.library.tag(lora.name)
        cursor = self.prompt.textCursor()
        doc = self.prompt.toPlainText()
        start, end = cursor.selectionStart(), cursor.selectionEnd()
        before = doc[start - 1] if start > 0 else ""
        after = doc[end] if end < len(doc) else ""
        insert = (
            (" " if before and not before.isspace() else "") + text + (" " if after and not after.isspace() else "")
        )
        cursor.insertText(insert)
        self.prompt.setTextCursor(cursor)
        self.prompt.setFocus()
        why = self.library.mismatch(lora)
        self.noticed.emit(f"Inserted {text}" + (f" — {why}" if why else ""))
        return text

    def open_folder(self) -> None:
        folder = self.library.folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the desktop says it cannot open it; the folder's path is in the tooltip
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    # -- library -> widgets ----------------------------------------------------------------------------
    def sync(self) -> None:
        loras = self.library.loras()
        self._syncing = True
        try:
            keep = self.list.currentRow()
            self.list.clear()
            for lora in loras:
                family = FAMILY_NAMES.get(lora.family, lora.family)
                why = self.library.mismatch(lora)
                item = QListWidgetItem(f"{lora.name}  ·  {family}" + ("  ⚠" if why else ""))
                if why:
                    item.setForeground(WARN)
                item.setToolTip(self._tooltip(lora))
                self.list.addItem(item)
            if loras:
                self.list.setCurrentRow(min(max(0, keep), len(loras) - 1))
                lora = self.selected()
                self.weight_spin.setValue(self.library.weight(lora.name) if lora is not None else 1.0)
        finally:
            self._syncing = False
        folder = self.library.folder()
        self.folder_button.setToolTip(f"Open the LoRA folder: {folder}")
        if self.library.error():
            self.empty_label.setText(self.library.error())
        elif not self.library.scanned():
            self.empty_label.setText("")
        elif not loras:
            self.empty_label.setText(f"No LoRAs in {folder}: put .safetensors LoRAs there, then Refresh.")
        self.empty_label.setVisible(bool(self.library.error()) or (self.library.scanned() and not loras))
        self._update_buttons()

    def _update_buttons(self) -> None:
        lora = self.selected()
        self.insert_button.setEnabled(lora is not None)
        self.weight_spin.setEnabled(lora is not None)
        why = self.library.mismatch(lora) if lora is not None else ""
        self.note_label.setText(f"⚠ {why}." if why else "")
        self.note_label.setVisible(bool(why))
