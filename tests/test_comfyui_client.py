"""The ComfyUI client and backend against a fake server that misbehaves on purpose: garbage, too much, a WebSocket
that never says the job is done, a token that must not travel over plain http. Fast: no real ComfyUI."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from desktop_app.comfyui.backend import ComfyBackend
from desktop_app.comfyui.client import ComfyClient, InsecureToken, ServerError, normalise_url, token_allowed
from desktop_app.comfyui.pool import ComfyPool
from desktop_app.core.errors import UserError
from desktop_app.core.events import Failed, Finished, Notice
from desktop_app.core.requests import GenerateRequest

CKPT = "fake.safetensors"


def _png(size=(64, 64), color: Any = (10, 200, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


class Fake:
    """A stand-in ComfyUI: its answers are fields the test sets; the WebSocket sends `ws_script(prompt_id)`."""

    def __init__(self) -> None:
        self.stats: Any = {"system": {"comfyui_version": "fake", "ram_free": 1}, "devices": [{"name": "Fake GPU"}]}
        self.image = _png()
        self.ws_script = lambda pid: [
            {"type": "execution_start", "data": {"prompt_id": pid}},
            {"type": "progress", "data": {"prompt_id": pid, "node": "5", "value": 1, "max": 2}},
            {"type": "executing", "data": {"prompt_id": pid, "node": None}},
        ]
        self.close_ws_before_start = False
        self.queue_running: list[str] = []
        self.runs_forever = False  # the queue lists each posted prompt as running, from the moment it is posted
        self.history: dict[str, Any] | None = None  # None: outputs of the posted prompt
        self.prompts: list[dict] = []
        self.headers_seen: list[dict] = []
        self.stop = threading.Event()
        self.interrupted = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json", length: int | None = None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, value: Any, status: int = 200):
                self._send(status, value if isinstance(value, bytes) else json.dumps(value).encode())

            def do_GET(self):
                fake.headers_seen.append(dict(self.headers))
                path = self.path.split("?")[0]
                if path == "/ws":
                    return self._websocket()
                if path == "/system_stats":
                    return self._json(fake.stats)
                if path.startswith("/object_info/"):
                    node = path.rsplit("/", 1)[1]
                    inputs = {
                        "CheckpointLoaderSimple": {"ckpt_name": [[CKPT]]},
                        "LoraLoader": {"lora_name": [[]]},
                        "KSampler": {"sampler_name": [["euler"]], "scheduler": [["normal"]]},
                    }[node]
                    return self._json({node: {"input": {"required": inputs}}})
                if path == "/prompt":
                    return self._json({"exec_info": {"queue_remaining": len(fake.queue_running)}})
                if path == "/queue":
                    return self._json({"queue_running": [[0, p] for p in fake.queue_running], "queue_pending": []})
                if path.startswith("/history/"):
                    pid = path.rsplit("/", 1)[1]
                    if fake.history is not None:
                        return self._json(fake.history)
                    outputs = {"7": {"images": [{"filename": "a.png", "subfolder": "", "type": "temp"}]}}
                    return self._json({pid: {"outputs": outputs, "status": {"completed": True}}})
                if path == "/view":
                    return self._send(200, fake.image, "image/png")
                self._send(404, b"{}")

            def do_POST(self):
                fake.headers_seen.append(dict(self.headers))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/prompt":
                    data = json.loads(body)
                    fake.prompts.append(data)
                    if fake.runs_forever:
                        fake.queue_running = [data["prompt_id"]]
                    return self._json({"prompt_id": data["prompt_id"], "number": 1, "node_errors": {}})
                if self.path == "/interrupt":
                    fake.interrupted.set()
                self._json({})

            def _websocket(self):
                key = self.headers["Sec-WebSocket-Key"]
                accept = base64.b64encode(
                    hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
                ).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.wfile.flush()
                if fake.close_ws_before_start:
                    self.wfile.write(b"\x88\x00")  # a close frame
                    return
                seen = len(fake.prompts)  # this job's prompt is posted after its WebSocket opened
                deadline = time.monotonic() + 10
                while len(fake.prompts) <= seen and time.monotonic() < deadline:
                    time.sleep(0.01)
                pid = fake.prompts[-1]["prompt_id"]
                for message in fake.ws_script(pid):
                    payload = message if isinstance(message, bytes) else json.dumps(message).encode()
                    opcode = 0x82 if isinstance(message, bytes) else 0x81
                    header = (
                        bytes([opcode, len(payload)])
                        if len(payload) < 126
                        else bytes([opcode, 126]) + len(payload).to_bytes(2, "big")
                    )
                    self.wfile.write(header + payload)
                    self.wfile.flush()
                fake.stop.wait(30)  # hold the socket open, saying nothing more

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = Fake()
    yield server
    server.close()


def _run(backend, request):
    events: list = []
    try:
        backend.run(request, events.append, threading.Event())
    except UserError:
        pass
    return events


REQUEST = GenerateRequest(prompt="x", model="comfyui:" + CKPT, steps=2, width=64, height=64, seed=1)


def test_a_well_behaved_fake_job_finishes(fake):
    events = _run(ComfyBackend([ComfyClient(fake.url)]), REQUEST)
    assert isinstance(events[-1], Finished) and events[-1].result.images[0].getpixel((0, 0)) == (10, 200, 30)
    assert fake.prompts[0]["prompt"]["1"]["inputs"]["ckpt_name"] == CKPT


def test_garbage_answers_are_clear_errors(fake):
    fake.stats = b"<html>Welcome to nginx</html>"
    with pytest.raises(ServerError, match="not JSON"):
        ComfyClient(fake.url).system_stats()
    events = _run(ComfyBackend([ComfyClient(fake.url)]), REQUEST)
    assert isinstance(events[-1], Failed) and "not JSON" in events[-1].message
    fake.stats = ["a", "list"]
    with pytest.raises(ServerError, match="does not answer like a ComfyUI server"):
        ComfyClient(fake.url).system_stats()


def test_a_garbage_websocket_message_fails_the_job(fake):
    fake.ws_script = lambda pid: [b"\x00\x00\x00\x09junk", {"type": "progress"}, [1, 2]]
    events = _run(ComfyBackend([ComfyClient(fake.url)]), REQUEST)
    assert isinstance(events[-1], Failed) and "WebSocket message" in events[-1].message


def test_an_image_too_large_or_of_the_wrong_size_is_refused(fake):
    fake.image = _png((5000, 5000), 0, "1")  # 25 MP: more than any job asks for, small as a PNG
    events = _run(ComfyBackend([ComfyClient(fake.url)]), REQUEST)
    assert isinstance(events[-1], Failed) and "5000x5000" in events[-1].message
    fake.image = _png((96, 64))
    events = _run(ComfyBackend([ComfyClient(fake.url)]), REQUEST)
    assert isinstance(events[-1], Failed) and "96x64 image for a 64x64 job" in events[-1].message
    fake.image = b"\x89PNG not really"
    events = _run(ComfyBackend([ComfyClient(fake.url)]), REQUEST)
    assert isinstance(events[-1], Failed) and "not an image" in events[-1].message


def test_a_websocket_that_never_says_done_times_out_without_hanging(fake):
    fake.ws_script = lambda pid: [
        {"type": "execution_start", "data": {"prompt_id": pid}},
        {"type": "executing", "data": {"prompt_id": pid, "node": "5"}},
    ]
    # the server says it still runs the job, forever (set when the prompt is posted: no race with the socket)
    fake.runs_forever = True
    backend = ComfyBackend([ComfyClient(fake.url)], job_timeout=2.0, idle_timeout=0.5)
    started = time.monotonic()
    events = _run(backend, REQUEST)
    assert time.monotonic() - started < 8
    assert isinstance(events[-1], Failed) and "did not finish the job within 2 s" in events[-1].message
    assert fake.interrupted.is_set()  # and it was told to stop


def test_a_job_the_server_forgot_fails_after_the_idle_timeout(fake):
    fake.ws_script = lambda pid: [{"type": "execution_start", "data": {"prompt_id": pid}}]
    fake.history = {}
    events = _run(ComfyBackend([ComfyClient(fake.url)], job_timeout=20, idle_timeout=0.5), REQUEST)
    assert isinstance(events[-1], Failed) and "lost the job" in events[-1].message


def test_a_server_that_drops_before_the_job_starts_hands_it_to_another(fake):
    other = Fake()
    try:
        fake.close_ws_before_start = True
        pool = ComfyPool([ComfyClient(fake.url), ComfyClient(other.url)])
        pool.servers[1].jobs_done = 5  # the first would be chosen on a tie
        backend = ComfyBackend(pool)
        events = _run(backend, REQUEST)
        assert isinstance(events[-1], Finished)
        assert any(isinstance(e, Notice) and "another server" in e.message for e in events)
        # it was queued there before the WebSocket said goodbye: taken off that queue, then run on the other
        assert [url for _, url in backend.placements] == [fake.url, other.url] and len(other.prompts) == 1
        assert not pool.servers[0].up and pool.servers[0].failures == 1 and "WebSocket" in pool.servers[0].last_error
    finally:
        other.close()


def test_the_token_never_goes_over_plain_http_to_another_host(fake, caplog):
    with pytest.raises(InsecureToken):
        ComfyClient("http://192.168.1.20:8188", token="s3cret")
    with pytest.raises(InsecureToken):
        ComfyClient("gpu-box.lan:8188", token="s3cret")
    assert ComfyClient("https://gpu-box.lan", token="s3cret").headers() == {"Authorization": "Bearer s3cret"}
    assert ComfyClient("http://192.168.1.20:8188", token="s3cret", allow_insecure_token=True).headers()
    assert token_allowed("http://localhost:8188", "t") and token_allowed("http://[::1]:8188", "t")
    assert not token_allowed("http://10.0.0.2", "t") and token_allowed("http://10.0.0.2", None)
    # to this machine it is sent, on HTTP and on the WebSocket; never logged, never in a repr
    caplog.set_level(logging.DEBUG)
    client = ComfyClient(fake.url, token="s3cret")
    events = _run(ComfyBackend([client]), REQUEST)
    assert isinstance(events[-1], Finished)
    assert fake.headers_seen and all(h.get("Authorization") == "Bearer s3cret" for h in fake.headers_seen)
    assert "s3cret" not in caplog.text and "s3cret" not in repr(client)


def test_addresses_are_normalised_or_refused():
    assert normalise_url("127.0.0.1:8188/") == "http://127.0.0.1:8188"
    assert normalise_url("https://box.example/comfy/") == "https://box.example/comfy"
    for bad in ("ftp://x", "http://", "http://host:port"):
        with pytest.raises(UserError):
            normalise_url(bad)
