"""The first models dialog: the built-in model, plus local diffusers folders (checked for model_index.json)."""

from __future__ import annotations

from desktop_app.core.modelinfo import BUILTIN
from desktop_app.ui.models_dialog import ModelsDialog
from test_ui_window import fake_engine  # noqa: F401 - fixture
from tests.ui_conftest_helpers import qloop  # noqa: F401 - fixture


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


def test_ticking_allow_pickle_lets_a_ckpt_in_and_says_so(qtbot, tmp_path):
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"x")
    dlg = ModelsDialog([], BUILTIN)
    qtbot.addWidget(dlg)
    assert not dlg.add_file(str(pickle))
    assert "Allow pickle checkpoints" in dlg.error_label.text()
    with qtbot.waitSignal(dlg.allowPickleChanged) as blocker:
        dlg.allow_pickle_check.setChecked(True)
    assert blocker.args == [True]
    assert dlg.add_file(str(pickle))
    assert dlg.chosen() == str(pickle.resolve())


def test_the_pickle_opt_in_reaches_the_engine_and_survives_a_restart(qtbot, qloop, tmp_path, fake_engine):
    from types import SimpleNamespace

    from test_ui_window import click_generate, make_window

    fake_engine.models = SimpleNamespace(allow_pickle=True)
    w = make_window(qtbot, tmp_path / "data", fake_engine)
    click_generate(qtbot, w)
    assert fake_engine.models.allow_pickle is False  # off unless the user opted in
    w.set_allow_pickle(True)
    click_generate(qtbot, w)
    assert fake_engine.models.allow_pickle is True
    w.close()
    again = make_window(qtbot, tmp_path / "data", fake_engine)
    assert again.worker.allow_pickle is True
    again.close()
