"""Jobs on a real ComfyUI server on 127.0.0.1 (v0.3.64, CPU, the smallest SD 1.x checkpoint it accepts).

Skipped, saying why, where no ComfyUI source is found (DIFFUSION_DESK_COMFYUI_SOURCE, or ../shared/comfyui). The
environment is built once by tools/setup_comfyui.sh and reused; each server starts once per session, except in the
test that kills one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from desktop_app.comfyui.backend import ComfyBackend
from desktop_app.comfyui.client import ComfyClient, PromptRejected
from desktop_app.comfyui.graphs import GraphJob, build_graph
from desktop_app.comfyui.pool import ComfyPool
from desktop_app.core.errors import JobCancelled, ModelError, UserError
from desktop_app.core.events import Cancelled, Failed, Finished, Notice, Preview, Progress
from desktop_app.core.history import HistoryStore
from desktop_app.core.infotext import read_png_metadata
from desktop_app.core.requests import EditRequest, GenerateRequest, InpaintRequest
from tests.comfyui_server import CHECKPOINT, ComfyServer, find_comfyui, shared_server

pytestmark = pytest.mark.slow
MODEL = "comfyui:" + CHECKPOINT


@pytest.fixture(scope="session")
def comfy_install():
    install, why = find_comfyui()
    if install is None:
        pytest.skip(f"no ComfyUI to test against: {why}")
    return install


def _server(install):
    server = ComfyServer(install)
    try:
        server.start()
    except RuntimeError as exc:
        server.cleanup()
        pytest.fail(str(exc))
    return server


@pytest.fixture(scope="session")
def comfy(comfy_install):
    return shared_server("a")


@pytest.fixture(scope="session")
def comfy2(comfy_install):
    return shared_server("b")


def _run(backend, request, cancel=None, on_event=None):
    events: list = []

    def sink(event):
        events.append(event)
        if on_event:
            on_event(event)

    try:
        result = backend.run(request, sink, cancel or threading.Event())
    except (UserError, JobCancelled):
        result = None
    return result, events


def _terminal(events) -> list[Any]:
    return [e for e in events if isinstance(e, (Finished, Failed, Cancelled))]


def test_text_to_image_with_progress_previews_and_the_local_history(comfy, tmp_path):
    backend = ComfyBackend([ComfyClient(comfy.url)])
    request = GenerateRequest(prompt="a red circle", model=MODEL, steps=4, width=64, height=64, seed=7, batch=2)
    result, events = _run(backend, request)
    assert [type(e) for e in _terminal(events)] == [Finished], _terminal(events)
    assert result is not None and [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert result.seeds == [7, 8] and result.model_id == MODEL and result.trajectory is None
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert steps[-1] == 8 and steps == sorted(steps)  # two chains of four steps, one count
    assert any(isinstance(e, Preview) and e.image.mode == "RGB" for e in events)
    pixels = [np.asarray(im, dtype=np.int16) for im in result.images]
    assert pixels[0].std() > 1 and np.abs(pixels[0] - pixels[1]).mean() > 1  # two seeds, two pictures

    # the same seed again is the same picture: what the history records reproduces it
    again, _ = _run(backend, request.replace(batch=1, seed=8))
    assert again is not None and np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[1]))

    store = HistoryStore(tmp_path / "history")
    entries = store.add(result)
    meta = read_png_metadata(entries[1].image_path)
    assert meta.request is not None and meta.request.model == MODEL and meta.request.seed == 8
    assert meta.request.steps == 4 and meta.request.prompt == "a red circle"
    store.close()


def test_inpainting_keeps_every_unpainted_pixel(comfy):
    backend = ComfyBackend([ComfyClient(comfy.url)])
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 255, (64, 72, 3), dtype=np.uint8))  # 72 wide: worked at 72x64
    mask = Image.new("L", source.size, 0)
    ImageDraw.Draw(mask).rectangle((20, 16, 44, 40), fill=255)
    request = InpaintRequest(prompt="a blue square", model=MODEL, steps=3, seed=1, image=source, mask=mask, mask_blur=2)
    result, events = _run(backend, request)
    assert [type(e) for e in _terminal(events)] == [Finished], _terminal(events)
    assert result is not None
    out = np.asarray(result.images[0])
    src = np.asarray(source)
    keep = np.asarray(mask) == 0
    assert out.shape == src.shape
    assert np.array_equal(out[keep], src[keep])  # bit-identical outside the mask
    inside = np.asarray(mask) == 255
    assert np.abs(out[inside].astype(int) - src[inside]).mean() > 10  # repainted inside
    assert result.info["Mask blur"] == 2


def test_outpainting_on_the_server_extends_the_picture_and_keeps_the_original(comfy):
    backend = ComfyBackend([ComfyClient(comfy.url)])
    rng = np.random.default_rng(1)
    source = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    request = InpaintRequest(
        prompt="a red circle", model=MODEL, steps=3, seed=2, image=source, extend=(16, 0, 12, 0), outpaint_overlap=8
    )
    result, events = _run(backend, request)
    assert [type(e) for e in _terminal(events)] == [Finished], _terminal(events)
    assert result is not None
    out = np.asarray(result.images[0])
    assert out.shape == (64, 96, 3)  # 64 + 16 + 12 = 92, rounded up to 96 on the extended side (said so)
    assert any("rounded up to 96x64" in str(getattr(e, "message", "")) for e in events)
    kept = np.asarray(source)[:, 8:-8]  # the original past its 8 px overlap band: bit-identical
    assert np.array_equal(out[:, 16 + 8 : 16 + 64 - 8], kept)
    assert np.abs(out[:, :16].astype(int) - np.asarray(source)[:, :1]).mean() > 1  # the new area was generated
    assert isinstance(result.request, InpaintRequest) and result.request.extend == (16, 0, 12, 0)  # as asked: replays
    assert "Outpaint" in result.info


def test_only_masked_inpainting_on_the_server_works_on_the_masked_box(comfy):
    backend = ComfyBackend([ComfyClient(comfy.url)])
    source = Image.fromarray(np.random.default_rng(2).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    mask = Image.new("L", source.size, 0)
    ImageDraw.Draw(mask).rectangle((100, 100, 139, 139), fill=255)
    request = InpaintRequest(
        prompt="x", model=MODEL, steps=2, seed=4, image=source, mask=mask, only_masked=True, only_masked_padding=12
    )
    result, events = _run(backend, request)
    assert [type(e) for e in _terminal(events)] == [Finished], _terminal(events)
    assert result is not None
    out, src = np.asarray(result.images[0]), np.asarray(source)
    keep = np.asarray(mask) == 0
    assert out.shape == src.shape and np.array_equal(out[keep], src[keep])
    assert isinstance(result.request, InpaintRequest) and result.request.only_masked  # as asked: it replays


def test_inpaint_options_of_the_local_engine_only_are_refused_with_a_reason(comfy):
    backend = ComfyBackend([ComfyClient(comfy.url)])
    source, mask = Image.new("RGB", (64, 64)), Image.new("L", (64, 64), 255)
    request = InpaintRequest(prompt="x", model=MODEL, steps=2, image=source, mask=mask, soft_mask=True, blend_band=4)
    result, events = _run(backend, request)
    failed = _terminal(events)[0]
    assert result is None and isinstance(failed, Failed)
    assert "soft inpainting" in failed.message and "blend band" in failed.message


def test_cancel_during_a_job_then_the_next_job_runs(comfy):
    backend = ComfyBackend([ComfyClient(comfy.url)])
    cancel = threading.Event()
    long = GenerateRequest(prompt="x", model=MODEL, steps=150, width=128, height=128, seed=3, batch=4)
    cancelled_at: list[float] = []

    def on_event(event):
        if isinstance(event, Progress) and not cancel.is_set():
            cancelled_at.append(time.monotonic())
            cancel.set()

    result, events = _run(backend, long, cancel, on_event)
    ended = time.monotonic()
    assert result is None and [type(e) for e in _terminal(events)] == [Cancelled]
    assert ended - cancelled_at[0] < 15
    # nothing left running or waiting there: the server stops the interrupted job at its next step (1-2 s quiet,
    # longer on a busy machine), so ask until it has
    deadline = time.monotonic() + 30
    while ComfyClient(comfy.url).queue() != ([], []) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert ComfyClient(comfy.url).queue() == ([], [])
    result, events = _run(backend, long.replace(steps=2, width=64, height=64, batch=1))
    assert [type(e) for e in _terminal(events)] == [Finished]


def test_a_bad_model_name_is_a_clear_error(comfy):
    backend = ComfyBackend([ComfyClient(comfy.url)])
    result, events = _run(backend, GenerateRequest(prompt="x", model="comfyui:no-such-model.safetensors", steps=2))
    failed = _terminal(events)
    assert result is None and [type(e) for e in failed] == [Failed]
    assert "no-such-model.safetensors" in failed[0].message and CHECKPOINT in failed[0].hint
    # the server's own refusal (a name the list did not have) is read, and the server stays up
    graph, _ = build_graph(
        GraphJob("missing.ckpt", "x", "", 2, 5.0, "euler", "normal", 64, 64, (1,))  # ckpt, prompt, negative, ...
    )
    with pytest.raises(PromptRejected) as caught:
        ComfyClient(comfy.url).queue_prompt(graph, "test")
    assert "missing.ckpt" in caught.value.message
    assert ComfyClient(comfy.url).system_stats()["system"]["comfyui_version"]


def test_what_needs_the_local_engine_is_refused_with_a_reason(comfy):
    backend = ComfyBackend([ComfyClient(comfy.url)])
    image = Image.new("RGB", (64, 64), "white")
    _, events = _run(backend, EditRequest(prompt="x", model=MODEL, image=image, source_prompt="y"))
    assert "own engine" in _terminal(events)[0].message
    with pytest.raises(UserError, match="own engine"):
        backend.forward_process(image, MODEL)
    info = backend.preload(MODEL)
    assert info.model_id == MODEL and info.defaults["steps"]
    assert [row["id"] for row in backend.list_models()] == [MODEL]


def test_two_servers_as_a_pool_share_the_jobs(comfy, comfy2):
    backend = ComfyBackend([ComfyClient(comfy.url), ComfyClient(comfy2.url)])
    results: list = []

    def job(seed):
        results.append(
            _run(backend, GenerateRequest(prompt="x", model=MODEL, steps=25, width=64, height=64, seed=seed))
        )

    threads = [threading.Thread(target=job, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join(120)
    assert all(r is not None for r, _ in results) and len(results) == 4
    servers = [url for _, url in backend.placements]
    assert sorted(set(servers)) == sorted({comfy.url, comfy2.url})  # least busy: the second server takes some


def test_a_server_killed_mid_job_fails_it_clearly_and_its_queued_job_moves(comfy, comfy_install):
    doomed = _server(comfy_install)
    try:
        a, b = ComfyClient(doomed.url), ComfyClient(comfy.url)
        pool = ComfyPool([a, b], backoff=0.5, backoff_max=1.0)
        backend = ComfyBackend(pool)
        pool.probe(pool.servers[0])
        pool.mark_down(pool.servers[1], "kept aside so that both jobs queue on the first server")
        pool.servers[1].retry_at = time.monotonic() + 3600
        running = threading.Event()
        outcome: dict = {}

        def first():
            def on_event(event):
                if isinstance(event, Progress):
                    running.set()

            outcome["first"] = _run(
                backend,
                GenerateRequest(prompt="x", model=MODEL, steps=150, width=128, height=128, batch=4),
                None,
                on_event,
            )

        def second():
            outcome["second"] = _run(backend, GenerateRequest(prompt="y", model=MODEL, steps=3, width=64, height=64))

        t1 = threading.Thread(target=first)
        t1.start()
        assert running.wait(60)
        t2 = threading.Thread(target=second)
        t2.start()
        deadline = time.monotonic() + 20
        while len(backend.placements) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [url for _, url in backend.placements] == [doomed.url, doomed.url]  # the second waits behind
        doomed.kill()
        t1.join(60)
        t2.join(60)
        _, first_events = outcome["first"]
        failed = _terminal(first_events)
        assert [type(e) for e in failed] == [Failed] and "went away during the job" in failed[0].message
        second_result, second_events = outcome["second"]
        assert [type(e) for e in _terminal(second_events)] == [Finished]
        assert backend.placements[-1][1] == comfy.url and second_result is not None
        assert any(isinstance(e, Notice) and "another server" in e.message for e in second_events)

        # it comes back (same address): after its backoff the pool uses it again
        revived = ComfyServer(comfy_install, port=doomed.port)
        try:
            revived.start()
            pool.mark_down(pool.servers[1], "aside again")
            pool.servers[1].retry_at = time.monotonic() + 3600
            time.sleep(1.1)
            result, events = _run(backend, GenerateRequest(prompt="z", model=MODEL, steps=2, width=64, height=64))
            assert [type(e) for e in _terminal(events)] == [Finished] and backend.placements[-1][1] == doomed.url
        finally:
            revived.cleanup()
    finally:
        doomed.cleanup()


def test_no_server_has_it_or_none_answers(comfy):
    pool = ComfyPool([ComfyClient("http://127.0.0.1:9")])  # nothing listens on the discard port
    with pytest.raises(UserError, match="No ComfyUI server answers"):
        pool.acquire(CHECKPOINT)
    with pytest.raises(ModelError):
        ComfyPool([ComfyClient(comfy.url)]).acquire("other.safetensors")
