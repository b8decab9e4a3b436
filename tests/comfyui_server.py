"""A real ComfyUI server on 127.0.0.1 for the tests and the bench, from the environment tools/setup_comfyui.sh builds.

`find_comfyui()` says where it is, or why there is none (the tests skip with that reason); `ComfyServer` starts one
on a free port with its own base directory and stops it with SIGTERM (then SIGKILL), never leaving a process behind.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME_ENV = "DIFFUSION_DESK_COMFYUI_HOME"  # where setup_comfyui.sh builds (default .comfyui/ in the repo)
SOURCE_ENV = "DIFFUSION_DESK_COMFYUI_SOURCE"  # the ComfyUI source: a .tar.gz or a folder
DEFAULT_SOURCE = ROOT.parent / "shared" / "comfyui" / "ComfyUI-0.3.64.tar.gz"
CHECKPOINT = "dd-tiny-sd1.safetensors"
START_TIMEOUT = 120.0  # 7-12 s measured under load; a busy CI machine can be much slower


@dataclass(frozen=True)
class ComfyInstall:
    home: Path

    @property
    def python(self) -> Path:
        return self.home / "venv" / "bin" / "python"

    @property
    def main(self) -> Path:
        return self.home / "ComfyUI" / "main.py"

    @property
    def checkpoint(self) -> Path:
        return self.home / "models" / CHECKPOINT

    def ready(self) -> bool:
        return (
            self.main.is_file()
            and self.python.is_file()
            and (self.home / "venv" / ".ready").is_file()
            and self.checkpoint.is_file()
            and (self.home / "standin" / "torchvision" / "__init__.py").is_file()
        )


def comfyui_source() -> Path:
    return Path(os.environ.get(SOURCE_ENV) or DEFAULT_SOURCE)


def find_comfyui(build: bool = True) -> tuple[ComfyInstall | None, str]:
    """(the install, "") or (None, why not). Builds it with tools/setup_comfyui.sh once when the source is there."""
    install = ComfyInstall(Path(os.environ.get(HOME_ENV) or ROOT / ".comfyui"))
    if install.ready():
        return install, ""
    source = comfyui_source()
    if not source.exists():
        return None, f"no ComfyUI source at {source} (set {SOURCE_ENV} to a ComfyUI .tar.gz or folder)"
    if not build:
        return None, f"the ComfyUI environment is not built: run bash tools/setup_comfyui.sh ({install.home})"
    run = subprocess.run(
        ["bash", str(ROOT / "tools" / "setup_comfyui.sh")],
        env={**os.environ, HOME_ENV: str(install.home), SOURCE_ENV: str(source)},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if run.returncode != 0 or not install.ready():
        return None, f"tools/setup_comfyui.sh failed ({run.returncode}): {(run.stderr or run.stdout)[-600:]}"
    return install, ""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies, however it dies (no orphaned servers)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """One ComfyUI process with its own base directory (input, models, output, temp under a temporary folder)."""

    def __init__(self, install: ComfyInstall, port: int | None = None, previews: bool = True) -> None:
        self.install = install
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="dd-comfyui-")
        self.base = Path(self._tmp.name)
        (self.base / "models" / "checkpoints").mkdir(parents=True)
        (self.base / "models" / "checkpoints" / CHECKPOINT).symlink_to(install.checkpoint)
        self.previews = previews
        self.process: subprocess.Popen | None = None
        self.log_path = self.base / "server.log"

    def start(self, timeout: float = START_TIMEOUT) -> ComfyServer:
        args = [
            str(self.install.python),
            str(self.install.main),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-all-custom-nodes",
            "--disable-api-nodes",
            "--dont-print-server",
            "--base-directory",
            str(self.base),
            "--database-url",
            "sqlite:///:memory:",
        ]
        if self.previews:
            args += ["--preview-method", "latent2rgb"]
        env = {
            **os.environ,
            "PYTHONPATH": str(self.install.home / "standin"),
            "HF_HUB_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
        }
        env.pop("VIRTUAL_ENV", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args,
            cwd=self.install.main.parent,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as response:
                    if "system" in json.loads(response.read()):
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the server goes away as a crashed or unplugged one does."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def cleanup(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


_SHARED: dict[str, ComfyServer] = {}


def shared_server(key: str = "a") -> ComfyServer:
    """One server per key for the whole test session, whichever test file asks first; stopped when the process
    exits (and, failing that, by the death signal the child was given)."""
    server = _SHARED.get(key)
    if server is None or server.process is None or server.process.poll() is not None:
        found, why = find_comfyui()
        if found is None:
            raise LookupError(why)
        server = ComfyServer(found)
        try:
            server.start()
        except RuntimeError:
            server.cleanup()
            raise
        if not _SHARED:
            atexit.register(lambda: [s.cleanup() for s in _SHARED.values()])
        _SHARED[key] = server
    return server


if __name__ == "__main__":  # python -m tests.comfyui_server: start one and keep it until Ctrl+C
    found, why = find_comfyui()
    if found is None:
        sys.exit(why)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with ComfyServer(found) as server:
        print(server.url, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
