"""One window per user and data folder: a second launch hands its files to the running app and exits.

Who is first is decided by a QLockFile (atomic: two launches in the same instant cannot both win). The winner
builds its window and then listens on a QLocalServer; a later launch connects with a QLocalSocket, sends the
files it was given (absolute paths, one JSON line) and waits for a one-line answer. The running app brings its
window forward and opens the files there, instead of a second process loading a second copy of the model.

    instance = SingleInstance()                 # the name is per user and per data folder
    if not instance.claim(paths):               # another instance runs (or is starting) and took them: exit now
        return 0
    window = ...; instance.attach(window)       # hand-offs that arrive before this wait for it
    instance.listen()                           # serve later launches

A launch that loses the lock while the winner is still building its window waits for it to listen.
A lock left by a crashed instance is stale (its process is gone) and taken over; so is its socket.
Only the user who runs the app can connect (QLocalServer.UserAccessOption).
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QLockFile, QObject, Signal, Slot
from PySide6.QtNetwork import QAbstractSocket, QLocalServer, QLocalSocket

from desktop_app.core.errors import UserError

log = logging.getLogger(__name__)

PROTOCOL = 1
MAX_MESSAGE = 1 << 20  # 1 MiB of paths is plenty
CONNECT_TIMEOUT_MS = 500
REPLY_TIMEOUT_MS = 5000
STARTUP_WAIT_S = 60.0  # how long a losing launch waits for the winner's window to start listening
POLL_S = 0.05


def default_lock_path(name: str) -> Path:
    """The lock beside the user's other runtime files ($XDG_RUNTIME_DIR, private and wiped at logout), else in
    the data folder. The name already says which user and which data folder."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / f"{name}.lock"
    from desktop_app.core import paths

    return paths.data_dir() / f"{name}.lock"


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
    files = [
        str((base / Path(p).expanduser()).resolve())
        if not Path(p).expanduser().is_absolute()
        else str(Path(p).expanduser())
        for p in paths
    ]
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

    def __init__(
        self, name: str | None = None, parent: QObject | None = None, lock_path: str | os.PathLike | None = None
    ) -> None:
        super().__init__(parent)
        self.name = name or default_server_name()
        self.lock_path = Path(lock_path) if lock_path else default_lock_path(self.name)
        self._lock: QLockFile | None = None
        self._server: QLocalServer | None = None
        self._buffers: dict[QLocalSocket, bytearray] = {}
        self._pending: list[list[str]] | None = []  # hand-offs that came before attach(); None once attached

    # -- who is first -------------------------------------------------------------------------
    def claim(self, paths: Iterable[str | os.PathLike] = (), wait_s: float = STARTUP_WAIT_S) -> bool:
        """True: this process is the running instance (it holds the lock until it exits). False: another one
        runs, or is starting, and took `paths`; exit now.

        Blocking, before the window is built. Raises UserError when the one holding the lock does not
        start listening within `wait_s` (it hangs) or refuses the files."""
        paths = list(paths)
        lock = QLockFile(str(self.lock_path))
        lock.setStaleLockTime(0)  # stale only when its process is gone: the app holds the lock for hours
        deadline = time.monotonic() + wait_s
        waited = False
        while True:
            if lock.tryLock(0):
                self._lock = lock
                if waited:
                    log.info("single instance: the other launch went away; this one runs")
                return True
            if lock.error() != QLockFile.LockError.LockFailedError:
                # no lock possible here (read-only or odd file system): run, with the hand-off as the only guard
                log.warning(
                    "single instance: cannot lock %s (%s); running without the lock", self.lock_path, lock.error()
                )
                return not self.try_hand_off(paths)
            answer = self._send(paths, REPLY_TIMEOUT_MS)
            if answer == "ok":
                return False
            if answer == "refused":
                raise UserError("The running Diffusion Desk did not take the files.", "Open them from its File menu.")
            if time.monotonic() > deadline:
                raise UserError(
                    "Another Diffusion Desk is starting but does not answer.",
                    f"Close it, or remove {self.lock_path} if no Diffusion Desk runs.",
                )
            if not waited:
                log.info("single instance: another launch holds %s; waiting for its window", self.lock_path)
                waited = True
            time.sleep(POLL_S)

    def holds_lock(self) -> bool:
        return self._lock is not None and self._lock.isLocked()

    def release(self) -> None:
        """Give up the lock and the server (the process is about to exit)."""
        self.close()
        if self._lock is not None:
            self._lock.unlock()
            self._lock = None

    # -- second launch ----------------------------------------------------------------------
    def try_hand_off(self, paths: Iterable[str | os.PathLike] = (), timeout_ms: int = REPLY_TIMEOUT_MS) -> bool:
        """Give `paths` to a running instance; True when it took them (this process should exit).

        Blocking, without an event loop (call it before the window is built). False when no
        instance runs, or it does not answer within `timeout_ms`."""
        return self._send(list(paths), timeout_ms) == "ok"

    def _send(self, paths: list, timeout_ms: int) -> str:
        """'absent': nobody listens; 'ok': the running instance took the files; 'refused': it was reached
        but did not take them (no answer, or not 'ok'): sending again could open them twice."""
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if not _wait(socket, socket.waitForConnected, CONNECT_TIMEOUT_MS):
            return "absent"
        try:
            socket.write(_encode(paths))
            if socket.bytesToWrite() and not _wait(socket, socket.waitForBytesWritten, timeout_ms):
                log.warning("single instance: could not send to %s: %s", self.name, socket.errorString())
                return "refused"
            reply = bytearray()
            while b"\n" not in reply:
                # the answer may already sit in the buffer (read while waiting for the write): only wait when it is empty
                if socket.bytesAvailable() == 0 and not _wait(socket, socket.waitForReadyRead, timeout_ms):
                    reply += bytes(socket.readAll().data())  # whatever came before the server hung up
                    if b"\n" in reply:
                        break
                    log.warning("single instance: no answer from the running app (%s)", socket.errorString())
                    return "refused"
                reply += bytes(socket.readAll().data())
            if reply.split(b"\n", 1)[0].strip() != b"ok":
                return "refused"
            log.info("handed %d file(s) to the running instance", len(paths))
            return "ok"
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
            if server.serverError() != QAbstractSocket.SocketError.AddressInUseError:
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
        if self._pending is not None:
            self._pending.append(files)
        self.openRequested.emit(files)

    def _forget(self, socket: QLocalSocket) -> None:
        self._buffers.pop(socket, None)
        socket.deleteLater()

    # -- wiring -----------------------------------------------------------------------------------
    def attach(self, window: Any) -> None:
        """Bring `window` forward on every hand-off and open the first file in it (`window.open_image(path)`)."""

        def on_open(files: list) -> None:
            bring_to_front(window)
            open_files(window, files)

        pending, self._pending = self._pending or [], None
        self.openRequested.connect(on_open)
        for files in pending:
            on_open(files)


def open_files(window: Any, files: list) -> None:
    """Open the first file in the window (the canvas holds one source image); say so in the log either way."""
    if len(files) > 1:
        log.info("%d files given; the window shows the first, %s", len(files), files[0])
    for path in files[:1]:
        try:
            opened = window.open_image(path)
        except Exception:  # noqa: BLE001 - a bad file must not take the running app down
            log.exception("could not open %s", path)
            continue
        if opened is False:
            log.warning("could not open %s (the window says why)", path)
        else:
            log.info("opened %s", path)


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


__all__ = ["SingleInstance", "bring_to_front", "default_lock_path", "default_server_name", "open_files"]
