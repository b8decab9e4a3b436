"""The Backend protocol: the local engine and the tests' fake engine both implement it, with the same signatures,
and every run ends in exactly one terminal event."""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest
from PIL import Image

from desktop_app.backend import Backend
from desktop_app.core.errors import InvalidRequest, JobCancelled
from desktop_app.core.events import Cancelled, Failed, Finished, Progress
from desktop_app.core.latents import ForwardProcess, Trajectory
from desktop_app.core.modelinfo import ModelInfo
from desktop_app.core.requests import GenerateRequest
from desktop_app.engine.engine import Engine
from tests.ui_conftest_helpers import FakeEngine

TERMINAL = (Finished, Failed, Cancelled)
MEMBERS = [name for name, value in vars(Backend).items() if callable(value) and not name.startswith("_")]


def test_the_protocol_lists_what_the_worker_calls():
    assert set(MEMBERS) == {
        "run",
        "cancel",
        "preload",
        "suggest_mask",
        "decode_trajectory",
        "forward_process",
        "decode_latent",
        "list_models",
        "download_model",
    }


@pytest.mark.parametrize("backend", [Engine(device="cpu"), FakeEngine()], ids=["engine", "fake"])
def test_both_are_backends(backend):
    assert isinstance(backend, Backend)


@pytest.mark.parametrize("name", MEMBERS)
def test_engine_and_fake_have_the_protocols_parameters(name):
    protocol = inspect.signature(getattr(Backend, name)).parameters
    engine = inspect.signature(getattr(Engine, name)).parameters
    fake = inspect.signature(getattr(FakeEngine, name)).parameters
    assert list(engine) == list(fake) == list(protocol), name
    assert [p.default for p in engine.values()] == [p.default for p in fake.values()], name
    for param, theirs in protocol.items():  # a default the protocol promises, both keep
        if theirs.default is not inspect.Parameter.empty:
            assert engine[param].default == fake[param].default == theirs.default, (name, param)


def _run(backend, request, cancel=None):
    events = []
    cancel = cancel or threading.Event()
    try:
        backend.run(request, events.append, cancel)
    except (JobCancelled, InvalidRequest):
        pass
    return events


def _cancel_after_first_step(events_sink, cancel):
    def on_event(event):
        events_sink.append(event)
        if isinstance(event, Progress):
            cancel.set()

    return on_event


@pytest.fixture(params=["engine", "fake"])
def backend_and_model(request, tiny_model_dir):
    if request.param == "engine":
        return Engine(device="cpu"), str(tiny_model_dir)
    return FakeEngine(), "builtin"


def test_each_run_ends_in_exactly_one_terminal_event(backend_and_model):
    backend, model = backend_and_model
    ok = GenerateRequest(prompt="a red circle", model=model, steps=3, seed=1, width=64, height=64)
    finished = _run(backend, ok)
    assert [type(e) for e in finished if isinstance(e, TERMINAL)] == [Finished] and isinstance(finished[-1], Finished)
    assert isinstance(finished[-1].result.trajectory, Trajectory)
    assert isinstance(finished[-1].result.trajectory.x0[-1], np.ndarray)

    failed = _run(backend, ok.replace(steps=0))  # invalid: steps must be 1 to 150
    assert [type(e) for e in failed if isinstance(e, TERMINAL)] == [Failed] and "Steps" in failed[-1].message

    events: list = []
    cancel = threading.Event()
    with pytest.raises(JobCancelled):
        backend.run(ok.replace(steps=5), _cancel_after_first_step(events, cancel), cancel)
    assert [type(e) for e in events if isinstance(e, TERMINAL)] == [Cancelled] and isinstance(events[-1], Cancelled)


def test_services_give_plain_data(backend_and_model):
    backend, model = backend_and_model
    info = backend.preload(model)
    assert isinstance(info, ModelInfo) and info.defaults.get("steps")
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    fp = backend.forward_process(image, model)
    assert isinstance(fp, ForwardProcess) and fp.preview(500).dtype == np.uint8
    assert backend.decode_latent(fp.latent(0), model).mode == "RGB"
    assert backend.suggest_mask(image, "a red square", "a blue square", model).mode == "L"
    assert any(row["id"] == "builtin" for row in backend.list_models())
