"""The regions panel: regional prompts over the base prompt, bound to the `Document`'s regions.

Add, remove and pick a region, write its prompt (the same A1111 syntax as the main prompt) and weight, clear its
paint; the Region brush (R) paints the active one on the canvas. The state is the document's; this widget only
shows it and turns clicks and typing into calls on it.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core.requests import REGION_MODES
from desktop_app.model.brush import Brush
from desktop_app.model.document import Document
from desktop_app.model.regions import Region
from desktop_app.ui.prompt_panel import PromptEdit
from desktop_app.ui.widgets import named

HINT = (
    "Paint a region with the Region brush (R) and give it a prompt: it applies where painted, the main prompt "
    "everywhere else."
)
EDIT_MODE_TIP = "Regions do not apply in Edit mode: an edit runs on the target prompt alone"
MODE_TIP = (
    "How the region prompts apply.\n"
    "Attention: one UNet run; inside each region the picture attends to that region's prompt. About as fast "
    "as no regions, but colour and style that a model takes from the whole prompt (SDXL's pooled embedding, the "
    "built-in model's) stay the main prompt's, so they can mix.\n"
    "Latent: the model draws each region on its own crop with that region's whole prompt, and the results are "
    "blended where painted. Each region keeps its own colour and subject; it costs one more UNet run per region "
    "size and step (two regions: about 2x the time of no regions; the main prompt runs only where no region covers)."
)


class RegionsPanel(QWidget):
    runRequested = Signal()  # Ctrl+Enter in a region's prompt
    countChanged = Signal(int)

    def __init__(self, document: Document, brush: Brush, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("regionsPanel")
        self.document = document
        self.brush = brush
        self._syncing = False

        self.list = named(QListWidget(), "regionsList")
        self.list.setAccessibleName("Regions")
        self.list.setMaximumHeight(96)
        self.add_button = named(QPushButton("Add"), "addRegionButton")
        self.add_button.setToolTip("A new region; paint it on the canvas with the Region brush (R)")
        self.remove_button = named(QPushButton("Remove"), "removeRegionButton")
        self.remove_button.setToolTip("Remove the selected region (Ctrl+Z brings it back)")
        self.clear_button = named(QPushButton("Clear paint"), "clearRegionButton")
        self.clear_button.setToolTip("Clear the selected region's paint; its prompt stays (Ctrl+Z brings it back)")
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addWidget(self.clear_button)

        self.prompt_edit = PromptEdit("What the selected region shows…")
        self.prompt_edit.setObjectName("regionPromptEdit")
        self.prompt_edit.setAccessibleName("Region prompt")
        self.prompt_edit.setMaximumHeight(64)
        self.weight_spin = named(QDoubleSpinBox(), "regionWeightSpin")
        self.weight_spin.setAccessibleName("Region weight")
        self.weight_spin.setRange(0.0, 4.0)
        self.weight_spin.setSingleStep(0.05)
        self.weight_spin.setDecimals(2)
        self.weight_spin.setValue(1.0)
        self.weight_spin.setToolTip(
            "How strongly the region's prompt wins over the main prompt inside it (1: as strong)"
        )
        self.mode_combo = named(QComboBox(), "regionModeCombo")
        self.mode_combo.setAccessibleName("Region mode")
        for key, label in REGION_MODES.items():
            self.mode_combo.addItem(label, key)
        self.mode_combo.setToolTip(MODE_TIP)
        self.hint = named(QLabel(HINT), "regionsHint")
        self.hint.setWordWrap(True)
        self.hint.setEnabled(False)

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.addRow("Weight", self.weight_spin)
        form.addRow("Mode", self.mode_combo)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.list)
        lay.addLayout(buttons)
        self.tools_row = QHBoxLayout()  # the window's Region brush and eraser actions (set_tool_actions)
        self.tools_row.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(self.tools_row)
        lay.addWidget(self.prompt_edit)
        lay.addLayout(form)
        lay.addWidget(self.hint)

        self.add_button.clicked.connect(self._add)
        self.remove_button.clicked.connect(lambda: self.document.remove_region(self.document.active_index))
        self.clear_button.clicked.connect(lambda: self.document.clear_region(self.document.active_index))
        self.list.currentRowChanged.connect(self._on_row)
        self.prompt_edit.textChanged.connect(self._on_prompt)
        self.prompt_edit.submitted.connect(self.runRequested)
        self.weight_spin.valueChanged.connect(self._on_weight)
        self.mode_combo.currentIndexChanged.connect(self._on_mode)
        document.regionsChanged.connect(self.sync)
        document.undoChanged.connect(self.sync)  # a stroke's end: a region's "no paint" goes
        self.sync()

    def set_tool_actions(self, paint: QAction, erase: QAction) -> None:
        """The Region brush and eraser (the window's actions, with their R / Shift+R shortcuts) as buttons here,
        beside the regions they paint: the canvas tool bar has no room for them on a small screen."""
        for act, name, text in ((paint, "regionBrushButton", "Paint (R)"), (erase, "regionEraserButton", "Erase")):
            button = named(QToolButton(), name)
            act.setIconText(text)  # what a tool button shows; the menu keeps the action's full text
            button.setDefaultAction(act)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            self.tools_row.addWidget(button)
        self.tools_row.addStretch(1)

    # -- user input -> document ------------------------------------------------------------------------
    def _add(self) -> None:
        if self.document.add_region() is not None:
            self.brush.set_tool("region")  # the next stroke paints it
            self.prompt_edit.setFocus()

    def _on_row(self, row: int) -> None:
        if not self._syncing:
            self.document.set_active_region(row)
            if row >= 0 and not self.brush.paints_regions:
                self.brush.set_tool("region")

    def _on_prompt(self) -> None:
        if not self._syncing:
            self.document.set_region_prompt(self.document.active_index, self.prompt_edit.toPlainText())

    def _on_weight(self, value: float) -> None:
        if not self._syncing:
            self.document.set_region_weight(self.document.active_index, round(value, 3))

    def _on_mode(self, index: int) -> None:
        if not self._syncing and index >= 0:
            self.document.set_region_mode(self.mode_combo.itemData(index))

    def fill(self, data: Any) -> None:
        """Take the region mode from a request or a dict of its fields (our PNG's parameters): the regions' masks
        are not in a file's parameters, their mode is. Other values are left alone."""
        mode = data.get("region_mode") if isinstance(data, dict) else getattr(data, "region_mode", None)
        if mode in REGION_MODES:
            self.document.set_region_mode(mode)

    # -- document -> widgets -----------------------------------------------------------------------------
    def sync(self) -> None:
        regions = self.document.regions
        active = self.document.active_region()
        self._syncing = True
        try:
            while self.list.count() > len(regions):
                self.list.takeItem(self.list.count() - 1)
            for i, region in enumerate(regions):
                item = self.list.item(i)
                if item is None:
                    item = QListWidgetItem()
                    self.list.addItem(item)
                text, tip = _describe(i, region)
                if item.text() != text:
                    item.setText(text)
                item.setToolTip(tip)
                item.setIcon(_swatch(region.color))
            self.list.setCurrentRow(self.document.active_index)
            has = active is not None
            for w in (self.remove_button, self.prompt_edit, self.weight_spin):
                w.setEnabled(has)
            self.clear_button.setEnabled(has and active is not None and active.has_paint())
            prompt = active.prompt if active is not None else ""
            if self.prompt_edit.toPlainText() != prompt:
                self.prompt_edit.setPlainText(prompt)
            self.weight_spin.setValue(active.weight if active is not None else 1.0)
            self.mode_combo.setCurrentIndex(self.mode_combo.findData(self.document.region_mode))
        finally:
            self._syncing = False
        self.countChanged.emit(len(regions))

    def set_applies(self, applies: bool) -> None:
        """Edit mode takes no regions: the panel says so and cannot be changed there."""
        self.setEnabled(applies)
        self.setToolTip("" if applies else EDIT_MODE_TIP)
        self.hint.setText(HINT if applies else EDIT_MODE_TIP + ".")


def _describe(index: int, region: Region) -> tuple[str, str]:
    prompt = " ".join(region.prompt.split())
    short = prompt if len(prompt) <= 28 else prompt[:27] + "…"
    missing = []
    if not region.has_paint():
        missing.append("no paint")
    if not prompt:
        missing.append("no prompt")
    text = f"Region {index + 1}: {short or '(no prompt)'}"
    if "no paint" in missing:
        text += "  · no paint"
    tip = f"weight {region.weight:g}"
    if missing:
        tip += "; left out of the job until it has " + (
            "paint and a prompt" if len(missing) == 2 else ("paint" if "no paint" in missing else "a prompt")
        )
    return text, tip


def _swatch(color: str) -> QIcon:
    pix = QPixmap(12, 12)
    pix.fill(QColor(color))
    return QIcon(pix)
