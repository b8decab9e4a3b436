"""One window per user: a second launch hands its files to the running instance over a QLocalSocket."""

from __future__ import annotations

import json
import os
import socket as pysocket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from PySide6.QtCore import QDir
from PySide6.QtNetwork import QLocalSocket
from PySide6.QtWidgets import QWidget

from desktop_app.app.single_instance import SingleInstance, default_server_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def name() -> str:
    return f"dd-test-{os.getpid()}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def server(qapp, name):
    first = SingleInstance(name)
    assert first.listen()
    yield first
    first.close()


def hand_off_in_thread(name: str, paths: list[str]) -> tuple[threading.Thread, dict]:
    """The second launch's side, on another thread (its blocking socket calls must not stall this thread's event loop)."""
    out: dict = {}

    def run() -> None:
        out["ok"] = SingleInstance(name).try_hand_off(paths, timeout_ms=10_000)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_hand_off_sends_absolute_paths_and_the_first_instance_gets_them(qtbot, server, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with qtbot.waitSignal(server.openRequested, timeout=10_000) as blocker:
        thread, out = hand_off_in_thread(name, ["cat.png", str(tmp_path / "sub" / "dog.webp")])
    qtbot.waitUntil(lambda: not thread.is_alive(), timeout=10_000)
    assert out["ok"] is True
    assert blocker.args[0] == [str(tmp_path / "cat.png"), str(tmp_path / "sub" / "dog.webp")]


def test_hand_off_without_files_just_asks_for_the_window(qtbot, server, name):
    with qtbot.waitSignal(server.openRequested, timeout=10_000) as blocker:
        thread, out = hand_off_in_thread(name, [])
    qtbot.waitUntil(lambda: not thread.is_alive(), timeout=10_000)
    assert out["ok"] is True and blocker.args[0] == []


def test_no_running_instance_means_no_hand_off(qapp, name):
    assert SingleInstance(name).try_hand_off(["x.png"]) is False


def test_second_listener_is_refused_while_the_first_lives(server, name):
    second = SingleInstance(name)
    assert second.listen() is False
    assert server.is_listening()


@pytest.mark.skipif(sys.platform == "win32", reason="a stale socket file is a Unix thing")
def test_socket_left_by_a_crashed_instance_is_taken_over(qapp, name):
    path = Path(QDir.tempPath()) / name
    stale = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed instance leaves
    assert path.exists()
    first = SingleInstance(name)
    try:
        assert first.listen() is True
    finally:
        first.close()


def test_garbage_is_answered_with_an_error_and_not_emitted(qtbot, server, name):
    got: list = []
    server.openRequested.connect(got.append)
    reply: dict = {}

    def run() -> None:
        from desktop_app.app.single_instance import _wait

        sock = QLocalSocket()
        sock.connectToServer(name)
        assert _wait(sock, sock.waitForConnected, 5000)
        sock.write(b"this is not json\n")
        _wait(sock, sock.waitForBytesWritten, 5000)
        data = b""
        while b"\n" not in data and (sock.bytesAvailable() or _wait(sock, sock.waitForReadyRead, 5000)):
            data += bytes(sock.readAll().data())
        data += bytes(sock.readAll().data())
        reply["data"] = data
        sock.abort()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    qtbot.waitUntil(lambda: not thread.is_alive(), timeout=10_000)
    assert reply["data"].startswith(b"error")
    qtbot.wait(50)
    assert got == []


class FakeWindow(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []

    def open_image(self, path: str) -> bool:
        self.opened.append(path)
        return True


def test_attach_brings_the_window_forward_and_opens_the_file(qtbot, server, name, tmp_path):
    window = FakeWindow()
    qtbot.addWidget(window)
    window.showMinimized()
    server.attach(window)
    image = tmp_path / "a.png"
    with qtbot.waitSignal(server.openRequested, timeout=10_000):
        thread, out = hand_off_in_thread(name, [str(image)])
    qtbot.waitUntil(lambda: not thread.is_alive(), timeout=10_000)
    assert out["ok"] and window.opened == [str(image)]
    assert window.isVisible() and not window.isMinimized()


def test_a_second_process_hands_off_to_this_one(qtbot, server, name, tmp_path):
    """The real thing: another process (a second launch) gives its file to this one and exits 0."""
    code = (
        "import sys; from desktop_app.app.single_instance import SingleInstance; "
        f"sys.exit(0 if SingleInstance({name!r}).try_hand_off(sys.argv[1:], timeout_ms=20000) else 1)"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(ROOT)}
    with qtbot.waitSignal(server.openRequested, timeout=60_000) as blocker:
        proc = subprocess.Popen([sys.executable, "-c", code, "photo.jpg"], cwd=tmp_path, env=env)
    qtbot.waitUntil(lambda: proc.poll() is not None, timeout=60_000)
    assert proc.returncode == 0
    assert blocker.args[0] == [str(tmp_path / "photo.jpg")]


def test_default_name_is_per_user_and_per_data_folder(tmp_path):
    a, b = default_server_name(tmp_path / "a"), default_server_name(tmp_path / "b")
    assert a != b and a == default_server_name(tmp_path / "a")
    assert a.startswith("diffusion-desk-") and len(a) < 80 and "/" not in a


def test_message_format_is_one_json_line():
    from desktop_app.app.single_instance import _decode, _encode

    raw = _encode(["x.png"], cwd="/somewhere")
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert json.loads(raw)["open"] == [str(Path("/somewhere/x.png").resolve())]
    assert _decode(raw.strip()) == [str(Path("/somewhere/x.png").resolve())]


def test_claim_takes_the_lock_and_a_second_claim_waits_for_the_window(qapp, name, tmp_path):
    """The lock decides who is first; a loser whose winner never listens gives up with a clear error."""
    from desktop_app.core.errors import UserError

    lock = tmp_path / "x.lock"
    first = SingleInstance(name, lock_path=lock)
    assert first.claim(["a.png"]) is True and first.holds_lock() and lock.is_file()
    second = SingleInstance(name, lock_path=lock)
    with pytest.raises(UserError, match="does not answer"):
        second.claim(["b.png"], wait_s=0.3)
    assert not second.holds_lock()
    first.release()
    assert not lock.exists()
    assert second.claim([], wait_s=0.3) is True  # free again
    second.release()


def test_a_hand_off_before_the_window_exists_is_kept_for_it(qtbot, server, name, tmp_path):
    thread, out = hand_off_in_thread(name, [str(tmp_path / "early.png")])
    qtbot.waitUntil(lambda: not thread.is_alive(), timeout=10_000)
    assert out["ok"] is True

    class Window(QWidget):
        opened: list = []

        def open_image(self, path: str) -> bool:
            self.opened.append(path)
            return True

    window = Window()
    qtbot.addWidget(window)
    server.attach(window)
    assert window.opened == [str(tmp_path / "early.png")]
