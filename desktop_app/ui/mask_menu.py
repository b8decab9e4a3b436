"""The Mask menu's selections and mask operations: the rectangle, lasso and flood-fill tools, grow / shrink /
feather by N px, mask from an image's transparency, load and save a mask PNG, and the pen-pressure setting.

One object the window makes (`MaskActions(window, document, brush, ...)`) and puts in its Mask menu and brush
bar; the pixel work is `desktop_app.model.mask_ops`, the undo step `Document.edit_mask`. The dialogs that ask
for a number of pixels or a file are methods (`ask_px`, `ask_open`, `ask_save`) so tests can answer them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMenu, QWidget

from desktop_app.core.errors import UserError
from desktop_app.model import mask_ops
from desktop_app.model.brush import Brush
from desktop_app.model.document import Document

MASK_FILTER = "PNG mask (*.png);;Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)"
PRESSURE_LABELS = {
    "size": "Pen pressure sets &size",
    "opacity": "Pen pressure sets &opacity",
    "off": "Pen pressure &off",
}


class MaskActions(QObject):
    def __init__(
        self,
        window: QWidget,
        document: Document,
        brush: Brush,
        status: Callable[[str, int], None],
        show_error: Callable[[str, str], None],
    ) -> None:
        super().__init__(window)
        self.window, self.document, self.brush = window, document, brush
        self._status, self._show_error = status, show_error
        self._last_px = {"grow": 8, "shrink": 8, "feather": 8}
        self._last_dir = ""

        a = self._action
        self.act_rectangle = a("&Rectangle select", lambda: brush.set_tool("rectangle"), "Shift+M", "actionRectangle")
        self.act_lasso = a("&Lasso select", lambda: brush.set_tool("lasso"), "L", "actionLasso")
        self.act_fill = a("&Flood fill by colour", lambda: brush.set_tool("fill"), "G", "actionFloodFill")
        for act, short in ((self.act_rectangle, "Rect"), (self.act_lasso, "Lasso"), (self.act_fill, "Fill")):
            act.setCheckable(True)
            act.setIconText(short)  # the brush bar's compact button
        self.act_rectangle.setToolTip("Drag a rectangle to mask it; Alt or Ctrl held subtracts it (Shift+M)")
        self.act_lasso.setToolTip("Drag around an area to mask it; Alt or Ctrl held subtracts it (L)")
        self.act_fill.setToolTip("Click to mask the connected area of about that colour; Alt or Ctrl subtracts (G)")
        self.act_tolerance = a("Fill &tolerance…", self._ask_tolerance, None, "actionFillTolerance")
        self.act_grow = a("&Grow mask…", lambda: self._ask_and("grow"), None, "actionGrowMask")
        self.act_shrink = a("S&hrink mask…", lambda: self._ask_and("shrink"), None, "actionShrinkMask")
        self.act_feather = a("&Feather mask…", lambda: self._ask_and("feather"), None, "actionFeatherMask")
        self.act_feather.setToolTip("Soften the mask's edge into grey levels (used by Soft inpainting)")
        self.act_from_alpha = a("Mask from &transparency…", self._ask_alpha, None, "actionMaskFromAlpha")
        self.act_from_alpha.setToolTip("Mask the transparent pixels of an image file (an RGBA PNG)")
        self.act_load = a("&Load mask…", self._ask_load, None, "actionLoadMask")
        self.act_save = a("Sa&ve mask…", self._ask_save, None, "actionSaveMask")

        # submenus keep the Mask menu within a 768 px screen at scale 1.5 (it spilled into a second column)
        self.modify_menu = QMenu("&Modify mask", window)
        self.modify_menu.setObjectName("modifyMaskMenu")
        self.modify_menu.addActions([self.act_grow, self.act_shrink, self.act_feather])
        self.file_menu = QMenu("Mask &file", window)
        self.file_menu.setObjectName("maskFileMenu")
        self.file_menu.addActions([self.act_from_alpha, self.act_load, self.act_save])

        self.pressure_menu = QMenu("Pen &pressure", window)
        self.pressure_menu.setObjectName("pressureMenu")
        group = QActionGroup(self)
        self.pressure_actions: dict[str, QAction] = {}
        for mode, label in PRESSURE_LABELS.items():
            act = QAction(label, self)
            act.setObjectName(f"actionPressure{mode.capitalize()}")
            act.setCheckable(True)
            act.triggered.connect(lambda _=False, m=mode: brush.set_pressure(m))
            group.addAction(act)
            self.pressure_menu.addAction(act)
            self.pressure_actions[mode] = act
        brush.changed.connect(self.sync)
        # not on every stamp of a stroke (a whole-mask scan each): its end is an undo step
        document.undoChanged.connect(self.update)
        document.maskChanged.connect(lambda box: self.update() if box is None else None)
        document.sourceChanged.connect(self.update)
        self.sync()
        self.update()

    def _action(self, text: str, slot, shortcut: str | None, name: str) -> QAction:
        act = QAction(text, self)
        act.setObjectName(name)
        if shortcut:
            act.setShortcut(QKeySequence(shortcut))
        act.triggered.connect(slot)
        self.window.addAction(act)  # the shortcut works wherever the focus is in the window
        return act

    @property
    def selection_actions(self) -> tuple[QAction, QAction, QAction]:
        return self.act_rectangle, self.act_lasso, self.act_fill

    def menu_items(self) -> list[QAction | None]:
        """What the Mask menu lists, in order (None: a separator)."""
        return [
            self.act_rectangle,
            self.act_lasso,
            self.act_fill,
            self.act_tolerance,
            None,
            self.modify_menu.menuAction(),
            self.file_menu.menuAction(),
            self.pressure_menu.menuAction(),
        ]

    def sync(self) -> None:
        tool = self.brush.tool
        for act, name in zip(self.selection_actions, ("rectangle", "lasso", "fill")):
            act.setChecked(tool == name)
        for mode, act in self.pressure_actions.items():
            act.setChecked(self.brush.pressure == mode)
        self.act_tolerance.setText(f"Fill &tolerance ({self.brush.fill_tolerance})…")

    def update(self) -> None:
        has_source = self.document.mask is not None
        has_mask = self.document.has_mask()
        for act in (*self.selection_actions, self.act_from_alpha, self.act_load):
            act.setEnabled(has_source)
        for act in (self.act_grow, self.act_shrink, self.act_feather, self.act_save):
            act.setEnabled(has_mask)

    # -- the operations (each one undo step) ---------------------------------------------------------
    def grow(self, px: int) -> bool:
        return self._operate("grow", px)

    def shrink(self, px: int) -> bool:
        return self._operate("shrink", px)

    def feather(self, px: int) -> bool:
        return self._operate("feather", px)

    def _operate(self, what: str, px: int) -> bool:
        mask = self.document.mask
        if mask is None or not mask.any():
            self._status(f"There is no mask to {what}: paint or select one first.", 8000)
            return False
        try:
            new = getattr(mask_ops, what)(mask, px)
        except UserError as exc:
            self._show_error(exc.message, exc.hint)
            return False
        self._last_px[what] = int(px)
        changed = self.document.edit_mask(new)
        if not new.any():
            self._status(
                f"Shrinking by {px} px leaves no mask: nothing is selected now. Undo (Ctrl+Z) brings it back.", 12000
            )
        elif changed:
            verb = {"grow": "Grew", "shrink": "Shrank", "feather": "Feathered"}[what]
            self._status(f"{verb} the mask by {px} px (Ctrl+Z undoes it)", 6000)
        return changed

    def mask_from_alpha(self, path: str) -> bool:
        """Mask the transparent pixels of the image file at `path` (scaled to the source with a notice)."""
        return self._load(path, mask_ops.load_alpha, "the transparency of")

    def load_mask(self, path: str) -> bool:
        """Replace the mask with a mask PNG (white = change); another size is scaled (a notice) or refused."""
        return self._load(path, mask_ops.load, "the mask")

    def _load(self, path: str, loader, what: str) -> bool:
        size = self.document.size
        if size is None or self.document.mask is None:
            self._show_error("Loading a mask needs a source image.", "Open an image first.")
            return False
        try:
            new, notice = loader(path, size)
        except UserError as exc:
            self._show_error(exc.message, exc.hint)
            return False
        self.document.edit_mask(new)
        name = Path(path).name
        self._status(notice + f" (from {name})" if notice else f"Loaded {what} {name} as the mask", 12000)
        return True

    def save_mask(self, path: str) -> bool:
        mask = self.document.mask
        if mask is None:
            return False
        try:
            mask_ops.save(mask, path)
        except UserError as exc:
            self._show_error(exc.message, exc.hint)
            return False
        self._status(f"Saved the mask to {path}", 6000)
        return True

    # -- dialogs (tests replace these) ------------------------------------------------------------------
    def ask_px(self, title: str, label: str, value: int) -> int | None:
        px, ok = QInputDialog.getInt(self.window, title, label, value, 0, mask_ops.MAX_RADIUS)
        return int(px) if ok else None

    def ask_open(self, title: str) -> str:
        path, _ = QFileDialog.getOpenFileName(self.window, title, self._last_dir, MASK_FILTER)
        return path

    def ask_save(self, title: str) -> str:
        path, _ = QFileDialog.getSaveFileName(self.window, title, self._last_dir or "mask.png", "PNG mask (*.png)")
        if path and not path.lower().endswith(".png"):
            path += ".png"
        return path

    def _ask_and(self, what: str) -> None:
        label = {"grow": "Grow the mask by (px):", "shrink": "Shrink the mask by (px):", "feather": "Feather (px):"}
        px = self.ask_px(f"{what.capitalize()} mask", label[what], self._last_px[what])
        if px is not None:
            self._operate(what, px)

    def _ask_tolerance(self) -> None:
        value, ok = QInputDialog.getInt(
            self.window,
            "Flood fill tolerance",
            "How far a colour may differ from the clicked one (0 to 255 per channel):",
            self.brush.fill_tolerance,
            0,
            255,
        )
        if ok:
            self.brush.set_fill_tolerance(value)

    def _remember(self, path: str) -> str:
        if path:
            self._last_dir = str(Path(path).parent)
        return path

    def _ask_alpha(self) -> None:
        path = self._remember(self.ask_open("Mask from an image's transparency"))
        if path:
            self.mask_from_alpha(path)

    def _ask_load(self) -> None:
        path = self._remember(self.ask_open("Load mask"))
        if path:
            self.load_mask(path)

    def _ask_save(self) -> None:
        path = self._remember(self.ask_save("Save mask"))
        if path:
            self.save_mask(path)
