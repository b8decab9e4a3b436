"""The main window: prompt panel | canvas + timestep slider + progress | history.

Public API (for wiring history and editing):
    signal resultReady(object)      a job's Result, emitted after it is shown
    signal sourceChanged(object)    the new source image (PIL) or None
    show_result(result)             show a Result on the canvas, feed the slider its trajectory
    set_source_image(pil)           make an image the source for img2img / inpaint / edit
    open_image(path) -> bool        load a file as the source (errors shown, never raised)
    fill_from_request(request|dict) fill the prompt panel from a request or parsed parameters
    build_request() -> request      the request the panels describe (raises UserError)
    generate() -> job_id            queue a job; an async task awaits the worker's future (await_job)
    cancel_current()                stop the running job
    show_error(message, hint)       the error banner
    canvas.mask_image()             PIL 'L' or None
Attributes: worker, canvas, prompt_panel, timestep_panel, history_panel, history (HistoryStore or None),
settings (QSettings), last_error, current_result, source_image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QColor, QGuiApplication, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QScrollArea,
    QSlider,
    QSplitter,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core.errors import UserError
from desktop_app.core.images import load_image
from desktop_app.core.model_registry import format_size
from desktop_app.core.requests import EditRequest, GenerateRequest, Img2ImgRequest, InpaintRequest
from desktop_app.ui.canvas import MaskCanvas
from desktop_app.ui.prompt_panel import IMAGE_MODES, PromptPanel
from desktop_app.ui.qt_images import numpy_to_qimage, pil_to_qimage, qimage_to_pil
from desktop_app.ui.settings import make_settings
from desktop_app.ui.timestep import TimestepPanel
from desktop_app.worker import EngineWorker, JobCancelled

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)"


def _make_history_panel(window: "MainWindow", placeholder: bool = False) -> QWidget:
    """The history panel (objectName 'historyPanel'): desktop_app.ui.history_panel.HistoryPanel(history, window),
    or a placeholder (while the history loads, or when that module is missing)."""
    HistoryPanel = None  # noqa: N806
    if not placeholder:
        try:
            from desktop_app.ui.history_panel import HistoryPanel  # noqa: N806 - another engineer's widget
        except ImportError:
            pass
    if HistoryPanel is not None:
        for args in ((window.history, window), (window.history,), ()):
            try:
                panel = HistoryPanel(*args)
            except TypeError:
                continue
            panel.setObjectName("historyPanel")
            return panel
    panel = QFrame()
    panel.setObjectName("historyPanel")
    lay = QVBoxLayout(panel)
    title = QLabel("History")
    title.setStyleSheet("font-weight: 600;")
    lay.addWidget(title)
    hint = QLabel("Loading…" if placeholder else "Results you make appear here.")
    hint.setWordWrap(True)
    hint.setStyleSheet("color: #8a8f98;")
    lay.addWidget(hint)
    lay.addStretch(1)
    return panel


class MainWindow(QMainWindow):
    resultReady = Signal(object)
    sourceChanged = Signal(object)

    def __init__(
        self,
        worker: EngineWorker,
        model: str | None = None,
        data_dir: str | os.PathLike | None = None,
        history: Any = None,
        settings: QSettings | None = None,
        history_deferred: bool = False,
    ) -> None:
        super().__init__()
        self.setObjectName("mainWindow")
        self.setWindowTitle("Diffusion Desk")
        self.worker = worker
        self.history = history
        self.data_dir = Path(data_dir) if data_dir else None
        self.settings = settings if settings is not None else make_settings(data_dir)
        self.worker.allow_pickle = str(self.settings.value("models/allow_pickle", "false")).lower() == "true"
        self.last_error: tuple[str, str] | None = None
        self.current_result: Any = None
        self.source_image = None  # PIL RGB
        self._result_index = 0
        self._my_jobs: set[int] = set()
        self._tasks: set[Any] = set()
        self._running_job: int | None = None
        self._services: dict[int, tuple[str, Any]] = {}
        self._traj_cache: dict[tuple[int, str], Any] = {}
        self._traj_owner: Any = None
        self._forward: Any = None  # ForwardProcess of the current source
        self._forward_job: int | None = None
        self._forward_key: Any = None
        self._preview_size: tuple[int, int] | None = None
        self._history_deferred = history_deferred
        self._pending_preview: Any = None

        self._build_ui()
        self._build_actions()
        self._connect()
        self.restore_settings(model)
        self._on_mode_changed(self.prompt_panel.mode())

    # -- construction ------------------------------------------------------------
    def _build_ui(self) -> None:
        self.prompt_panel = PromptPanel()
        style_accent_button(self.prompt_panel.generate_button)
        scroll = QScrollArea(objectName="promptScroll")
        scroll.setWidget(self.prompt_panel)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setMinimumWidth(330)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        self.canvas = MaskCanvas()
        self.timestep_panel = TimestepPanel()
        self.timestep_slider: QSlider = self.timestep_panel.slider

        # canvas tool bar
        self.canvas_toolbar = QToolBar("Canvas", objectName="canvasToolbar")
        self.canvas_toolbar.setMovable(False)
        self.brush_size_slider = QSlider(Qt.Orientation.Horizontal, objectName="brushSizeSlider")
        self.brush_size_slider.setRange(1, 512)
        self.brush_size_slider.setFixedWidth(90)
        self.brush_size_slider.setToolTip("Brush size in image pixels ([ and ])")
        self.brush_size_label = QLabel()
        self.brush_size_label.setMinimumWidth(44)
        self.hardness_slider = QSlider(Qt.Orientation.Horizontal, objectName="brushHardnessSlider")
        self.hardness_slider.setRange(0, 100)
        self.hardness_slider.setFixedWidth(56)
        self.hardness_slider.setToolTip("Brush hardness")
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal, objectName="maskOpacitySlider")
        self.opacity_slider.setRange(5, 100)
        self.opacity_slider.setFixedWidth(56)
        self.opacity_slider.setToolTip("Mask overlay opacity")

        # error banner
        self.error_banner = QFrame(objectName="errorBanner")
        self.error_banner.setStyleSheet(
            "#errorBanner { background: #5a1f24; border: 1px solid #a8434c; border-radius: 4px; }"
            "#errorBanner QLabel { color: #ffe3e3; }"
        )
        self.error_label = QLabel(objectName="errorLabel")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.clicked.connect(self.clear_error)
        eb = QHBoxLayout(self.error_banner)
        eb.setContentsMargins(10, 6, 6, 6)
        eb.addWidget(self.error_label, 1)
        eb.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.error_banner.hide()

        # progress
        self.progress_bar = QProgressBar(objectName="progressBar")
        self.progress_bar.setAccessibleName("Progress")
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("Idle")
        self.queue_label = QLabel("Queue: 0", objectName="queueLabel")
        self.queue_label.setMinimumWidth(70)
        self.prev_image_button = QToolButton(objectName="previousImageButton")
        self.prev_image_button.setText("◀")
        self.prev_image_button.setToolTip("Previous image of the batch (Alt+Left)")
        self.next_image_button = QToolButton(objectName="nextImageButton")
        self.next_image_button.setText("▶")
        self.next_image_button.setToolTip("Next image of the batch (Alt+Right)")
        self.image_index_label = QLabel(objectName="imageIndexLabel")
        prog = QHBoxLayout()
        prog.setContentsMargins(8, 0, 8, 6)
        prog.addWidget(self.prev_image_button)
        prog.addWidget(self.image_index_label)
        prog.addWidget(self.next_image_button)
        prog.addWidget(self.progress_bar, 1)
        prog.addWidget(self.queue_label)
        for w in (self.prev_image_button, self.image_index_label, self.next_image_button):
            w.hide()

        center = QWidget(objectName="canvasArea")
        cl = QVBoxLayout(center)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(4)
        cl.addWidget(self.canvas_toolbar)
        cl.addWidget(self.error_banner)
        cl.addWidget(self.canvas, 1)
        cl.addWidget(self.timestep_panel)
        cl.addLayout(prog)

        self.history_panel = _make_history_panel(self, placeholder=self._history_deferred)
        self.history_panel.setMinimumWidth(150)

        self.splitter = QSplitter(Qt.Orientation.Horizontal, objectName="mainSplitter")
        self.splitter.addWidget(scroll)
        self.splitter.addWidget(center)
        self.splitter.addWidget(self.history_panel)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setStretchFactor(2, 0)
        self.splitter.setSizes([340, 780, 210])
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)

        self.zoom_label = QLabel()
        self.size_label = QLabel()
        self.statusBar().addPermanentWidget(self.size_label)
        self.statusBar().addPermanentWidget(self.zoom_label)
        self.resize(1320, 820)

    def _action(self, text: str, slot, shortcut=None, name: str | None = None, checkable: bool = False) -> QAction:
        act = QAction(text, self)
        if name:
            act.setObjectName(name)
        if shortcut is not None:
            shortcuts = shortcut if isinstance(shortcut, list) else [shortcut]
            act.setShortcuts([QKeySequence(s) for s in shortcuts])
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        act.setCheckable(checkable)
        act.triggered.connect(slot)
        self.addAction(act)
        return act

    def _build_actions(self) -> None:
        mb = self.menuBar()
        a = self._action
        self.act_open = a("&Open image…", self.open_image_dialog, QKeySequence.StandardKey.Open, "actionOpen")
        self.act_paste = a("&Paste image", self.paste_image, QKeySequence.StandardKey.Paste, "actionPaste")
        self.act_copy = a("&Copy result", self.copy_result, QKeySequence.StandardKey.Copy, "actionCopy")
        self.act_save = a("&Save result…", self.save_result_dialog, QKeySequence.StandardKey.Save, "actionSave")
        self.act_use = a("&Use result as source", self.use_result_as_source, "Ctrl+Shift+U", "actionUseResult")
        self.act_quit = a("&Quit", self.close, QKeySequence.StandardKey.Quit, "actionQuit")
        m = mb.addMenu("&File")
        for act in (self.act_open, self.act_paste, None, self.act_copy, self.act_save, self.act_use, None, self.act_quit):
            m.addSeparator() if act is None else m.addAction(act)

        self.act_undo = a("&Undo stroke", self.canvas.undo, QKeySequence.StandardKey.Undo, "actionUndo")
        self.act_redo = a("&Redo stroke", self.canvas.redo, ["Ctrl+Shift+Z", "Ctrl+Y"], "actionRedo")
        self.act_brush = a("&Brush", lambda: self.canvas.set_tool("brush"), "B", "actionBrush", True)
        self.act_eraser = a("&Eraser", lambda: self.canvas.set_tool("eraser"), "E", "actionEraser", True)
        self.act_smaller = a("Smaller brush", lambda: self.canvas.grow_brush(1 / 1.2), "[", "actionBrushSmaller")
        self.act_bigger = a("Bigger brush", lambda: self.canvas.grow_brush(1.2), "]", "actionBrushBigger")
        self.act_clear = a("&Clear mask", self.canvas.clear_mask, "Ctrl+Shift+Backspace", "actionClearMask")
        self.act_invert = a("&Invert mask", self.canvas.invert_mask, "Ctrl+I", "actionInvertMask")
        self.act_show_mask = a("Show &mask", self.canvas.set_mask_visible, "M", "actionShowMask", True)
        self.act_show_mask.setChecked(True)
        m = mb.addMenu("&Mask")
        for act in (self.act_undo, self.act_redo, None, self.act_brush, self.act_eraser, self.act_smaller,
                    self.act_bigger, None, self.act_clear, self.act_invert, self.act_show_mask):
            m.addSeparator() if act is None else m.addAction(act)

        self.act_fit = a("Zoom to &fit", self.canvas.zoom_fit, "Ctrl+0", "actionZoomFit")
        self.act_actual = a("&Actual size", self.canvas.zoom_actual, "Ctrl+1", "actionZoomActual")
        self.act_zoom_in = a("Zoom &in", lambda: self.canvas.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn, "actionZoomIn")
        self.act_zoom_out = a("Zoom &out", lambda: self.canvas.zoom_by(0.8), QKeySequence.StandardKey.ZoomOut, "actionZoomOut")
        self.act_show_source = a("Show &source", self.show_source, "Ctrl+2", "actionShowSource")
        self.act_show_result = a("Show &result", self.show_current_result, "Ctrl+3", "actionShowResult")
        self.act_next_image = a("&Next image", self.next_result_image, "Alt+Right", "actionNextImage")
        self.act_prev_image = a("&Previous image", self.previous_result_image, "Alt+Left", "actionPreviousImage")
        m = mb.addMenu("&View")
        for act in (self.act_fit, self.act_actual, self.act_zoom_in, self.act_zoom_out, None,
                    self.act_show_source, self.act_show_result, self.act_prev_image, self.act_next_image):
            m.addSeparator() if act is None else m.addAction(act)

        self.act_generate = a("&Generate", self.generate, ["Ctrl+Return", "Ctrl+Enter"], "actionGenerate")
        self.act_cancel = a("&Cancel current job", self.cancel_current, "Esc", "actionCancel")
        self.act_cancel_all = a("Cancel &all jobs", self.cancel_all, None, "actionCancelAll")
        self.act_models = a("&Models…", self.open_models_dialog, None, "actionModels")
        m = mb.addMenu("&Run")
        for act in (self.act_generate, self.act_cancel, self.act_cancel_all, None, self.act_models):
            m.addSeparator() if act is None else m.addAction(act)

        tb = self.canvas_toolbar
        tb.addAction(self.act_brush)
        tb.addAction(self.act_eraser)
        tb.addWidget(QLabel(" Size "))
        tb.addWidget(self.brush_size_slider)
        tb.addWidget(self.brush_size_label)
        tb.addWidget(QLabel("  Hard "))
        tb.addWidget(self.hardness_slider)
        tb.addWidget(QLabel("  Overlay "))
        tb.addWidget(self.opacity_slider)
        tb.addSeparator()
        tb.addAction(self.act_undo)
        tb.addAction(self.act_redo)
        tb.addAction(self.act_clear)
        tb.addAction(self.act_invert)
        tb.addSeparator()
        tb.addAction(self.act_use)
        self.act_undo.setText("Undo")
        self.act_redo.setText("Redo")
        self.act_clear.setText("Clear")
        self.act_invert.setText("Invert")
        self.act_fit.setText("Fit")
        self.act_use.setText("Use result")
        self.act_use.setToolTip("Make the result the source of the next job (Ctrl+Shift+U)")
        self.act_open.setText("Open…")
        self.act_brush.setChecked(True)

    def _connect(self) -> None:
        w = self.worker
        w.jobStarted.connect(self._on_job_started)
        w.progress.connect(self._on_progress)
        w.preview.connect(self._on_preview)
        w.notice.connect(self._on_notice)
        w.failed.connect(self._on_failed)
        w.cancelled.connect(self._on_cancelled)
        w.finished.connect(self._on_finished)
        w.queueChanged.connect(self._on_queue_changed)
        w.serviceDone.connect(self._on_service_done)
        w.serviceFailed.connect(self._on_service_failed)

        pp = self.prompt_panel
        pp.generate_button.clicked.connect(self._on_generate_clicked)
        pp.cancel_button.clicked.connect(self.cancel_current)
        self.prev_image_button.clicked.connect(self.previous_result_image)
        self.next_image_button.clicked.connect(self.next_result_image)
        pp.runRequested.connect(self._on_generate_clicked)
        pp.modeChanged.connect(self._on_mode_changed)
        pp.modelPicked.connect(self._on_model_picked)
        pp.modelChanged.connect(self._on_model_changed)
        pp.manageModelsRequested.connect(self.open_models_dialog)
        pp.suggestMaskRequested.connect(self.suggest_mask)

        c = self.canvas
        c.imageDropped.connect(self.open_image)
        c.imageDataDropped.connect(self._on_image_data)
        c.strokeStarted.connect(self._on_stroke_started)
        c.brushChanged.connect(self._sync_brush_controls)
        c.zoomChanged.connect(self._on_zoom)
        c.maskChanged.connect(self._update_actions)
        self.brush_size_slider.valueChanged.connect(c.set_brush_size)
        self.hardness_slider.valueChanged.connect(lambda v: c.set_hardness(v / 100.0))
        self.opacity_slider.valueChanged.connect(lambda v: c.set_mask_opacity(v / 100.0))

        t = self.timestep_panel
        t.t0Changed.connect(self._on_t0_changed)
        t.t0Rested.connect(self._on_t0_rested)
        t.frameChanged.connect(self._on_frame_changed)
        t.frameRested.connect(self._on_frame_rested)
        self._sync_brush_controls()
        self._update_actions()

    def attach_history(self, history: Any) -> None:
        """Use `history` (a HistoryStore, or None) and rebuild the history panel for it."""
        self.history = history
        old = self.history_panel
        sizes = self.splitter.sizes()
        new = _make_history_panel(self)
        new.setMinimumWidth(old.minimumWidth())
        self.splitter.replaceWidget(self.splitter.indexOf(old), new)
        self.splitter.setSizes(sizes)
        self.history_panel = new
        old.deleteLater()

    # -- settings ------------------------------------------------------------------
    def restore_settings(self, model: str | None = None) -> None:
        s = self.settings
        geo = s.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        split = s.value("window/splitter")
        if split is not None:
            self.splitter.restoreState(split)
        self.prompt_panel.restore_settings(s, model)
        for key, setter, default, cast in (
            ("brush/size", self.canvas.set_brush_size, 32, int),
            ("brush/hardness", self.canvas.set_hardness, 1.0, float),
            ("mask/opacity", self.canvas.set_mask_opacity, 0.5, float),
        ):
            try:
                setter(cast(s.value(key, default)))
            except (TypeError, ValueError):
                setter(default)
        self._sync_brush_controls()
        try:
            self.timestep_panel.set_t0(int(s.value("params/t0", 600)))
        except (TypeError, ValueError):
            pass

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/splitter", self.splitter.saveState())
        self.prompt_panel.save_settings(s)
        s.setValue("brush/size", self.canvas.brush_size)
        s.setValue("brush/hardness", self.canvas.hardness)
        s.setValue("mask/opacity", self.canvas.mask_opacity)
        s.setValue("params/t0", self.timestep_panel.t0)
        s.sync()

    def closeEvent(self, event) -> None:  # noqa: N802
        self.timestep_panel.stop_timers()
        self.save_settings()
        self.worker.shutdown(5000)
        super().closeEvent(event)

    # -- errors & status -------------------------------------------------------------
    def show_error(self, message: str, hint: str = "") -> None:
        self.last_error = (message, hint)
        text = f"<b>{_html(message)}</b>" + (f"<br>{_html(hint)}" if hint else "")
        self.error_label.setText(text)
        self.error_banner.show()
        self.statusBar().showMessage(message, 8000)

    def clear_error(self) -> None:
        self.error_banner.hide()

    def _status(self, text: str, ms: int = 5000) -> None:
        self.statusBar().showMessage(text, ms)

    # -- images ----------------------------------------------------------------------
    def open_image_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", "", IMAGE_FILTER)
        if path:
            self.open_image(path)

    @Slot(str)
    def open_image(self, path: str) -> bool:
        try:
            img = load_image(path)
        except UserError as exc:
            self.show_error(exc.message, exc.hint)
            return False
        self.set_source_image(img)
        self._fill_from_metadata(path)
        self._status(f"Opened {Path(path).name} ({img.width}×{img.height})")
        return True

    def _fill_from_metadata(self, path: str) -> None:
        """An image made by us, AUTOMATIC1111 or InvokeAI fills the prompt panel with how it was made."""
        from desktop_app.core.infotext import MetadataError, read_png_metadata

        try:
            info = read_png_metadata(path)
        except MetadataError:
            return
        if info is None or not (info.prompt or info.request):
            return
        mode = self.prompt_panel.mode()
        data = info.request.to_dict(include_images=False) if info.request is not None else {}
        data.update(prompt=info.prompt, negative_prompt=info.negative_prompt)
        data.pop("kind", None)
        data.pop("model", None)  # the model that made it may not be here; keep the current one
        self.prompt_panel.fill(data)
        self.prompt_panel.set_mode(mode)

    def set_source_image(self, img) -> None:
        """Make `img` (PIL, QImage or None) the source; the mask is kept when the size is the same."""
        self._source_result = None  # use_result_as_source sets it again for our own results
        if img is None:
            self.source_image = None
            self.canvas.set_image(None)
        else:
            if not hasattr(img, "mode"):
                img = qimage_to_pil(img)
            img = load_image(img)
            self.source_image = img
            self.canvas.set_image(img, keep_mask=True)
            if self.prompt_panel.mode() == "generate":
                self.prompt_panel.set_mode("inpaint" if self.canvas.mask_image() is not None else "img2img")
        self._forward = None
        self._forward_key = None
        self._update_size_label()
        self._on_mode_changed(self.prompt_panel.mode())
        self.sourceChanged.emit(self.source_image)

    def _on_image_data(self, qimg) -> None:
        if qimg is not None and not qimg.isNull():
            self.set_source_image(qimage_to_pil(qimg))

    def paste_image(self) -> None:
        cb = QGuiApplication.clipboard()
        md = cb.mimeData()
        if md is not None and md.hasImage():
            qimg = cb.image()
            if not qimg.isNull():
                self.set_source_image(qimage_to_pil(qimg))
                self._status("Pasted an image as the source")
                return
        if md is not None and md.hasUrls():
            files = [u.toLocalFile() for u in md.urls() if u.isLocalFile()]
            if files:
                self.open_image(files[0])
                return
        text = cb.text().strip()
        if text and Path(text).is_file():
            self.open_image(text)
            return
        self.show_error("The clipboard holds no image.", "Copy an image (or an image file) first.")

    def _result_image(self):
        if self.current_result is not None and self.current_result.images:
            return self.current_result.images[min(self._result_index, len(self.current_result.images) - 1)]
        return None

    def show_result_image(self, index: int) -> None:
        """Show image `index` of the current result's batch."""
        if self.current_result is None or not self.current_result.images:
            return
        n = len(self.current_result.images)
        self._result_index = index % n
        self.canvas.set_view(self.current_result.images[self._result_index])
        self.image_index_label.setText(f"{self._result_index + 1} / {n}")
        seeds = self.current_result.seeds
        if self._result_index < len(seeds):
            self.prompt_panel.set_last_seed(seeds[self._result_index])

    def next_result_image(self) -> None:
        self.show_result_image(self._result_index + 1)

    def previous_result_image(self) -> None:
        self.show_result_image(self._result_index - 1)

    def copy_result(self) -> None:
        img = self._result_image() or self.canvas.shown_image()
        if img is None:
            return
        QGuiApplication.clipboard().setImage(pil_to_qimage(img))
        self._status("Copied the image")

    def save_result_dialog(self) -> None:
        if self._result_image() is None:
            self.show_error("There is no result to save yet.", "Generate an image first.")
            return
        seed = self.current_result.seed if self.current_result.seeds else 0
        path, _ = QFileDialog.getSaveFileName(self, "Save result", f"diffusion-desk-{seed}.png", "PNG image (*.png)")
        if path:
            self.save_result(path)

    def save_result(self, path: str | os.PathLike) -> bool:
        img = self._result_image()
        if img is None:
            return False
        try:
            from desktop_app.core.images import save_png
            from desktop_app.core.infotext import png_info

            index = min(self._result_index, len(self.current_result.images) - 1)
            save_png(img, path, png_info(self.current_result, index))
        except OSError as exc:
            self.show_error(f"Could not save {path}: {exc.strerror or exc}", "Choose another folder.")
            return False
        self._status(f"Saved {path}")
        return True

    def use_result_as_source(self) -> None:
        img = self._result_image()
        if img is None:
            return
        self.set_source_image(img)
        # an edit of our own result replays its recorded trajectory instead of inverting: exact reconstruction
        self._source_result = (self.current_result, min(self._result_index, len(self.current_result.images) - 1))

    def _edit_source(self) -> Any:
        """What made the source image, when it is one of this session's results (see Engine.run's `source`)."""
        made = getattr(self, "_source_result", None)
        if made is None:
            return None
        result, index = made
        return result if index == 0 else result.request.replace(seed=result.seeds[index], batch=1)

    def suggest_mask(self) -> int | None:
        """Edit mode: fill the mask from where the prompts disagree (DiffEdit); the user corrects it with the brush."""
        if self.source_image is None:
            self.show_error("Suggesting a mask needs a source image.", "Open an image first.")
            return None
        values, edit = self.prompt_panel.values(), self.prompt_panel.edit_values()
        if values["prompt"] == edit["source_prompt"]:
            self.show_error("The source and target prompts are the same, so nothing would change.", "Write what the image should show in the prompt.")
            return None
        job_id, future = self.worker.suggest_mask(self.source_image, edit["source_prompt"], values["prompt"], values.get("model"))
        if future is not None:
            import asyncio

            task = asyncio.ensure_future(self._apply_suggested_mask(future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return job_id

    async def _apply_suggested_mask(self, future: Any) -> None:
        try:
            mask = await future
        except Exception:  # noqa: BLE001 - shown through the serviceFailed signal
            return
        if mask is None or mask.getextrema()[1] == 0:
            self.show_error("The model sees no region that the edit would change.", "Paint the mask by hand.")
            return
        self.canvas.set_mask(mask, undoable=True)
        self._status("Suggested mask: correct it with the brush (B) and eraser (E)")

    def show_source(self) -> None:
        self.canvas.clear_view()

    def show_current_result(self) -> None:
        img = self._result_image()
        if img is not None:
            self.canvas.set_view(img)

    def _on_stroke_started(self) -> None:
        # painting happens on the source: show it (not a preview or result)
        self.canvas.clear_view()

    # -- results -------------------------------------------------------------------
    def show_result(self, result: Any) -> None:
        """Show a Result: its first image on the canvas, its trajectory on the slider, its seed for reuse."""
        self.current_result = result
        self._result_index = 0
        self._traj_cache.clear()
        img = result.images[0] if result.images else None
        if img is not None:
            self.canvas.set_view(img)  # over the source, if any: "Use as source" makes it the next source
        if result.seeds:
            self.prompt_panel.set_last_seed(result.seeds[0])
        n_images = len(result.images)
        for w in (self.prev_image_button, self.image_index_label, self.next_image_button):
            w.setVisible(n_images > 1)
        self.image_index_label.setText(f"1 / {n_images}")
        traj = getattr(result, "trajectory", None)
        self._traj_owner = traj
        timesteps = list(getattr(traj, "timesteps", []) or []) if traj is not None else []
        try:
            ok = traj is not None and len(traj) == len(timesteps) and len(timesteps) > 0
        except TypeError:
            ok = bool(timesteps)
        self.timestep_panel.set_trajectory(timesteps if ok else None)
        if not ok:  # a result without a trajectory (from the history): the slider goes back to t0, if it applies
            self._on_mode_changed(self.prompt_panel.mode())
        self._update_size_label()
        self._update_actions()
        n = len(result.images)
        extra = f" · {n} images" if n > 1 else ""
        self._status(f"Done in {result.elapsed:.1f} s · seed {result.seeds[0] if result.seeds else '?'}{extra}", 10000)

    def fill_from_request(self, request: Any) -> None:
        """Fill the prompt panel from a request (or a dict of parameters); its image becomes the source."""
        self.prompt_panel.fill(request)
        image = getattr(request, "image", None)
        if image is not None:
            self.set_source_image(image)
            mask = getattr(request, "mask", None)
            if mask is not None:
                self.canvas.set_mask(mask)
        t0 = getattr(request, "t0", None) if not isinstance(request, dict) else request.get("t0")
        strength = getattr(request, "strength", None) if not isinstance(request, dict) else request.get("strength")
        if t0:
            self.timestep_panel.set_t0(int(t0))
        elif strength and getattr(request, "kind", None) == "img2img":
            self.timestep_panel.set_t0(int(round(float(strength) * 1000)))

    # -- jobs ------------------------------------------------------------------------
    def build_request(self) -> GenerateRequest:
        """The request the panels and the canvas describe; raises UserError when it cannot run."""
        v = self.prompt_panel.values()
        mode = self.prompt_panel.mode()
        if mode in IMAGE_MODES:
            if self.source_image is None:
                raise UserError("This mode needs a source image.", "Open an image (Ctrl+O), paste one, or switch to Generate.")
            v["width"], v["height"] = None, None  # the source's size
        t0 = self.timestep_panel.t0
        if mode == "generate":
            req: GenerateRequest = GenerateRequest(**v)
        elif mode == "img2img":
            req = Img2ImgRequest(**v, image=self.source_image, strength=round(t0 / 1000.0, 3))
        elif mode == "inpaint":
            req = InpaintRequest(
                **v, image=self.source_image, mask=self.canvas.mask_image(), mask_blur=self.prompt_panel.mask_blur_spin.value()
            )
        else:
            ev = self.prompt_panel.edit_values()
            req = EditRequest(**v, image=self.source_image, mask=self.canvas.mask_image(), t0=t0, **ev)
        return req.validate()

    def _on_generate_clicked(self, *_: Any) -> None:
        self.generate()

    @Slot()
    def generate(self) -> int | None:
        """Queue a job from the panels (errors in the request are shown at once); returns its job id.

        An async task then awaits the worker's future and shows the result (see `await_job`)."""
        try:
            request = self.build_request()
        except UserError as exc:
            self.show_error(exc.message, exc.hint)
            return None
        self.clear_error()
        source = self._edit_source() if isinstance(request, EditRequest) else None
        job_id, future = self.worker.submit(request, source=source) if source is not None else self.worker.submit(request)
        self._my_jobs.add(job_id)
        if future is not None:
            import asyncio

            task = asyncio.ensure_future(self.await_job(job_id, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return job_id

    async def await_job(self, job_id: int, future: Any) -> Any:
        """Wait for a job; show its result and emit resultReady. Returns the Result, or None (failed: already shown)."""
        try:
            result = await future
        except JobCancelled:
            return None
        except Exception:  # noqa: BLE001 - shown through the failed signal
            return None
        finally:
            self._my_jobs.discard(job_id)
        self.show_result(result)
        self.resultReady.emit(result)
        return result

    def cancel_current(self) -> None:
        job = self.worker.current_job_id
        if job is not None:
            self.worker.cancel(job)
            self._status("Cancelling…")

    def cancel_all(self) -> None:
        self.worker.cancel_all()

    @Slot(int, object)
    def _on_job_started(self, job_id: int, request: Any) -> None:
        self._running_job = job_id
        self.progress_bar.setRange(0, 0)  # busy until the first step (model loading)
        self.progress_bar.setFormat("Loading model…" if not self.worker.engine_loaded else "Starting…")
        if self.source_image is None and request is not None and getattr(request, "width", None):
            self._preview_size = (request.width, request.height)
        else:
            self._preview_size = None
        self.prompt_panel.cancel_button.setEnabled(True)

    @Slot(int, object)
    def _on_progress(self, job_id: int, ev: Any) -> None:
        phase = getattr(ev, "phase", "denoise")
        eta = f" · ETA {_duration(ev.eta_seconds)}" if ev.eta_seconds and ev.eta_seconds >= 1 else ""
        if phase == "download":  # step / total are bytes (may pass 2**31): show per mille
            total = max(1, int(ev.total))
            if self.progress_bar.maximum() != 1000:
                self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(1000 * min(ev.step, total) / total))
            self.progress_bar.setFormat(
                f"Downloading {format_size(ev.step)} / {format_size(total)} · {format_size(ev.its_per_sec)}/s{eta}"
            )
            return
        total = max(1, int(ev.total))
        if self.progress_bar.maximum() != total:
            self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(int(ev.step))
        label = "Inverting" if phase == "invert" else "Step"
        self.progress_bar.setFormat(f"{label} {ev.step}/{ev.total} · t={ev.timestep} · {ev.its_per_sec:.1f} it/s{eta}")

    @Slot(int, object)
    def _on_preview(self, job_id: int, ev: Any) -> None:
        # Coalesce: when the GUI thread falls behind, only the newest preview is drawn.
        pending = self._pending_preview is not None
        self._pending_preview = ev.image
        if not pending:
            QTimer.singleShot(0, self._show_pending_preview)

    def _show_pending_preview(self) -> None:
        img, self._pending_preview = self._pending_preview, None
        if img is not None and self._running_job is not None:
            self.canvas.set_view(img, size=self._preview_size)

    @Slot(int, str)
    def _on_notice(self, job_id: int, message: str) -> None:
        self._status(message, 10000)

    @Slot(int, str, str)
    def _on_failed(self, job_id: int, message: str, hint: str) -> None:
        self._end_job(job_id, "Failed")
        self.show_error(message, hint)

    @Slot(int)
    def _on_cancelled(self, job_id: int) -> None:
        if job_id == self._running_job:
            self._end_job(job_id, "Cancelled")
            if self.current_result is not None:
                self.show_current_result()
            elif self.source_image is not None:
                self.canvas.clear_view()
        self._status("Cancelled")

    @Slot(int, object)
    def _on_finished(self, job_id: int, result: Any) -> None:
        self._end_job(job_id, "Done")

    def _end_job(self, job_id: int, text: str) -> None:
        if job_id != self._running_job:
            return
        self._running_job = None
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(self.progress_bar.maximum() if text == "Done" else 0)
        self.progress_bar.setFormat(text)

    @Slot(int)
    def _on_queue_changed(self, n: int) -> None:
        self.queue_label.setText(f"Queue: {n}")
        self.prompt_panel.cancel_button.setEnabled(n > 0)

    # -- model ---------------------------------------------------------------------------
    def _on_model_picked(self, model: str) -> None:
        """The user chose another model: load it in the background so errors show now."""
        job_id, _ = self.worker.preload(model)
        self._services[job_id] = ("preload", model)
        self._status(f"Loading {Path(model).name or model}…")

    def _on_model_changed(self, model: str) -> None:
        self._forward = None
        self._forward_key = None

    def set_allow_pickle(self, allowed: bool) -> None:
        """The opt-in to pickle checkpoints: kept in the settings, applied by the worker from the next job on."""
        self.worker.allow_pickle = bool(allowed)
        self.settings.setValue("models/allow_pickle", "true" if allowed else "false")

    def open_models_dialog(self) -> None:
        from desktop_app.ui.models_dialog import ModelsDialog

        dlg = ModelsDialog(self.prompt_panel.models(), self.prompt_panel.model(), self, downloader=self.worker.download_model, allow_pickle=self.worker.allow_pickle)
        dlg.allowPickleChanged.connect(self.set_allow_pickle)
        if dlg.exec():
            for m in dlg.models():
                self.prompt_panel.add_model(m)
            chosen = dlg.chosen()
            if chosen:
                self.prompt_panel.set_model(chosen, user=True)

    # -- timestep slider --------------------------------------------------------------
    def _on_mode_changed(self, mode: str) -> None:
        self.timestep_panel.set_t0_available(mode in ("img2img", "edit") and self.source_image is not None)
        image_mode = self.source_image is not None and mode in IMAGE_MODES
        self.prompt_panel.show_source_size(self.source_image.size if image_mode else None)

    def _ensure_forward(self) -> bool:
        """The forward process of the source is computed once per (source, model) on the worker thread."""
        if self.source_image is None:
            return False
        key = (id(self.source_image), self.prompt_panel.model())
        if self._forward is not None and self._forward_key == key:
            return True
        if self._forward_job is None or self._forward_key != key:
            self._forward_key = key
            self._forward = None
            job_id, _ = self.worker.forward_process(self.source_image, self.prompt_panel.model())
            self._forward_job = job_id
            self._services[job_id] = ("forward", key)
        return False

    def _on_t0_changed(self, t: int) -> None:
        if self._ensure_forward():
            try:
                self.canvas.set_view(numpy_to_qimage(self._forward.preview(int(t))))
            except Exception as exc:  # noqa: BLE001
                self._status(f"No preview: {exc}")

    def _on_t0_rested(self, t: int) -> None:
        if self._ensure_forward():
            try:
                latent = self._forward.latent(int(t))
            except Exception:  # noqa: BLE001 - the cheap preview stays
                return
            job_id, _ = self.worker.decode_latent(latent, self.prompt_panel.model())
            self._services[job_id] = ("decode_latent", int(t))

    def _on_frame_changed(self, index: int, which: str) -> None:
        traj = self._traj_owner
        if traj is None:
            return
        cached = self._traj_cache.get((index, which))
        if cached is not None:
            self.canvas.set_view(cached)
            return
        try:
            self.canvas.set_view(numpy_to_qimage(traj.previews(index, which)))
        except Exception as exc:  # noqa: BLE001
            self._status(f"No preview for this step: {exc}")

    def _on_frame_rested(self, index: int, which: str) -> None:
        traj = self._traj_owner
        if traj is None or (index, which) in self._traj_cache:
            return
        job_id, _ = self.worker.decode_trajectory(traj, index, which)
        self._services[job_id] = ("decode_trajectory", (traj, index, which))

    @Slot(int, str, object)
    def _on_service_done(self, job_id: int, kind: str, value: Any) -> None:
        entry = self._services.pop(job_id, None)
        if entry is None:
            return
        what, key = entry
        if what == "forward":
            if job_id == self._forward_job:
                self._forward_job = None
            if key == self._forward_key:
                self._forward = value
                if self.timestep_panel.mode == "t0":
                    self._on_t0_changed(self.timestep_panel.t0)
                    self._on_t0_rested(self.timestep_panel.t0)
        elif what == "decode_trajectory":
            traj, index, which = key
            if traj is self._traj_owner and value is not None:
                qimg = pil_to_qimage(value)
                self._traj_cache[(index, which)] = qimg
                if self.timestep_panel.mode == "trajectory" and (self.timestep_panel.index, self.timestep_panel.which) == (index, which):
                    self.canvas.set_view(qimg)
        elif what == "decode_latent":
            if self.timestep_panel.mode == "t0" and self.timestep_panel.t0 == key and value is not None:
                self.canvas.set_view(value)
        elif what == "preload":
            self._status(f"Model ready: {Path(key).name or key}")

    @Slot(int, str, str, str)
    def _on_service_failed(self, job_id: int, kind: str, message: str, hint: str) -> None:
        entry = self._services.pop(job_id, None)
        if entry is None:
            return
        if entry[0] == "forward" and job_id == self._forward_job:
            self._forward_job = None
        self.show_error(message, hint)

    # -- small things ----------------------------------------------------------------------
    def _sync_brush_controls(self) -> None:
        c = self.canvas
        for widget, value in (
            (self.brush_size_slider, c.brush_size),
            (self.hardness_slider, int(round(c.hardness * 100))),
            (self.opacity_slider, int(round(c.mask_opacity * 100))),
        ):
            widget.blockSignals(True)
            widget.setValue(value)
            widget.blockSignals(False)
        self.brush_size_label.setText(f"{c.brush_size}px")
        self.act_brush.setChecked(c.tool == "brush")
        self.act_eraser.setChecked(c.tool == "eraser")

    def _on_zoom(self, scale: float) -> None:
        self.zoom_label.setText(f"{scale * 100:.0f}%")

    def _update_size_label(self) -> None:
        size = self.canvas.image_size()
        self.size_label.setText(f"{size[0]}×{size[1]}" if size else "")

    def _update_actions(self) -> None:
        has_result = self._result_image() is not None
        for act in (self.act_copy, self.act_save, self.act_use, self.act_show_result):
            act.setEnabled(has_result)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def style_accent_button(button) -> None:
    """The blue, bold primary button (Generate), by palette."""
    pal = button.palette()
    pal.setColor(QPalette.ColorRole.Button, QColor(75, 111, 224))
    pal.setColor(QPalette.ColorRole.ButtonText, QColor(255, 255, 255))
    button.setPalette(pal)
    font = button.font()
    font.setBold(True)
    button.setFont(font)


def apply_dark_theme(app: QApplication) -> None:
    """Fusion with a dark palette and a few touches; idempotent."""
    if app.property("diffusionDeskTheme"):
        return
    app.setProperty("diffusionDeskTheme", True)
    app.setStyle("Fusion")
    pal = QPalette()
    base, window, text = QColor(30, 31, 34), QColor(43, 45, 49), QColor(222, 224, 228)
    accent = QColor(96, 140, 255)
    for role, color in (
        (QPalette.ColorRole.Window, window),
        (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base),
        (QPalette.ColorRole.AlternateBase, window),
        (QPalette.ColorRole.ToolTipBase, QColor(20, 20, 22)),
        (QPalette.ColorRole.ToolTipText, text),
        (QPalette.ColorRole.Text, text),
        (QPalette.ColorRole.Button, QColor(54, 57, 63)),
        (QPalette.ColorRole.ButtonText, text),
        (QPalette.ColorRole.BrightText, QColor(255, 90, 90)),
        (QPalette.ColorRole.Highlight, accent),
        (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255)),
        (QPalette.ColorRole.Link, accent),
        (QPalette.ColorRole.PlaceholderText, QColor(128, 132, 140)),
    ):
        pal.setColor(role, color)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        pal.setColor(QPalette.ColorGroup.Disabled, role, QColor(110, 113, 120))
    app.setPalette(pal)
    # No application style sheet: it makes every widget slower to create and paint (start-up);
    # the accents are set with palettes (see style_accent_button).
