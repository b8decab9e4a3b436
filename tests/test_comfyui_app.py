"""The app's side of ComfyUI: the Connections model, the Servers dialog, the CLI's --backend, the routing backend, and
the real window running a job on a real ComfyUI server the way a user does (add the server, pick its model, Generate).
"""

from __future__ import annotations

import argparse
import json
import stat
import threading
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWidget

from desktop_app.cli.backends import add_backend_arguments, backend_from_args, parse_backend
from desktop_app.comfyui.backend import ComfyBackend
from desktop_app.core.errors import UserError
from desktop_app.core.events import Finished, Notice
from desktop_app.core.infotext import read_png_metadata
from desktop_app.core.requests import GenerateRequest
from desktop_app.model.connections import Connections
from desktop_app.routing import RoutingBackend
from tests.comfyui_server import CHECKPOINT, find_comfyui, shared_server
from tests.ui_conftest_helpers import qloop  # noqa: F401

MODEL = "comfyui:" + CHECKPOINT


@pytest.fixture(scope="session")
def comfy():
    install, why = find_comfyui()
    if install is None:
        pytest.skip(f"no ComfyUI to test against: {why}")
    return shared_server("a")


def test_connections_are_kept_and_the_token_stays_private(qtbot, tmp_path):
    conns = Connections(tmp_path, use_keyring=False)
    with qtbot.waitSignal(conns.changed):
        url = conns.add("127.0.0.1:8188/", token="s3cret")
    assert url == "http://127.0.0.1:8188"
    with pytest.raises(UserError, match="unencrypted"):
        conns.add("http://10.1.2.3:8188", token="s3cret")
    assert conns.needs_consent("http://10.1.2.3:8188", "t") and not conns.needs_consent("https://10.1.2.3", "t")
    conns.add("http://10.1.2.3:8188", token="other", allow_insecure_token=True)
    servers = (tmp_path / "servers.json").read_text()
    assert "s3cret" not in servers and "other" not in servers
    tokens = tmp_path / "tokens.json"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600 and json.loads(tokens.read_text())[url] == "s3cret"
    again = Connections(tmp_path, use_keyring=False)  # the next launch
    assert [s.url for s in again.servers()] == [url, "http://10.1.2.3:8188"]
    assert [c.headers() for c in again.clients()] == [
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "Bearer other"},
    ]
    assert again.remove(url) and url not in (tmp_path / "tokens.json").read_text()


def test_the_dialog_adds_asks_before_plain_http_and_shows_the_status(qtbot, tmp_path, comfy):
    from desktop_app.ui.connections_dialog import ConnectionsDialog

    conns = Connections(tmp_path, use_keyring=False)
    dialog = ConnectionsDialog(conns)
    qtbot.addWidget(dialog)
    dialog.url.setText("http://10.9.9.9:8188")
    dialog.token.setText("t0k")
    asked: list[str] = []
    assert not dialog.add_server(ask=lambda url: asked.append(url) or False)
    assert asked == ["http://10.9.9.9:8188"] and not conns.servers() and "Not added" in dialog.error.text()
    dialog.token.clear()
    dialog.url.setText(comfy.url)
    with qtbot.waitSignal(conns.statusChanged, timeout=30000):
        assert dialog.add_server()
    item = dialog.list.topLevelItem(0)
    assert item is not None and item.text(0) == comfy.url and item.text(1).startswith("answers")
    assert item.text(2) == "cpu" and "GB free" in item.text(3) and item.text(4).startswith("1 checkpoints")
    assert CHECKPOINT in dialog.details.toPlainText()
    assert conns.checkpoint_ids() == [MODEL]
    dialog.list.setCurrentItem(item)
    qtbot.mouseClick(dialog.findChild(QWidget, "serverRemove"), Qt.MouseButton.LeftButton)
    assert dialog.list.topLevelItemCount() == 0 and not conns.servers()


def test_cli_backend_arguments(comfy):
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    args = parser.parse_args(["--backend", f"comfyui={comfy.url}", "--backend", "comfyui=http://127.0.0.1:9"])
    local: list[Any] = []
    backend = backend_from_args(args, lambda: local.append(1))
    assert isinstance(backend, RoutingBackend) and backend.remote_all and len(backend.remote.pool) == 2  # type: ignore[union-attr]
    events: list = []
    result = backend.run(
        GenerateRequest(prompt="x", steps=2, width=64, height=64, seed=3), events.append, threading.Event()
    )
    assert result.model_id == MODEL and result.images[0].size == (64, 64) and not local  # never the local engine
    assert any(isinstance(e, Notice) and CHECKPOINT in e.message for e in events)
    assert backend_from_args(parser.parse_args([]), lambda: "local") == "local"
    with pytest.raises(UserError, match="comfyui=URL"):
        parse_backend("a1111=http://x")


def test_routing_sends_comfyui_models_remotely_and_the_rest_locally(comfy):
    made: list[str] = []

    class Local:
        models = None

        def run(self, request, on_event, cancel, source=None):
            made.append(request.model)
            return "local result"

        def cancel(self):
            pass

    from desktop_app.comfyui.client import ComfyClient

    routing = RoutingBackend(Local, ComfyBackend([ComfyClient(comfy.url)]))
    assert routing.runs_in_parallel(GenerateRequest(model=MODEL)) and not routing.runs_in_parallel(GenerateRequest())
    assert routing.run(GenerateRequest(model="builtin"), lambda e: None, threading.Event()) == "local result"
    assert made == ["builtin"]
    assert routing.preload(MODEL).model_id == MODEL
    assert any(row["id"] == MODEL for row in routing.list_models())
    with pytest.raises(UserError, match="own engine"):
        routing.suggest_mask(None, "a", "b", MODEL)  # type: ignore[arg-type]
    routing.set_remote(None)
    with pytest.raises(UserError, match="no server is set up"):
        routing.preload(MODEL)


def test_the_window_runs_a_job_on_a_comfyui_server(qtbot, qloop, tmp_path, comfy):
    from desktop_app.app.wiring import create_main_window

    window = create_main_window(data_dir=tmp_path / "data")  # the real wiring: routing, connections, no fake
    qtbot.addWidget(window)
    conns = window.connections  # type: ignore[attr-defined]
    with qtbot.waitSignal(conns.statusChanged, timeout=30000):
        conns.add(comfy.url)
        conns.refresh()
    qtbot.waitUntil(lambda: MODEL in window.models.sources(), timeout=10000)  # type: ignore[attr-defined]
    window.models.select(MODEL)  # type: ignore[attr-defined]
    qtbot.waitUntil(lambda: window.models.state() == "ready", timeout=30000)  # type: ignore[attr-defined]
    panel = window.prompt_panel  # type: ignore[attr-defined]
    panel.set_model(MODEL)
    panel.steps_spin.setValue(3)
    panel.width_spin.setValue(64)
    panel.height_spin.setValue(64)
    panel.seed_spin.setValue(11)
    panel.prompt_edit.setPlainText("a remote square")
    with qtbot.waitSignal(window.history_saver.saved, timeout=90000) as saved:  # type: ignore[attr-defined]
        qtbot.mouseClick(window.findChild(QWidget, "generateButton"), Qt.MouseButton.LeftButton)
    entry = saved.args[0][0]
    meta = read_png_metadata(entry.image_path)
    assert meta.request is not None and meta.request.model == MODEL and meta.request.seed == 11
    assert meta.request.prompt == "a remote square" and meta.request.steps == 3
    assert window.worker.backend()._local is None  # type: ignore[attr-defined]  # torch never loaded for it
    window.close()


def test_the_worker_runs_remote_jobs_side_by_side(qtbot, qloop):
    """Two jobs for a pool run at once (each on a thread of its own); a local one still runs on the worker thread."""
    from desktop_app.core.events import Result
    from desktop_app.worker import EngineWorker

    both_running = threading.Barrier(2, timeout=10)
    threads: list[str] = []

    class Backend:
        models = None

        def runs_in_parallel(self, request):
            return request.model.startswith("comfyui:")

        def run(self, request, on_event, cancel, source=None):
            threads.append(threading.current_thread().name)
            if request.model.startswith("comfyui:"):
                both_running.wait()  # only passes when the other remote job runs at the same time
            result = Result(request=request, images=[], seeds=[1])
            on_event(Finished(result))
            return result

        def cancel(self):
            pass

    worker = EngineWorker(backend=Backend())
    futures = [worker.submit(GenerateRequest(model=m))[1] for m in (MODEL, MODEL, "builtin")]
    qtbot.waitUntil(lambda: all(f.done() for f in futures), timeout=15000)
    assert all(f.exception() is None for f in futures)
    assert sorted(t for t in threads if t.startswith("remoteJob")) == ["remoteJob1", "remoteJob2"] and len(threads) == 3
    assert worker.shutdown(5000)
