"""The window's Edit group (issue 15): the methods of the model's family, Prompt-to-Prompt, LEDITS++ concepts, the
model's edit defaults, Suggest mask by DiffEdit or cross-attention, restore from a PNG's parameters; driven through
the real window over the mock backend (pytest-qt, offscreen), and once over the real engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from PySide6.QtCore import QPoint, Qt

from desktop_app.core.events import Result
from desktop_app.core.images import save_png
from desktop_app.core.infotext import format_parameters, png_info
from desktop_app.core.requests import EditConcept, EditRequest
from tests.ui_conftest_helpers import FakeEngine, child, choose, click_generate, make_window, qloop, type_into  # noqa: F401


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def window(qtbot, qloop, tmp_path, engine):
    w = make_window(qtbot, tmp_path / "data", engine)
    w.set_source_image(Image.new("RGB", (64, 64), (200, 30, 30)))
    w.prompt_panel.set_mode("edit")
    yield w
    w.close()


def load(qtbot, w, source):
    """Choose a model as the picker does and wait until it loaded (its defaults arrive)."""
    with qtbot.waitSignal(w.models.defaultsReady, timeout=10000):
        w.models.select(source)


def model_folder(tmp_path, name, edit):
    """A model folder whose diffusion_desk.json recommends these edit settings (what the engine reads)."""
    folder = tmp_path / name
    folder.mkdir()
    settings = {"name": name, "steps": 12, "guidance": 6.0, "width": 64, "height": 64, "edit": edit}
    (folder / "diffusion_desk.json").write_text(json.dumps(settings))
    return str(folder)


def tick(qtbot, check):
    """Click a check box on its box, as a user does (a wide row's middle may lie past its text)."""
    qtbot.mouseClick(check, Qt.MouseButton.LeftButton, pos=QPoint(8, check.height() // 2))


def set_checked(qtbot, check, value: bool) -> None:
    """Tick or untick a check box with the mouse, whatever it starts at (the model's defaults set some)."""
    if check.isChecked() != value:
        tick(qtbot, check)
    assert check.isChecked() == value


def methods(w):
    combo = child(w, "editMethodCombo")
    return [combo.itemData(i) for i in range(combo.count())]


def test_the_method_list_is_the_model_familys(qtbot, window, engine):
    assert methods(window) == ["direct", "negative-prompt", "ddim", "ledits"]
    assert child(window, "editMethodCombo").currentText() == "Direct inversion"
    engine.families.update({"owner/flux-dev": "flux-dev", "owner/kontext": "flux-kontext", "owner/sd35": "sd3"})
    load(qtbot, window, "owner/flux-dev")
    assert methods(window) == ["fireflow", "rf-solver", "rf-inversion"]  # no Kontext on a model that is not one
    assert child(window, "editMethodCombo").currentText() == "FireFlow"
    load(qtbot, window, "owner/kontext")
    assert methods(window) == ["fireflow", "rf-solver", "rf-inversion", "kontext"]
    assert window.prompt_panel.edit_method() == "kontext"  # the family's own
    assert child(window, "promptLabel").text() == "Instruction (what to change)"
    assert not child(window, "sourcePromptEdit").isVisible()  # an instruction needs no description of the source
    load(qtbot, window, "owner/sd35")
    assert methods(window) == ["fireflow", "rf-solver", "rf-inversion"]
    assert "Target prompt" in child(window, "promptLabel").text()
    load(qtbot, window, "builtin")
    assert methods(window) == ["direct", "negative-prompt", "ddim", "ledits"]


def test_prompt_to_prompt_controls_only_for_the_inversions(qtbot, window):
    combo = child(window, "editMethodCombo")
    p2p, concepts = child(window, "attentionControlCheck"), child(window, "editConceptsEdit")
    for label in ("Direct inversion", "Negative-prompt inversion", "Plain DDIM inversion"):
        choose(qtbot, combo, label)
        assert p2p.isVisible() and child(window, "p2pSectionToggle").isVisible() and not concepts.isVisible()
    choose(qtbot, combo, "LEDITS++ (edit concepts)")
    assert not p2p.isVisible() and not child(window, "p2pSectionToggle").isVisible()
    assert concepts.isVisible() and "LEDITS++" in child(window, "promptLabel").text()
    # the settings open under their folded title and follow the check box
    choose(qtbot, combo, "Direct inversion")
    assert p2p.isChecked()  # the built-in model's recommended edit settings turn Prompt-to-Prompt on
    qtbot.mouseClick(child(window, "p2pSectionToggle"), Qt.MouseButton.LeftButton)
    assert child(window, "crossReplaceSpin").isVisible() and child(window, "crossReplaceSpin").isEnabled()
    set_checked(qtbot, p2p, False)
    assert not child(window, "crossReplaceSpin").isEnabled()
    set_checked(qtbot, p2p, True)
    assert child(window, "crossReplaceSpin").isEnabled()


def test_generate_sends_the_prompt_to_prompt_fields(qtbot, window, engine):
    pp = window.prompt_panel
    type_into(qtbot, child(window, "sourcePromptEdit"), "a red circle")
    pp.prompt_edit.setPlainText("a blue circle")
    choose(qtbot, child(window, "editMethodCombo"), "Plain DDIM inversion")
    set_checked(qtbot, child(window, "attentionControlCheck"), True)
    qtbot.mouseClick(child(window, "p2pSectionToggle"), Qt.MouseButton.LeftButton)
    type_into(qtbot, child(window, "crossReplaceSpin"), "60")
    type_into(qtbot, child(window, "selfReplaceSpin"), "25")
    set_checked(qtbot, child(window, "localBlendCheck"), True)
    type_into(qtbot, child(window, "reweightEdit"), "blue:2")
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert isinstance(request, EditRequest)
    assert (request.method, request.attention_control, request.source_prompt) == ("ddim", "p2p", "a red circle")
    assert (request.cross_replace, request.self_replace, request.local_blend) == (0.6, 0.25, True)
    assert request.reweight == "blue:2" and request.edit_concepts == ()
    # turned off: the request says off, and carries none of its settings
    set_checked(qtbot, child(window, "attentionControlCheck"), False)
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert request.attention_control == "off" and request.cross_replace is None and request.reweight == ""


def test_ledits_sends_its_concepts_and_a_bad_one_is_shown(qtbot, window, engine):
    choose(qtbot, child(window, "editMethodCombo"), "LEDITS++ (edit concepts)")
    concepts = child(window, "editConceptsEdit")
    concepts.setPlainText("+ a blue hat @ 7\n- a red scarf @ 5 / 0.8")
    click_generate(qtbot, window)
    request = engine.runs[-1]
    assert request.method == "ledits" and request.attention_control is None
    assert request.edit_concepts == (
        EditConcept("a blue hat", 7.0, False, 0.9),
        EditConcept("a red scarf", 5.0, True, 0.8),
    )
    concepts.setPlainText("+ a blue hat @ lots")
    runs = len(engine.runs)
    assert window.generate() is None
    assert window.error_banner.isVisible() and "no number after @" in window.last_error[0]
    assert len(engine.runs) == runs


def test_a_models_edit_defaults_apply_when_it_loads(qtbot, window, tmp_path):
    pp = window.prompt_panel
    edit = {
        "method": "negative-prompt",
        "attention_control": "p2p",
        "cross_replace": 0.7,
        "self_replace": 0.3,
        "local_blend": True,
        "strength": 0.9,
        "guidance": 4.5,
        "steps": 30,
    }
    load(qtbot, window, model_folder(tmp_path, "p2p-model", edit))
    assert pp.edit_method() == "negative-prompt"
    assert child(window, "attentionControlCheck").isChecked() and child(window, "localBlendCheck").isChecked()
    assert (child(window, "crossReplaceSpin").value(), child(window, "selfReplaceSpin").value()) == (70, 30)
    assert child(window, "strengthSpin").value() == pytest.approx(0.9)  # the depth: the timeline's edit strength
    assert window.timeline.strength("edit") == pytest.approx(0.9)
    assert (pp.steps_spin.value(), pp.guidance_spin.value()) == (30, 4.5)  # an edit's own steps and guidance
    pp.set_mode("generate")  # the generation ones back, as the spins were left at the edit's
    assert (pp.steps_spin.value(), pp.guidance_spin.value()) == (12, 6.0)
    pp.set_mode("edit")
    assert (pp.steps_spin.value(), pp.guidance_spin.value()) == (30, 4.5)
    # another model without edit settings: its family's method, attention control off
    load(qtbot, window, model_folder(tmp_path, "plain", {}))
    assert pp.edit_method() == "direct" and not child(window, "attentionControlCheck").isChecked()


def test_suggest_mask_passes_how(qtbot, window, engine):
    window.prompt_panel.prompt_edit.setPlainText("a blue circle")
    type_into(qtbot, child(window, "sourcePromptEdit"), "a red circle")
    for label, how in (("Cross-attention", "attention"), ("DiffEdit", "diffedit")):
        choose(qtbot, child(window, "suggestHowCombo"), label)
        window.document.clear_mask()
        qtbot.mouseClick(child(window, "suggestMaskButton"), Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: window.document.has_mask(), timeout=5000)
        assert engine.suggested[-1] == ("a red circle", "a blue circle", how)
    qtbot.waitUntil(lambda: child(window, "suggestMaskButton").isEnabled(), timeout=5000)


def edit_result(**fields):
    request = EditRequest(
        prompt="a blue circle",
        source_prompt="a red circle",
        image=Image.new("RGB", (64, 64)),
        seed=5,
        steps=10,
        guidance=7.5,
        t0=600,
        **fields,
    )
    return Result(request=request, images=[Image.new("RGB", (64, 64), (0, 0, 200))], seeds=[5], model_id="builtin")


def test_a_dropped_edit_png_restores_its_controls(qtbot, window, tmp_path):
    pp = window.prompt_panel
    p2p = edit_result(
        method="ddim",
        attention_control="p2p",
        cross_replace=0.65,
        self_replace=0.35,
        local_blend=True,
        reweight="blue:2",
    )
    path = tmp_path / "p2p.png"
    save_png(p2p.images[0], path, png_info(p2p))
    assert window.open_image(str(path))
    assert pp.edit_method() == "ddim" and child(window, "attentionControlCheck").isChecked()
    assert (child(window, "crossReplaceSpin").value(), child(window, "selfReplaceSpin").value()) == (65, 35)
    assert child(window, "localBlendCheck").isChecked() and child(window, "reweightEdit").text() == "blue:2"
    assert child(window, "sourcePromptEdit").text() == "a red circle"
    # the A1111 text alone (another tool kept only `parameters`) restores them too
    text_only = tmp_path / "text.png"
    ledits = edit_result(
        method="ledits", edit_concepts=(EditConcept("a blue hat", 7.0), EditConcept("a red scarf", 5.0, True))
    )
    info = PngInfo()
    info.add_text("parameters", format_parameters(ledits))
    ledits.images[0].save(text_only, pnginfo=info)
    assert window.open_image(str(text_only))
    assert pp.edit_method() == "ledits"
    assert child(window, "editConceptsEdit").toPlainText() == "+ a blue hat @ 7\n- a red scarf @ 5"


def test_history_reuse_restores_and_the_controls_outlive_a_restart(qtbot, qloop, window, engine, tmp_path):
    window.fill_from_request(edit_result(method="negative-prompt", attention_control="p2p", cross_replace=0.5).request)
    pp = window.prompt_panel
    assert pp.edit_method() == "negative-prompt" and child(window, "crossReplaceSpin").value() == 50
    type_into(qtbot, child(window, "reweightEdit"), "circle:0.5")
    choose(qtbot, child(window, "suggestHowCombo"), "Cross-attention")
    window.save_settings()
    again = make_window(qtbot, tmp_path / "data", engine)
    try:
        again.set_source_image(Image.new("RGB", (64, 64)))
        again.prompt_panel.set_mode("edit")
        assert again.prompt_panel.edit_method() == "negative-prompt"
        assert child(again, "attentionControlCheck").isChecked() and child(again, "crossReplaceSpin").value() == 50
        assert child(again, "reweightEdit").text() == "circle:0.5"
        assert again.prompt_panel.suggest_how() == "attention"
    finally:
        again.close()


def test_a_flow_edit_reused_on_a_stable_diffusion_model_waits_for_a_flow_model(qtbot, window, engine):
    engine.families["owner/flux"] = "flux-dev"
    window.fill_from_request(edit_result(method="rf-inversion").request)
    assert window.prompt_panel.edit_method() == "direct"  # the built-in model takes no flow method
    load(qtbot, window, "owner/flux")
    assert window.prompt_panel.edit_method() == "rf-inversion"  # it comes back with a model that takes it
    load(qtbot, window, "builtin")
    window.fill_from_request(edit_result(method="rf-solver").request)
    choose(qtbot, child(window, "editMethodCombo"), "Plain DDIM inversion")  # the user's choice since wins
    load(qtbot, window, "owner/flux")
    assert window.prompt_panel.edit_method() == "fireflow"  # the family's own, not the forgotten RF-Solver


# -- the real window on the real engine --------------------------------------------------------------------------
def test_real_prompt_to_prompt_edit_of_a_builtin_picture(qtbot, qloop, tmp_path):
    """The built-in model makes a picture, Edit with Prompt-to-Prompt turns its circle blue: the image changes, and
    the history's PNG says how it was made."""
    from desktop_app.app.wiring import create_main_window
    from desktop_app.engine.engine import Engine
    from desktop_app.ui.main_window import MainWindow

    engine = Engine(device="cpu")
    w = create_main_window(data_dir=tmp_path / "data", engine_factory=lambda: engine)
    assert isinstance(w, MainWindow)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    try:
        pp = w.prompt_panel
        pp.steps_spin.setValue(5)
        pp.seed_spin.setValue(3)
        pp.prompt_edit.setPlainText("a red circle on a white background")
        source = click_generate(qtbot, w, timeout=120000).images[0]
        w.use_result_as_source()
        pp.set_mode("edit")
        type_into(qtbot, child(w, "sourcePromptEdit"), "a red circle on a white background")
        pp.prompt_edit.setPlainText("a blue circle on a white background")
        choose(qtbot, child(w, "editMethodCombo"), "Direct inversion")
        set_checked(qtbot, child(w, "attentionControlCheck"), True)
        result = click_generate(qtbot, w, timeout=120000)
        assert result.request.attention_control == "p2p"
        changed = np.abs(np.asarray(result.images[0], np.int16) - np.asarray(source, np.int16)).max(axis=2)
        assert (changed > 30).mean() > 0.01  # the circle changed colour
        qtbot.waitUntil(lambda: len(w.history.list()) == 2, timeout=20000)  # the picture, then its edit
        with Image.open(w.history.list()[0].image_path) as png:
            text = png.text["parameters"]  # type: ignore[attr-defined]
        assert "Attention control: Prompt-to-Prompt" in text and "Mode: edit" in text
    finally:
        w.close()
