"""Prompt panel: prompt, negative prompt, mode, parameters and the model picker.

The picker binds to the `Models` object (the list, the current model, its recommended settings once it
loaded) and the strength spin to the `Timeline` (the same value the timestep slider sets); the rest are the
request's parameters, read with `values()` / `mode_values()` when a job is submitted.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QKeyEvent, QStandardItemModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core.errors import UserError
from desktop_app.core.modelinfo import BUILTIN, is_flow, model_defaults
from desktop_app.core.requests import (
    EDIT_METHOD_NAMES,
    EDIT_METHODS,
    MASKED_CONTENT,
    MAX_CANVAS,
    MAX_CLIP_SKIP,
    MAX_SEED,
    OUTPAINT_FILLS,
    RESIZE_MODES,
    EditConcept,
    format_edit_concepts,
)
from desktop_app.core.samplers import SAMPLERS, SCHEDULES, SUPPORTED_SCHEDULES
from desktop_app.model.lora_library import FAMILY_NAMES
from desktop_app.model.models import P2P_METHODS, default_edit_method, edit_methods
from desktop_app.ui.collapsible import Section
from desktop_app.ui.widgets import named

MODES: list[tuple[str, str]] = [
    ("generate", "Generate"),
    ("img2img", "Img2Img"),
    ("inpaint", "Inpaint"),
    ("edit", "Edit"),
]
IMAGE_MODES = ("img2img", "inpaint", "edit")
RANDOM_SEED = -1
# the methods' names in the combo (LEDITS++ says what it takes)
EDIT_METHOD_LABELS = {**EDIT_METHOD_NAMES, "ledits": "LEDITS++ (edit concepts)"}
SUGGEST_HOW = {"diffedit": "DiffEdit", "attention": "Cross-attention"}
EDIT_HINTS = {
    "ledits": "LEDITS++ adds and removes the concepts below, each where it attends (no target prompt needed).",
    "kontext": "Kontext follows the instruction above; no inversion, no source prompt.",
    "fireflow": "Inverts the image along the flow, then regenerates it under the target prompt.",
    "rf-solver": "Inverts the image along the flow (second order), then regenerates it under the target prompt.",
    "rf-inversion": "Inverts the image with RF-Inversion's controlled flow, then regenerates it under the target.",
}
SUGGEST_TIP = "Mask where the target prompt differs from the source prompt; correct it with the brush"
SAMPLER_TIP = "The sampler (A1111's names); Model default is the model's own scheduler"
CLIP_SKIP_TIP = (
    "A1111's Clip skip: 1 uses the text encoder's last layer (most models), 2 the one before (some anime models)"
)


def _share(value: Any, fallback: Any) -> Any:
    """A share of the steps (0..1) from settings, else `fallback`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return fallback


class PromptEdit(QPlainTextEdit):
    """Multi-line prompt; Ctrl+Enter asks to run."""

    submitted = Signal()

    def __init__(self, placeholder: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setPlaceholderText(placeholder)
        self.setTabChangesFocus(True)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if (
            event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            and event.modifiers() & Qt.KeyboardModifier.ControlModifier
        ):
            self.submitted.emit()
            event.accept()
            return
        super().keyPressEvent(event)


class SeedSpin(QDoubleSpinBox):
    """Seeds go up to 2**32 - 1, past QSpinBox's int32 range; -1 shows as "random"."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDecimals(0)
        self.setRange(RANDOM_SEED, MAX_SEED)
        self.setSingleStep(1)
        self.setSpecialValueText("random")
        self.setValue(RANDOM_SEED)

    def seed(self) -> int | None:
        v = int(self.value())
        return None if v < 0 else v


class PromptPanel(QWidget):
    runRequested = Signal()
    modeChanged = Signal(str)
    modelPicked = Signal(str)  # the user chose another model in the picker
    manageModelsRequested = Signal()
    suggestMaskRequested = Signal()  # Edit mode: ask the engine where source and target prompts differ

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("promptPanel")
        self._last_seed: int | None = None
        self._generate_size: tuple[int, int] | None = None
        self._syncing_models = False
        self.models: Any = None
        self.timeline: Any = None
        self._restored_for: str | None = None  # a model whose recommended settings the restored ones replace
        self._before_load: dict[str, Any] | None = None  # the parameters when a model began to load
        self._model_defaults: dict[str, Any] = {}  # the current model's recommended settings (last applied)
        self._shown_mode = "generate"  # the mode whose recommended steps and guidance the spins started at

        outer = QVBoxLayout(self)
        outer.setContentsMargins(8, 8, 8, 8)
        outer.setSpacing(8)

        # mode
        self.mode_selector = named(QComboBox(), "modeSelector")
        self.mode_selector.setAccessibleName("Mode")
        for key, label in MODES:
            self.mode_selector.addItem(label, key)
        self.mode_selector.setToolTip(
            "Generate from text, change an image (Img2Img), repaint a masked area (Inpaint) or edit by inversion (Edit)"
        )

        # model
        self.model_picker = named(QComboBox(), "modelPicker")
        self.model_picker.setAccessibleName("Model")
        self.model_picker.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_picker.setMinimumContentsLength(8)
        self.model_picker.addItem("Built-in (shapes)", BUILTIN)
        self.models_button = named(QToolButton(), "modelsButton")
        self.models_button.setText("…")
        self.models_button.setToolTip("Choose or add a model")
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_picker, 1)
        model_row.addWidget(self.models_button)

        top = QFormLayout()
        top.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        top.addRow("Mode", self.mode_selector)
        top.addRow("Model", model_row)
        outer.addLayout(top)

        # prompts
        self.prompt_edit = PromptEdit("Describe the image…  (Ctrl+Enter to generate)")
        self.prompt_edit.setObjectName("promptEdit")
        self.prompt_edit.setAccessibleName("Prompt")
        self.prompt_edit.setMinimumHeight(70)
        self.prompt_edit.setMaximumHeight(150)
        self.negative_prompt_edit = PromptEdit("Negative prompt: what to avoid")
        self.negative_prompt_edit.setObjectName("negativePromptEdit")
        self.negative_prompt_edit.setAccessibleName("Negative prompt")
        self.negative_prompt_edit.setMaximumHeight(64)
        self.prompt_label = named(QLabel("Prompt"), "promptLabel")
        self.prompt_label.setBuddy(self.prompt_edit)
        self.prompt_label.setWordWrap(True)  # "Target prompt (what the image should show)" at scale 1.5 wraps, uncut
        outer.addWidget(self.prompt_label)
        outer.addWidget(self.prompt_edit, 1)
        self.negative_label = named(QLabel("Negative prompt"), "negativePromptLabel")
        self.negative_label.setBuddy(self.negative_prompt_edit)
        outer.addWidget(self.negative_label)
        outer.addWidget(self.negative_prompt_edit, 1)
        # the window's collapsible sections (LoRAs, regions) under the prompts: their titles on one row
        self._section_titles = QHBoxLayout()
        self._section_titles.setContentsMargins(0, 0, 0, 0)
        self._sections = QVBoxLayout()
        self._sections.setContentsMargins(0, 0, 0, 0)
        self._sections.setSpacing(4)
        outer.addLayout(self._section_titles)
        outer.addLayout(self._sections)

        # every image mode: how deep, and how the source meets the model's size
        self.image_group = named(QGroupBox("Source image"), "imageGroup")
        imf = QFormLayout(self.image_group)
        imf.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.strength_spin = named(QDoubleSpinBox(), "strengthSpin")
        self.strength_spin.setRange(0.0, 1.0)
        self.strength_spin.setSingleStep(0.05)
        self.strength_spin.setDecimals(2)
        self.strength_spin.setAccessibleName("Strength")
        self.strength_spin.setToolTip(
            "How much changes: 0 keeps the image, 1 starts from noise (the timestep slider's t₀)"
        )
        self.resize_mode_combo = named(QComboBox(), "resizeModeCombo")
        for key, label in RESIZE_MODES.items():
            self.resize_mode_combo.addItem(label, key)
        self.resize_mode_combo.setToolTip(
            "When the source's size is far from the model's: stretch it (just resize), crop it to the model's shape, "
            "or fit it and fill the rest"
        )
        self.source_size_label = named(QLabel(), "sourceSizeLabel")
        self.source_size_label.setWordWrap(True)
        self.source_size_label.setEnabled(False)
        imf.addRow("Strength", self.strength_spin)
        imf.addRow("Resize", self.resize_mode_combo)
        imf.addRow(self.source_size_label)
        outer.addWidget(self.image_group)

        # edit mode, under the depth: the method of the model's family, Prompt-to-Prompt, LEDITS++ concepts, the
        # suggested mask
        self._build_edit_group()
        outer.addWidget(self.edit_group)

        # inpaint fields
        self.inpaint_group = named(QGroupBox("Mask"), "inpaintGroup")
        ig = QFormLayout(self.inpaint_group)
        ig.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.mask_blur_spin = named(QSpinBox(), "maskBlurSpin")
        self.mask_blur_spin.setRange(0, 64)
        self.mask_blur_spin.setValue(4)
        self.mask_blur_spin.setSuffix(" px")
        self.mask_blur_spin.setToolTip(
            "Feather inside the painted area; pixels you did not paint stay exactly as they are"
        )
        self.mask_grow_spin = named(QSpinBox(), "maskGrowSpin")
        self.mask_grow_spin.setRange(0, 128)
        self.mask_grow_spin.setSuffix(" px")
        self.mask_grow_spin.setToolTip("Grow the painted area outward before the feather (changes unpainted pixels)")
        self.only_masked_check = named(QCheckBox("Only masked (full resolution)"), "onlyMaskedCheck")
        self.only_masked_check.setToolTip("Work on a crop around the mask at the model's size and paste it back")
        self.padding_spin = named(QSpinBox(), "onlyMaskedPaddingSpin")
        self.padding_spin.setRange(0, 256)
        self.padding_spin.setValue(32)
        self.padding_spin.setSuffix(" px")
        self.padding_spin.setToolTip("Context around the mask for 'only masked'")
        self.padding_spin.setEnabled(False)
        self.only_masked_check.toggled.connect(self.padding_spin.setEnabled)
        ig.addRow("Mask blur", self.mask_blur_spin)
        ig.addRow("Grow mask", self.mask_grow_spin)
        ig.addRow(self.only_masked_check)
        ig.addRow("Padding", self.padding_spin)
        self._build_inpaint_extra(ig)
        outer.addWidget(self.inpaint_group)

        # parameters
        params = QGroupBox("Parameters")
        form = QFormLayout(params)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.steps_spin = named(QSpinBox(), "stepsSpin")
        self.steps_spin.setRange(1, 150)
        self.guidance_label = named(QLabel("Guidance"), "guidanceLabel")
        self.guidance_spin = named(QDoubleSpinBox(), "guidanceSpin")
        self.guidance_spin.setRange(0.0, 30.0)
        self.guidance_spin.setSingleStep(0.5)
        self.guidance_spin.setDecimals(1)
        self.seed_spin = SeedSpin()
        self.seed_spin.setObjectName("seedSpin")
        self.random_seed_button = named(QToolButton(), "randomSeedButton")
        self.random_seed_button.setText("Random")
        self.random_seed_button.setToolTip("Random seed for each job")
        self.reuse_seed_button = named(QToolButton(), "reuseSeedButton")
        self.reuse_seed_button.setText("Last")
        self.reuse_seed_button.setToolTip("Reuse the last job's seed")
        self.reuse_seed_button.setEnabled(False)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed_spin, 1)
        seed_row.addWidget(self.random_seed_button)
        seed_row.addWidget(self.reuse_seed_button)
        self.width_spin = named(QSpinBox(), "widthSpin")
        self.height_spin = named(QSpinBox(), "heightSpin")
        for spin in (self.width_spin, self.height_spin):
            spin.setRange(64, 2048)
            spin.setSingleStep(8)
            spin.setSuffix(" px")
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_spin, 1)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_spin, 1)
        self.batch_spin = named(QSpinBox(), "batchSpin")
        self.batch_spin.setRange(1, 16)
        self.repeat_spin = named(QSpinBox(), "repeatSpin")
        self.repeat_spin.setRange(1, 16)
        self.repeat_spin.setPrefix("× ")
        self.repeat_spin.setAccessibleName("Repeat")
        self.repeat_spin.setToolTip(
            "Repeat: run the job this many times with consecutive seeds; every image lands in the staging strip"
        )
        batch_row = QHBoxLayout()
        batch_row.addWidget(self.batch_spin, 1)
        batch_row.addWidget(QLabel("Repeat"))
        batch_row.addWidget(self.repeat_spin, 1)
        # the sampler and its schedule type as A1111 (1.9 and later) lists them, by the names users know
        self.scheduler_combo = named(QComboBox(), "schedulerCombo")
        self.scheduler_combo.setAccessibleName("Sampler")
        self.scheduler_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.scheduler_combo.setMinimumContentsLength(10)
        self.scheduler_combo.addItem("Model default", None)
        for key, name in SAMPLERS.items():
            self.scheduler_combo.addItem(name, key)
        self.scheduler_combo.setToolTip(SAMPLER_TIP)
        self.schedule_combo = named(QComboBox(), "scheduleCombo")
        self.schedule_combo.setAccessibleName("Schedule type")
        self.schedule_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.schedule_combo.setMinimumContentsLength(10)
        self.schedule_combo.addItem("Automatic", None)
        for key, name in SCHEDULES.items():
            self.schedule_combo.addItem(name, key)
        self.clip_skip_spin = named(QSpinBox(), "clipSkipSpin")
        self.clip_skip_spin.setRange(1, MAX_CLIP_SKIP)
        self.clip_skip_spin.setAccessibleName("Clip skip")
        self.clip_skip_spin.setToolTip(CLIP_SKIP_TIP)
        form.addRow("Steps", self.steps_spin)
        self.guidance_label.setBuddy(self.guidance_spin)
        form.addRow(self.guidance_label, self.guidance_spin)
        form.addRow("Seed", seed_row)
        form.addRow("Size", size_row)
        form.addRow("Batch", batch_row)
        form.addRow("Sampler", self.scheduler_combo)
        form.addRow("Schedule type", self.schedule_combo)
        form.addRow("Clip skip", self.clip_skip_spin)
        outer.addWidget(params)

        # run
        self.generate_button = named(QPushButton("Generate"), "generateButton")
        self.generate_button.setToolTip("Queue a job (Ctrl+Enter)")
        self.generate_button.setDefault(True)
        self.generate_button.setMinimumHeight(36)
        self.generate_button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.cancel_button = named(QPushButton("Cancel"), "cancelButton")
        self.cancel_button.setToolTip("Stop the current job (Esc)")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setMinimumHeight(36)
        # Generate and Cancel sit under the panel's scroll area (the window places `run_bar`), never scrolled away
        self.run_bar = named(QWidget(), "runBar")
        run_row = QHBoxLayout(self.run_bar)
        run_row.setContentsMargins(8, 4, 8, 8)
        run_row.addWidget(self.generate_button, 3)
        run_row.addWidget(self.cancel_button, 1)
        outer.addStretch(1)

        for spin, name in (
            (self.steps_spin, "Steps"),
            (self.guidance_spin, "Guidance"),
            (self.seed_spin, "Seed"),
            (self.width_spin, "Width"),
            (self.height_spin, "Height"),
            (self.batch_spin, "Batch count"),
        ):
            spin.setAccessibleName(name)

        self.prompt_edit.submitted.connect(self.runRequested)
        self.negative_prompt_edit.submitted.connect(self.runRequested)
        self.mode_selector.currentIndexChanged.connect(self._on_mode_changed)
        self.model_picker.activated.connect(self._on_model_activated)
        self.scheduler_combo.currentIndexChanged.connect(self._on_sampler_changed)
        self.models_button.clicked.connect(self.manageModelsRequested)
        self.random_seed_button.clicked.connect(lambda: self.seed_spin.setValue(RANDOM_SEED))
        self.reuse_seed_button.clicked.connect(self.reuse_last_seed)

        for form in self.findChildren(QFormLayout):
            # a narrow panel (a small screen, a large scale factor) puts labels above their fields, never clips
            form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.apply_model_defaults(model_defaults(BUILTIN))
        self._on_sampler_changed()
        self._on_mode_changed()

    def _build_edit_group(self) -> None:
        """Edit mode: the source prompt, the methods the model's family takes, Prompt-to-Prompt over the inversions
        (its shares of the steps, local blend and re-weighting folded away), LEDITS++'s concepts, the suggested
        mask (DiffEdit or cross-attention)."""
        self.edit_group = named(QGroupBox("Edit"), "editGroup")
        eg = QFormLayout(self.edit_group)
        eg.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.edit_form = eg
        self.source_prompt_edit = named(QLineEdit(), "sourcePromptEdit")
        self.source_prompt_edit.setPlaceholderText("What the source image shows")
        self.edit_method_combo = named(QComboBox(), "editMethodCombo")
        self.edit_method_combo.setAccessibleName("Edit method")
        self.edit_method_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.edit_method_combo.setMinimumContentsLength(12)
        self.edit_method_combo.setToolTip(
            "How the edit runs: an inversion of the image, then regeneration under the target prompt (Stable "
            "Diffusion: direct, negative-prompt or plain DDIM; SD 3.x / Flux: FireFlow, RF-Solver, RF-Inversion); "
            "LEDITS++ edit concepts; or a Kontext instruction"
        )
        self.edit_hint_label = named(QLabel(), "editHintLabel")
        self.edit_hint_label.setWordWrap(True)
        self.edit_hint_label.setEnabled(False)
        self.edit_concepts_edit = PromptEdit("+ a blue hat @ 7\n- a red scarf")
        self.edit_concepts_edit.setObjectName("editConceptsEdit")
        self.edit_concepts_edit.setAccessibleName("Edit concepts")
        self.edit_concepts_edit.setMaximumHeight(64)
        self.edit_concepts_edit.setToolTip(
            "One concept per line: '+ a blue hat' adds, '- a red scarf' removes; '@ 7' is its guidance, "
            "'@ 7 / 0.8' its guidance and the threshold of its implicit mask (lower edits a wider area)"
        )
        self.attention_check = named(QCheckBox("Prompt-to-Prompt"), "attentionControlCheck")
        self.attention_check.setAccessibleName("Attention control")
        self.attention_check.setToolTip(
            "Attention control: the target keeps the source's attention maps, so only what the prompts change "
            "changes (word swap, added words, re-weighting) and the rest of the picture stays"
        )
        box = self.p2p_box = named(QWidget(), "p2pBox")
        pf = QFormLayout(box)
        pf.setContentsMargins(12, 0, 0, 0)
        pf.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.cross_replace_spin = named(QSpinBox(), "crossReplaceSpin")
        self.self_replace_spin = named(QSpinBox(), "selfReplaceSpin")
        for spin, name, value, tip in (
            (
                self.cross_replace_spin,
                "Cross-attention replace",
                80,
                "For this share of the steps the target uses the source's cross-attention maps: higher keeps "
                "the layout closer, lower lets the new words reshape more",
            ),
            (
                self.self_replace_spin,
                "Self-attention replace",
                40,
                "For this share of the first steps the source's self-attention is injected: it keeps the "
                "picture's structure",
            ),
        ):
            spin.setRange(0, 100)
            spin.setSingleStep(5)
            spin.setSuffix(" %")
            spin.setValue(value)
            spin.setAccessibleName(name)
            spin.setToolTip(tip)
        self.local_blend_check = named(QCheckBox("Local blend"), "localBlendCheck")
        self.local_blend_check.setToolTip(
            "Only where the changed words attend may the image change: a mask made from their cross-attention"
        )
        self.reweight_edit = named(QLineEdit(), "reweightEdit")
        self.reweight_edit.setPlaceholderText("blue:2")
        self.reweight_edit.setAccessibleName("Re-weight")
        self.reweight_edit.setToolTip(
            "Scale the attention to words of the target prompt: 'blue:2' makes blue stronger, 'red:0.5' weaker; "
            "several with commas"
        )
        pf.addRow("Cross replace", self.cross_replace_spin)
        pf.addRow("Self replace", self.self_replace_spin)
        pf.addRow(self.local_blend_check)
        pf.addRow("Re-weight", self.reweight_edit)
        self.p2p_section = Section("Prompt-to-Prompt settings", box, "p2pSection", parent=self)
        self.p2p_holder = named(QWidget(), "p2pHolder")
        hl = QVBoxLayout(self.p2p_holder)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.setSpacing(2)
        hl.addWidget(self.p2p_section.button)
        hl.addWidget(box)
        self.suggest_mask_button = named(QPushButton("Suggest mask"), "suggestMaskButton")
        self.suggest_mask_button.setToolTip(SUGGEST_TIP)
        self.suggest_mask_button.clicked.connect(self.suggestMaskRequested)
        self.suggest_how_combo = named(QComboBox(), "suggestHowCombo")
        self.suggest_how_combo.setAccessibleName("Suggest mask by")
        for key, label in SUGGEST_HOW.items():
            self.suggest_how_combo.addItem(label, key)
        self.suggest_how_combo.setToolTip(
            "DiffEdit: where the noise predictions under the two prompts differ; Cross-attention: where the "
            "changed words of the target prompt attend"
        )
        suggest_row = QHBoxLayout()
        suggest_row.addWidget(self.suggest_mask_button, 1)
        suggest_row.addWidget(self.suggest_how_combo)
        eg.addRow("Source prompt", self.source_prompt_edit)
        eg.addRow("Method", self.edit_method_combo)
        eg.addRow(self.edit_hint_label)
        eg.addRow("Concepts", self.edit_concepts_edit)
        eg.addRow("Attention", self.attention_check)
        eg.addRow(self.p2p_holder)
        eg.addRow(suggest_row)
        self._family = "sd1"  # the current model's family: which methods and controls apply
        self._wanted_method: str | None = None  # asked for (restored, reused) before a model of its family loaded
        self._list_edit_methods(default_edit_method(self._family))
        self.edit_method_combo.currentIndexChanged.connect(self._update_edit_controls)
        self.edit_method_combo.activated.connect(self._forget_wanted_method)  # the user's choice wins
        self.attention_check.toggled.connect(self._update_edit_controls)

    # -- the edit method and its controls ---------------------------------------------------------
    def edit_method(self) -> str:
        return self.edit_method_combo.currentData() or default_edit_method(self._family)

    def edit_methods(self) -> list[str]:
        """The methods the combo offers (the current model's family's)."""
        return [self.edit_method_combo.itemData(i) for i in range(self.edit_method_combo.count())]

    def set_edit_method(self, method: str | None) -> bool:
        """Choose a method; one the current model does not take is kept in mind until a model that takes it
        loads (False then)."""
        if not method:
            return False
        idx = self.edit_method_combo.findData(method)
        if idx < 0:
            self._wanted_method = method if method in EDIT_METHODS else None
            return False
        self._wanted_method = None
        self.edit_method_combo.setCurrentIndex(idx)
        return True

    def _forget_wanted_method(self, *_: Any) -> None:
        self._wanted_method = None

    def _list_edit_methods(self, selected: str) -> None:
        combo = self.edit_method_combo
        combo.blockSignals(True)
        try:
            combo.clear()
            for method in edit_methods(self._family):
                combo.addItem(EDIT_METHOD_LABELS.get(method, method), method)
            combo.setCurrentIndex(max(0, combo.findData(selected)))
        finally:
            combo.blockSignals(False)
        self._update_edit_controls()

    def family(self) -> str:
        return self._family

    def set_model_family(self, family: str | None, defaults: dict[str, Any] | None = None) -> None:
        """The current model's family: the edit methods it takes (the method chosen stays when it still applies,
        else the model's recommended one) and the controls a flow model does not use."""
        self._family = family or ""
        current = self._wanted_method or self.edit_method_combo.currentData()
        methods = edit_methods(self._family)
        selected = current if current in methods else default_edit_method(self._family, defaults)
        if current in methods:
            self._wanted_method = None
        self._list_edit_methods(selected)
        self._apply_family_controls()

    def _apply_family_controls(self) -> None:
        """SD 3.x and Flux run their own flow-matching scheduler (no sampler, schedule or clip skip); FLUX.1 dev,
        Fill and Kontext take distilled guidance and no negative prompt; schnell takes no guidance at all."""
        family = self._family
        flow, flux = is_flow(family), family.startswith("flux")
        name = FAMILY_NAMES.get(family, family or "this model")
        self.scheduler_combo.setEnabled(not flow)
        self.clip_skip_spin.setEnabled(not flow)
        if flow:
            why = f"{name} models use their flow-matching scheduler: no sampler or schedule to choose"
            self.scheduler_combo.setToolTip(why)
            self.schedule_combo.setToolTip(why)
            self.clip_skip_spin.setToolTip(f"{name} models have no Clip skip (their text encoders are used whole)")
        else:
            self.scheduler_combo.setToolTip(SAMPLER_TIP)
            self.clip_skip_spin.setToolTip(CLIP_SKIP_TIP)
        self._on_sampler_changed()
        distilled = family in ("flux-dev", "flux-fill", "flux-kontext")
        schnell = family == "flux-schnell"
        self.guidance_label.setText("Distilled guidance" if distilled else "Guidance")
        self.guidance_spin.setAccessibleName("Distilled guidance" if distilled else "Guidance")
        self.guidance_spin.setEnabled(not schnell)
        if schnell:
            self.guidance_spin.setValue(0.0)
            self.guidance_spin.setToolTip(
                "FLUX.1 schnell is distilled to make an image in a few steps without guidance: it takes none"
            )
        elif distilled:
            self.guidance_spin.setToolTip(
                f"{name} is guidance-distilled: this value is an input of the model (3.5 suits most pictures), "
                "not classifier-free guidance, and costs no extra pass"
            )
        else:
            self.guidance_spin.setToolTip(
                "Classifier-free guidance (CFG scale): how closely the image follows the prompt"
            )
        self.suggest_mask_button.setEnabled(not flow)  # DiffEdit and attention masks read a UNet's predictions
        self.suggest_how_combo.setEnabled(not flow)
        self.suggest_mask_button.setToolTip(
            f"Suggested masks come from a Stable Diffusion UNet; on {name} models paint the mask with the brush"
            if flow
            else SUGGEST_TIP
        )
        self.negative_prompt_edit.setEnabled(not flux)
        self.negative_label.setEnabled(not flux)
        self.negative_prompt_edit.setToolTip(
            f"{name} does not use a negative prompt: at distilled guidance there is no unconditional pass for it "
            "to steer"
            if flux
            else ""
        )

    def _update_edit_controls(self, *_: Any) -> None:
        """Which of the Edit group's controls the chosen method uses, and what the prompt means for it."""
        method = self.edit_method()
        form = self.edit_form
        p2p = method in P2P_METHODS
        form.setRowVisible(self.attention_check, p2p)
        form.setRowVisible(self.p2p_holder, p2p)
        self.p2p_box.setEnabled(self.attention_check.isChecked())  # its title still opens it
        form.setRowVisible(self.edit_concepts_edit, method == "ledits")
        form.setRowVisible(self.source_prompt_edit, method != "kontext")
        hint = EDIT_HINTS.get(method, "")
        self.edit_hint_label.setText(hint)
        form.setRowVisible(self.edit_hint_label, bool(hint))
        self._title_prompt()

    def _title_prompt(self) -> None:
        mode, method = self.mode(), self.edit_method()
        if mode != "edit":
            label, name = "Prompt", "Prompt"
        elif method == "kontext":
            label, name = "Instruction (what to change)", "Instruction"
        elif method == "ledits":
            label, name = "Target prompt (LEDITS++ reads the concepts below)", "Target prompt"
        else:
            label, name = "Target prompt (what the image should show)", "Target prompt"
        self.prompt_label.setText(label)
        self.prompt_edit.setAccessibleName(name)

    def suggest_how(self) -> str:
        """How Suggest mask finds the region: "diffedit" or "attention" (worker.suggest_mask's `how`)."""
        return self.suggest_how_combo.currentData() or "diffedit"

    def _apply_edit_defaults(self, d: dict[str, Any], keep: set[str] | tuple[str, ...] = ()) -> None:
        """A model's recommended edit settings (its "edit" object): method, attention control and its shares,
        and the depth (the timeline's strength of Edit mode)."""
        edit = d.get("edit") if isinstance(d.get("edit"), dict) else {}
        assert isinstance(edit, dict)
        if "method" not in keep:
            self.set_edit_method(default_edit_method(self._family, d))
        if "attention" not in keep:
            self.attention_check.setChecked(edit.get("attention_control") == "p2p")
            for key, spin, fallback in (
                ("cross_replace", self.cross_replace_spin, 0.8),
                ("self_replace", self.self_replace_spin, 0.4),
            ):
                value = _share(edit.get(key), fallback)
                spin.setValue(int(round(value * 100)))
            self.local_blend_check.setChecked(bool(edit.get("local_blend", False)))
        if self.timeline is not None and "depth" not in keep:
            strength = _share(edit.get("strength"), None)
            t0 = edit.get("t0")
            if strength is None and isinstance(t0, (int, float)) and not isinstance(t0, bool) and t0 > 0:
                strength = min(1.0, float(t0) / max(1, int(self.timeline.T)))
            if strength is not None:
                self.timeline.set_strength(strength, "edit")

    def _mode_defaults(self, mode: str) -> dict[str, Any]:
        """Steps and guidance the model recommends for a mode: an edit's own where its settings have them."""
        d = self._model_defaults
        values = {"steps": int(d.get("steps", 25)), "guidance": float(d.get("guidance", 7.0))}
        edit = d.get("edit")
        if mode == "edit" and isinstance(edit, dict):
            for key, cast in (("steps", int), ("guidance", float)):
                if isinstance(edit.get(key), (int, float)) and not isinstance(edit.get(key), bool):
                    values[key] = cast(edit[key])
        return values

    def _follow_mode_defaults(self, before: str, mode: str) -> None:
        """Steps and guidance still at the last mode's recommended values take the new mode's (an edit often
        wants other ones); a value the user set stays."""
        old, new = self._mode_defaults(before), self._mode_defaults(mode)
        if self.steps_spin.value() == old["steps"]:
            self.steps_spin.setValue(new["steps"])
        if abs(self.guidance_spin.value() - old["guidance"]) < 1e-6 and self.guidance_spin.isEnabled():
            self.guidance_spin.setValue(new["guidance"])

    def _build_inpaint_extra(self, ig: QFormLayout) -> None:
        """Inpaint only: what fills the mask first, soft masks, seams, and the outpaint extension (folded)."""
        self.inpaint_extra = named(QWidget(), "inpaintExtra")
        ef = QFormLayout(self.inpaint_extra)
        ef.setContentsMargins(0, 0, 0, 0)
        ef.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.masked_content_combo = named(QComboBox(), "maskedContentCombo")
        self.masked_content_combo.setAccessibleName("Masked content")
        for key, label in MASKED_CONTENT.items():
            self.masked_content_combo.addItem(label.capitalize(), key)
        self.masked_content_combo.setToolTip(
            "What fills the mask before denoising: the original pixels, their surrounding colour (fill), fresh "
            "noise (latent noise) or nothing (latent nothing); with the last three use a strength near 1"
        )
        self.soft_mask_check = named(QCheckBox("Soft inpainting"), "softMaskCheck")
        self.soft_mask_check.setToolTip(
            "Grey in the mask is a per-pixel strength (differential diffusion): a soft brush or a feathered "
            "selection changes the image gradually; off, any paint is repainted fully"
        )
        self.color_match_check = named(QCheckBox("Colour match"), "colorMatchCheck")
        self.color_match_check.setToolTip("Match the generated area's colours to its surroundings, so no edge shows")
        checks = QHBoxLayout()
        checks.addWidget(self.soft_mask_check)
        checks.addWidget(self.color_match_check)
        self.blend_band_spin = named(QSpinBox(), "blendBandSpin")
        self.blend_band_spin.setRange(0, 64)
        self.blend_band_spin.setSuffix(" px")
        self.blend_band_spin.setAccessibleName("Blend band")
        self.blend_band_spin.setToolTip(
            "A band outside the mask where the result blends into the image (8 to 16 px hides a seam); 0 keeps every "
            "pixel you did not paint"
        )
        ef.addRow("Masked content", self.masked_content_combo)
        ef.addRow(checks)
        ef.addRow("Blend band", self.blend_band_spin)

        # outpainting: the extension of the canvas, bound to the document (the canvas's frame drags it too)
        box = named(QWidget(), "outpaintBox")
        of = QFormLayout(box)
        of.setContentsMargins(12, 0, 0, 0)
        of.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.extend_spins: dict[str, QSpinBox] = {}
        rows = []
        for side in ("left", "top", "right", "bottom"):
            spin = named(QSpinBox(), f"extend{side.capitalize()}Spin")
            spin.setRange(0, MAX_CANVAS)
            spin.setSingleStep(8)
            spin.setSuffix(" px")
            spin.setAccessibleName(f"Extend {side}")
            spin.setToolTip(f"Pixels added on the {side} (or drag the canvas frame's {side} edge outward)")
            spin.valueChanged.connect(self._on_extend_spin)
            self.extend_spins[side] = spin
            rows.append(spin)
        lr, tb = QHBoxLayout(), QHBoxLayout()
        lr.addWidget(rows[0], 1)
        lr.addWidget(rows[2], 1)
        tb.addWidget(rows[1], 1)
        tb.addWidget(rows[3], 1)
        of.addRow("Left, right", lr)
        of.addRow("Top, bottom", tb)
        self.outpaint_fill_combo = named(QComboBox(), "outpaintFillCombo")
        self.outpaint_fill_combo.setAccessibleName("Outpaint fill")
        for key, label in OUTPAINT_FILLS.items():
            self.outpaint_fill_combo.addItem(label, key)
        self.outpaint_fill_combo.setToolTip("What fills the new area before it is generated")
        self.outpaint_overlap_spin = named(QSpinBox(), "outpaintOverlapSpin")
        self.outpaint_overlap_spin.setRange(0, 256)
        self.outpaint_overlap_spin.setValue(16)
        self.outpaint_overlap_spin.setSuffix(" px")
        self.outpaint_overlap_spin.setAccessibleName("Outpaint overlap")
        self.outpaint_overlap_spin.setToolTip(
            "A feathered band this deep into the image is generated with the new area"
        )
        of.addRow("Fill", self.outpaint_fill_combo)
        of.addRow("Overlap", self.outpaint_overlap_spin)
        self.outpaint_section = Section("Outpaint", box, "outpaintSection", parent=self)
        ef.addRow(self.outpaint_section.button)
        ef.addRow(box)
        ig.addRow(self.inpaint_extra)
        self.document: Any = None
        self._showing_extension = False

    # -- the canvas extension (bound to desktop_app.model.document.Document) ----------------------
    def bind_document(self, document: Any) -> None:
        """The extend spins show and set the document's extension (`extension`, `set_extension`)."""
        self.document = document
        document.boundsChanged.connect(self._show_extension)
        document.sourceChanged.connect(self._show_extension)
        self._show_extension()

    def extension(self) -> tuple[int, int, int, int]:
        return tuple(self.extend_spins[s].value() for s in ("left", "top", "right", "bottom"))  # type: ignore[return-value]

    def _on_extend_spin(self, *_: Any) -> None:
        if self.document is not None and not self._showing_extension:
            self.document.set_extension(*self.extension())
        self._title_outpaint()

    def _show_extension(self) -> None:
        if self.document is None:
            return
        self._showing_extension = True
        try:
            for side, value in zip(("left", "top", "right", "bottom"), self.document.extension):
                self.extend_spins[side].setValue(value)
        finally:
            self._showing_extension = False
        self._title_outpaint()
        if any(self.document.extension) and not self.outpaint_section.is_open():
            self.outpaint_section.set_open(True)  # dragged on the canvas: show the numbers

    def _title_outpaint(self) -> None:
        parts = [f"{name} {v}" for name, v in zip("LTRB", self.extension()) if v]
        self.outpaint_section.set_title("Outpaint (" + ", ".join(parts) + " px)" if parts else "Outpaint")

    def add_section(self, section: Any) -> None:
        """A collapsible section (ui.collapsible.Section) of the window's (the LoRA picker, the regions): its
        title button beside the others, its content below them."""
        self._section_titles.addWidget(section.button)
        self._sections.addWidget(section.content)

    # -- sampler and schedule --------------------------------------------------------
    def _on_sampler_changed(self, *_: Any) -> None:
        """Only the schedules the chosen sampler can do are offered; the model's default sampler takes its own."""
        sampler = self.scheduler_combo.currentData()
        supported = SUPPORTED_SCHEDULES.get(sampler, ()) if sampler else ()
        model = self.schedule_combo.model()
        if isinstance(model, QStandardItemModel):  # a combo box's own model
            for i in range(1, self.schedule_combo.count()):
                item = model.item(i)
                if item is not None:
                    item.setEnabled(self.schedule_combo.itemData(i) in supported)
        if self.schedule_combo.currentData() not in (None, *supported):
            self.schedule_combo.setCurrentIndex(0)
        self.schedule_combo.setEnabled(len(supported) > 1)
        if not sampler:
            self.schedule_combo.setToolTip("The model's default sampler runs on its own schedule")
        elif len(supported) > 1:
            self.schedule_combo.setToolTip(
                "The noise schedule: Automatic is the sampler's own (the model's config); Karras and Exponential "
                "spend more steps on fine detail"
            )
        else:
            self.schedule_combo.setToolTip(f"{SAMPLERS[sampler]} runs on its own schedule only")
        if is_flow(getattr(self, "_family", "")):  # SD 3.x / Flux: their own flow-matching scheduler
            self.schedule_combo.setEnabled(False)
            self.schedule_combo.setToolTip(self.scheduler_combo.toolTip())

    def set_sampler(self, sampler: str | None, schedule: str | None = None) -> None:
        """Select a sampler id and schedule id (None: the model's default / the sampler's own)."""
        idx = self.scheduler_combo.findData(sampler) if sampler else 0
        self.scheduler_combo.setCurrentIndex(max(0, idx))
        sched_idx = self.schedule_combo.findData(schedule) if schedule else 0
        item_ok = sched_idx > 0 and schedule in SUPPORTED_SCHEDULES.get(self.scheduler_combo.currentData(), ())
        self.schedule_combo.setCurrentIndex(sched_idx if item_ok else 0)

    def clip_skip(self) -> int | None:
        """None when off (1: the text encoder's last layer, as every model is trained)."""
        value = self.clip_skip_spin.value()
        return None if value <= 1 else value

    # -- mode ------------------------------------------------------------------
    def mode(self) -> str:
        return self.mode_selector.currentData()

    def set_mode(self, mode: str) -> None:
        idx = self.mode_selector.findData(mode)
        if idx < 0:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode_selector.setCurrentIndex(idx)

    def _on_mode_changed(self, *_: Any) -> None:
        mode = self.mode()
        self.edit_group.setVisible(mode == "edit")
        self.inpaint_group.setVisible(mode in ("inpaint", "edit"))
        self.only_masked_check.setVisible(mode == "inpaint")
        self.padding_spin.setVisible(mode == "inpaint")
        self.inpaint_extra.setVisible(mode == "inpaint")
        form = self.inpaint_group.layout()
        if isinstance(form, QFormLayout):
            form.setRowVisible(self.padding_spin, mode == "inpaint")
        self.image_group.setVisible(mode in IMAGE_MODES)
        self._title_prompt()
        if self._model_defaults and mode != self._shown_mode:
            self._follow_mode_defaults(self._shown_mode, mode)
        self._shown_mode = mode
        image_mode = mode in IMAGE_MODES
        if self.timeline is not None:
            self._show_strength()
        self.width_spin.setEnabled(not image_mode)
        self.height_spin.setEnabled(not image_mode)
        self.width_spin.setToolTip("Image modes use the source image's size" if image_mode else "")
        self.modeChanged.emit(mode)

    def show_source_size(self, size: tuple[int, int] | None) -> None:
        """Image modes work at the source's size: show it in the (disabled) size spins; None restores the user's size."""
        if size is not None:
            if self._generate_size is None:
                self._generate_size = (self.width_spin.value(), self.height_spin.value())
            w, h = size
            for spin, v in ((self.width_spin, w), (self.height_spin, h)):
                spin.blockSignals(True)
                spin.setValue(max(64, min(2048, int(v))))
                spin.blockSignals(False)
            self.source_size_label.setText(self._size_note(w, h))
        else:
            self.source_size_label.setText("")
        if size is None and self._generate_size is not None:
            self.width_spin.setValue(self._generate_size[0])
            self.height_spin.setValue(self._generate_size[1])
            self._generate_size = None

    def _size_note(self, w: int, h: int) -> str:
        """What the engine will do with a source of this size (it maps sizes far from the model's: see resize_mode)."""
        defaults = self.models.defaults() if self.models is not None else model_defaults(self.model())
        mw, mh = int(defaults.get("width", 512)), int(defaults.get("height", 512))
        ratio = (w * h) / float(mw * mh)
        if 0.5 <= ratio <= 2.0:
            return f"Source {w}×{h}: worked at its own size."
        return f"Source {w}×{h}; this model works near {mw}×{mh}: resized to that area as chosen above, then back."

    def set_generate_size(self, width: int, height: int) -> None:
        """The text-to-image size (kept aside while an image mode shows the source's size in the spins)."""
        if self._generate_size is not None:
            self._generate_size = (int(width), int(height))
            return
        self.width_spin.setValue(int(width))
        self.height_spin.setValue(int(height))

    def generate_size(self) -> tuple[int, int]:
        """The size for text-to-image jobs (what the user set, even while a source's size is shown)."""
        return self._generate_size or (self.width_spin.value(), self.height_spin.value())

    # -- model (bound to desktop_app.model.models.Models) ------------------------------------
    def bind_models(self, models: Any) -> None:
        """The picker shows `models.sources()` and selects through `models.select`; a model's recommended
        settings are applied only once it has loaded (`defaultsReady`), so a broken one changes nothing."""
        self.models = models
        models.sourcesChanged.connect(self._sync_models)
        models.currentChanged.connect(self._sync_models)
        models.defaultsReady.connect(self._on_defaults_ready)
        models.stateChanged.connect(self._on_models_state)
        self._sync_models()

    def _sync_models(self, *_: Any) -> None:
        if self.models is None:
            return
        self._syncing_models = True
        try:
            self.model_picker.clear()
            for source in self.models.sources():
                self.model_picker.addItem(self._label(source), source)
                self.model_picker.setItemData(self.model_picker.count() - 1, source, Qt.ItemDataRole.ToolTipRole)
            idx = self.model_picker.findData(self.models.current())
            self.model_picker.setCurrentIndex(max(0, idx))
        finally:
            self._syncing_models = False

    @staticmethod
    def _label(source: str) -> str:
        if source == BUILTIN:
            return "Built-in (shapes)"
        from pathlib import Path

        return str(model_defaults(source).get("name") or Path(source).name or source)

    def _on_model_activated(self, index: int) -> None:
        source = self.model_picker.itemData(index)
        if self._syncing_models or not source:
            return
        if self.models is not None:
            self.models.select(source)
        self.modelPicked.emit(source)

    def _on_defaults_ready(self, source: str, defaults: dict) -> None:
        # a value the user changed while the model loaded is theirs: only the untouched ones take the defaults
        before, self._before_load = self._before_load, None
        keep = self._changed_since(before) if before is not None else set()
        family = self.models.family(source) if hasattr(self.models, "family") else ""
        if self._wanted_method in edit_methods(family):
            keep.add("method")  # reused or restored for a model like this one: it wins over the recommended one
        self.set_model_family(family, defaults)  # its edit methods and controls, whatever else is kept
        if source == self._restored_for:  # the model of the last session: its values as the user left them
            self._restored_for = None
            self._model_defaults = dict(defaults)
            self._shown_mode = self.mode()
            return
        self._restored_for = None
        self.apply_model_defaults(defaults, keep=keep)

    def _on_models_state(self, state: str, message: str) -> None:
        if state == "loading":
            self._before_load = self._parameter_values()

    def _parameter_values(self) -> dict[str, Any]:
        return {
            "steps": self.steps_spin.value(),
            "guidance": self.guidance_spin.value(),
            "size": self.generate_size(),
            "scheduler": self.scheduler_combo.currentIndex(),
            "method": self.edit_method_combo.currentData(),
            "attention": (
                self.attention_check.isChecked(),
                self.cross_replace_spin.value(),
                self.self_replace_spin.value(),
                self.local_blend_check.isChecked(),
            ),
            "depth": self.timeline.strength("edit") if self.timeline is not None else None,
        }

    def _changed_since(self, before: dict[str, Any]) -> set[str]:
        now = self._parameter_values()
        return {key for key, value in before.items() if now[key] != value}

    def model(self) -> str:
        if self.models is not None:
            return self.models.current()
        return self.model_picker.currentData() or BUILTIN

    def set_model(self, source: str | None, user: bool = False) -> None:
        """Select a model through the Models object (added when new)."""
        source = source or BUILTIN
        if self.models is None:
            idx = self.model_picker.findData(source)
            if idx < 0:
                self.model_picker.addItem(self._label(source), source)
                idx = self.model_picker.count() - 1
            self.model_picker.setCurrentIndex(idx)
            return
        if source not in self.models.sources():
            self.models.add(source)
        if source != self.models.current():
            self.models.select(source)

    # -- strength (bound to desktop_app.model.timeline.Timeline) -----------------------------
    def bind_timeline(self, timeline: Any) -> None:
        self.timeline = timeline
        timeline.strengthChanged.connect(lambda *_: self._show_strength())
        self.strength_spin.valueChanged.connect(self._on_strength)
        self._show_strength()

    def _show_strength(self) -> None:
        self.strength_spin.blockSignals(True)
        self.strength_spin.setValue(self.timeline.strength(self.mode()))
        self.strength_spin.blockSignals(False)

    def _on_strength(self, value: float) -> None:
        if self.timeline is not None:
            self.timeline.set_strength(value, self.mode())

    def apply_model_defaults(self, d: dict[str, Any], keep: set[str] | tuple[str, ...] = ()) -> None:
        """A model's recommended settings (its edit settings too); the parameters named in `keep` stay as they are.
        Steps and guidance are the current mode's (an edit's own where the model has them)."""
        self._model_defaults = dict(d)
        self._shown_mode = self.mode()
        mode_defaults = self._mode_defaults(self._shown_mode)
        if "steps" not in keep:
            self.steps_spin.setValue(mode_defaults["steps"])
        if "guidance" not in keep:
            self.guidance_spin.setValue(mode_defaults["guidance"])
        size = (int(d.get("width", 512)), int(d.get("height", 512)))
        if "size" in keep:
            pass
        elif self._generate_size is not None:
            self._generate_size = size
        else:
            self.width_spin.setValue(size[0])
            self.height_spin.setValue(size[1])
        if "scheduler" not in keep:
            self.scheduler_combo.setCurrentIndex(0)
        scheduler = str(d.get("scheduler") or "")
        name = SAMPLERS.get(scheduler, scheduler)
        self.scheduler_combo.setItemText(0, f"Model default ({name})" if name else "Model default")
        self._apply_edit_defaults(d, keep)
        self._apply_family_controls()  # schnell's guidance stays 0

    # -- seed ------------------------------------------------------------------
    def set_last_seed(self, seed: int | None) -> None:
        self._last_seed = seed
        self.reuse_seed_button.setEnabled(seed is not None)
        if seed is not None:
            self.reuse_seed_button.setToolTip(f"Reuse the last job's seed ({seed})")

    def reuse_last_seed(self) -> None:
        if self._last_seed is not None:
            self.seed_spin.setValue(self._last_seed)

    # -- values ----------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """The request fields this panel sets (common to all request kinds)."""
        flow = is_flow(self._family)  # the controls a flow model does not use send nothing
        sampler = None if flow else self.scheduler_combo.currentData()
        return {
            "prompt": self.prompt_edit.toPlainText().strip(),
            "negative_prompt": self.negative_prompt_edit.toPlainText().strip()
            if self.negative_prompt_edit.isEnabled()
            else "",
            "model": self.model(),
            "steps": self.steps_spin.value(),
            "guidance": round(self.guidance_spin.value(), 2),
            "width": self.width_spin.value(),
            "height": self.height_spin.value(),
            "seed": self.seed_spin.seed(),
            "batch": self.batch_spin.value(),
            "scheduler": sampler,
            "schedule": self.schedule_combo.currentData() if sampler else None,
            "clip_skip": None if flow else self.clip_skip(),
        }

    def repeat(self) -> int:
        """How many runs "Repeat" asks for (consecutive seeds; their images share the staging strip)."""
        return self.repeat_spin.value()

    def edit_values(self) -> dict[str, Any]:
        """The Edit group's fields: Prompt-to-Prompt's only over the inversions it runs on, the concepts' text
        only for LEDITS++ (model.jobs.edit_fields parses it)."""
        method = self.edit_method()
        p2p = method in P2P_METHODS
        on = p2p and self.attention_check.isChecked()
        return {
            "source_prompt": self.source_prompt_edit.text().strip() if method != "kontext" else "",
            "method": method,
            "attention_control": ("p2p" if on else "off") if p2p else None,
            "cross_replace": self.cross_replace_spin.value() / 100 if on else None,
            "self_replace": self.self_replace_spin.value() / 100 if on else None,
            "local_blend": self.local_blend_check.isChecked() if on else None,
            "reweight": self.reweight_edit.text().strip() if on else "",
            "edit_concepts": self.edit_concepts_edit.toPlainText().strip() if method == "ledits" else "",
        }

    def mode_values(self) -> dict[str, Any]:
        """The fields of the image modes (their request builder takes what its kind needs)."""
        return {
            "resize_mode": self.resize_mode_combo.currentData(),
            "mask_blur": self.mask_blur_spin.value(),
            "mask_grow": self.mask_grow_spin.value(),
            "only_masked": self.only_masked_check.isChecked(),
            "only_masked_padding": self.padding_spin.value(),
            "masked_content": self.masked_content_combo.currentData(),
            "soft_mask": self.soft_mask_check.isChecked(),
            "color_match": self.color_match_check.isChecked(),
            "blend_band": self.blend_band_spin.value(),
            "outpaint_fill": self.outpaint_fill_combo.currentData(),
            "outpaint_overlap": self.outpaint_overlap_spin.value(),
            **self.edit_values(),
        }

    def set_suggest_busy(self, busy: bool) -> None:
        """While the engine looks for the region to edit, the button says so and cannot be pressed twice."""
        self.suggest_mask_button.setEnabled(not busy and not is_flow(self._family))
        self.suggest_mask_button.setText("Suggesting a mask…" if busy else "Suggest mask")

    def fill(self, data: Any, report: bool = True) -> list[str]:
        """Fill from a request object or a dict of request fields (unknown keys ignored).

        Values are typed and clamped first (`sanitize_params`): one out of range is clamped, one of the wrong
        type left out. Returns the notices of what was changed; with `report`, they are shown in the window's
        status bar too."""
        from PySide6.QtWidgets import QMainWindow

        from desktop_app.core.requests import sanitize_params

        if hasattr(data, "to_dict"):
            data = data.to_dict(include_images=False)
        data, notices = sanitize_params(dict(data) if isinstance(data, dict) else data)
        kind = data.get("kind")
        if kind in dict(MODES):
            self.set_mode(kind)
        if data.get("model"):
            self.set_model(str(data["model"]))
        if "prompt" in data:
            self.prompt_edit.setPlainText(data["prompt"] or "")
        if "negative_prompt" in data:
            self.negative_prompt_edit.setPlainText(data["negative_prompt"] or "")
        for key, label, spin in (
            ("steps", "Steps", self.steps_spin),
            ("width", "Width", self.width_spin),
            ("height", "Height", self.height_spin),
            ("batch", "Batch", self.batch_spin),
            ("mask_blur", "Mask blur", self.mask_blur_spin),
            ("mask_grow", "Mask grow", self.mask_grow_spin),
            ("only_masked_padding", "Padding", self.padding_spin),
            ("blend_band", "Blend band", self.blend_band_spin),
            ("outpaint_overlap", "Outpaint overlap", self.outpaint_overlap_spin),
        ):
            if data.get(key) is not None:
                value = int(data[key])
                spin.setValue(max(spin.minimum(), min(spin.maximum(), value)))
                if spin.value() != value:
                    notices.append(f"{label} {value} is more than this field holds: {spin.value()} is used")
        if data.get("guidance") is not None:
            self.guidance_spin.setValue(float(data["guidance"]))
        if "seed" in data:
            self.seed_spin.setValue(RANDOM_SEED if data["seed"] is None else int(data["seed"]))
        if "scheduler" in data or "schedule" in data:
            sampler = data.get("scheduler", self.scheduler_combo.currentData())
            schedule = data.get("schedule")
            self.set_sampler(sampler, schedule)
            if schedule and self.schedule_combo.currentData() != schedule:
                notices.append(
                    f"Schedule type {SCHEDULES.get(schedule, schedule)} does not go with "
                    f"{self.scheduler_combo.currentText()}: its own schedule is used"
                )
        if "clip_skip" in data:
            value = data["clip_skip"]
            self.clip_skip_spin.setValue(1 if value is None else max(1, min(MAX_CLIP_SKIP, int(value))))
        if "source_prompt" in data:
            self.source_prompt_edit.setText(data["source_prompt"] or "")
        if data.get("method") in EDIT_METHODS:
            self.set_edit_method(data["method"])
        self._fill_edit(data, notices)
        if data.get("only_masked") is not None:
            self.only_masked_check.setChecked(bool(data["only_masked"]))
        for key, combo, choices in (
            ("masked_content", self.masked_content_combo, MASKED_CONTENT),
            ("outpaint_fill", self.outpaint_fill_combo, OUTPAINT_FILLS),
        ):
            if data.get(key) in choices:
                combo.setCurrentIndex(max(0, combo.findData(data[key])))
        for key, check in (("soft_mask", self.soft_mask_check), ("color_match", self.color_match_check)):
            if data.get(key) is not None:
                check.setChecked(bool(data[key]))
        if data.get("resize_mode") in RESIZE_MODES:
            self.resize_mode_combo.setCurrentIndex(max(0, self.resize_mode_combo.findData(data["resize_mode"])))
        if self.timeline is not None and kind in IMAGE_MODES:
            if kind == "edit" and data.get("t0"):
                self.timeline.set_strength(float(data["t0"]) / self.timeline.T, "edit")
            elif data.get("strength") is not None:
                self.timeline.set_strength(float(data["strength"]), kind)
        window = self.window()
        if report and notices and isinstance(window, QMainWindow):
            window.statusBar().showMessage("Parameters adjusted: " + "; ".join(notices) + ".", 10000)
        return notices

    def _fill_edit(self, data: dict[str, Any], notices: list[str]) -> None:
        """Prompt-to-Prompt's settings and LEDITS++'s concepts from a request's fields."""
        if data.get("attention_control") in ("off", "p2p"):
            self.attention_check.setChecked(data["attention_control"] == "p2p")
        for key, spin in (("cross_replace", self.cross_replace_spin), ("self_replace", self.self_replace_spin)):
            value = _share(data.get(key), None)
            if value is not None:
                spin.setValue(int(round(value * 100)))
            elif data.get(key) is not None:
                notices.append(f"{key.replace('_', ' ').capitalize()} {data[key]!r} is not a share of the steps")
        if data.get("local_blend") is not None:
            self.local_blend_check.setChecked(bool(data["local_blend"]))
        if isinstance(data.get("reweight"), str):
            self.reweight_edit.setText(data["reweight"])
        concepts = data.get("edit_concepts")
        if isinstance(concepts, str):
            self.edit_concepts_edit.setPlainText(concepts)
        elif isinstance(concepts, (list, tuple)):
            try:
                parsed = tuple(EditConcept.from_dict(c) for c in concepts)
            except UserError as exc:
                notices.append(exc.message.rstrip("."))
            else:
                self.edit_concepts_edit.setPlainText(format_edit_concepts(parsed))

    # -- persistence -----------------------------------------------------------
    def save_settings(self, s: QSettings) -> None:
        s.setValue("params/mode", self.mode())
        s.setValue("params/prompt", self.prompt_edit.toPlainText())
        s.setValue("params/negative", self.negative_prompt_edit.toPlainText())
        s.setValue("params/steps", self.steps_spin.value())
        s.setValue("params/guidance", self.guidance_spin.value())
        s.setValue("params/seed", int(self.seed_spin.value()))
        gw, gh = self.generate_size()
        s.setValue("params/width", gw)
        s.setValue("params/height", gh)
        s.setValue("params/batch", self.batch_spin.value())
        s.setValue("params/scheduler", self.scheduler_combo.currentData() or "")
        s.setValue("params/schedule", self.schedule_combo.currentData() or "")
        s.setValue("params/clip_skip", self.clip_skip_spin.value())
        s.setValue("params/source_prompt", self.source_prompt_edit.text())
        s.setValue("params/edit_method", self._wanted_method or self.edit_method())
        s.setValue("params/attention_control", "p2p" if self.attention_check.isChecked() else "off")
        s.setValue("params/cross_replace", self.cross_replace_spin.value() / 100)
        s.setValue("params/self_replace", self.self_replace_spin.value() / 100)
        s.setValue("params/local_blend", "true" if self.local_blend_check.isChecked() else "false")
        s.setValue("params/reweight", self.reweight_edit.text())
        s.setValue("params/edit_concepts", self.edit_concepts_edit.toPlainText())
        s.setValue("params/suggest_how", self.suggest_how())
        s.setValue("params/mask_blur", self.mask_blur_spin.value())
        s.setValue("params/mask_grow", self.mask_grow_spin.value())
        s.setValue("params/only_masked", "true" if self.only_masked_check.isChecked() else "false")
        s.setValue("params/only_masked_padding", self.padding_spin.value())
        s.setValue("params/resize_mode", self.resize_mode_combo.currentData())
        s.setValue("params/masked_content", self.masked_content_combo.currentData())
        s.setValue("params/soft_mask", "true" if self.soft_mask_check.isChecked() else "false")
        s.setValue("params/color_match", "true" if self.color_match_check.isChecked() else "false")
        s.setValue("params/blend_band", self.blend_band_spin.value())
        s.setValue("params/outpaint_fill", self.outpaint_fill_combo.currentData())
        s.setValue("params/outpaint_overlap", self.outpaint_overlap_spin.value())
        s.setValue("params/repeat", self.repeat_spin.value())
        if self.timeline is not None:
            for mode in IMAGE_MODES:
                s.setValue(f"params/strength_{mode}", self.timeline.strength(mode))

    def restore_settings(self, s: QSettings, same_model: bool = True) -> None:
        """The last session's parameters; `same_model` False (another model than last time) keeps the new
        model's recommended steps, guidance and size."""
        if self.timeline is not None:
            for mode in IMAGE_MODES:
                try:
                    value = s.value(f"params/strength_{mode}")
                    if value is not None:
                        self.timeline.set_strength(float(value), mode)
                except (TypeError, ValueError):
                    pass
        if not same_model:
            return
        self._restored_for = self.model()
        data: dict[str, Any] = {}
        for key, name, cast in (
            ("params/steps", "steps", int),
            ("params/guidance", "guidance", float),
            ("params/width", "width", int),
            ("params/height", "height", int),
            ("params/batch", "batch", int),
            ("params/mask_blur", "mask_blur", int),
            ("params/mask_grow", "mask_grow", int),
            ("params/only_masked_padding", "only_masked_padding", int),
            ("params/blend_band", "blend_band", int),
            ("params/outpaint_overlap", "outpaint_overlap", int),
        ):
            v = s.value(key)
            if v is not None:
                try:
                    data[name] = cast(v)
                except (TypeError, ValueError):
                    pass
        seed = s.value("params/seed")
        if seed is not None:
            try:
                data["seed"] = None if int(float(seed)) < 0 else int(float(seed))
            except (TypeError, ValueError):
                pass
        for key, name in (
            ("params/prompt", "prompt"),
            ("params/negative", "negative_prompt"),
            ("params/source_prompt", "source_prompt"),
            ("params/edit_method", "method"),
            ("params/attention_control", "attention_control"),
            ("params/reweight", "reweight"),
            ("params/edit_concepts", "edit_concepts"),
        ):
            v = s.value(key)
            if v is not None:
                data[name] = str(v)
        for key in ("cross_replace", "self_replace"):
            try:
                value = s.value(f"params/{key}")
                if value is not None:
                    data[key] = float(str(value))
            except ValueError:
                pass
        if s.value("params/local_blend") is not None:
            data["local_blend"] = str(s.value("params/local_blend")).lower() == "true"
        how = self.suggest_how_combo.findData(str(s.value("params/suggest_how", "diffedit")))
        self.suggest_how_combo.setCurrentIndex(max(0, how))
        only = s.value("params/only_masked")
        if only is not None:
            data["only_masked"] = str(only).lower() == "true"
        resize = s.value("params/resize_mode")
        if resize is not None:
            data["resize_mode"] = str(resize)
        for key in ("masked_content", "outpaint_fill"):
            if s.value(f"params/{key}") is not None:
                data[key] = str(s.value(f"params/{key}"))
        for key in ("soft_mask", "color_match"):
            if s.value(f"params/{key}") is not None:
                data[key] = str(s.value(f"params/{key}")).lower() == "true"
        try:
            self.repeat_spin.setValue(max(1, min(16, int(str(s.value("params/repeat", 1))))))
        except (TypeError, ValueError):
            pass
        sched = s.value("params/scheduler")
        if sched is not None:
            data["scheduler"] = str(sched) or None
            data["schedule"] = str(s.value("params/schedule") or "") or None
        clip_skip = s.value("params/clip_skip")
        if clip_skip is not None:
            try:
                data["clip_skip"] = int(clip_skip)
            except (TypeError, ValueError):
                pass
        self.fill(data)
        mode = s.value("params/mode")
        if mode in dict(MODES):
            self._shown_mode = str(mode)  # the restored steps and guidance are the user's for that mode
            self.set_mode(str(mode))
