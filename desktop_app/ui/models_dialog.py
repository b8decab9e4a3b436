"""Choose a model: the built-in one or a local diffusers folder (a first version; extended later)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core.modelinfo import BUILTIN


def check_model_folder(path: str | Path) -> str | None:
    """None when `path` looks like a diffusers pipeline folder, else a reason."""
    p = Path(path)
    if not p.is_dir():
        return f"{p} is not a folder."
    if not (p / "model_index.json").is_file():
        return f"{p} has no model_index.json: choose a diffusers pipeline folder."
    return None


class ModelsDialog(QDialog):
    def __init__(self, models: list[str], current: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("modelsDialog")
        self.setWindowTitle("Models")
        self.resize(520, 340)
        self.list = QListWidget(objectName="modelsList")
        self.error_label = QLabel(objectName="modelsError")
        self.error_label.setStyleSheet("color: #ff8080;")
        self.error_label.setWordWrap(True)
        add = QPushButton("Add diffusers folder…", objectName="addModelFolderButton")
        add.clicked.connect(self._browse)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Pick the model for the next jobs:"))
        lay.addWidget(self.list, 1)
        row = QHBoxLayout()
        row.addWidget(add)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addWidget(self.error_label)
        lay.addWidget(buttons)
        self.list.itemDoubleClicked.connect(lambda *_: self.accept())
        for m in [BUILTIN, *[m for m in models if m != BUILTIN]]:
            self._add_item(m)
        self.select(current or BUILTIN)

    def _add_item(self, source: str) -> QListWidgetItem:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == source:
                return self.list.item(i)
        label = "Built-in (shapes)" if source == BUILTIN else f"{Path(source).name}   —   {source}"
        item = QListWidgetItem(label)
        item.setData(Qt.ItemDataRole.UserRole, source)
        self.list.addItem(item)
        return item

    def select(self, source: str) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == source:
                self.list.setCurrentRow(i)
                return

    def add_folder(self, path: str) -> bool:
        """Add a diffusers folder; shows why not when it is not one."""
        problem = check_model_folder(path)
        if problem:
            self.error_label.setText(problem)
            return False
        self.error_label.clear()
        item = self._add_item(str(Path(path).resolve()))
        self.list.setCurrentItem(item)
        return True

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a diffusers model folder")
        if path:
            self.add_folder(path)

    def chosen(self) -> str | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def models(self) -> list[str]:
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]
