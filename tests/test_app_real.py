"""The installed `diffusion-desk` command as the desktop starts it: real processes, a file argument, a second launch.

`Exec=diffusion-desk %F`: the file opens in the window, and a second launch hands its file to the running window
and exits 0, also when both start in the same instant (only one may stay up and load a model). Under Xvfb the
window is checked by its pixels and closed with the keyboard; elsewhere on Qt's offscreen platform.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
COMMAND = [str(BIN / "diffusion-desk")] if (BIN / "diffusion-desk").exists() else [sys.executable, "-m", "desktop_app"]
RED, BLUE = (255, 0, 0), (0, 0, 255)


def solid_png(path: Path, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (64, 64), color).save(path)
    return path


class App:
    """One `diffusion-desk` process on a data folder; its log is how it says what it did."""

    def __init__(self, data: Path, *files: str, env: dict, cwd: Path) -> None:
        self.log_file = data / "logs" / "diffusion-desk.log"
        self.proc = subprocess.Popen(
            [*COMMAND, "--data-dir", str(data), *files],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def wait_log(self, text: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} (x{count}) in the log after {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out = self.proc.communicate()[0]
            raise AssertionError(f"still running after {timeout}s:\n{out[-3000:]}\n{self.log()[-3000:]}") from None

    def output(self) -> str:
        return self.proc.communicate(timeout=10)[0] if self.proc.poll() is not None else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def offscreen_env(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime)}
    env.pop(  # the tests' own data folder must not leak into the app's
        "DIFFUSION_DESK_DATA_DIR", None
    )
    return env


def test_two_launches_at_the_same_moment_one_stays_and_gets_both_files(tmp_path, offscreen_env):
    red, blue = solid_png(tmp_path / "red.png", RED), solid_png(tmp_path / "blue.png", BLUE)
    data = tmp_path / "data"
    apps = [App(data, str(red), env=offscreen_env, cwd=tmp_path), App(data, str(blue), env=offscreen_env, cwd=tmp_path)]
    try:
        deadline = time.monotonic() + 60
        while sum(a.proc.poll() is None for a in apps) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        running = [a for a in apps if a.proc.poll() is None]
        exited = [a for a in apps if a.proc.poll() is not None]
        assert len(running) == 1 and len(exited) == 1, [a.proc.poll() for a in apps]
        assert exited[0].proc.returncode == 0, exited[0].output()
        survivor = running[0]
        survivor.wait_log(f"opened {red}")
        survivor.wait_log(f"opened {blue}")
        assert survivor.log().count("ready: window up") == 1  # one window, one model to load
        survivor.proc.send_signal(signal.SIGTERM)  # as at logout: the window closes as Quit does
        assert survivor.wait() == 0
    finally:
        for a in apps:
            a.stop()


def test_a_killed_instance_does_not_block_the_next_launch(tmp_path, offscreen_env):
    red = solid_png(tmp_path / "red.png", RED)
    data = tmp_path / "data"
    first = App(data, env=offscreen_env, cwd=tmp_path)
    try:
        first.wait_log("ready: window up")
        first.proc.kill()  # no clean-up at all: its lock file and socket stay behind
        first.proc.wait(10)
        assert list((tmp_path / "run").glob("*.lock")), "the lock lives in $XDG_RUNTIME_DIR"
        started = time.monotonic()
        second = App(data, "red.png", env=offscreen_env, cwd=tmp_path)  # a relative path, as a terminal gives
        try:
            second.wait_log("ready: window up", count=2, timeout=20)
            second.wait_log(f"opened {red}")
            assert time.monotonic() - started < 20
            second.proc.send_signal(signal.SIGTERM)
            assert second.wait() == 0
            assert not list((tmp_path / "run").glob("*.lock")), "a clean exit removes its lock"
        finally:
            second.stop()
    finally:
        first.stop()


# -- under a real X server ------------------------------------------------------------------------------------------


@pytest.fixture
def xvfb(tmp_path):
    """A fresh Xvfb on a free display (it picks the number: -displayfd)."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    read, write = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1366x768x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        number = b""
        deadline = time.monotonic() + 10
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            chunk = os.read(read, 16)
            if not chunk:
                break
            number += chunk
        assert number.strip(), "Xvfb did not start"
        yield f":{int(number)}"
    finally:
        os.close(read)
        server.terminate()
        server.wait(10)


GRAB = """
import sys
from PySide6.QtGui import QGuiApplication
app = QGuiApplication(sys.argv[:1])
app.primaryScreen().grabWindow(0).save(sys.argv[1])
"""


def screen_pixels(env: dict, path: Path) -> np.ndarray:
    """The whole X screen, grabbed by a separate little Qt client (no ImageMagick needed)."""
    subprocess.run([sys.executable, "-c", GRAB, str(path)], env=env, check=True, timeout=30)
    return np.asarray(Image.open(path).convert("RGB"))


def count(pixels: np.ndarray, color: tuple[int, int, int]) -> int:
    return int(np.all(pixels == np.array(color, dtype=np.uint8), axis=-1).sum())


def wait_for_color(env: dict, path: Path, color: tuple[int, int, int], timeout: float = 15) -> np.ndarray:
    deadline = time.monotonic() + timeout
    while True:
        pixels = screen_pixels(env, path)
        if count(pixels, color) >= 64 * 64 // 2 or time.monotonic() > deadline:
            return pixels
        time.sleep(0.2)


def test_under_xvfb_a_file_argument_opens_and_a_second_launch_hands_over(tmp_path, xvfb):
    red, blue = solid_png(tmp_path / "red.png", RED), solid_png(tmp_path / "blue.png", BLUE)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("QT_QPA_PLATFORM", "DIFFUSION_DESK_DATA_DIR", "WAYLAND_DISPLAY")
    }
    env.update(DISPLAY=xvfb, QT_QPA_PLATFORM="xcb", XDG_RUNTIME_DIR=str(runtime))
    data = tmp_path / "data"
    first = App(data, str(red), env=env, cwd=tmp_path)
    try:
        first.wait_log("ready: window up")
        pixels = wait_for_color(env, tmp_path / "screen1.png", RED)
        assert count(pixels, RED) >= 64 * 64 // 2, "the red image is not on the screen"
        assert count(pixels, BLUE) == 0

        second = App(data, str(blue), env=env, cwd=tmp_path)
        assert second.wait(30) == 0, second.output()
        first.wait_log(f"opened {blue}")
        pixels = wait_for_color(env, tmp_path / "screen2.png", BLUE)
        assert count(pixels, BLUE) >= 64 * 64 // 2, "the handed-over image is not shown"
        assert count(pixels, RED) == 0

        if shutil.which("xdotool"):  # close with the keyboard, as a user: focus the window, Ctrl+Q
            found = subprocess.run(
                ["xdotool", "search", "--onlyvisible", "--name", "Diffusion Desk"],
                env=env,
                capture_output=True,
                text=True,
            )
            window = found.stdout.split()[0]
            subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env, check=True, timeout=10)
            subprocess.run(["xdotool", "key", "--clearmodifiers", "ctrl+q"], env=env, check=True, timeout=10)
        else:
            first.proc.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    finally:
        first.stop()
