"""The main window: layout, menus and actions over the model layer.

prompt panel | canvas (+ tool bars, timestep slider, progress) | history. The state lives in the model
objects the app's wiring makes (desktop_app.model: Document, Brush, Jobs, Timeline, Models, HistorySaver);
the window binds widgets to them and turns actions into calls on them.

Public API, for the wiring, tests and tools:
    resultReady(object)             a job's Result, after it is shown
    sourceChanged(object)           the new source image (PIL) or None
    open_image(path) -> bool        load a file as the source (errors shown, never raised)
    set_source_image(pil)           make an image the source for img2img / inpaint / edit
    show_result(result)             show a Result (from the history) on the canvas, with its trajectory
    fill_from_request(request|dict) fill the prompt panel from a request or parsed parameters
    build_request() -> request      the request the panels describe (raises UserError)
    generate() -> job_id            queue a job
    show_error(message, hint)       the error banner
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QObject, QSettings, Qt, Signal, Slot
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QDialog,
    QFileDialog,
    QFrame,
    QLabel,
    QMainWindow,
    QMessageBox,
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
from desktop_app.core.requests import GenerateRequest
from desktop_app.model.brush import Brush, default_brush_size
from desktop_app.model.document import Document
from desktop_app.model.jobs import Jobs, build_request, repeat_requests
from desktop_app.model.lora_library import LoraLibrary
from desktop_app.model.timeline import Timeline
from desktop_app.ui.brush_bar import BrushToolBar
from desktop_app.ui.canvas import MaskCanvas
from desktop_app.ui.collapsible import Section
from desktop_app.ui.error_banner import ErrorBanner
from desktop_app.ui.job_status import JobStatus
from desktop_app.ui.lora_picker import LoraPicker
from desktop_app.ui.mask_menu import MaskActions
from desktop_app.ui.prompt_panel import IMAGE_MODES, PromptPanel
from desktop_app.ui.qt_images import pil_to_qimage, qimage_to_pil
from desktop_app.ui.regions_panel import RegionsPanel
from desktop_app.ui.settings import load_engine_options, save_engine_options
from desktop_app.ui.staging_strip import StagingStrip
from desktop_app.ui.theme import style_accent_button
from desktop_app.ui.timestep import TimestepPanel
from desktop_app.ui.widgets import WheelGuard, named

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)"
DEFAULT_SIZE = (1320, 820)
SCREEN_SHARE = 0.94  # of the available screen, at most, for the first window


class _SpinUndoGuard(QObject):
    """Ctrl+Z / Ctrl+Shift+Z in a spin box undo the mask, as everywhere else in the window, instead of
    changing the number: the spin box's line edit asks to keep those keys (ShortcutOverride); refuse it."""

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        spin = isinstance(obj, QAbstractSpinBox) or isinstance(obj.parent(), QAbstractSpinBox)
        if event.type() == QEvent.Type.ShortcutOverride and spin:
            key = event  # a QKeyEvent
            if key.matches(QKeySequence.StandardKey.Undo) or key.matches(QKeySequence.StandardKey.Redo):  # type: ignore[attr-defined]
                event.ignore()
                return True
        return False


class MainWindow(QMainWindow):
    resultReady = Signal(object)
    sourceChanged = Signal(object)

    def __init__(
        self,
        worker: Any,
        document: Document,
        brush: Brush,
        jobs: Jobs,
        timeline: Timeline,
        models: Any,
        saver: Any,
        settings: QSettings,
        history: Any = None,
        history_deferred: bool = False,
        history_reason: str = "",
        data_dir: str | os.PathLike | None = None,
        same_model: bool = True,
    ) -> None:
        super().__init__()
        self.setObjectName("mainWindow")
        self.setWindowTitle("Diffusion Desk")
        self.worker = worker
        self.document = document
        self.brush = brush
        self.jobs = jobs
        self.timeline = timeline
        self.models = models
        self.history_saver = saver
        self.history = history
        self.settings = settings
        self.data_dir = Path(data_dir) if data_dir else None
        self.last_error: tuple[str, str] | None = None
        self._history_deferred = history_deferred
        self._history_reason = history_reason
        self._suggest_job: int | None = None
        self._error_cause: str | None = None
        self._spin_guard = _SpinUndoGuard(self)
        self._job_notices: list[str] = []  # the running job's notices (a region left out, a LoRA tag, ...)
        self._request_notices: dict[int, list[str]] = {}  # what each queued job's request left out

        self._build_ui()
        self._build_actions()
        self._connect()
        self._apply_engine_options(load_engine_options(settings))  # before the first job makes the engine
        self.restore_settings(same_model)
        self._on_mode_changed(self.prompt_panel.mode())

    # -- read-outs kept for tools and tests ----------------------------------------------
    @property
    def source_image(self):
        return self.document.source

    @property
    def current_result(self):
        return self.document.result

    # -- construction ------------------------------------------------------------
    def _build_ui(self) -> None:
        self.prompt_panel = PromptPanel()
        style_accent_button(self.prompt_panel.generate_button)
        self.prompt_panel.bind_models(self.models)
        self.prompt_panel.bind_timeline(self.timeline)
        # folded sections under the prompts: the LoRA folder is scanned the first time its section opens
        self.lora_library = LoraLibrary(parent=self)
        self.lora_picker = LoraPicker(self.lora_library, self.prompt_panel.prompt_edit)
        self.lora_section = Section(
            "LoRAs", self.lora_picker, "loraSection", on_first_open=self._first_lora_open, parent=self
        )
        self.regions_panel = RegionsPanel(self.document, self.brush)
        self.regions_section = Section("Regions", self.regions_panel, "regionsSection", parent=self)
        self.prompt_panel.add_section(self.lora_section)
        self.prompt_panel.add_section(self.regions_section)
        scroll = named(QScrollArea(), "promptScroll")
        scroll.setWidget(self.prompt_panel)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # as wide as the panel's narrowest layout (labels above fields), so nothing in it is cut off
        scroll.setMinimumWidth(
            self.prompt_panel.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 2
        )
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.prompt_scroll = scroll
        self._wheel_guard = WheelGuard(self)  # the wheel scrolls the panel, not the field under the pointer
        self._wheel_guard.guard(self.prompt_panel)
        left = named(QWidget(), "promptColumn")
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.setSpacing(0)
        ll.addWidget(scroll, 1)
        ll.addWidget(self.prompt_panel.run_bar)

        self.canvas = MaskCanvas(self.document, self.brush)
        self.staging_strip = StagingStrip(self.document)  # a run's results, under the canvas, until one is accepted
        self.prompt_panel.bind_document(self.document)  # the outpaint extension's spins
        self.timestep_panel = TimestepPanel(self.timeline)
        self.timestep_slider: QSlider = self.timestep_panel.slider

        # tool bars: the brush above the canvas (made with its actions), the mask's actions and the batch below it
        self.mask_toolbar = named(QToolBar("Mask and results"), "maskToolbar")
        self.mask_toolbar.setMovable(False)
        self.prev_image_button = named(QToolButton(), "previousImageButton")
        self.prev_image_button.setText("◀")
        self.prev_image_button.setToolTip("Previous image of the batch (Alt+Left)")
        self.next_image_button = named(QToolButton(), "nextImageButton")
        self.next_image_button.setText("▶")
        self.next_image_button.setToolTip("Next image of the batch (Alt+Right)")
        self.image_index_label = named(QLabel(), "imageIndexLabel")
        self.shown_label = named(QLabel(), "shownLabel")  # says whether the source or a result is shown
        self.shown_label.setEnabled(False)

        self.error_banner = ErrorBanner()
        self.job_status = JobStatus(self.jobs, self.models)
        self.job_status_label = self.job_status.label
        self.progress_bar = self.job_status.bar
        self.queue_label = self.job_status.queue_label

        center = named(QWidget(), "canvasArea")
        cl = QVBoxLayout(center)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(2)
        self.canvas_column = cl
        cl.addWidget(self.error_banner)
        cl.addWidget(self.canvas, 1)
        cl.addWidget(self.staging_strip)
        cl.addWidget(self.mask_toolbar)
        cl.addWidget(self.timestep_panel)
        cl.addWidget(self.job_status)
        self.canvas_area = center

        self.history_panel = self._make_history_panel(placeholder=self._history_deferred)

        self.splitter = named(QSplitter(Qt.Orientation.Horizontal), "mainSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(center)
        self.splitter.addWidget(self.history_panel)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setStretchFactor(2, 0)
        self.splitter.setSizes([330, 780, 210])
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)

        self.zoom_label = QLabel()
        self.size_label = QLabel()
        self.statusBar().addPermanentWidget(self.shown_label)
        self.statusBar().addPermanentWidget(self.size_label)
        self.statusBar().addPermanentWidget(self.zoom_label)
        self._add_downloads_indicator()
        self._fit_to_screen()

    def _add_downloads_indicator(self) -> None:
        try:
            from desktop_app.ui.downloads import DownloadsIndicator
        except ImportError:  # the indicator is optional chrome
            return
        self.downloads_indicator = DownloadsIndicator(self.models)
        self.statusBar().addPermanentWidget(self.downloads_indicator)

    def _fit_to_screen(self) -> None:
        """The first window fits the screen it opens on, at any scale factor, with room to spare."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is None:
            self.resize(*DEFAULT_SIZE)
            return
        avail = screen.availableGeometry()
        w = min(DEFAULT_SIZE[0], int(avail.width() * SCREEN_SHARE))
        h = min(DEFAULT_SIZE[1], int(avail.height() * SCREEN_SHARE))
        self.resize(w, h)
        self.move(avail.x() + (avail.width() - w) // 2, avail.y() + (avail.height() - h) // 2)

    def _make_history_panel(self, placeholder: bool = False) -> QWidget:
        """The history panel (objectName 'historyPanel'); a placeholder only while the history opens. Without a
        history the panel says why and results stay in memory (the saver keeps them)."""
        if placeholder:
            panel = QFrame()
            panel.setObjectName("historyPanel")
            lay = QVBoxLayout(panel)
            title = QLabel("History")
            title.setStyleSheet("font-weight: 600;")
            lay.addWidget(title)
            hint = QLabel("Loading…")
            hint.setEnabled(False)
            lay.addWidget(hint)
            lay.addStretch(1)
            panel.setMinimumWidth(130)
            return panel
        from desktop_app.ui.history_panel import HistoryPanel

        panel = HistoryPanel(self.history, self.history_saver)
        if self.history is None:
            panel.set_history(None, reason=self._history_reason)
        panel.setObjectName("historyPanel")
        panel.openRequested.connect(self._on_history_open)
        panel.reuseRequested.connect(self._on_history_reuse)
        panel.useAsSourceRequested.connect(self._on_history_use_as_source)
        panel.errorRaised.connect(self.show_error)
        panel.setMinimumWidth(130)
        return panel

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
        a = self._action
        c, d, b = self.canvas, self.document, self.brush
        self.act_open = a("&Open image…", self.open_image_dialog, QKeySequence.StandardKey.Open, "actionOpen")
        self.act_paste = a("&Paste image", self.paste_image, QKeySequence.StandardKey.Paste, "actionPaste")
        self.act_copy = a("&Copy result", self.copy_result, QKeySequence.StandardKey.Copy, "actionCopy")
        self.act_save = a("&Save result…", self.save_result_dialog, QKeySequence.StandardKey.Save, "actionSave")
        self.act_use = a("&Use result as source", self.use_result_as_source, "Ctrl+Shift+U", "actionUseResult")
        self.act_quit = a("&Quit", self.close, QKeySequence.StandardKey.Quit, "actionQuit")
        self._menu(
            "&File",
            self.act_open,
            self.act_paste,
            None,
            self.act_copy,
            self.act_save,
            self.act_use,
            None,
            self.act_quit,
        )

        self.act_undo = a("&Undo stroke", d.undo, QKeySequence.StandardKey.Undo, "actionUndo")
        self.act_redo = a("&Redo stroke", d.redo, ["Ctrl+Shift+Z", "Ctrl+Y"], "actionRedo")
        self.act_brush = a("&Brush", lambda: b.set_tool("brush"), "B", "actionBrush", True)
        self.act_eraser = a("&Eraser", lambda: b.set_tool("eraser"), "E", "actionEraser", True)
        self.act_region = a("Re&gion brush", lambda: b.set_tool("region"), "R", "actionRegionBrush", True)
        self.act_region.setToolTip("Paint the selected region of the regional prompts (R)")
        self.act_region_eraser = a(
            "Erase re&gion", lambda: b.set_tool("region_eraser"), "Shift+R", "actionRegionEraser", True
        )
        self.act_region_eraser.setToolTip("Erase from the selected region (Shift+R)")
        self.act_add_region = a("&Add region", self._add_region, None, "actionAddRegion")
        self.act_smaller = a("Smaller brush", lambda: b.grow(1 / 1.2), "[", "actionBrushSmaller")
        self.act_bigger = a("Bigger brush", lambda: b.grow(1.2), "]", "actionBrushBigger")
        self.act_clear = a("&Clear mask", d.clear_mask, "Ctrl+Shift+Backspace", "actionClearMask")
        self.act_invert = a("&Invert mask", d.invert_mask, "Ctrl+I", "actionInvertMask")
        self.act_show_mask = a("Show &mask", b.set_overlay_visible, "M", "actionShowMask", True)
        self.act_show_mask.setChecked(True)
        self.act_mask_color = a("Mask &colour…", self.choose_mask_color, None, "actionMaskColor")
        # selections, grow / shrink / feather, mask files and pen pressure (desktop_app.ui.mask_menu)
        self.mask_actions = MaskActions(self, d, b, self._status, lambda message, hint: self.show_error(message, hint))
        self._menu(
            "&Mask",
            self.act_undo,
            self.act_redo,
            None,
            self.act_brush,
            self.act_eraser,
            self.act_region,
            self.act_region_eraser,
            self.act_add_region,
            self.act_smaller,
            self.act_bigger,
            None,
            self.act_clear,
            self.act_invert,
            self.act_show_mask,
            self.act_mask_color,
            None,
            *self.mask_actions.menu_items(),
        )

        self.act_fit = a("Zoom to &fit", c.zoom_fit, "Ctrl+0", "actionZoomFit")
        self.act_actual = a("&Actual size", c.zoom_actual, "Ctrl+1", "actionZoomActual")
        self.act_zoom_in = a("Zoom &in", lambda: c.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn, "actionZoomIn")
        self.act_zoom_out = a("Zoom &out", lambda: c.zoom_by(0.8), QKeySequence.StandardKey.ZoomOut, "actionZoomOut")
        self.act_show_source = a("Show &source", d.show_source, "Ctrl+2", "actionShowSource")
        self.act_show_result = a("Show &result", d.show_result, "Ctrl+3", "actionShowResult")
        self.act_next_image = a("&Next image", d.next_image, "Alt+Right", "actionNextImage")
        self.act_prev_image = a("&Previous image", d.previous_image, "Alt+Left", "actionPreviousImage")
        self.act_accept = a("&Accept result", self.staging_strip.accept, "Ctrl+Shift+A", "actionAcceptResult")
        self.act_accept.setToolTip("The shown result becomes the source; Ctrl+Z brings the old one back")
        self.act_discard = a("&Discard result", self.staging_strip.discard, "Ctrl+Shift+D", "actionDiscardResult")
        self.act_discard_all = a("Discard all results", self.staging_strip.discard_all, None, "actionDiscardAll")
        self.act_before_after = a("&Before / after", d.toggle_before_after, "Ctrl+Shift+B", "actionBeforeAfter")
        self.act_history = a("&History panel", self._toggle_history, "Ctrl+H", "actionHistoryPanel", True)
        self.act_history.setChecked(True)
        self._menu(
            "&View",
            self.act_fit,
            self.act_actual,
            self.act_zoom_in,
            self.act_zoom_out,
            None,
            self.act_show_source,
            self.act_show_result,
            self.act_prev_image,
            self.act_next_image,
            self.act_before_after,
            self.act_accept,
            self.act_discard,
            self.act_discard_all,
            None,
            self.act_history,
        )

        self.act_generate = a("&Generate", self.generate, ["Ctrl+Return", "Ctrl+Enter"], "actionGenerate")
        self.act_cancel = a("&Cancel current job", self.cancel_current, "Esc", "actionCancel")
        self.act_cancel_all = a("Cancel &all jobs", self.jobs.cancel_all, None, "actionCancelAll")
        self.act_models = a("&Models…", self.open_models_dialog, None, "actionModels")
        self.act_servers = a("&Servers…", self.open_servers_dialog, None, "actionServers")
        self.act_performance = a("&Performance…", self.open_performance_dialog, None, "actionPerformance")
        self.act_performance.setToolTip("Device, precision and memory options of the local engine")
        self._menu(
            "&Run",
            self.act_generate,
            self.act_cancel,
            self.act_cancel_all,
            None,
            self.act_models,
            self.act_servers,
            self.act_performance,
        )

        self.act_shortcuts = a(
            "&Keyboard shortcuts", self.show_shortcuts, QKeySequence.StandardKey.HelpContents, "actionShortcuts"
        )
        self.act_about = a("&About Diffusion Desk", self.show_about, None, "actionAbout")
        self._menu("&Help", self.act_shortcuts, self.act_about)

        self.regions_panel.set_tool_actions(self.act_region, self.act_region_eraser)
        self.canvas_toolbar = BrushToolBar(
            self.brush,
            (self.act_brush, self.act_eraser, self.act_region, self.act_region_eraser),
            selections=self.mask_actions.selection_actions,
        )
        self.canvas_column.insertWidget(0, self.canvas_toolbar)

        mt = self.mask_toolbar
        for act, short in (
            (self.act_undo, "Undo"),
            (self.act_redo, "Redo"),
            (self.act_clear, "Clear"),
            (self.act_invert, "Invert"),
        ):
            act.setText(short)
            mt.addAction(act)
        mt.addSeparator()
        # widgets in a tool bar show and hide through their actions
        self._batch_actions = [
            mt.addWidget(w) for w in (self.prev_image_button, self.image_index_label, self.next_image_button)
        ]
        self.act_use.setText("Use result")
        self.act_use.setToolTip("Make the shown result the source of the next job (Ctrl+Shift+U)")
        mt.addAction(self.act_use)
        self.image_index_label.setMinimumWidth(self.image_index_label.fontMetrics().horizontalAdvance("16 / 16") + 4)
        self.act_fit.setText("Fit")
        self.act_open.setText("Open…")
        self.act_brush.setChecked(True)
        # the canvas column never gets narrower than its tool bars: nothing hides behind a chevron
        wide = max(bar.sizeHint().width() for bar in (self.canvas_toolbar, self.mask_toolbar))
        self.canvas_area.setMinimumWidth(max(360, wide))

    def _menu(self, title: str, *actions: QAction | None) -> None:
        m = self.menuBar().addMenu(title)
        for act in actions:
            m.addSeparator() if act is None else m.addAction(act)

    def _connect(self) -> None:
        j = self.jobs
        j.noticed.connect(self._on_job_notice)
        j.failed.connect(self._on_job_failed)
        j.cancelled.connect(lambda *_: self._status("Cancelled"))
        j.started.connect(self._on_job_started)
        j.queueChanged.connect(self._on_queue_changed)
        j.resultReady.connect(self._on_result)
        self.worker.serviceFailed.connect(self._on_service_failed)
        self.worker.serviceDone.connect(self._on_service_done)

        pp = self.prompt_panel
        pp.generate_button.clicked.connect(self.generate)
        pp.cancel_button.clicked.connect(self.cancel_current)
        pp.runRequested.connect(self.generate)
        pp.modeChanged.connect(self._on_mode_changed)
        pp.manageModelsRequested.connect(self.open_models_dialog)
        pp.suggestMaskRequested.connect(self.suggest_mask)
        for spin in (pp.width_spin, pp.height_spin):
            spin.valueChanged.connect(self._on_generate_size)
        self.regions_panel.runRequested.connect(self.generate)
        self.regions_panel.countChanged.connect(self._on_region_count)
        self.lora_picker.noticed.connect(lambda text: self._status(text, 8000))
        self.prev_image_button.clicked.connect(self.document.previous_image)
        self.staging_strip.accepted.connect(
            lambda: self._status("The result is the source now; Ctrl+Z brings the old one back", 8000)
        )
        self.staging_strip.discarded.connect(
            lambda n: self._status(f"{n} result{'s' if n > 1 else ''} left the strip (the history keeps them)", 8000)
        )
        self.next_image_button.clicked.connect(self.document.next_image)

        m = self.models
        m.currentChanged.connect(self._on_model_changed)
        m.stateChanged.connect(self._on_model_state)
        m.failed.connect(lambda message, hint: self.show_error(message, hint, cause="model"))
        m.currentChanged.connect(lambda *_: self._sync_lora_family())
        m.defaultsReady.connect(lambda *_: self._sync_lora_family())

        c = self.canvas
        c.imageDropped.connect(self.open_image)
        c.imageDataDropped.connect(self._on_image_data)
        c.zoomChanged.connect(lambda scale: self.zoom_label.setText(f"{scale * 100:.0f}%"))

        d = self.document
        d.sourceChanged.connect(self._on_source_changed)
        d.shownChanged.connect(self._update_actions)
        d.resultChanged.connect(self._update_actions)
        d.stagingChanged.connect(self._update_actions)
        d.boundsChanged.connect(self._update_size_label)
        d.undoChanged.connect(self._update_actions)
        # a whole mask replaced; a stroke's stamps (a box each) are followed by their undo step's undoChanged: no
        # whole-mask scan per stamp, which costs about 0.5 ms each on 2048x2048 (bench/canvas.py)
        d.maskChanged.connect(lambda box: self._update_actions() if box is None else None)
        d.notice.connect(lambda text: self._status(text, 12000))
        d.blankSizeChanged.connect(self.prompt_panel.set_generate_size)
        self.timeline.message.connect(lambda text: self._status(text, 8000))
        for spin in self.findChildren(QAbstractSpinBox):  # not app-wide: a Python filter on every event costs
            spin.installEventFilter(self._spin_guard)
        self._update_actions()

    def attach_history(self, history: Any, reason: str = "") -> None:
        """Use `history` (a HistoryStore, or None: `reason` says why) and put its panel in place of the placeholder."""
        self.history = history
        self._history_reason = reason
        if self.history_saver is not None:
            self.history_saver.set_store(history)
        self._history_deferred = False
        old = self.history_panel
        sizes = self.splitter.sizes()
        new = self._make_history_panel()
        self.splitter.replaceWidget(self.splitter.indexOf(old), new)
        self.splitter.setSizes(sizes)
        new.setVisible(self.act_history.isChecked())
        self.history_panel = new
        old.deleteLater()

    def _toggle_history(self, shown: bool) -> None:
        self.history_panel.setVisible(bool(shown))

    # -- settings ------------------------------------------------------------------
    def restore_settings(self, same_model: bool = True) -> None:
        """The last session's layout, brush and parameters; with another model than last time, that model's
        recommended settings stay."""
        s = self.settings
        geo = s.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
            self._keep_on_screen()
        split = s.value("window/splitter")
        if split is not None:
            self.splitter.restoreState(split)
        self.brush.restore(s)
        self.lora_library.restore(s)
        self.prompt_panel.restore_settings(s, same_model=same_model)
        self._on_generate_size()
        if self.prompt_panel.mode() in IMAGE_MODES and self.document.source is None:
            self.prompt_panel.set_mode("generate")  # the image of that mode is not kept between sessions
        history_shown = str(s.value("window/history", "true")).lower() != "false"
        self.act_history.setChecked(history_shown)
        self.history_panel.setVisible(history_shown)

    def _keep_on_screen(self) -> None:
        """A geometry saved on a bigger screen (or at another scale) must not leave controls off screen."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is None:
            return
        avail = screen.availableGeometry()
        frame = self.frameGeometry()
        if frame.width() > avail.width() or frame.height() > avail.height() or not avail.intersects(frame):
            self._fit_to_screen()

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/splitter", self.splitter.saveState())
        s.setValue("window/history", "true" if self.act_history.isChecked() else "false")
        self.prompt_panel.save_settings(s)
        self.brush.save(s)
        self.lora_library.save(s)
        s.sync()

    def closeEvent(self, event) -> None:  # noqa: N802
        busy = self.jobs.pending()
        if busy and not self._confirm_quit(busy):
            event.ignore()
            return
        self.timestep_panel.stop_timers()
        self.save_settings()
        if self.history_saver is not None:
            self.history_saver.wait(10.0)  # every finished result reaches the history before the process goes
        self.worker.shutdown(5000)
        super().closeEvent(event)

    def _confirm_quit(self, jobs: int) -> bool:
        text = f"{jobs} job{'s are' if jobs > 1 else ' is'} running or waiting. Quit and cancel {'them' if jobs > 1 else 'it'}?"
        answer = QMessageBox.question(
            self,
            "Quit Diffusion Desk",
            text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    # -- errors & status -------------------------------------------------------------
    def show_error(self, message: str, hint: str = "", cause: str | None = None) -> None:
        """The banner; `cause` names what would make it go by itself ("source", "model", "job")."""
        self.last_error = (message, hint)
        self.error_banner.show_error(message, hint, cause)
        self.statusBar().showMessage(message, 8000)

    def clear_error(self, cause: str | None = None) -> None:
        self.error_banner.clear(cause)

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
            self.show_error(exc.message, exc.hint, cause="source")
            return False
        self.set_source_image(img)
        self._fill_from_metadata(path)
        self.setWindowTitle(f"{Path(path).name} — Diffusion Desk")
        self._status(f"Opened {Path(path).name} ({img.width}×{img.height})")
        return True

    def _fill_from_metadata(self, path: str) -> None:
        """An image made by us, AUTOMATIC1111 or InvokeAI fills the prompt panel with how it was made.

        Values out of range are clamped and odd ones left out (`sanitize_params`); what was changed is said in
        the status bar. Nothing in a file's metadata may raise out of here."""
        from PySide6.QtCore import QTimer

        from desktop_app.core.infotext import MetadataError, read_png_metadata
        from desktop_app.core.requests import sanitize_params

        try:
            info = read_png_metadata(path)
        except MetadataError as exc:  # nothing readable, or a workflow with no sampler: say so, keep the panel
            text = exc.message if exc.hint is None or len(exc.hint) > 90 else f"{exc.message} {exc.hint}"
            QTimer.singleShot(0, lambda: self._status(text, 10000))
            return
        if info is None or not (info.prompt or info.request):
            return
        mode = self.prompt_panel.mode()
        data = info.request.to_dict(include_images=False) if info.request is not None else {}
        data.update(prompt=info.prompt, negative_prompt=info.negative_prompt)
        data.pop("kind", None)
        data.pop("model", None)  # the model that made it may not be here; keep the current one
        data, notices = sanitize_params(data)
        notices = list(info.notices) + notices + self.prompt_panel.fill(data, report=False)
        self.regions_panel.fill(data)  # the region mode
        self.prompt_panel.set_mode(mode)
        if notices:  # after open_image's "Opened …", which would hide it
            text = "The image's parameters were adjusted: " + "; ".join(notices) + "."
            QTimer.singleShot(0, lambda: self._status(text, 10000))

    def set_source_image(self, img, entry_id: int | None = None) -> None:
        """Make `img` (PIL, QImage or None) the source; the mask is kept when the size is the same.
        `entry_id`: the history entry it came from (the next result is saved as its child)."""
        if img is not None:
            if not hasattr(img, "mode"):
                img = qimage_to_pil(img)
            img = load_image(img)
        self.document.set_source(img, entry_id=entry_id)

    def _on_source_changed(self) -> None:
        source = self.document.source
        if source is not None:
            if self.prompt_panel.mode() == "generate":
                self.prompt_panel.set_mode("inpaint" if self.document.has_mask() else "img2img")
            if self.document.edit_source() is None and self.brush.size == 32:
                self.brush.set_size(default_brush_size(source.size))
            self.clear_error(cause="source")
        self._update_size_label()
        self._on_mode_changed(self.prompt_panel.mode())
        self.sourceChanged.emit(source)

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

    def show_result_image(self, index: int) -> None:
        self.document.show_image(index)

    def next_result_image(self) -> None:
        self.document.next_image()

    def previous_result_image(self) -> None:
        self.document.previous_image()

    def copy_result(self) -> None:
        img = self.document.result_image() or self.canvas.shown_image()
        if img is None:
            return
        QGuiApplication.clipboard().setImage(pil_to_qimage(img))
        self._status("Copied the image")

    def save_result_dialog(self) -> None:
        result = self.document.result
        if self.document.result_image() is None or result is None:
            self.show_error("There is no result to save yet.", "Generate an image first.")
            return
        seed = self.document.shown_seed() or 0
        path, _ = QFileDialog.getSaveFileName(self, "Save result", f"diffusion-desk-{seed}.png", "PNG image (*.png)")
        if path:
            self.save_result(path)

    def save_result(self, path: str | os.PathLike) -> bool:
        img, result = self.document.result_image(), self.document.result
        if img is None or result is None:
            return False
        try:
            from desktop_app.core.images import save_png
            from desktop_app.core.infotext import png_info

            index = min(self.document.index, len(result.images) - 1)
            save_png(img, path, png_info(result, index))
        except OSError as exc:
            self.show_error(f"Could not save {path}: {exc.strerror or exc}", "Choose another folder.")
            return False
        self._status(f"Saved {path}")
        return True

    def use_result_as_source(self) -> None:
        # an edit of our own result replays its recorded trajectory instead of inverting: exact reconstruction
        if self.document.use_result_as_source():
            self._status("The result is the source of the next job")

    def suggest_mask(self) -> int | None:
        """Edit mode: fill the mask from where the prompts disagree (DiffEdit, or the changed words'
        cross-attention, as the panel's choice says); the user corrects it with the brush."""
        if self.document.source is None:
            self.show_error("Suggesting a mask needs a source image.", "Open an image first.", cause="source")
            return None
        if self._suggest_job is not None:
            return None
        values, edit = self.prompt_panel.values(), self.prompt_panel.edit_values()
        if values["prompt"] == edit["source_prompt"]:
            self.show_error(
                "The source and target prompts are the same, so nothing would change.",
                "Write what the image should show in the target prompt.",
            )
            return None
        job_id, _ = self.worker.suggest_mask(
            self.document.source,
            edit["source_prompt"],
            values["prompt"],
            self.models.current(),
            how=self.prompt_panel.suggest_how(),
        )
        self._suggest_job = job_id
        self.prompt_panel.set_suggest_busy(True)
        self._status("Looking for the region the edit changes…", 0)
        return job_id

    @Slot(int, str, object)
    def _on_service_done(self, job_id: int, kind: str, value: Any) -> None:
        if job_id != self._suggest_job:
            return
        self._suggest_job = None
        self.prompt_panel.set_suggest_busy(False)
        if value is None or value.getextrema()[1] == 0:
            self.show_error("The model sees no region that the edit would change.", "Paint the mask by hand.")
            return
        self.document.set_mask(value, undoable=True)
        self.document.show_source()
        self._status("Suggested mask: correct it with the brush (B) and eraser (E)", 8000)

    @Slot(int, str, str, str)
    def _on_service_failed(self, job_id: int, kind: str, message: str, hint: str) -> None:
        if job_id == self._suggest_job:
            self._suggest_job = None
            self.prompt_panel.set_suggest_busy(False)
            self._status("")
            self.show_error(f"Suggesting a mask failed: {message}", hint)

    # -- results -------------------------------------------------------------------
    def show_result(self, result: Any) -> None:
        """Show a Result (from the history, say): its first image on the canvas, its trajectory on the slider."""
        self.document.set_result(result, from_source=False)

    def _on_result(self, result: Any) -> None:
        if result.seeds:
            self.prompt_panel.set_last_seed(result.seeds[0])
        self.clear_error(cause="job")
        n = len(result.images)
        extra = f" · {n} images" if n > 1 else ""
        notices, self._job_notices = self._job_notices, []
        # what the engine left out must outlive "Done"; each notice is a sentence of its own
        said = (
            (" — " + " ".join(n if n.rstrip().endswith((".", "!", "?")) else n + "." for n in notices))
            if notices
            else ""
        )
        text = f"Done in {result.elapsed:.1f} s · seed {result.seeds[0] if result.seeds else '?'}{extra}{said}"
        self._status(text, 20000 if notices else 10000)
        self.resultReady.emit(result)

    def fill_from_request(self, request: Any) -> None:
        """Fill the prompt panel from a request (or a dict of parameters); its image becomes the source."""
        image = getattr(request, "image", None)
        if image is not None:
            self.set_source_image(image)
            mask = getattr(request, "mask", None)
            if mask is not None:
                self.document.set_mask(mask)
        self.prompt_panel.fill(request)
        self.regions_panel.fill(request)  # the region mode (the regions themselves are not in the parameters)

    def _on_history_open(self, item: Any) -> None:
        if hasattr(item, "images"):
            self.show_result(item)

    def _on_history_reuse(self, request: Any) -> None:
        self.fill_from_request(request)

    def _on_history_use_as_source(self, item: Any) -> None:
        image, entry = (item.image, item.entry) if hasattr(item, "entry") else (item, None)
        if image is not None:
            self.set_source_image(image, entry_id=getattr(entry, "id", None))

    # -- jobs ------------------------------------------------------------------------
    def build_request(self, notices: list[str] | None = None) -> GenerateRequest:
        """The request the panels and the canvas describe; raises UserError when it cannot run. What it left out
        (a region without paint or prompt) is appended to `notices`."""
        pp = self.prompt_panel
        params = {**pp.values(), "model": self.models.current(), **pp.mode_values()}
        mode = pp.mode()
        return build_request(mode, params, self.document, self.timeline.t0, self.timeline.strength(mode), notices)

    @Slot()
    def generate(self) -> int | None:
        """Queue a job from the panels (errors in the request are shown at once); returns its job id. What was
        left out of it is said in the status bar."""
        notices: list[str] = []
        try:
            request = self.build_request(notices)
        except UserError as exc:
            self.show_error(exc.message, exc.hint, cause="source" if "source image" in exc.message else None)
            return None
        self.clear_error()
        requests = repeat_requests(request, self.prompt_panel.repeat())  # "Repeat N": consecutive seeds
        job_id = self.jobs.submit_repeat(requests)[0]
        if notices:
            self._request_notices[job_id] = notices  # said again with its "Done"
            self._status("; ".join(notices) + ".", 12000)
        return job_id

    def cancel_current(self) -> None:
        if self.jobs.cancel_current():
            self._status("Cancelling…")

    def _on_job_started(self, job_id: int) -> None:
        self._job_notices = self._request_notices.pop(job_id, [])
        self.prompt_panel.cancel_button.setEnabled(True)

    def _on_job_notice(self, text: str) -> None:
        self._job_notices.append(text)
        self._status(text, 10000)

    def _on_job_failed(self, message: str, hint: str) -> None:
        if "ran out of memory" in message and hint.startswith("Turn on"):  # the engine's one memory option to try
            hint = f"{hint} (Run > Performance…)"
        self.show_error(message, hint, cause="job")

    @Slot(int)
    def _on_queue_changed(self, n: int) -> None:
        self.prompt_panel.cancel_button.setEnabled(n > 0)

    # -- model ---------------------------------------------------------------------------
    def _on_model_changed(self, model: str) -> None:
        self.timeline.model_changed()

    def _on_model_state(self, state: str, message: str) -> None:
        if state == "ready":
            self.clear_error(cause="model")

    def set_allow_pickle(self, allowed: bool) -> None:
        """The opt-in to pickle checkpoints: kept in the settings, applied by the worker from the next job on."""
        self.models.set_allow_pickle(bool(allowed))

    def open_models_dialog(self) -> None:
        from desktop_app.ui.models_dialog import ModelsDialog

        dlg = ModelsDialog(self.models, self)
        dlg.exec()

    def open_performance_dialog(self) -> Any:
        """Run > Performance…: device, precision, attention slicing, VAE tiling, offload (kept in the settings).
        On OK they go to the worker, which gives them to its engine before the next job (the model loads again).
        Returns the dialog (tests)."""
        from desktop_app.ui.performance_dialog import PerformanceDialog

        dlg = PerformanceDialog(self.engine_options(), self)
        dlg.accepted.connect(lambda: self.set_engine_options(dlg.options()))
        dlg.open()
        self._performance_dialog = dlg
        return dlg

    def engine_options(self) -> Any:
        """The engine options the window keeps (worker.EngineOptions)."""
        return load_engine_options(self.settings)

    def set_engine_options(self, options: Any) -> None:
        """Keep `options` and give them to the worker: they apply at the next model load (the next job's)."""
        if options == self.engine_options():
            return
        save_engine_options(self.settings, options)
        self._apply_engine_options(options)
        self._status("Performance settings kept: the next job loads the model again with them", 8000)

    def _apply_engine_options(self, options: Any) -> None:
        setter = getattr(self.worker, "set_engine_options", None)  # a test's stand-in worker may have none
        if callable(setter):
            setter(options)

    def open_servers_dialog(self) -> None:
        """ComfyUI servers to run jobs on (their checkpoints join the model picker as comfyui:NAME)."""
        from desktop_app.ui.connections_dialog import ConnectionsDialog

        connections = getattr(self, "connections", None)  # set by app.wiring; absent in a bare test window
        if connections is None:
            self._status("Servers are not available in this window.")
            return
        ConnectionsDialog(connections, self).exec()

    # -- timestep slider --------------------------------------------------------------
    def _on_mode_changed(self, mode: str) -> None:
        self.timeline.set_job_mode(mode)
        regions = mode != "edit"  # an edit runs on its target prompt alone
        self.regions_panel.set_applies(regions)
        self.canvas.region_painting_enabled = regions
        for act in (self.act_region, self.act_region_eraser, self.act_add_region):
            act.setEnabled(regions)
            act.setToolTip(act.toolTip() if regions else "Regions do not apply in Edit mode")
        if not regions and self.brush.paints_regions:
            self.brush.set_tool("brush")
        self.canvas.set_extend_enabled(mode == "inpaint")  # outpainting: the frame's edges drag in Inpaint mode
        self._update_size_label()
        image_mode = self.document.source is not None and mode in IMAGE_MODES
        self.prompt_panel.show_source_size(self.document.source.size if image_mode and self.document.source else None)

    # -- regions and LoRAs ---------------------------------------------------------------------
    def _on_generate_size(self, *_: Any) -> None:
        """Without a source, regions are painted on a blank canvas of the text-to-image size."""
        self.document.set_blank_size(*self.prompt_panel.generate_size())

    def _add_region(self) -> None:
        self.regions_section.set_open(True)
        self.regions_panel.add_button.click()

    def _on_region_count(self, n: int) -> None:
        self.regions_section.set_title(f"Regions ({n})" if n else "Regions")
        if n and not self.regions_section.is_open():
            self.regions_section.set_open(True)  # the Region brush made the first one: show its prompt

    def _first_lora_open(self) -> None:
        self._sync_lora_family()
        self.lora_library.refresh()

    def _sync_lora_family(self) -> None:
        """The current model's family: the engine's word once it loaded, else what the known-models list says."""
        current = self.models.current()
        family = getattr(self.models.info(current), "family", None)
        if not family and self.lora_section.is_open():
            known = next((k for k in self.models.known() if k.location == current), None)
            family = getattr(known, "family", None)
        self.lora_library.set_model_family(family)

    # -- small things ----------------------------------------------------------------------
    def choose_mask_color(self) -> None:
        self.canvas_toolbar.choose_color()

    def _update_size_label(self) -> None:
        size = self.document.size
        text = f"{size[0]}×{size[1]}" if size else ""
        extended = self.document.extended_size()
        if size and extended and extended != size and self.canvas.extend_enabled:  # outpainting: what it will make
            text += f" → {extended[0]}×{extended[1]}"
        self.size_label.setText(text)

    def _update_actions(self) -> None:
        d = self.document
        has_result = d.result_image() is not None
        for act in (self.act_copy, self.act_save, self.act_use, self.act_show_result):
            act.setEnabled(has_result)
        self.act_undo.setEnabled(d.can_undo())
        self.act_redo.setEnabled(d.can_redo())
        has_mask_target = d.source is not None
        self.act_clear.setEnabled(has_mask_target and d.has_mask())
        self.act_invert.setEnabled(has_mask_target)
        n = len(d.staged)  # the staging strip: a batch, or every run of a "repeat N"
        for act in self._batch_actions:
            act.setVisible(n > 1)
        staged = bool(n)
        for act in (self.act_accept, self.act_discard, self.act_discard_all, self.act_before_after):
            act.setEnabled(staged)
        self.image_index_label.setText(f"{d.staged_index + 1} / {n}")
        shown = {"source": "showing the source", "result": "showing the result", "view": "showing a preview"}
        if d.showing == "result" and n > 1:
            text = f"showing result {d.staged_index + 1} of {n}"
        else:
            text = shown.get(d.showing, "")
        self.shown_label.setText(text if (d.source is not None or has_result) else "")
        if d.result is not None and d.showing == "result":
            seed = d.shown_seed()
            if seed is not None:
                self.prompt_panel.set_last_seed(seed)
        self._update_size_label()

    # -- help ------------------------------------------------------------------------------
    def show_shortcuts(self) -> QDialog:
        from desktop_app.ui.help import ShortcutsDialog  # not needed before the first paint

        dlg = ShortcutsDialog(self.actions(), self)
        dlg.setModal(False)
        dlg.show()
        self._shortcuts_dialog = dlg
        return dlg

    def show_about(self) -> None:
        from desktop_app import __version__

        QMessageBox.about(
            self,
            "About Diffusion Desk",
            f"<b>Diffusion Desk {__version__}</b><p>Local text-to-image, inpainting and inversion editing.</p>"
            "<p>F1 lists the keyboard shortcuts.</p>",
        )
