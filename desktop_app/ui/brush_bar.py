"""The brush tool bar above the canvas, bound to a `Brush`: tool (the mask's brush and eraser, one compact button
for the selection tools, the Region brush and eraser for regional prompts), size, hardness, and the mask overlay's
look."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QColor, QIcon, QPixmap
from PySide6.QtWidgets import QColorDialog, QLabel, QMenu, QSlider, QToolBar, QToolButton, QWidget

from desktop_app.model.brush import Brush
from desktop_app.ui.widgets import named


class BrushToolBar(QToolBar):
    def __init__(
        self,
        brush: Brush,
        tools: tuple[QAction, ...],
        parent: QWidget | None = None,
        selections: tuple[QAction, ...] = (),
    ) -> None:
        """`tools`: the window's Brush and Eraser actions (the B and E shortcuts), then optionally its Region brush
        and Region eraser actions (R, Shift+R). Those two are kept checked with the brush's tool here but shown by
        the regions panel: at 1366x768 and scale 1.5 this bar has no width to spare. `selections`: the rectangle,
        lasso and flood-fill actions, shown as one button (the last one chosen) with the others in its menu."""
        super().__init__("Brush", parent)
        self.setObjectName("canvasToolbar")
        self.setMovable(False)
        self.brush = brush
        self.brush_action, self.eraser_action = tools[0], tools[1]
        self.region_action = tools[2] if len(tools) > 2 else None
        self.region_eraser_action = tools[3] if len(tools) > 3 else None
        self.size_slider = named(QSlider(Qt.Orientation.Horizontal), "brushSizeSlider")
        self.size_slider.setRange(1, 512)
        self.size_slider.setFixedWidth(56)  # narrow: the bar must fit 1366x768 at scale 1.5
        self.size_slider.setToolTip("Brush size in image pixels ([ and ])")
        self.size_label = QLabel()
        self.size_label.setMinimumWidth(40)
        self.hardness_slider = named(QSlider(Qt.Orientation.Horizontal), "brushHardnessSlider")
        self.hardness_slider.setRange(0, 100)
        self.hardness_slider.setFixedWidth(44)
        self.hardness_slider.setToolTip("Brush hardness (soft edges paint grey)")
        self.opacity_slider = named(QSlider(Qt.Orientation.Horizontal), "maskOpacitySlider")
        self.opacity_slider.setRange(5, 100)
        self.opacity_slider.setFixedWidth(44)
        self.opacity_slider.setToolTip("Mask overlay opacity")
        self.color_button = named(QToolButton(), "maskColorButton")
        self.color_button.setToolTip("Colour of the mask overlay")
        self.color_button.setAccessibleName("Mask colour")

        self.addAction(self.brush_action)
        self.addAction(self.eraser_action)
        self.selection_button: QToolButton | None = None
        if selections:
            button = self.selection_button = named(QToolButton(), "selectionToolButton")
            menu = QMenu(button)
            for act in selections:
                menu.addAction(act)
                act.triggered.connect(lambda _=False, a=act: button.setDefaultAction(a))
            button.setMenu(menu)
            button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)  # narrower than a split button
            button.setDefaultAction(selections[0])
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            button.setAccessibleName("Selection tool")
            self.addWidget(button)
        self.addWidget(self.size_slider)
        self.addWidget(self.size_label)
        self.addSeparator()
        self.addWidget(QLabel("Hard"))
        self.addWidget(self.hardness_slider)
        self.addSeparator()
        self.addWidget(QLabel("Mask"))
        self.addWidget(self.opacity_slider)
        self.addWidget(self.color_button)

        self.size_slider.valueChanged.connect(brush.set_size)
        self.hardness_slider.valueChanged.connect(lambda v: brush.set_hardness(v / 100.0))
        self.opacity_slider.valueChanged.connect(lambda v: brush.set_overlay_opacity(v / 100.0))
        self.color_button.clicked.connect(self.choose_color)
        brush.changed.connect(self.sync)
        brush.overlayChanged.connect(self.sync)
        self.sync()

    def choose_color(self) -> None:
        color = QColorDialog.getColor(self.brush.overlay_color, self, "Mask colour")
        if color.isValid():
            self.brush.set_overlay_color(color)

    def sync(self) -> None:
        b = self.brush
        for slider, value in (
            (self.size_slider, b.size),
            (self.hardness_slider, int(round(b.hardness * 100))),
            (self.opacity_slider, int(round(b.overlay_opacity * 100))),
        ):
            slider.blockSignals(True)
            slider.setValue(value)
            slider.blockSignals(False)
        self.size_label.setText(f"{b.size}px")
        self.brush_action.setChecked(b.tool == "brush")
        self.eraser_action.setChecked(b.tool == "eraser")
        if self.region_action is not None:
            self.region_action.setChecked(b.tool == "region")
        if self.region_eraser_action is not None:
            self.region_eraser_action.setChecked(b.tool == "region_eraser")
        swatch = QPixmap(16, 16)
        swatch.fill(QColor(b.overlay_color))
        self.color_button.setIcon(QIcon(swatch))
