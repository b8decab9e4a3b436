"""Hub downloads against a local stand-in for the hub (127.0.0.1, HF_ENDPOINT): progress, cancel, resume, offline."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from desktop_app.core.errors import ModelError
from desktop_app.engine import hub

REPO = "tester/tiny-sd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves a folder in the hub's URL layout: /api/models/{repo}[/revision/{rev}] and /{repo}/resolve/{rev}/{path}."""

    def __init__(self, folder: Path, extra: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }
        self.files.update(extra or {})
        self.delay = 0.0  # seconds per 16 KiB chunk
        self.drop_after: int | None = None  # close the connection after this many body bytes (a network drop)
        self.requests: list[tuple[str, str, str]] = []
        hub_self = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _file(self):
                m = re.fullmatch(rf"/{REPO}/resolve/[^/]+/(.+)", self.path.split("?")[0])
                return m and hub_self.files.get(m[1])

            def do_GET(self):
                hub_self.requests.append(("GET", self.path, self.headers.get("Range", "")))
                if self.path.startswith(f"/api/models/{REPO}"):
                    body = json.dumps(
                        {
                            "id": REPO,
                            "sha": COMMIT,
                            "siblings": [{"rfilename": k, "size": len(v)} for k, v in hub_self.files.items()],
                        }
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = self._file()
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if rng:
                    start = int(rng[1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self._headers(data, len(data) - start)
                try:
                    end = (
                        len(data) if hub_self.drop_after is None or len(data) < 100_000 else start + hub_self.drop_after
                    )
                    for i in range(start, end, 16384):
                        self.wfile.write(data[i : min(i + 16384, end)])
                        if hub_self.delay:
                            time.sleep(hub_self.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if end < len(data):
                    self.close_connection = True
                    self.wfile.flush()
                    self.connection.shutdown(2)

            def do_HEAD(self):
                hub_self.requests.append(("HEAD", self.path, ""))
                data = self._file()
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self._headers(data, len(data))

            def _headers(self, data, length):
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def restore_hub_constants():
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    yield
    constants.HF_HUB_OFFLINE = saved


@pytest.fixture
def fake_hub(tiny_model_dir, tmp_path, monkeypatch):
    # a pickle next to the safetensors must never be fetched
    # like the real SD 1.5 repo: safety checker and feature extractor listed, a pickle beside the safetensors, a root .ckpt
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    index.update(
        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
        feature_extractor=["transformers", "CLIPImageProcessor"],
    )
    extra = {
        "model_index.json": json.dumps(index).encode(),
        "unet/diffusion_pytorch_model.bin": b"not for download" * 100,
        "v1-5-pruned.ckpt": b"x" * 5000,
        "safety_checker/model.safetensors": b"s" * 5000,
        "safety_checker/config.json": b"{}",
        "feature_extractor/preprocessor_config.json": b"{}",
    }
    with FakeHub(tiny_model_dir, extra) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        yield server


def _weights(server) -> int:
    return sum(
        len(v)
        for k, v in server.files.items()
        if not k.endswith((".bin", ".ckpt")) and not k.startswith(("safety_checker", "feature_extractor"))
    )


def test_download_reports_bytes_rate_and_eta_and_lands_in_the_hf_cache(fake_hub, tmp_path):
    events = []
    folder = hub.download_model(REPO, progress=events.append)
    assert (folder / "model_index.json").is_file() and (
        folder / "unet" / "diffusion_pytorch_model.safetensors"
    ).is_file()
    assert str(folder).startswith(str(tmp_path / "hf" / "hub"))
    assert not (folder / "unet" / "diffusion_pytorch_model.bin").exists() and not (folder / "v1-5-pruned.ckpt").exists()
    assert not any(path.endswith((".bin", ".ckpt")) or "safety_checker" in path for _, path, _ in fake_hub.requests)
    last = events[-1]
    assert last.done_bytes == last.total_bytes and last.files_done == last.files_total
    assert last.total_bytes <= _weights(fake_hub)
    assert all(b.done_bytes >= a.done_bytes for a, b in zip(events, events[1:]))
    assert any(e.rate > 0 for e in events)


def test_cancel_stops_the_download_and_the_next_one_resumes(fake_hub, monkeypatch):
    fake_hub.delay = 0.005
    cancel = threading.Event()
    seen = []

    def on_progress(p):
        seen.append(p)
        if p.file == "unet/diffusion_pytorch_model.safetensors" and p.files_done < p.files_total - 1:
            cancel.set()

    with pytest.raises(hub.DownloadCancelled):
        hub.download_model(REPO, progress=on_progress, cancel=cancel)
    partial = list((Path(hub.cache_dir())).rglob("*.incomplete"))
    assert partial and partial[0].stat().st_size > 0
    fake_hub.delay = 0.0
    fake_hub.requests.clear()
    folder = hub.download_model(REPO)
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert any(rng.startswith("bytes=") and rng != "bytes=0-" for _, _, rng in fake_hub.requests), (
        "resumed with a Range request"
    )
    assert not list(Path(hub.cache_dir()).rglob("*.incomplete"))


def test_offline_uses_the_cache_or_says_why_it_cannot(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE") as info:
        hub.download_model(REPO)
    assert "Connect" in info.value.hint
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    online = hub.download_model(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.download_model(REPO) == online


def test_unreachable_hub_is_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(ModelError, match="cannot be reached"):
        hub.download_model(REPO, timeout=2)


def test_engine_loads_a_hub_model_with_download_progress_events(fake_hub, engine):
    from desktop_app.core.events import Progress

    events = []
    engine.models.unload()
    loaded = engine.models.get(REPO, emit=events.append)
    assert loaded.source.kind == "hub" and loaded.family == "sd1"
    downloads = [e for e in events if isinstance(e, Progress) and e.phase == "download"]
    assert downloads and downloads[-1].step == downloads[-1].total
    assert loaded.model_hash  # hashed like any local model


def test_curated_list_names_sizes_and_families():
    repos = {m.repo for m in hub.CURATED}
    assert len(hub.CURATED) == len(repos) >= 13
    assert {m.family for m in hub.CURATED} >= {"sd1", "sd1-inpaint", "sd2-v", "sdxl", "sdxl-inpaint"}
    assert {m.family for m in hub.CURATED} >= {"sd3", "flux-schnell", "flux-dev", "flux-fill", "flux-kontext"}
    # the flow repositories ship bf16 weights only: both sizes are the same there
    assert all(0 < m.size_gb <= m.size_gb_fp32 for m in hub.CURATED)
    assert all(m.size_gb < m.size_gb_fp32 for m in hub.CURATED if not m.family.startswith(("sd3", "flux")))


def test_console_download_prints_bytes_rate_and_eta(fake_hub):
    import io

    out = io.StringIO()
    folder = hub.download_with_console_progress(REPO + "@main", stream=out)
    assert (folder / "model_index.json").is_file()
    assert "/s" in out.getvalue() and "ETA" in out.getvalue() and out.getvalue().endswith("\n")


def test_registry_rows_list_known_then_curated_models(tmp_path):
    from desktop_app.core.model_registry import ModelRegistry, list_rows

    registry = ModelRegistry(tmp_path / "models.json")
    registry.add(str(tmp_path / "gone.safetensors"), "single_file", family="sd1")
    rows = list_rows(registry)
    assert rows[0]["missing"] is True and rows[0]["family"] == "sd1"
    assert [r["kind"] for r in rows[1:]] == ["hub (curated)"] * len(hub.CURATED)


def test_a_dropped_connection_is_a_clear_message_and_the_next_try_resumes(fake_hub):
    fake_hub.drop_after = 200_000
    with pytest.raises(ModelError, match="stopped") as info:
        hub.download_model(REPO)
    assert "resumes" in info.value.hint
    fake_hub.drop_after = None
    fake_hub.requests.clear()
    folder = hub.download_model(REPO)
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    resumed = [int(rng[6:-1]) for _, _, rng in fake_hub.requests if rng.startswith("bytes=")]
    assert resumed and 0 < resumed[0] <= 200_000


def test_cancelling_a_download_inside_the_model_manager_is_a_job_cancel(fake_hub, engine):
    from desktop_app.core.errors import JobCancelled

    cancel = threading.Event()
    cancel.set()
    engine.models.unload()
    with pytest.raises(JobCancelled):
        engine.models.get(REPO, cancel=cancel)
    assert engine.models.loaded is None


def test_variant_and_pickle_selection():
    files = {
        "model_index.json": 1,
        "unet/config.json": 1,
        "unet/diffusion_pytorch_model.safetensors": 10,
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors": 3,
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors": 2,
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json": 1,
        "unet/diffusion_pytorch_model.non_ema.safetensors": 10,
        "vae/config.json": 1,
        "vae/diffusion_pytorch_model.bin": 5,
        "sd_xl_base_1.0.safetensors": 100,
    }
    index = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    with pytest.raises(ModelError, match="pickle weights only"):
        hub.select_files(files, index)
    files["vae/diffusion_pytorch_model.safetensors"] = 5
    plain, variant = hub.select_files(files, index)
    assert (
        variant is None
        and "unet/diffusion_pytorch_model.safetensors" in plain
        and not any("fp16" in p or "non_ema" in p for p in plain)
    )
    half, variant = hub.select_files(files, index, prefer_fp16=True)
    assert variant == "fp16"
    assert {p for p in half if p.startswith("unet/") and "fp16" in p} == {
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
    }
    assert "sd_xl_base_1.0.safetensors" not in half + plain
