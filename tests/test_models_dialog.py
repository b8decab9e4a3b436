"""The models dialog bound to Models: checkpoint files, known models (missing ones shown as missing), removing one,
the curated list with sizes, a download with progress and cancel, and what closing the dialog does to a download."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QMainWindow, QMessageBox
from test_hub import fake_hub, restore_hub_constants  # noqa: F401 - fixtures

from desktop_app.core.errors import JobCancelled
from desktop_app.core.model_registry import CURATED, ModelRegistry
from desktop_app.core.modelinfo import BUILTIN
from desktop_app.model.models import Models
from desktop_app.ui import models_dialog as dialog_module
from desktop_app.ui.downloads import DownloadsIndicator
from desktop_app.ui.models_dialog import ModelsDialog
from desktop_app.worker import EngineWorker
from tests.ui_conftest_helpers import FakeEngine


@dataclass
class P:
    done_bytes: int
    total_bytes: int


def fake_downloader(
    steps: int = 5, delay: float = 0.02, block: threading.Event | None = None, calls: list | None = None
):
    """Sleeps per chunk, reports bytes, honours cancel; returns the folder like the hub download does."""

    def download(repo, on_progress, cancel):
        if calls is not None:
            calls.append(repo)
        total = 2_000_000_000
        for i in range(1, steps + 1):
            if block is not None:
                block.wait(2)
            if cancel.is_set():
                raise JobCancelled()
            on_progress(P(i * total // steps, total))
            time.sleep(delay)
        return f"/cache/{repo}"

    return download


@pytest.fixture
def fake_engine():
    """The fake engine the `worker` fixture's worker builds."""
    return FakeEngine()


@pytest.fixture
def worker(fake_engine):
    w = EngineWorker(engine_factory=lambda: fake_engine)
    yield w
    w.shutdown(5000)


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(tmp_path / "models.json")


def make_models(worker, settings, registry, downloader=None):
    return Models(worker, settings, downloader, registry=registry)


def open_dialog(qtbot, models):
    dlg = ModelsDialog(models)
    qtbot.addWidget(dlg)
    return dlg


def test_curated_list_shows_names_families_and_sizes(qtbot, worker, settings, registry):
    dlg = open_dialog(qtbot, make_models(worker, settings, registry))
    texts = [dlg.curated.item(i).text() for i in range(dlg.curated.count())]
    assert len(texts) == len(CURATED) >= 13
    assert any("SDXL-Turbo" in t and "GB" in t for t in texts)
    assert any("FLUX.1 schnell" in t and "GB" in t for t in texts)  # the flow families by their names
    assert any("SD 3.x" in t for t in texts)
    assert any("Stable Diffusion 1.5 Inpainting" in t for t in texts)


def test_download_shows_progress_then_lists_the_model(qtbot, worker, settings, registry):
    calls = []
    models = make_models(worker, settings, registry, fake_downloader(calls=calls))
    dlg = open_dialog(qtbot, models)
    dlg.curated.setCurrentRow(5)
    repo = dlg.curated.currentItem().data(Qt.ItemDataRole.UserRole)
    seen = []
    models.downloadProgress.connect(lambda *_: seen.append(dlg.download_status.text()))
    qtbot.mouseClick(dlg.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlg.chosen() == repo, timeout=5000)
    assert calls == [repo] and repo in models.sources()
    assert any("GB of" in s and "1.9 GB" in s for s in seen)
    assert dlg.progress.value() == 1000 and "downloaded" in dlg.download_status.text()
    assert dlg.download_button.isEnabled() and not dlg.cancel_button.isEnabled()


def test_cancel_stops_the_download_and_says_it_resumes(qtbot, worker, settings, registry):
    gate = threading.Event()
    models = make_models(worker, settings, registry, fake_downloader(steps=50, block=gate))
    dlg = open_dialog(qtbot, models)
    dlg.download(CURATED[0].repo)
    assert dlg.cancel_button.isEnabled()
    qtbot.mouseClick(dlg.cancel_button, Qt.MouseButton.LeftButton)
    gate.set()
    qtbot.waitUntil(lambda: "cancelled" in dlg.download_status.text(), timeout=5000)
    assert dlg.chosen() == BUILTIN and "resumes" in dlg.download_status.text()
    assert CURATED[0].repo not in models.sources()


def test_without_a_downloader_a_curated_model_is_picked_for_first_use(qtbot, worker, settings, registry):
    dlg = open_dialog(qtbot, make_models(worker, settings, registry))
    dlg.download(CURATED[2].repo)
    assert dlg.chosen() == CURATED[2].repo


def test_checkpoint_files_and_known_models(qtbot, worker, settings, registry, tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"x")
    gone = tmp_path / "gone.safetensors"
    registry.add(str(gone), "single_file", family="sdxl", model_hash="abcdef0123")
    registry.add(str(ckpt), "single_file", family="sd1", model_hash="0123456789")
    dlg = open_dialog(qtbot, make_models(worker, settings, registry))
    assert dlg.is_missing(str(gone.resolve())) and not dlg.is_missing(str(ckpt.resolve()))
    texts = [dlg.list.item(i).text() for i in range(dlg.list.count())]
    assert any("missing" in t and "SDXL" in t for t in texts)
    assert any("hash 0123456789" in t and "SD 1.x" in t for t in texts)
    dlg.select(str(gone.resolve()))
    assert dlg.chosen() is None  # a missing model cannot be chosen
    assert str(gone.resolve()) not in dlg.sources() and str(ckpt.resolve()) in dlg.sources()
    assert not dlg.add_file(str(pickle))
    assert "pickle" in dlg.error_label.text()
    assert dlg.add_file(str(ckpt))
    assert dlg.chosen() == str(ckpt.resolve())


def test_remove_an_entry_even_a_missing_one(qtbot, worker, settings, registry, tmp_path):
    """Defect 16: a broken or moved model could not be taken out of the list."""
    gone = tmp_path / "gone.safetensors"
    registry.add(str(gone), "single_file", family="sdxl")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    models = make_models(worker, settings, registry)
    dlg = open_dialog(qtbot, models)
    assert dlg.add_file(str(broken))
    dlg.select(BUILTIN)
    assert not dlg.remove_button.isEnabled()  # the built-in stays
    for source in (str(broken.resolve()), str(gone.resolve())):
        dlg.select(source)
        assert dlg.remove_button.isEnabled()
        qtbot.mouseClick(dlg.remove_button, Qt.MouseButton.LeftButton)
        assert all(dlg.list.item(i).data(Qt.ItemDataRole.UserRole) != source for i in range(dlg.list.count()))
    assert models.sources() == [BUILTIN] and registry.get(str(gone)) is None
    again = open_dialog(qtbot, make_models(worker, settings, registry))
    assert again.sources() == [BUILTIN]


def test_ok_selects_the_chosen_model(qtbot, worker, settings, registry, tmp_path):
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    models = make_models(worker, settings, registry)
    dlg = open_dialog(qtbot, models)
    assert dlg.add_folder(str(folder))
    with qtbot.waitSignal(models.defaultsReady, timeout=10000) as blocker:
        dlg.accept()
    assert blocker.args[0] == str(folder.resolve()) and models.current() == str(folder.resolve())


@pytest.mark.parametrize("keep", [True, False])
def test_closing_with_a_download_running_asks_keep_or_cancel(qtbot, worker, settings, registry, monkeypatch, keep):
    """Defect 15: the download went on after the dialog closed, with no word and no way to see or stop it."""
    models = make_models(worker, settings, registry, fake_downloader(steps=100, delay=0.03))
    window = QMainWindow()  # where the lead puts it: the main window's status bar
    qtbot.addWidget(window)
    indicator = DownloadsIndicator(models)
    window.statusBar().addPermanentWidget(indicator)
    window.show()
    assert indicator.isHidden()
    dlg = open_dialog(qtbot, models)
    dlg.show()
    repo = CURATED[1].repo
    dlg.download(repo)
    qtbot.waitUntil(lambda: models.downloads()[repo][0] > 0, timeout=5000)
    asked = []
    answer = QMessageBox.StandardButton.Yes if keep else QMessageBox.StandardButton.No
    monkeypatch.setattr(
        dialog_module.QMessageBox,
        "question",
        staticmethod(lambda parent, title, text, *a: asked.append(text) or answer),
    )
    qtbot.keyClick(dlg, Qt.Key.Key_Escape)
    assert not dlg.isVisible() and asked and "background" in asked[0]
    if keep:
        assert models.running_downloads() == [repo]
        qtbot.waitUntil(lambda: indicator.isVisible() and "GB" in indicator.label.text(), timeout=5000)
        assert indicator.label.text().startswith(f"Downloading {repo} ") and " / 1.9 GB" in indicator.label.text()
        reopened = open_dialog(qtbot, models)  # the dialog shows the download it left running
        assert reopened.cancel_button.isEnabled() and not reopened.progress.isHidden()
        qtbot.mouseClick(indicator.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: models.downloads()[repo][2] == "cancelled", timeout=5000)
    qtbot.waitUntil(lambda: indicator.isHidden(), timeout=5000)
    assert repo not in models.sources()


def test_a_real_hub_download_from_the_stand_in_hub_fills_the_progress(qtbot, worker, settings, registry, fake_hub):
    from test_hub import REPO

    from desktop_app.engine import hub

    models = make_models(
        worker,
        settings,
        registry,
        lambda repo, on_progress, cancel: hub.download_model(repo, progress=on_progress, cancel=cancel),
    )
    dlg = open_dialog(qtbot, models)
    dlg.download(REPO)
    qtbot.waitUntil(lambda: dlg.chosen() == REPO, timeout=20000)
    assert dlg.progress.value() == 1000 and "downloaded" in dlg.download_status.text()
