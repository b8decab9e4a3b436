"""Connections: the ComfyUI servers the user added, whether each answers, its GPU, free memory and models.

Kept in `servers.json` in the config folder (addresses and the user's consent to send a token over plain http);
tokens go to the system keyring when the `keyring` package is there, else to `tokens.json` beside it with 0600
permissions. A token is never logged and never part of a signal.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal, Slot

if TYPE_CHECKING:
    from desktop_app.comfyui.client import ComfyClient

log = logging.getLogger(__name__)
KEYRING_SERVICE = "diffusion-desk-comfyui"


@dataclass
class Server:
    url: str
    allow_insecure_token: bool = False
    has_token: bool = False


class Connections(QObject):
    changed = Signal()  # a server was added or removed
    statusChanged = Signal(str, object)  # url, dict: ok, error, gpu, free_memory, checkpoints, loras, version
    _probed = Signal(str, object)  # from a probe thread; delivered queued on the GUI thread

    def __init__(self, folder: str | os.PathLike | None, parent: QObject | None = None, use_keyring: bool = True):
        super().__init__(parent)
        self.folder = Path(folder) if folder else None
        self._servers: list[Server] = []
        self._tokens: dict[str, str] = {}
        self._status: dict[str, dict[str, Any]] = {}
        self._keyring = _keyring() if use_keyring else None
        self._load()
        self._probed.connect(self._on_probed)

    # -- the list ----------------------------------------------------------------
    def servers(self) -> list[Server]:
        return list(self._servers)

    def needs_consent(self, url: str, token: str) -> bool:
        """Whether sending `token` to `url` needs the user's yes first (plain http to another machine)."""
        from desktop_app.comfyui.client import normalise_url, token_allowed  # http and ssl: not before first paint

        return not token_allowed(normalise_url(url), token)

    def add(self, url: str, token: str = "", allow_insecure_token: bool = False) -> str:
        """Add (or update) a server; the normalised address. UserError on an address that is not http(s), or a
        token over plain http to another machine without consent."""
        from desktop_app.comfyui.client import ComfyClient, normalise_url

        url = normalise_url(url)
        ComfyClient(url, token or None, allow_insecure_token)  # the same checks a job makes
        self._servers = [s for s in self._servers if s.url != url]
        self._servers.append(Server(url, allow_insecure_token, bool(token)))
        self._set_token(url, token)
        self._save()
        self.changed.emit()
        return url

    def remove(self, url: str) -> bool:
        before = len(self._servers)
        self._servers = [s for s in self._servers if s.url != url]
        if len(self._servers) == before:
            return False
        self._set_token(url, "")
        self._status.pop(url, None)
        self._save()
        self.changed.emit()
        return True

    def clients(self) -> list[ComfyClient]:
        if not self._servers:
            return []  # the usual start: no servers, and no http / ssl imports before the first paint
        from desktop_app.comfyui.client import ComfyClient, ServerError

        out = []
        for server in self._servers:
            try:
                out.append(ComfyClient(server.url, self._token(server.url), server.allow_insecure_token))
            except ServerError as exc:  # pragma: no cover - add() already checked
                log.warning("server %s left out: %s", server.url, exc.message)
        return out

    # -- status --------------------------------------------------------------------
    def status(self, url: str) -> dict[str, Any]:
        return dict(self._status.get(url, {}))

    def checkpoint_ids(self) -> list[str]:
        """`comfyui:<name>` for every checkpoint an answering server has: the model picker's rows."""
        names = {c for s in self._status.values() if s.get("ok") for c in s.get("checkpoints", [])}
        return ["comfyui:" + n for n in sorted(names)]

    def refresh(self, wait: bool = False) -> list[threading.Thread]:
        """Ask every server how it is, each on a thread of its own; statusChanged says what each answered."""
        threads = [threading.Thread(target=self._probe, args=(c,), daemon=True) for c in self.clients()]
        for thread in threads:
            thread.start()
        if wait:
            for thread in threads:
                thread.join(30)
        return threads

    def _probe(self, client: ComfyClient) -> None:
        from desktop_app.comfyui.client import ServerError

        try:
            info = client.info()
            status = {
                "ok": True,
                "error": "",
                "version": info.version,
                "gpu": info.gpu,
                "free_memory": info.free_memory,
                "checkpoints": info.checkpoints,
                "loras": info.loras,
            }
        except ServerError as exc:
            status = {"ok": False, "error": exc.message, "checkpoints": [], "loras": []}
        self._probed.emit(client.url, status)

    @Slot(str, object)
    def _on_probed(self, url: str, status: dict) -> None:
        if any(s.url == url for s in self._servers):  # not removed meanwhile
            self._status[url] = status
            self.statusChanged.emit(url, status)

    # -- storage -------------------------------------------------------------------
    def _load(self) -> None:
        if self.folder is None:
            return
        try:
            text = (self.folder / "servers.json").read_text(encoding="utf-8")
        except FileNotFoundError:
            text = None  # no servers added yet: nothing more to import before the first paint
        except OSError as exc:
            log.warning("servers.json unreadable: %s", exc)
            text = None
        if text is not None:
            from desktop_app.comfyui.client import ServerError, normalise_url

            try:
                data = json.loads(text)
                self._servers = [
                    Server(normalise_url(str(d["url"])), bool(d.get("allow_insecure_token")), bool(d.get("has_token")))
                    for d in data.get("servers", [])
                    if isinstance(d, dict) and "url" in d
                ]
            except (ValueError, AttributeError, TypeError, KeyError) as exc:
                log.warning("servers.json unreadable: %s", exc)
            except ServerError:
                log.warning("servers.json holds an address that is not http(s)")
        if self._keyring is None:
            try:
                tokens = json.loads((self.folder / "tokens.json").read_text(encoding="utf-8"))
                self._tokens = {str(k): str(v) for k, v in tokens.items()} if isinstance(tokens, dict) else {}
            except (OSError, ValueError):
                self._tokens = {}

    def _save(self) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            payload = {"servers": [asdict(s) for s in self._servers]}
            _write_private(self.folder / "servers.json", json.dumps(payload, indent=1), private=False)
            if self._keyring is None:
                _write_private(self.folder / "tokens.json", json.dumps(self._tokens), private=True)
        except OSError as exc:
            log.warning("servers not saved: %s", exc)

    def _token(self, url: str) -> str | None:
        if self._keyring is not None:
            try:
                return self._keyring.get_password(KEYRING_SERVICE, url) or None
            except Exception:  # noqa: BLE001 - a keyring backend can fail in many ways
                log.warning("keyring unavailable for %s", url)
                return None
        return self._tokens.get(url) or None

    def _set_token(self, url: str, token: str) -> None:
        if self._keyring is not None:
            try:
                if token:
                    self._keyring.set_password(KEYRING_SERVICE, url, token)
                elif self._keyring.get_password(KEYRING_SERVICE, url):
                    self._keyring.delete_password(KEYRING_SERVICE, url)
                return
            except Exception:  # noqa: BLE001
                log.warning("keyring unavailable: the token for %s is kept in the settings file", url)
                self._keyring = None
        if token:
            self._tokens[url] = token
        else:
            self._tokens.pop(url, None)


def _keyring() -> Any:
    try:
        import keyring  # pyright: ignore[reportMissingImports]
        from keyring.backends import fail  # pyright: ignore[reportMissingImports]

        if isinstance(keyring.get_keyring(), fail.Keyring):
            return None
        return keyring
    except Exception:  # noqa: BLE001 - not installed, or no backend
        return None


def _write_private(path: Path, text: str, private: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    if private:
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)


__all__ = ["Connections", "Server"]
