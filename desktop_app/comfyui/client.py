"""One ComfyUI server over its HTTP API and WebSocket: the few routes a job needs, with limits on what comes back.

Everything a server answers is treated as untrusted: sizes are capped before reading, JSON that is not what ComfyUI
sends becomes a `ServerError`, images are checked from their header before decoding, and every wait has a timeout.
A bearer token is never sent over plain http to a host other than this machine unless the user allowed it.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from desktop_app.core.errors import UserError

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024 * 1024  # /object_info of a server with many custom nodes is a few MB
MAX_IMAGE_BYTES = 128 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096  # requests are at most 2048x2048
HTTP_TIMEOUT = 30.0


class ServerError(UserError):
    """A ComfyUI server answered with an error, garbage, or too much."""


class ServerGone(ServerError):
    """The server cannot be reached (refused, reset, timed out): the pool may try another one."""


class InsecureToken(UserError):
    """A token would go over plain http to another machine."""


def normalise_url(url: str) -> str:
    """`host:port` or `http(s)://host:port/base` -> `http(s)://host:port/base` (no trailing slash); UserError when
    it is not an http(s) address."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"{url!r} is not the address of a ComfyUI server.",
            "Give http://HOST:PORT or https://HOST, e.g. http://127.0.0.1:8188.",
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise UserError(f"{url!r} has a port that is not a number.", "Give http://HOST:PORT.") from exc
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def is_local_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_allowed(url: str, token: str | None, allow_insecure: bool = False) -> bool:
    """Whether `token` may be sent to `url`: over https, to this machine, or when the user allowed plain http."""
    if not token:
        return True
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "https" or is_local_host(parts.hostname or "") or allow_insecure


@dataclass
class ServerInfo:
    """What /system_stats and /object_info say, for the Connections dialog and the pool."""

    url: str
    version: str = ""
    devices: list[dict[str, Any]] = field(default_factory=list)  # name, type, vram_total, vram_free
    ram_free: int = 0
    checkpoints: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)
    samplers: list[str] = field(default_factory=list)
    schedulers: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> str:
        return ", ".join(str(d.get("name", "?")) for d in self.devices) or "unknown device"

    @property
    def free_memory(self) -> int:
        """Free memory of the first device in bytes (VRAM, or RAM on a CPU server)."""
        if self.devices:
            return int(self.devices[0].get("vram_free") or 0)
        return self.ram_free


class ComfyClient:
    """The HTTP side of one server. Thread-safe: each call opens its own connection."""

    def __init__(
        self, url: str, token: str | None = None, allow_insecure_token: bool = False, timeout: float = HTTP_TIMEOUT
    ) -> None:
        self.url = normalise_url(url)
        if not token_allowed(self.url, token, allow_insecure_token):
            host = urllib.parse.urlsplit(self.url).hostname
            raise InsecureToken(
                f"The token for {host} would be sent unencrypted over plain http.",
                "Use https:// for this server, or allow sending the token over http in the Servers dialog "
                "(--allow-insecure-token on the command line).",
            )
        self._token = token or None
        self.timeout = timeout

    def __repr__(self) -> str:  # never the token
        return f"ComfyClient({self.url!r})"

    @property
    def name(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    # -- HTTP ----------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        limit: int = MAX_JSON_BYTES,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        headers = {**self.headers(), "Accept": "application/json, image/*"}
        if body is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                return response.status, _read_capped(response, limit, self.name)
        except urllib.error.HTTPError as exc:
            try:
                data = _read_capped(exc, 1024 * 1024, self.name)
            except ServerError:
                data = b""
            if exc.code in (401, 403):
                raise ServerError(
                    f"The ComfyUI server {self.name} refused access (HTTP {exc.code}).",
                    "Check the token in the Servers dialog.",
                ) from None
            return exc.code, data
        except http.client.HTTPException as exc:  # not HTTP at all, or cut short
            raise ServerError(
                f"The server {self.name} did not answer in HTTP ({type(exc).__name__}).",
                "Check that the address is a ComfyUI server.",
            ) from None
        except (urllib.error.URLError, TimeoutError, ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerGone(
                f"The ComfyUI server {self.name} cannot be reached: {reason}.",
                "Check that it runs and that the address is right; the app retries it.",
            ) from None

    def _json(self, method: str, path: str, payload: Any = None, timeout: float | None = None) -> Any:
        body = json.dumps(payload).encode() if payload is not None else None
        status, data = self._request(method, path, body, timeout=timeout)
        parsed = _parse_json(data, self.name, path) if data else None
        if status >= 400:
            raise ServerError(
                f"The ComfyUI server {self.name} answered {path} with HTTP {status}: {describe_error_body(parsed)}",
                "See the server's own log for details.",
            )
        return parsed

    def system_stats(self, timeout: float | None = None) -> dict[str, Any]:
        stats = self._json("GET", "/system_stats", timeout=timeout)
        if not isinstance(stats, dict) or not isinstance(stats.get("system"), dict):
            raise ServerError(f"{self.name} does not answer like a ComfyUI server.", "Check the address and port.")
        return stats

    def object_info(self, node: str) -> dict[str, Any]:
        info = self._json("GET", "/object_info/" + urllib.parse.quote(node))
        if not isinstance(info, dict):
            raise ServerError(f"{self.name} sent no node description for {node}.", "Check that it is ComfyUI.")
        return info.get(node) if isinstance(info.get(node), dict) else {}  # type: ignore[return-value]

    def choices(self, node: str, input_name: str) -> list[str]:
        """The names a node's combo input offers (checkpoints, LoRAs, samplers)."""
        spec = self.object_info(node).get("input", {})
        entry = (spec.get("required", {}) or {}).get(input_name) if isinstance(spec, dict) else None
        if isinstance(entry, list) and entry:
            options = entry[0]
            if isinstance(options, list):
                return [str(x) for x in options if isinstance(x, str)]
            if options == "COMBO" and len(entry) > 1 and isinstance(entry[1], dict):  # the V3 schema's form
                return [str(x) for x in entry[1].get("options", []) if isinstance(x, str)]
        return []

    def info(self) -> ServerInfo:
        stats = self.system_stats()
        system = stats.get("system", {})
        devices = [d for d in stats.get("devices", []) if isinstance(d, dict)]
        return ServerInfo(
            url=self.url,
            version=str(system.get("comfyui_version", "")),
            devices=devices,
            ram_free=int(system.get("ram_free") or 0),
            checkpoints=self.choices("CheckpointLoaderSimple", "ckpt_name"),
            loras=self.choices("LoraLoader", "lora_name"),
            samplers=self.choices("KSampler", "sampler_name"),
            schedulers=self.choices("KSampler", "scheduler"),
        )

    def queue_remaining(self) -> int:
        info = self._json("GET", "/prompt", timeout=5.0)
        try:
            return int(info["exec_info"]["queue_remaining"])
        except (KeyError, TypeError, ValueError):
            raise ServerError(f"{self.name} sent a queue state that is not ComfyUI's.", "Check the address.") from None

    def queue(self) -> tuple[list[str], list[str]]:
        """(running prompt ids, pending prompt ids)."""
        data = self._json("GET", "/queue", timeout=10.0)
        if not isinstance(data, dict):
            raise ServerError(f"{self.name} sent a queue that is not ComfyUI's.", "Check the address.")

        def ids(items: Any) -> list[str]:
            return [str(item[1]) for item in items or [] if isinstance(item, list) and len(item) > 1]

        return ids(data.get("queue_running")), ids(data.get("queue_pending"))

    def queue_prompt(self, graph: dict[str, Any], client_id: str, prompt_id: str | None = None) -> str:
        prompt_id = prompt_id or str(uuid.uuid4())
        status, data = self._request(
            "POST",
            "/prompt",
            json.dumps({"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}).encode(),
        )
        parsed = _parse_json(data, self.name, "/prompt") if data else None
        if status >= 400:
            raise PromptRejected(self.name, parsed)
        if not isinstance(parsed, dict) or not isinstance(parsed.get("prompt_id"), str):
            raise ServerError(f"{self.name} did not queue the job: {describe_error_body(parsed)}", "Check the server.")
        return parsed["prompt_id"]

    def delete_from_queue(self, prompt_id: str) -> None:
        self._json("POST", "/queue", {"delete": [prompt_id]}, timeout=10.0)

    def interrupt(self, prompt_id: str | None = None) -> None:
        self._json("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {}, timeout=10.0)

    def history(self, prompt_id: str) -> dict[str, Any]:
        data = self._json("GET", "/history/" + urllib.parse.quote(prompt_id))
        if not isinstance(data, dict):
            raise ServerError(f"{self.name} sent a history that is not ComfyUI's.", "Check the server.")
        entry = data.get(prompt_id)
        return entry if isinstance(entry, dict) else {}

    def upload_image(self, image: Image.Image, name: str) -> str:
        """Upload a PNG to the server's input folder; the name to give LoadImage."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        body, content_type = _multipart({"overwrite": "true"}, "image", name, buffer.getvalue(), "image/png")
        status, data = self._request("POST", "/upload/image", body, content_type)
        parsed = _parse_json(data, self.name, "/upload/image") if data else None
        if status >= 400 or not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
            raise ServerError(
                f"{self.name} did not take the uploaded image (HTTP {status}).", "See the server's own log."
            )
        subfolder = parsed.get("subfolder") or ""
        return f"{subfolder}/{parsed['name']}" if subfolder else parsed["name"]

    def view(self, filename: str, subfolder: str = "", kind: str = "output") -> Image.Image:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": kind})
        status, data = self._request("GET", "/view?" + query, limit=MAX_IMAGE_BYTES, timeout=60.0)
        if status >= 400:
            raise ServerError(f"{self.name} did not send the result image {filename} (HTTP {status}).", "Run it again.")
        return decode_image(data, self.name)

    # -- WebSocket -----------------------------------------------------------
    def websocket_url(self, client_id: str) -> str:
        parts = urllib.parse.urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + "/ws", f"clientId={client_id}", ""))

    def open_websocket(self, client_id: str, timeout: float = 10.0) -> Any:
        import websocket  # websocket-client: a plain blocking socket suits one worker thread per job

        try:
            ws = websocket.create_connection(
                self.websocket_url(client_id),
                timeout=timeout,
                header=[f"{k}: {v}" for k, v in self.headers().items()],
                enable_multithread=True,
            )
        except (OSError, websocket.WebSocketException) as exc:
            raise ServerGone(
                f"The ComfyUI server {self.name} refused its WebSocket: {exc}.",
                "Check that it runs; the app retries it.",
            ) from None
        return ws


class PromptRejected(ServerError):
    """ComfyUI refused the graph (HTTP 400): a missing model, a bad value."""

    def __init__(self, server: str, body: Any) -> None:
        detail = describe_error_body(body)
        missing = _missing_value(body)
        hint = "See the server's own log for details."
        if missing:
            hint = f"The server has no {missing}; pick one it lists in the Servers dialog."
        super().__init__(f"The ComfyUI server {server} refused the job: {detail}", hint)
        self.body = body


def describe_error_body(body: Any) -> str:
    """A one-line reading of ComfyUI's {"error": {...}, "node_errors": {...}} (or whatever came)."""
    if not isinstance(body, dict):
        return "no details" if body is None else str(body)[:200]
    parts = []
    error = body.get("error")
    if isinstance(error, dict):
        parts.append(str(error.get("message") or error.get("type") or "error"))
    elif error:
        parts.append(str(error)[:200])
    node_errors = body.get("node_errors")
    if isinstance(node_errors, dict):
        for node in node_errors.values():
            for err in (node or {}).get("errors", []) if isinstance(node, dict) else []:
                if isinstance(err, dict):
                    parts.append(str(err.get("details") or err.get("message") or "")[:200])
    return "; ".join(p for p in parts if p)[:600] or "no details"


def _missing_value(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("node_errors"), dict):
        return ""
    for node in body["node_errors"].values():
        for err in node.get("errors", []) if isinstance(node, dict) else []:
            if isinstance(err, dict) and err.get("type") == "value_not_in_list":
                details = str(err.get("details", ""))
                return details.split(":")[0].strip() + " of that name" if details else "such value"
    return ""


def _read_capped(response: Any, limit: int, server: str) -> bytes:
    length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
    if length and length.isdigit() and int(length) > limit:
        raise ServerError(
            f"The ComfyUI server {server} sent {int(length) // 2**20} MB where at most {limit // 2**20} MB is expected.",
            "Check that the address is a ComfyUI server.",
        )
    data = response.read(limit + 1)
    if len(data) > limit:
        raise ServerError(
            f"The ComfyUI server {server} sent more than {limit // 2**20} MB.",
            "Check that the address is a ComfyUI server.",
        )
    return data


def _parse_json(data: bytes, server: str, path: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ServerError(
            f"The server {server} answered {path.split('?')[0]} with something that is not JSON.",
            "Check that the address is a ComfyUI server (not a web page or a proxy's error page).",
        ) from None


def decode_image(data: bytes, server: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A PIL RGB image from bytes a server sent: its size checked from the header before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    except Exception:  # noqa: BLE001 - whatever Pillow raises on garbage
        raise ServerError(f"The ComfyUI server {server} sent a result that is not an image.", "Run it again.") from None
    if width * height > max_pixels:
        raise ServerError(
            f"The ComfyUI server {server} sent an image of {width}x{height}, larger than any job asks for.",
            "Check the server: it is not sending this job's result.",
        )
    try:
        image.load()
    except Exception:  # noqa: BLE001
        raise ServerError(f"The ComfyUI server {server} sent a damaged image.", "Run it again.") from None
    return image.convert("RGB")


def _multipart(fields: dict[str, str], file_field: str, filename: str, content: bytes, mime: str) -> tuple[bytes, str]:
    """multipart/form-data by hand: the standard library has no encoder, and one upload does not justify a new
    HTTP dependency."""
    boundary = uuid.uuid4().hex
    lines: list[bytes] = []
    for key, value in fields.items():
        lines += [
            f"--{boundary}".encode(),
            f'Content-Disposition: form-data; name="{key}"'.encode(),
            b"",
            value.encode(),
        ]
    lines += [
        f"--{boundary}".encode(),
        f'Content-Disposition: form-data; name="{file_field}"; filename="{filename}"'.encode(),
        f"Content-Type: {mime}".encode(),
        b"",
        content,
        f"--{boundary}--".encode(),
        b"",
    ]
    return b"\r\n".join(lines), f"multipart/form-data; boundary={boundary}"


__all__ = [
    "ComfyClient",
    "InsecureToken",
    "PromptRejected",
    "ServerError",
    "ServerGone",
    "ServerInfo",
    "decode_image",
    "is_local_host",
    "normalise_url",
    "token_allowed",
]
