"""Models: the picker's list in the settings, preload with fallback (defect 16), downloads beside jobs (defect 15)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QSettings

from desktop_app.core.errors import JobCancelled, ModelError
from desktop_app.core.model_registry import ModelRegistry
from desktop_app.core.modelinfo import BUILTIN, model_defaults
from desktop_app.core.requests import GenerateRequest
from desktop_app.model.models import Models
from desktop_app.worker import EngineWorker
from tests.ui_conftest_helpers import FakeEngine


@dataclass
class Chunk:
    done_bytes: int
    total_bytes: int


def slow_downloader(chunks: int = 20, delay: float = 0.05, calls: list | None = None):
    """A stand-in for the hub download: sleeps per chunk, reports bytes, honours cancel."""

    def download(repo, on_progress, cancel):
        if calls is not None:
            calls.append((repo, threading.current_thread().name))
        total = 1_700_000_000
        for i in range(1, chunks + 1):
            if cancel.is_set():
                raise JobCancelled(f"download of {repo} cancelled")
            time.sleep(delay)
            on_progress(Chunk(i * total // chunks, total))
        return f"/cache/{repo.replace('/', '--')}"

    return download


class InfoEngine(FakeEngine):
    """Loads what the real engine would report about a model (a ModelInfo, duck-typed)."""

    def preload(self, model):
        super().preload(model)
        return SimpleNamespace(
            source=model,
            model_id=model,
            family="sd1",
            model_hash="feedface01",
            defaults={"steps": 33, "guidance": 4.5, "scheduler": "euler_a", "width": 512, "height": 512},
        )


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def worker():
    engine = InfoEngine()
    w = EngineWorker(engine_factory=lambda: engine)
    yield w
    w.shutdown(5000)


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(tmp_path / "models.json")


def make(worker, settings, registry, **kw):
    return Models(worker, settings, registry=registry, **kw)


def test_sources_builtin_first_and_kept_in_the_settings(qtbot, worker, settings, registry, tmp_path):
    models = make(worker, settings, registry)
    assert models.sources() == [BUILTIN] and models.current() == BUILTIN and models.state() == "idle"
    with qtbot.waitSignal(models.sourcesChanged):
        assert models.add(str(tmp_path / "a.safetensors"))
    assert not models.add(str(tmp_path / "a.safetensors"))
    models.add("owner/hub-model")
    again = make(worker, settings, registry)
    assert again.sources() == [BUILTIN, str(tmp_path / "a.safetensors"), "owner/hub-model"]
    assert not again.remove(BUILTIN)
    assert again.remove("owner/hub-model") and "owner/hub-model" not in make(worker, settings, registry).sources()


def test_the_builtin_defaults_at_start(qtbot, worker, settings, registry):
    models = make(worker, settings, registry)
    with qtbot.waitSignal(models.defaultsReady) as blocker:
        models.start()
    assert blocker.args == [BUILTIN, model_defaults(BUILTIN)]


def test_select_loads_then_gives_the_models_defaults(qtbot, worker, settings, registry, tmp_path):
    models = make(worker, settings, registry)
    good = str(tmp_path / "good.safetensors")
    states = []
    models.stateChanged.connect(lambda state, message: states.append((state, message)))
    with qtbot.waitSignal(models.defaultsReady, timeout=10000) as blocker:
        models.select(good)
        assert models.current() == good and models.state() == "loading"
    assert states[0] == ("loading", "Loading good.safetensors…")
    assert blocker.args[0] == good and blocker.args[1]["steps"] == 33 and blocker.args[1]["scheduler"] == "euler_a"
    assert models.state() == "ready" and models.info(good).model_hash == "feedface01"
    assert make(worker, settings, registry).current() == good  # remembered for the next launch


def test_a_broken_checkpoint_never_stays_selected_nor_sets_defaults(qtbot, worker, settings, registry, tmp_path):
    """Defect 16: the broken model stayed selected and its family's defaults replaced steps, guidance, scheduler."""
    models = make(worker, settings, registry)
    good = str(tmp_path / "good.safetensors")
    with qtbot.waitSignal(models.defaultsReady, timeout=10000):
        models.select(good)
    broken = str(tmp_path / "missing-broken.safetensors")
    defaults, currents = [], []
    models.defaultsReady.connect(lambda source, d: defaults.append(source))
    models.currentChanged.connect(currents.append)
    with qtbot.waitSignal(models.failed, timeout=10000) as blocker:
        models.select(broken)
    assert "No model at" in blocker.args[0] and blocker.args[1]
    assert models.current() == good and currents == [broken, good]  # back to the last one that worked
    assert models.state() == "failed" and "could not be loaded" in models.message()
    assert defaults == []
    assert make(worker, settings, registry).current() == good
    # the model that worked is still usable: a job on it runs
    with qtbot.waitSignal(worker.finished, timeout=10000):
        worker.submit(
            GenerateRequest(prompt="still works", model=models.current(), steps=2, width=64, height=64, seed=1)
        )
    # and the broken one can be taken out of the list
    assert broken in models.sources() and models.remove(broken) and broken not in models.sources()


def test_removing_the_current_model_falls_back_to_the_builtin(qtbot, worker, settings, registry, tmp_path):
    models = make(worker, settings, registry)
    chosen = str(tmp_path / "chosen.safetensors")
    registry.add(chosen, "single_file", family="sd1")
    with qtbot.waitSignal(models.defaultsReady, timeout=10000):
        models.select(chosen)
    with qtbot.waitSignal(models.defaultsReady, timeout=10000) as blocker:
        assert models.remove(chosen)
    assert blocker.args[0] == BUILTIN and models.current() == BUILTIN
    assert registry.get(chosen) is None  # out of the known models too


def test_allow_pickle_is_kept_and_applied_to_the_worker(qtbot, worker, settings, registry):
    models = make(worker, settings, registry)
    assert models.allow_pickle is False and worker.allow_pickle is False
    with qtbot.waitSignal(models.allowPickleChanged) as blocker:
        models.allow_pickle = True
    assert blocker.args == [True] and worker.allow_pickle is True
    worker.allow_pickle = False
    assert make(worker, settings, registry).allow_pickle is True and worker.allow_pickle is True


def test_a_generation_finishes_while_a_slow_download_runs(qtbot, worker, settings, registry):
    """Defect 15: a download ran on the worker's queue and blocked every generation until it ended."""
    calls = []
    models = make(worker, settings, registry, downloader=slow_downloader(chunks=40, delay=0.05, calls=calls))
    progress, ends = [], []
    models.downloadProgress.connect(lambda repo, done, total: progress.append((repo, done, total)))
    models.downloadFinished.connect(lambda *args: ends.append(args))
    assert models.download("owner/big-model")
    assert not models.download("owner/big-model")  # already running
    finished = []
    worker.finished.connect(lambda job_id, result: finished.append(job_id))
    job_id, _ = worker.submit(
        GenerateRequest(prompt="during a download", model=BUILTIN, steps=3, width=64, height=64, seed=2)
    )
    qtbot.waitUntil(lambda: job_id in finished, timeout=10000)
    assert models.running_downloads() == ["owner/big-model"]  # the job did not wait for the download
    assert calls and calls[0][1] == "download-owner/big-model"  # its own thread, not the worker's
    qtbot.waitUntil(lambda: bool(ends), timeout=20000)
    [(repo, path, error)] = ends
    assert (repo, error) == ("owner/big-model", "") and path.endswith("owner--big-model")
    assert "owner/big-model" in models.sources()
    assert models.downloads()["owner/big-model"] == (1_700_000_000, 1_700_000_000, "done")
    assert any(done > 0 and total == 1_700_000_000 for _, done, total in progress)


def test_two_downloads_at_once_and_cancel_one(qtbot, worker, settings, registry):
    models = make(worker, settings, registry, downloader=slow_downloader(chunks=200, delay=0.02))
    ended = {}
    models.downloadFinished.connect(lambda repo, path, error: ended.__setitem__(repo, error))
    assert models.download("a/one") and models.download("b/two")
    assert sorted(models.running_downloads()) == ["a/one", "b/two"]
    qtbot.waitUntil(lambda: models.downloads()["a/one"][0] > 0, timeout=5000)
    assert models.cancel_download("a/one")
    qtbot.waitUntil(lambda: "a/one" in ended, timeout=5000)
    assert ended["a/one"] == "cancelled" and models.downloads()["a/one"][2] == "cancelled"
    assert models.running_downloads() == ["b/two"] and "a/one" not in models.sources()
    models.cancel_downloads()
    qtbot.waitUntil(lambda: "b/two" in ended, timeout=5000)
    assert models.wait_downloads(5)


def test_a_failed_download_says_why(qtbot, worker, settings, registry):
    def offline(repo, on_progress, cancel):
        raise ModelError(f"{repo} is not in the cache and the hub cannot be reached.", "Connect to the internet.")

    models = make(worker, settings, registry, downloader=offline)
    with qtbot.waitSignal(models.downloadFinished, timeout=5000) as blocker:
        models.download("owner/offline")
    assert "cannot be reached" in blocker.args[2] and "internet" in blocker.args[2]
    assert models.downloads()["owner/offline"][2] == "failed" and "owner/offline" not in models.sources()
