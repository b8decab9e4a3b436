"""The first models dialog: the built-in model, plus local diffusers folders (checked for model_index.json)."""

from __future__ import annotations

from desktop_app.core.modelinfo import BUILTIN
from desktop_app.ui.models_dialog import ModelsDialog


def test_models_dialog_adds_only_diffusers_folders(qtbot, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    (good / "model_index.json").write_text("{}")
    bad = tmp_path / "bad"
    bad.mkdir()
    dlg = ModelsDialog([], BUILTIN)
    qtbot.addWidget(dlg)
    assert dlg.chosen() == BUILTIN
    assert not dlg.add_folder(str(bad))
    assert "model_index.json" in dlg.error_label.text()
    assert dlg.add_folder(str(good))
    assert dlg.chosen() == str(good.resolve())
    assert dlg.models() == [BUILTIN, str(good.resolve())]
    assert dlg.error_label.text() == ""
