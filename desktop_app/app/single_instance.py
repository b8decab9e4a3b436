"""One window per user: a second launch hands its files to the running app and exits.

The first instance listens on a QLocalServer; a later launch connects with a
QLocalSocket, sends the files it was given (absolute paths, one JSON line) and
waits for a one-line answer. The running app then brings its window forward and
opens the files there, instead of a second process loading a second copy of the model.

    instance = SingleInstance()                 # the name is per user and per data folder
    if instance.try_hand_off(paths):            # another instance took them: exit now
        return 0
    instance.listen()                           # we are the first: serve later launches
    instance.openRequested.connect(...)         # or: instance.attach(window)

Only the user who runs the app can connect (QLocalServer.UserAccessOption).
A socket left behind by a crashed instance is removed when nobody answers on it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

PROTOCOL = 1
MAX_MESSAGE = 1 << 20  # 1 MiB of paths is plenty
CONNECT_TIMEOUT_MS = 500
REPLY_TIMEOUT_MS = 5000


def default_server_name(data_dir: str | os.PathLike | None = None) -> str:
    """A name unique to this user and this data folder (two --data-dir's are two apps)."""
    if data_dir is None:
        from desktop_app.core import paths

        data_dir = paths.data_dir()
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): the uid still separates users
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    user = re.sub(r"[^A-Za-z0-9_.-]", "_", user)[:32]
    key = hashlib.sha256(str(Path(data_dir).expanduser().resolve()).encode("utf-8")).hexdigest()[:12]
    return f"diffusion-desk-{user}-{key}"


def _wait(socket: QLocalSocket, wait: Any, timeout_ms: int) -> bool:
    """socket.waitForX(timeout) in short slices, letting go of the GIL between them.

    PySide holds the GIL inside waitForX: a long wait would freeze every other Python
    thread of this process (in tests, the very server it waits for)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        remaining = int((deadline - time.monotonic()) * 1000)
        if wait(max(0, min(20, remaining))):
            return True
        if socket.state() == QLocalSocket.LocalSocketState.UnconnectedState and wait is not socket.waitForConnected:
            return False
        if remaining <= 0:
            return False
        time.sleep(0.002)


def _encode(paths: Iterable[str | os.PathLike], cwd: str | None = None) -> bytes:
    base = Path(cwd or os.getcwd())
    files = [str((base / Path(p).expanduser()).resolve()) if not Path(p).expanduser().is_absolute() else str(Path(p).expanduser()) for p in paths]
    return json.dumps({"v": PROTOCOL, "open": files}).encode("utf-8") + b"\n"


def _decode(line: bytes) -> list[str]:
    data = json.loads(line.decode("utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("open", []), list):
        raise ValueError("not a hand-off message")
    return [str(p) for p in data.get("open", []) if isinstance(p, str)]


class SingleInstance(QObject):
    """The hand-off endpoint: `try_hand_off` in a second launch, `listen` + `openRequested` in the first."""

    # The files a later launch was given (absolute paths; [] when it was started without files: just come forward).
    openRequested = Signal(list)

    def __init__(self, name: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name or default_server_name()
        self._server: QLocalServer | None = None
        self._buffers: dict[QLocalSocket, bytearray] = {}

    # -- second launch ----------------------------------------------------------------------
    def try_hand_off(self, paths: Iterable[str | os.PathLike] = (), timeout_ms: int = REPLY_TIMEOUT_MS) -> bool:
        """Give `paths` to a running instance; True when it took them (this process should exit).

        Blocking, without an event loop (call it before the window is built). False when no
        instance runs, or it does not answer within `timeout_ms`."""
        paths = list(paths)
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if not _wait(socket, socket.waitForConnected, CONNECT_TIMEOUT_MS):
            return False
        try:
            socket.write(_encode(paths))
            if socket.bytesToWrite() and not _wait(socket, socket.waitForBytesWritten, timeout_ms):
                log.warning("single instance: could not send to %s: %s", self.name, socket.errorString())
                return False
            reply = bytearray()
            while b"\n" not in reply:
                # the answer may already sit in the buffer (read while waiting for the write): only wait when it is empty
                if socket.bytesAvailable() == 0 and not _wait(socket, socket.waitForReadyRead, timeout_ms):
                    reply += bytes(socket.readAll().data())  # whatever came before the server hung up
                    if b"\n" in reply:
                        break
                    log.warning("single instance: no answer from the running app (%s)", socket.errorString())
                    return False
                reply += bytes(socket.readAll().data())
            ok = reply.split(b"\n", 1)[0].strip() == b"ok"
            if ok:
                log.info("handed %d file(s) to the running instance", len(paths))
            return ok
        finally:
            socket.disconnectFromServer()
            socket.abort()

    # -- first instance ---------------------------------------------------------------------------
    def listen(self) -> bool:
        """Serve later launches. False when another live instance already serves this name."""
        if self._server is not None and self._server.isListening():
            return True
        if self._answers():  # a live instance serves this name (listen() alone would not tell: see below)
            return False
        server = QLocalServer(self)
        # With access options Qt binds in a private folder and renames the socket into place, replacing any
        # file there: hence the probe above. Without them a crashed instance's file makes listen() fail.
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            if server.serverError() != QLocalSocket.LocalSocketError.AddressInUseError:
                log.warning("single instance: cannot listen on %s: %s", self.name, server.errorString())
                return False
            QLocalServer.removeServer(self.name)  # a crashed instance's leftover
            if not server.listen(self.name):
                log.warning("single instance: cannot listen on %s: %s", self.name, server.errorString())
                return False
        server.newConnection.connect(self._on_new_connection)
        self._server = server
        log.debug("single instance: listening on %s", server.fullServerName())
        return True

    def _answers(self) -> bool:
        probe = QLocalSocket()
        probe.connectToServer(self.name)
        alive = probe.waitForConnected(CONNECT_TIMEOUT_MS)
        probe.abort()
        return alive

    def is_listening(self) -> bool:
        return self._server is not None and self._server.isListening()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server.deleteLater()
            self._server = None

    @Slot()
    def _on_new_connection(self) -> None:
        assert self._server is not None
        while self._server.hasPendingConnections():
            socket = self._server.nextPendingConnection()
            self._buffers[socket] = bytearray()
            socket.readyRead.connect(lambda s=socket: self._on_ready_read(s))
            socket.disconnected.connect(lambda s=socket: self._forget(s))

    def _on_ready_read(self, socket: QLocalSocket) -> None:
        buffer = self._buffers.get(socket)
        if buffer is None:
            return
        buffer += bytes(socket.readAll().data())
        if b"\n" not in buffer:
            if len(buffer) > MAX_MESSAGE:
                log.warning("single instance: message too long, dropped")
                socket.abort()
            return
        line = bytes(buffer.split(b"\n", 1)[0])
        self._buffers.pop(socket, None)
        try:
            files = _decode(line)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("single instance: bad message ignored: %s", exc)
            socket.write(b"error\n")
            socket.flush()
            socket.disconnectFromServer()
            return
        socket.write(b"ok\n")
        socket.flush()
        socket.disconnectFromServer()
        log.info("another launch asked to open %s", files or "the window")
        self.openRequested.emit(files)

    def _forget(self, socket: QLocalSocket) -> None:
        self._buffers.pop(socket, None)
        socket.deleteLater()

    # -- wiring -----------------------------------------------------------------------------------
    def attach(self, window: Any) -> None:
        """Bring `window` forward on every hand-off and open the first file in it (`window.open_image(path)`)."""

        def on_open(files: list) -> None:
            bring_to_front(window)
            for path in files[:1]:  # the canvas holds one source image
                try:
                    window.open_image(path)
                except Exception:  # noqa: BLE001 - a bad file must not take the running app down
                    log.exception("could not open %s", path)

        self.openRequested.connect(on_open)


def bring_to_front(window: Any) -> None:
    """Un-minimise, raise and activate a top-level window (as far as the window manager allows)."""
    from PySide6.QtCore import Qt

    state = window.windowState()
    if state & Qt.WindowState.WindowMinimized:
        window.setWindowState((state & ~Qt.WindowState.WindowMinimized) | Qt.WindowState.WindowActive)
    window.show()
    window.raise_()
    window.activateWindow()
    handle = window.windowHandle()
    if handle is not None and sys.platform.startswith("linux"):
        handle.requestActivate()


__all__ = ["SingleInstance", "default_server_name", "bring_to_front"]
