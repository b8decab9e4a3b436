"""Hub downloads: a diffusers pipeline repo into the standard Hugging Face cache, with progress, cancel and resume.

Only what a pipeline needs is fetched: model_index.json, each component's config and
tokenizer files, and its `.safetensors` weights (the fp16 variant when the model will
run in half precision and the repo has one). Pickle weights are never downloaded.

The environment is read when a download starts, not at import: HF_HOME / HF_HUB_CACHE
(where), HF_HUB_OFFLINE (cache only, with a clear message when the model is not
there) and HF_ENDPOINT (a mirror, or the tests' stand-in server). An interrupted
download leaves `.incomplete` blobs in the cache; the next one resumes from them
(HTTP Range).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from desktop_app.core.errors import ModelError
from desktop_app.core.events import Progress
from desktop_app.core.model_registry import (  # noqa: F401 - plain data, re-exported
    CURATED,
    CuratedModel,
    curated,
    format_size,
    gated_hint,
)

WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".ckpt",
    ".pt",
    ".pth",
    ".msgpack",
    ".onnx",
    ".onnx_data",
    ".h5",
    ".pb",
    ".pkl",
)
PICKLE_WEIGHTS = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+?))?(?::(?P<subfolder>[\w./-]+))?")


@dataclass(frozen=True)
class DownloadProgress:
    done_bytes: int
    total_bytes: int
    rate: float  # bytes per second over this download (resumed bytes are not counted)
    eta_seconds: float
    file: str
    files_done: int
    files_total: int

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0


class DownloadCancelled(Exception):
    """The user cancelled; what was fetched stays in the cache and the next download resumes from it."""


OnProgress = Callable[[DownloadProgress], None]


# -- environment, read at call time ----------------------------------------------------------------
def _true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    return _true(os.environ.get("HF_HUB_OFFLINE")) or _true(os.environ.get("TRANSFORMERS_OFFLINE"))


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def cache_dir() -> Path:
    """HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub (XDG_CACHE_HOME honoured)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _sync_hub_constants() -> None:
    """huggingface_hub reads HF_HUB_OFFLINE once at import; make it follow the environment of now."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = offline()


# -- progress -----------------------------------------------------------------------------------
class _Tracker:
    """Bytes across all files of one download; throttled reports; the cancel check runs on every chunk."""

    def __init__(
        self,
        total: int,
        files_total: int,
        on_progress: OnProgress | None,
        cancel: threading.Event | None,
        interval: float = 0.1,
    ) -> None:
        self.total = total
        self.files_total = files_total
        self.files_done = 0
        self.done = 0
        self.fresh = 0  # bytes fetched by this download (rate)
        self.started = time.perf_counter()
        self.on_progress = on_progress
        self.cancel = cancel
        self.interval = interval
        self._last = 0.0
        self.file = ""

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled()

    def add(self, n: int, fresh: bool = True, force: bool = False) -> None:
        self.done += n
        if fresh:
            self.fresh += n
        self.check()
        now = time.perf_counter()
        if self.on_progress is not None and (force or now - self._last >= self.interval):
            self._last = now
            self.on_progress(self.snapshot())

    def snapshot(self) -> DownloadProgress:
        elapsed = max(time.perf_counter() - self.started, 1e-6)
        rate = self.fresh / elapsed
        left = max(self.total - self.done, 0)
        return DownloadProgress(
            self.done, self.total, rate, left / rate if rate > 0 else 0.0, self.file, self.files_done, self.files_total
        )


# -- choosing files -----------------------------------------------------------------------------
def _is_weight(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def _variant_of(name: str) -> str | None:
    stem = Path(name).name
    for suffix in (".safetensors",):
        if stem.endswith(suffix):
            parts = stem[: -len(suffix)].split(".")
            # "model.fp16.safetensors", sharded "model.fp16-00001-of-00002.safetensors"
            return parts[-1].split("-")[0] if len(parts) > 1 else None
    return None


def select_files(
    files: dict[str, int], index: dict, prefix: str = "", prefer_fp16: bool = False
) -> tuple[list[str], str | None]:
    """The files a pipeline needs (relative to the repo) and the weight variant chosen ('fp16' or None).

    `files`: repo path -> size. Refuses a component whose only weights are pickles.
    """
    components = [
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] and value[1]
    ]
    chosen = [prefix + "model_index.json"]
    per_component: dict[str, dict[str, list[str]]] = {}
    for path in files:
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix) :]
        folder, _, name = rel.partition("/")
        if not name or folder not in components or "/" in name:
            continue
        group = per_component.setdefault(
            folder, {"plain": [], "fp16": [], "other_variant": [], "pickle": [], "config": []}
        )
        if name.endswith(".safetensors"):
            variant = _variant_of(name)
            group["plain" if variant is None else "fp16" if variant == "fp16" else "other_variant"].append(path)
        elif name.endswith(PICKLE_WEIGHTS):
            group["pickle"].append(path)
        elif _is_weight(name):
            continue
        elif name.endswith(".fp16.json") or ".index.fp16." in name:
            group["fp16"].append(path)  # a sharded fp16 variant's index
        else:
            group["config"].append(path)
    variant = None
    if prefer_fp16 and any(
        g["fp16"] and any(p.endswith(".safetensors") for p in g["fp16"]) for g in per_component.values()
    ):
        variant = "fp16"
    for folder in components:
        group = per_component.get(folder)
        if group is None:
            continue
        chosen += group["config"]
        weights = (
            group["fp16"]
            if variant == "fp16" and any(p.endswith(".safetensors") for p in group["fp16"])
            else group["plain"]
        )
        if not weights and group["fp16"]:
            weights = group["fp16"]
            variant = "fp16"
        if not weights and group["pickle"]:
            raise ModelError(
                f"The {folder} of this repo has pickle weights only ({Path(group['pickle'][0]).name}): not downloaded, as loading them could run code.",
                "Choose a repo with .safetensors weights.",
            )
        chosen += weights
    return chosen, variant


# -- the download -------------------------------------------------------------------------------
def _offline_error(repo: str, why: str = "") -> ModelError:
    reason = (
        "the hub is switched off (HF_HUB_OFFLINE is set)"
        if offline()
        else f"the hub at {endpoint()} cannot be reached{': ' + why if why else ''}"
    )
    return ModelError(
        f"{repo} is not in the download cache ({cache_dir()}) and {reason}.",
        "Connect to the internet (and unset HF_HUB_OFFLINE) to download it once; after that it works offline. Or choose a local model.",
    )


def _cached_snapshot(
    repo: str, revision: str | None, subfolder: str | None, only: Sequence[str] | None = None
) -> Path | None:
    """A complete pipeline already in the cache (model_index.json and every component folder present; with
    `only`, those components)."""
    from huggingface_hub import snapshot_download

    _sync_hub_constants()
    try:
        folder = Path(snapshot_download(repo, revision=revision, cache_dir=str(cache_dir()), local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends: simply not cached
        return None
    folder = folder / subfolder if subfolder else folder
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        return None
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for name, value in index.items():
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] and value[1]:
            if name in ("safety_checker", "feature_extractor", "image_encoder") or (only and name not in only):
                continue
            sub = folder / name
            if not sub.is_dir() or not any(sub.iterdir()):
                return None
            if (
                name not in ("scheduler",)
                and not name.startswith("tokenizer")
                and not any(p.suffix == ".safetensors" for p in sub.iterdir())
            ):
                return None
    return folder


SKIPPED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


def _has_token() -> bool:
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except Exception:  # noqa: BLE001 - a broken token file is no token
        return False


def access_error(repo: str, exc: BaseException) -> ModelError | None:
    """The ModelError for a refused download (a gated repo, 401 / 403), saying how to log in; None for other errors.

    FLUX.1 dev / Fill / Kontext and SD 3.5 are gated: the hub lists their files to anyone but sends them only to a
    logged-in user who accepted the license. huggingface_hub raises GatedRepoError for that; a bare 401 / 403
    (an expired token, a mirror) says the same."""
    from huggingface_hub.errors import GatedRepoError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if not isinstance(exc, GatedRepoError) and status not in (401, 403):
        return None
    pick = curated(repo)
    name = pick.name if pick else repo
    if _has_token():
        message = (
            f"The hub refused {name} ({repo}) to your token (HTTP {status or 403}): it is gated, and the account of "
            "the token has not accepted its license, or the token has no read access."
        )
    else:
        message = f"{name} ({repo}) is gated: the hub sends it only to a logged-in user who accepted its license."
    return ModelError(message, gated_hint(repo))


def download_model(
    repo: str,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    progress: OnProgress | None = None,
    cancel: threading.Event | None = None,
    prefer_fp16: bool = False,
    timeout: float = 30.0,
    only: Sequence[str] | None = None,
) -> Path:
    """The local folder of a hub pipeline, downloading what is missing. ModelError when offline and not cached.

    `only`: just these components (and model_index.json), e.g. the text encoders, tokenizers and VAE of
    FLUX.1 schnell for a transformer file (engine.flow_files.PARTS): 10 GB instead of 34."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    _sync_hub_constants()
    if offline():
        folder = _cached_snapshot(repo, revision, subfolder, only)
        if folder is None:
            raise _offline_error(repo)
        return folder
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    api = HfApi(endpoint=endpoint())
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True, timeout=timeout)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        refused = access_error(repo, exc) if isinstance(exc, GatedRepoError) else None
        if refused is not None:
            raise refused from exc
        raise ModelError(
            f"{repo} was not found on the hub (or is private).",
            "Check the repo id; for a private repo log in first (`hf auth login` or HF_TOKEN).",
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelError(f"{repo} has no revision {revision!r}.", "Check the branch, tag or commit.") from exc
    except Exception as exc:  # noqa: BLE001 - connection errors of every library layer
        folder = _cached_snapshot(repo, revision, subfolder, only)
        if folder is not None:
            return folder
        raise _offline_error(repo, f"{type(exc).__name__}") from exc
    files = {s.rfilename: int(s.size or 0) for s in (info.siblings or [])}
    if prefix + "model_index.json" not in files:
        raise ModelError(
            f"{repo}{'/' + subfolder if subfolder else ''} is not a diffusers pipeline (it has no model_index.json).",
            "Give the repo of a diffusers model, or download a single .safetensors file and open it.",
        )
    revision = revision or "main"
    tracker = _Tracker(files[prefix + "model_index.json"], 1, progress, cancel)
    try:
        index_path = fetch_file(repo, prefix + "model_index.json", revision, tracker, timeout)
        index = json.loads(index_path.read_text(encoding="utf-8"))
        index = {
            k: v
            for k, v in index.items()
            if k not in SKIPPED_COMPONENTS and (not only or k.startswith("_") or k in only)
        }
        wanted, _variant = select_files(files, index, prefix, prefer_fp16)
        tracker.total = sum(files.get(p, 0) for p in wanted)
        tracker.files_total = len(wanted)
        tracker.files_done = 1
        tracker.done = files[prefix + "model_index.json"]
        tracker.add(0, fresh=False, force=True)
        for path in wanted[1:]:
            tracker.file = path
            before = tracker.done
            fetch_file(repo, path, revision, tracker, timeout)
            tracker.files_done += 1
            # a file already in the cache reports no bytes: count it now
            tracker.add(max(files.get(path, 0) - (tracker.done - before), 0), fresh=False, force=True)
    except (DownloadCancelled, ModelError):
        raise
    except GatedRepoError as exc:  # the files of a gated repo, without a login or the license accepted
        raise access_error(repo, exc) or ModelError(str(exc)[:300], gated_hint(repo)) from exc
    except (EntryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelError(
            f"{repo}: {exc}".splitlines()[0][:300], "The repo changed while downloading: try again."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - network drop mid-file: resumable
        refused = access_error(repo, exc)  # a 401 / 403 on a file
        if refused is not None:
            raise refused from exc
        raise ModelError(
            f"The download of {repo} stopped: {type(exc).__name__}: {exc}".splitlines()[0][:300],
            "Check your connection and try again: it resumes where it stopped.",
        ) from exc
    folder = index_path.parent
    return folder


def fetch_file(repo: str, filename: str, revision: str, tracker: _Tracker, timeout: float = 30.0) -> Path:
    """One file into the hub cache layout (blobs/<etag>, snapshots/<commit>/<file>, refs/<revision>), resumable.

    huggingface_hub >= 1.x deletes a partial file when a download stops; we keep
    `blobs/<etag>.incomplete` and continue it with an HTTP Range request.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import _create_symlink, repo_folder_name
    from huggingface_hub.utils import build_hf_headers, get_session

    tracker.check()
    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint())
    meta = get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint())
    if not meta.etag or not meta.commit_hash:
        raise ModelError(
            f"The hub sent no version information for {filename}.", "Try again later, or check HF_ENDPOINT."
        )
    storage = cache_dir() / repo_folder_name(repo_id=repo, repo_type="model")
    blob = storage / "blobs" / meta.etag
    pointer = storage / "snapshots" / meta.commit_hash / filename
    if revision != meta.commit_hash:
        ref = storage / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text().strip() != meta.commit_hash:
            ref.write_text(meta.commit_hash)
    if pointer.exists():
        return pointer
    blob.parent.mkdir(parents=True, exist_ok=True)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        partial = blob.with_name(blob.name + ".incomplete")
        have = partial.stat().st_size if partial.exists() else 0
        if meta.size is not None and have > meta.size:
            partial.unlink()
            have = 0
        if have:
            tracker.add(have, fresh=False)
        headers = build_hf_headers()
        headers["Accept-Encoding"] = "identity"
        if have:
            headers["Range"] = f"bytes={have}-"
        with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout) as response:
            if response.status_code == 416 and meta.size == have:  # already complete
                pass
            else:
                response.raise_for_status()
                mode = "ab" if have and response.status_code == 206 else "wb"
                if mode == "wb" and have:
                    tracker.add(-have, fresh=False)  # the server ignored the Range: start over
                with open(partial, mode) as fh:
                    for chunk in response.iter_bytes():  # as it arrives: a drop loses nothing already received
                        fh.write(chunk)
                        tracker.add(len(chunk))
        size = partial.stat().st_size
        if meta.size is not None and size != meta.size:
            raise ModelError(
                f"{filename}: got {size} of {meta.size} bytes.", "Try again: the download resumes where it stopped."
            )
        os.replace(partial, blob)
    try:
        _create_symlink(str(blob), str(pointer), new_blob=False)
    except OSError:
        import shutil

        shutil.copyfile(blob, pointer)
    return pointer


def weights_variant(folder: Path) -> str | None:
    """'fp16' when a downloaded pipeline has only fp16-variant weights (from_pretrained must be told)."""
    unet = folder / "unet"
    if not unet.is_dir():
        return None
    names = [p.name for p in unet.iterdir()]
    has_plain = any(n.endswith(".safetensors") and _variant_of(n) is None for n in names)
    has_fp16 = any(n.endswith(".safetensors") and _variant_of(n) == "fp16" for n in names)
    return "fp16" if has_fp16 and not has_plain else None


def progress_to_events(emit) -> OnProgress | None:
    """Download progress as the engine's Progress events (phase 'download': step/total are bytes)."""
    if emit is None:
        return None

    def on_progress(p: DownloadProgress) -> None:
        emit(Progress(p.done_bytes, max(p.total_bytes, 1), 0, p.rate, p.eta_seconds, "download"))

    return on_progress


def download_with_console_progress(
    repo_id: str, *, prefer_fp16: bool = False, stream=None, only: Sequence[str] | None = None
) -> Path:
    """`diffusion-desk models --download REPO[@REV][:SUB]`: one updating line of bytes, rate and ETA; Ctrl+C cancels (resumable)."""
    import sys

    out = stream or sys.stderr
    match = HUB_ID.fullmatch(repo_id.strip())
    if match is None:
        raise ModelError(f"{repo_id!r} is not a hub id.", "Use owner/name, optionally @revision and :subfolder.")

    def show(p: DownloadProgress) -> None:
        out.write(
            f"\r{format_size(p.done_bytes)} / {format_size(p.total_bytes)}  {format_size(p.rate)}/s  ETA {p.eta_seconds:4.0f} s  "
            f"({p.files_done}/{p.files_total} files)   "
        )
        out.flush()

    folder = download_model(
        match["repo"],
        revision=match["revision"],
        subfolder=match["subfolder"],
        progress=show,
        prefer_fp16=prefer_fp16,
        only=only,
    )
    out.write("\n")
    return folder
