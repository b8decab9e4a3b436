"""Downloading only the text encoders, tokenizers and VAE of a FLUX.1 / SD 3.x transformer file ("parts:flux"):
from the command line, through the engine's `download_model`, and from the models dialog (the offer after a load
that failed for want of them, and one button per family), with progress, cancel, and the file loading afterwards.
Offline: the stand-in hub of test_flow_files serves the tiny FLUX.1 model's files; the dialog runs on FakeEngine."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QMainWindow, QMessageBox
from test_flow_files import SHIPPED, flow_env, online, tiny_flux  # noqa: F401 - fixtures

from desktop_app.backend import PARTS, parts_for, parts_named_in, parts_of
from desktop_app.core.errors import JobCancelled, ModelError
from desktop_app.core.events import Progress
from desktop_app.core.model_registry import ModelRegistry, curated
from desktop_app.core.modelinfo import BUILTIN
from desktop_app.engine import flow_files
from desktop_app.model.models import Models
from desktop_app.ui import models_dialog as dialog_module
from desktop_app.ui.downloads import DownloadsIndicator
from desktop_app.ui.models_dialog import ModelsDialog
from desktop_app.worker import EngineWorker
from tests.ui_conftest_helpers import FakeEngine

SCHNELL = "black-forest-labs/FLUX.1-schnell"


# -- the parts ids ------------------------------------------------------------------------------------
def test_parts_ids_name_the_repo_and_parts_flow_files_fetches():
    assert parts_of("parts:flux") is PARTS["flux"] and parts_of("parts:flux-dev") is PARTS["flux"]
    assert parts_of("parts:sd3") is PARTS["sd3"] and parts_for("sd3") is PARTS["sd3"]
    assert parts_of(SCHNELL) is None and parts_of("parts:sdxl") is None  # a hub id, a family without parts
    for kind, parts in PARTS.items():
        repo, names = flow_files.parts_repo(parts.family)
        assert repo == parts.repo == flow_files.COMPONENTS_REPO[kind]
        assert "vae" in names and "transformer" not in names and "text_encoder_2" in names
        whole = curated(repo)
        assert whole is not None and parts.size_gb < whole.size_gb / 1.4  # the transformer stays on the hub
        assert parts.gated == whole.gated


# -- the stand-in hub with the tiny FLUX.1 model ---------------------------------------------------------
@pytest.fixture
def schnell_hub(flow_env, tiny_flux, online, tmp_path):  # noqa: F811 - fixtures
    """The tiny FLUX.1 pipeline served as FLUX.1 schnell (its parts download from there), an empty hub cache, the
    shipped flux-schnell config beside flow_env's tiny flux-dev one."""
    shutil.copytree(SHIPPED / "flux-schnell", tmp_path / "configs" / "flux-schnell")
    files = {p.relative_to(tiny_flux).as_posix(): p.read_bytes() for p in tiny_flux.rglob("*") if p.is_file()}
    return online(SCHNELL, files)


def test_the_command_fetches_only_the_parts_with_progress(schnell_hub, capsys):
    from desktop_app.cli.main import main

    assert main(["models", "--download-parts", "flux"]) == 0
    out, err = capsys.readouterr()
    folder = Path(out.strip().splitlines()[-1])
    fetched = {name.split("/")[0] for name in schnell_hub.requested}
    assert fetched == {"model_index.json", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"}
    assert (folder / "text_encoder_2" / "config.json").is_file() and (folder / "vae" / "config.json").is_file()
    assert not (folder / "transformer").exists()
    assert "FLUX.1 text encoders and VAE" in err and SCHNELL in err
    files = len(set(schnell_hub.requested))  # HEAD and GET each
    assert f"/ {files} files)" not in err and f"({files}/{files} files)" in err and "ETA" in err


def test_the_command_help_says_what_and_how_big(capsys):
    from desktop_app.cli.main import main

    with pytest.raises(SystemExit):
        main(["models", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--download-parts {flux,sd3}" in text and "text encoders, tokenizers and VAE" in text
    assert "about 9.9 GB" in text and "about 11.3 GB" in text


def test_the_engine_downloads_the_parts_with_progress_then_the_file_loads(schnell_hub, flow_env, monkeypatch):  # noqa: F811
    from desktop_app.engine.engine import Engine

    engine = Engine(device="cpu")
    with pytest.raises(ModelError) as info:  # not there yet: the hint names the new action
        engine.preload(str(flow_env))
    hint = info.value.hint
    assert "Models… > Download the text encoders and VAE (FLUX.1, about 9.9 GB)" in hint
    assert "diffusion-desk-cli models --download-parts flux" in hint and parts_named_in(hint) is PARTS["flux"]
    asked = []
    real = flow_files.download_parts
    monkeypatch.setattr(flow_files, "download_parts", lambda family, **kw: asked.append(family) or real(family, **kw))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(JobCancelled):  # cancelled before a byte: nothing of the parts in the cache
        engine.download_model("parts:flux-dev", lambda p: None, cancel)
    assert asked == ["flux-schnell"] and not any(n.startswith("text_encoder") for n in schnell_hub.requested)
    events: list[Progress] = []
    folder = engine.download_model("parts:flux-dev", events.append, threading.Event())
    assert asked == ["flux-schnell", "flux-schnell"]  # the family whose config lists the parts of every FLUX.1 file
    assert all(e.phase == "download" for e in events) and events[-1].step == events[-1].total > 0
    assert [e.step for e in events] == sorted(e.step for e in events)
    assert (folder / "text_encoder" / "config.json").is_file() and not (folder / "transformer").exists()
    info = engine.preload(str(flow_env))  # found in the hub cache now
    assert info.family == "flux-dev"
    pipe = engine.models.loaded.pipe  # pyright: ignore[reportOptionalMemberAccess]
    image = pipe("a red circle", num_inference_steps=1, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and float(image.std()) > 0.0  # an image, not a blank
    with pytest.raises(ModelError, match="names no family"):
        engine.download_model("parts:sdxl", lambda p: None, threading.Event())


# -- the models dialog on the fake backend ----------------------------------------------------------------
@pytest.fixture
def fake_engine():
    return FakeEngine(download_delay=0.05)


@pytest.fixture
def worker(fake_engine):
    w = EngineWorker(engine_factory=lambda: fake_engine)
    yield w
    w.shutdown(5000)


@pytest.fixture
def models(worker, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    return Models(worker, settings, worker.download_model, registry=ModelRegistry(tmp_path / "models.json"))


@pytest.fixture
def gguf(tmp_path, fake_engine):
    """A FLUX.1 [dev] transformer file whose text encoders and VAE the fake engine does not find."""
    path = tmp_path / "flux1-dev-Q8_0.gguf"
    path.write_bytes(b"GGUF")
    fake_engine.needs_parts[str(path.resolve())] = "flux-dev"
    return str(path.resolve())


def _fail_to_load(qtbot, models, gguf):
    dlg = ModelsDialog(models)
    qtbot.addWidget(dlg)
    assert dlg.add_file(gguf) and dlg.parts_offer.isHidden()
    with qtbot.waitSignal(models.failed, timeout=10000) as failed:
        dlg.accept()
    return failed.args


def test_a_file_without_its_parts_is_offered_them_then_loads(qtbot, models, gguf, fake_engine, monkeypatch):
    window = QMainWindow()
    qtbot.addWidget(window)
    indicator = DownloadsIndicator(models)
    window.statusBar().addPermanentWidget(indicator)
    window.show()
    message, hint = _fail_to_load(qtbot, models, gguf)
    assert "Models… > Download the text encoders" in hint and models.current() == BUILTIN
    assert models.parts_missing(gguf) is PARTS["flux"] and models.parts_wanted() == gguf
    dlg = ModelsDialog(models)  # opened again, as the hint says
    qtbot.addWidget(dlg)
    dlg.show()
    assert dlg.parts_offer.isVisible() and dlg.parts_offer.text() == "Download the text encoders and VAE (about 9.9 GB)"
    assert "flux1-dev-Q8_0.gguf" in dlg.parts_label.text() and "FLUX.1" in dlg.parts_label.text()
    shown = []
    models.downloadProgress.connect(lambda *_: shown.append((indicator.label.text(), dlg.download_status.text())))
    keep = QMessageBox.StandardButton.Yes  # closing while it downloads: keep it in the background
    monkeypatch.setattr(dialog_module.QMessageBox, "question", staticmethod(lambda *a: keep))
    loads = []
    worker_preload = models.worker.preload
    monkeypatch.setattr(models.worker, "preload", lambda source: loads.append(source) or worker_preload(source))
    with qtbot.waitSignal(models.defaultsReady, timeout=10000, check_params_cb=lambda s, d: s == gguf) as ready:
        qtbot.mouseClick(dlg.parts_offer, Qt.MouseButton.LeftButton)
        assert not dlg.parts_offer.isEnabled() and dlg.cancel_button.isEnabled()
        dlg.select(gguf)
        dlg.accept()  # OK with the file highlighted: it loads once the parts are in, not now (it would fail again)
        assert loads == [] and models.waiting_for_parts(gguf)
    assert loads == [gguf] and ready.args[0] == gguf and models.current() == gguf and models.state() == "ready"
    assert fake_engine.downloads == ["parts:flux"] and models.parts_missing(gguf) is None
    assert any(i.startswith("Downloading the FLUX.1 text encoders and VAE ") and "MB" in i for i, _ in shown)
    assert any("FLUX.1 text encoders and VAE: " in s and "MB of 4.0 MB" in s for _, s in shown)
    assert "parts:flux" not in models.sources()  # no model of their own
    assert indicator.isHidden()


def test_each_family_s_parts_can_be_fetched_before_choosing_a_file(qtbot, models, fake_engine):
    dlg = ModelsDialog(models)
    qtbot.addWidget(dlg)
    button = dlg.parts_buttons["sd3"]
    assert "SD 3.x" in button.text() and "about 11.3 GB" in button.text() and "Gated" in button.toolTip()
    assert "FLUX.1" in dlg.parts_buttons["flux"].text() and "about 9.9 GB" in dlg.parts_buttons["flux"].text()
    with qtbot.waitSignal(models.downloadFinished, timeout=10000) as finished:
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        assert not button.isEnabled() and not dlg.progress.isHidden()
    assert finished.args[0] == "parts:sd3" and finished.args[2] == ""
    assert fake_engine.downloads == ["parts:sd3"] and models.sources() == [BUILTIN]
    assert "SD 3.x text encoders and VAE are downloaded" in dlg.download_status.text() and button.isEnabled()


@pytest.mark.parametrize("where", ["dialog", "close"])
def test_cancelling_the_parts_download_leaves_the_file_unloaded(qtbot, models, gguf, fake_engine, monkeypatch, where):
    fake_engine.download_delay = 0.3
    _fail_to_load(qtbot, models, gguf)
    dlg = ModelsDialog(models)
    qtbot.addWidget(dlg)
    dlg.show()
    dlg.download_offered_parts()
    qtbot.waitUntil(lambda: models.downloads()["parts:flux"][0] > 0, timeout=5000)
    assert "loads once the FLUX.1 text encoders and VAE are downloaded" in dlg.parts_label.text()
    if where == "dialog":
        qtbot.mouseClick(dlg.cancel_button, Qt.MouseButton.LeftButton)
    else:  # closing asks keep-or-cancel; No cancels
        asked = []
        monkeypatch.setattr(
            dialog_module.QMessageBox,
            "question",
            staticmethod(lambda parent, title, text, *a: asked.append(text) or QMessageBox.StandardButton.No),
        )
        dlg.reject()
        assert asked and "FLUX.1 text encoders and VAE" in asked[0]
    qtbot.waitUntil(lambda: models.downloads()["parts:flux"][2] == "cancelled", timeout=5000)
    qtbot.wait(100)
    assert models.current() == BUILTIN and len(fake_engine.downloads) == 1 and not fake_engine.parts_downloaded
    assert models.parts_missing(gguf) is PARTS["flux"] and not models.waiting_for_parts(gguf)  # offered again
