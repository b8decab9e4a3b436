"""The models dialog: checkpoint files, known models (missing ones shown as missing), the curated list with sizes,
and a download with progress (bytes, rate, ETA) and cancel, driven by a stand-in downloader on a thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from desktop_app.core.model_registry import CURATED, ModelRegistry
from desktop_app.core.modelinfo import BUILTIN
from desktop_app.ui.models_dialog import ModelsDialog
from test_hub import fake_hub, restore_hub_constants  # noqa: F401 - fixtures


@dataclass
class P:
    done_bytes: int
    total_bytes: int
    rate: float
    eta_seconds: float


class Cancelled(Exception):
    pass


def fake_downloader(steps: int = 5, delay: float = 0.02, block: threading.Event | None = None):
    calls = []

    def download(repo, on_progress, cancel):
        future: Future = Future()
        calls.append(repo)

        def work():
            total = 2_000_000_000
            for i in range(1, steps + 1):
                if block is not None:
                    block.wait(2)
                if cancel.is_set():
                    future.set_exception(Cancelled())
                    return
                on_progress(P(i * total // steps, total, 50e6, (steps - i) * 4.0))
                time.sleep(delay)
            future.set_result(repo)

        threading.Thread(target=work, daemon=True).start()
        return future

    return download, calls


def test_curated_list_shows_names_families_and_sizes(qtbot):
    dlg = ModelsDialog([], BUILTIN)
    qtbot.addWidget(dlg)
    texts = [dlg.curated.item(i).text() for i in range(dlg.curated.count())]
    assert len(texts) == len(CURATED) == 7
    assert any("SDXL-Turbo" in t and "GB" in t for t in texts)
    assert any("Stable Diffusion 1.5 Inpainting" in t for t in texts)


def test_download_shows_progress_then_selects_the_model(qtbot):
    download, calls = fake_downloader()
    dlg = ModelsDialog([], BUILTIN, downloader=download)
    qtbot.addWidget(dlg)
    dlg.curated.setCurrentRow(5)
    repo = dlg.curated.currentItem().data(0x0100)
    seen = []
    dlg._progress.connect(lambda p: seen.append(dlg.download_status.text()))
    dlg.download_button.click()
    qtbot.waitUntil(lambda: dlg.chosen() == repo, timeout=5000)
    assert calls == [repo]
    assert any("ETA" in s and "/s" in s and "GB" in s for s in seen)
    assert dlg.progress.value() == 1000 and "downloaded" in dlg.download_status.text()
    assert dlg.download_button.isEnabled() and not dlg.cancel_button.isEnabled()


def test_cancel_stops_the_download_and_says_it_resumes(qtbot):
    gate = threading.Event()
    download, _ = fake_downloader(steps=50, block=gate)
    dlg = ModelsDialog([], BUILTIN, downloader=download)
    qtbot.addWidget(dlg)
    dlg.download(CURATED[0].repo)
    assert dlg.cancel_button.isEnabled()
    dlg.cancel_button.click()
    gate.set()
    qtbot.waitUntil(lambda: "cancelled" in dlg.download_status.text(), timeout=5000)
    assert dlg.chosen() == BUILTIN and "resumes" in dlg.download_status.text()


def test_without_a_downloader_a_curated_model_is_picked_for_first_use(qtbot):
    dlg = ModelsDialog([], BUILTIN)
    qtbot.addWidget(dlg)
    dlg.download(CURATED[2].repo)
    assert dlg.chosen() == CURATED[2].repo


def test_checkpoint_files_and_known_models(qtbot, tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"x")
    gone = tmp_path / "gone.safetensors"
    registry = ModelRegistry(tmp_path / "models.json")
    registry.add(str(gone), "single_file", family="sdxl", model_hash="abcdef0123")
    registry.add(str(ckpt), "single_file", family="sd1", model_hash="0123456789")
    dlg = ModelsDialog([], BUILTIN, registry=registry)
    qtbot.addWidget(dlg)
    assert dlg.is_missing(str(gone.resolve())) and not dlg.is_missing(str(ckpt.resolve()))
    texts = [dlg.list.item(i).text() for i in range(dlg.list.count())]
    assert any("missing" in t and "SDXL" in t for t in texts)
    dlg.select(str(gone.resolve()))
    assert dlg.chosen() == BUILTIN  # a missing model cannot be chosen
    assert str(gone.resolve()) not in dlg.models() and str(ckpt.resolve()) in dlg.models()
    assert not dlg.add_file(str(pickle))
    assert "pickle" in dlg.error_label.text()
    assert dlg.add_file(str(ckpt))
    assert dlg.chosen() == str(ckpt.resolve())


def test_a_real_hub_download_from_the_stand_in_hub_fills_the_progress(qtbot, fake_hub):
    from concurrent.futures import ThreadPoolExecutor

    from desktop_app.engine import hub
    from test_hub import REPO

    pool = ThreadPoolExecutor(1)
    dlg = ModelsDialog([], BUILTIN, downloader=lambda repo, on_progress, cancel: pool.submit(hub.download_model, repo, progress=on_progress, cancel=cancel))
    qtbot.addWidget(dlg)
    dlg.download(REPO)
    qtbot.waitUntil(lambda: dlg.chosen() == REPO, timeout=20000)
    assert dlg.progress.value() == 1000 and "downloaded" in dlg.download_status.text()
    pool.shutdown()
