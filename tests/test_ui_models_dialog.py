"""The models dialog: the built-in model, local diffusers folders (checked for model_index.json), the pickle opt-in."""

from __future__ import annotations

from types import SimpleNamespace

from PySide6.QtCore import QPoint, QSettings, Qt
from test_models_dialog import fake_engine, registry, settings, worker  # noqa: F401 - fixtures

from desktop_app.core.modelinfo import BUILTIN
from desktop_app.core.requests import GenerateRequest
from desktop_app.model.models import Models
from desktop_app.ui.models_dialog import ModelsDialog


def test_models_dialog_adds_only_diffusers_folders(qtbot, tmp_path, worker, settings, registry):  # noqa: F811
    good = tmp_path / "good"
    good.mkdir()
    (good / "model_index.json").write_text("{}")
    bad = tmp_path / "bad"
    bad.mkdir()
    dlg = ModelsDialog(Models(worker, settings, registry=registry))
    qtbot.addWidget(dlg)
    assert dlg.chosen() == BUILTIN
    assert not dlg.add_folder(str(bad))
    assert "model_index.json" in dlg.error_label.text()
    assert dlg.add_folder(str(good))
    assert dlg.chosen() == str(good.resolve())
    assert dlg.sources() == [BUILTIN, str(good.resolve())]
    assert dlg.error_label.text() == ""


def test_ticking_allow_pickle_lets_a_ckpt_in_and_says_so(qtbot, tmp_path, worker, settings, registry):  # noqa: F811
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"x")
    models = Models(worker, settings, registry=registry)
    dlg = ModelsDialog(models)
    qtbot.addWidget(dlg)
    dlg.show()
    assert not dlg.add_file(str(pickle))
    assert "Allow pickle checkpoints" in dlg.error_label.text()
    with qtbot.waitSignal(models.allowPickleChanged) as blocker:
        qtbot.mouseClick(
            dlg.allow_pickle_check, Qt.MouseButton.LeftButton, pos=QPoint(8, dlg.allow_pickle_check.height() // 2)
        )
    assert blocker.args == [True] and models.allow_pickle and worker.allow_pickle
    assert dlg.add_file(str(pickle))
    assert dlg.chosen() == str(pickle.resolve())


def test_the_pickle_opt_in_reaches_the_engine_and_survives_a_restart(qtbot, tmp_path, worker, fake_engine, registry):  # noqa: F811
    def run_job():
        with qtbot.waitSignal(worker.finished, timeout=10000):
            worker.submit(GenerateRequest(prompt="a cube", model=BUILTIN, steps=2, width=64, height=64, seed=1))

    path = str(tmp_path / "settings.ini")
    fake_engine.models = SimpleNamespace(allow_pickle=True)
    models = Models(worker, QSettings(path, QSettings.Format.IniFormat), registry=registry)
    run_job()
    assert fake_engine.models.allow_pickle is False  # off unless the user opted in
    dlg = ModelsDialog(models)
    qtbot.addWidget(dlg)
    dlg.allow_pickle_check.setChecked(True)
    run_job()
    assert fake_engine.models.allow_pickle is True
    worker.allow_pickle = False
    Models(worker, QSettings(path, QSettings.Format.IniFormat), registry=registry)  # the next launch
    assert worker.allow_pickle is True
