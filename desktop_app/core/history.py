"""The local history of everything made: SQLite (WAL, FTS5, numbered migrations) + atomically written PNGs.

Layout under the history folder (``paths.history_dir()`` unless given)::

    history.db                        one SQLite database, WAL mode
    images/2026-11-28/<uid>.png       the image (one folder a day, UTC), with its A1111 ``parameters`` and our ``diffusion_desk`` chunk
    images/2026-11-28/src-<hash>.png  source image of an img2img / inpaint / edit (shared, content-addressed)
    images/2026-11-28/mask-<hash>.png its mask
    thumbs/2026-11-28/<uid>.jpg       thumbnail (derived; rebuilt when missing)
    unindexed/                        PNGs found in images/ that carry no readable metadata, set aside
    favourites.txt                    the favourites' uids (a rebuild from the images keeps them)

Crash safety. Saving writes each file to a temporary file in the same folder
(``.<name>.<pid>.tmp``), flushes and fsyncs it, moves it into place with
``os.replace``, fsyncs the folder, and only then inserts the rows in one
transaction. A crash at any point leaves either a complete entry or none: a
temporary file is removed at the next start (once its writer is gone), an image
without a row is adopted from its embedded metadata (its ``diffusion_desk``
chunk holds everything the row holds), and a row is never written before its
image. Deleting marks the rows' uids in ``tombstones`` in the same transaction
that deletes the rows, so files left by a crash mid-delete are removed, not
re-adopted.

Start-up check. Opening runs SQLite's quick_check and `check()`, which rescans
only the day folders whose mtime changed since their last clean check (today's,
after a session that saved something), so opening stays fast with 10,000 entries;
``check(full=True)`` rescans everything.

Adopted images are not trusted: anyone can copy a PNG into images/. The source and mask its metadata names
are kept only when they are content-addressed files of this store (``images/<day>/src-<digest>.png``, a plain
file whose pixels have that digest); anything else is dropped with a notice (`CheckReport.dropped`). Deleting
and exporting touch only the store's own plain files (`HistoryStore.owned`).

Read-only and full. A read-only folder, or a disk too full to open the database for writing, opens the history
read-only (``read_only_reason``): it lists and searches, and every change raises a HistoryError saying what is
read-only or how much space is needed. The open-time check writes only when it has something to write, and
leaves what it cannot write for later. Every transaction goes through `_transaction`, whose ROLLBACK never hides
the error that caused it (SQLite has already rolled back on SQLITE_FULL).

Two processes on one folder: SQLite's WAL and busy timeout serialise writers;
write transactions are ``BEGIN IMMEDIATE``; rows are keyed by a unique uid, so
an image adopted by one process while its writer commits is inserted once.

Plain data: no Qt, no torch.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import sqlite3
import stat
import sys
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from desktop_app.core.errors import HistoryError, UserError
from desktop_app.core.images import save_png
from desktop_app.core.infotext import MetadataError, png_info, read_png_metadata
from desktop_app.core.requests import GenerateRequest

log = logging.getLogger(__name__)

DB_NAME = "history.db"
FAVOURITES_NAME = "favourites.txt"  # the favourites' uids, one a line: a rebuild from the images keeps them
THUMB_SIZE = 256
BUSY_TIMEOUT_MS = 10_000
TEMP_GRACE_S = 3600  # a temporary file this old is stale even if its pid is taken
SOURCE_GRACE_S = 3600  # an unreferenced source image may belong to a save in progress
KINDS = ("generate", "img2img", "inpaint", "edit")

# Test seam: called with "temp_written", "replaced", "committed" as a save passes each stage,
# and "rows_deleted" between a deletion's commit and the removal of its files.
_fault_hook: Callable[[str], None] | None = None


def _stage(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)


# --------------------------------------------------------------------------- schema

# Each migration is a list of statements run in one transaction; user_version counts them.
MIGRATIONS: list[list[str]] = [
    # 1: entries
    [
        """CREATE TABLE entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uid TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            kind TEXT NOT NULL,
            request_json TEXT NOT NULL,
            prompt TEXT NOT NULL DEFAULT '',
            negative_prompt TEXT NOT NULL DEFAULT '',
            model_id TEXT NOT NULL DEFAULT '',
            seed INTEGER,
            image_path TEXT NOT NULL,
            thumb_path TEXT,
            parent_id INTEGER REFERENCES entries(id) ON DELETE SET NULL,
            favourite INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX entries_created ON entries(created_at DESC, id DESC)",
    ],
    # 2: model hash, timing, size, replay sources; tombstones for crash-safe deletion
    [
        "ALTER TABLE entries ADD COLUMN model_hash TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE entries ADD COLUMN elapsed REAL",
        "ALTER TABLE entries ADD COLUMN width INTEGER",
        "ALTER TABLE entries ADD COLUMN height INTEGER",
        "ALTER TABLE entries ADD COLUMN source_path TEXT",
        "ALTER TABLE entries ADD COLUMN mask_path TEXT",
        """UPDATE entries SET
            width = json_extract(request_json, '$.width'),
            height = json_extract(request_json, '$.height')""",
        "CREATE INDEX entries_kind ON entries(kind, created_at DESC)",
        "CREATE INDEX entries_favourite ON entries(created_at DESC) WHERE favourite = 1",
        "CREATE INDEX entries_parent ON entries(parent_id)",
        "CREATE TABLE tombstones (uid TEXT PRIMARY KEY, deleted_at REAL NOT NULL)",
    ],
    # 3: full-text search over prompt and negative prompt
    [
        """CREATE VIRTUAL TABLE entries_fts USING fts5(
            prompt, negative_prompt, content='entries', content_rowid='id', tokenize='unicode61'
        )""",
        """CREATE TRIGGER entries_fts_insert AFTER INSERT ON entries BEGIN
            INSERT INTO entries_fts(rowid, prompt, negative_prompt) VALUES (new.id, new.prompt, new.negative_prompt);
        END""",
        """CREATE TRIGGER entries_fts_delete AFTER DELETE ON entries BEGIN
            INSERT INTO entries_fts(entries_fts, rowid, prompt, negative_prompt)
            VALUES ('delete', old.id, old.prompt, old.negative_prompt);
        END""",
        """CREATE TRIGGER entries_fts_update AFTER UPDATE OF prompt, negative_prompt ON entries BEGIN
            INSERT INTO entries_fts(entries_fts, rowid, prompt, negative_prompt)
            VALUES ('delete', old.id, old.prompt, old.negative_prompt);
            INSERT INTO entries_fts(rowid, prompt, negative_prompt) VALUES (new.id, new.prompt, new.negative_prompt);
        END""",
        "INSERT INTO entries_fts(entries_fts) VALUES ('rebuild')",
    ],
    # 4: incremental start-up check (a day folder whose mtime is unchanged since a clean check is not rescanned)
    [
        "CREATE TABLE folder_state (folder TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL, checked_at REAL NOT NULL)",
        "CREATE INDEX entries_image ON entries(image_path)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "id, uid, created_at, kind, request_json, prompt, negative_prompt, model_id, model_hash, seed,"
    " image_path, thumb_path, parent_id, favourite, elapsed, width, height, source_path, mask_path"
)
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_FULL_CODE = 13  # SQLITE_FULL
_READONLY_CODE = 8  # SQLITE_READONLY
_IOERR_CODE = 10  # SQLITE_IOERR ("disk I/O error": on a full disk, some writes fail this way)
_CANTOPEN_CODE = 14  # SQLITE_CANTOPEN
_LOW_SPACE = 1 << 20  # an I/O error with less free space than this is a full disk
# The only files an entry may name as its source or mask: content-addressed images this store wrote.
_SOURCE_RE = re.compile(r"^images/(\d{4}-\d{2}-\d{2})/(src|mask)-([0-9a-f]{20})\.png$")
_IMAGE_RE = re.compile(r"^images/[^/\\]+/[^/\\]+\.png$")
_THUMB_RE = re.compile(r"^thumbs/[^/\\]+/[^/\\]+\.jpg$")
_UID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,99}$")
_MAX_TIME = 253402300799.0  # 9999-12-31: a later created_at cannot be shown as a date
_INT64 = (-(1 << 63), (1 << 63) - 1)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Entry:
    """One image in the history."""

    id: int
    uid: str
    created_at: float  # seconds since the epoch, UTC
    kind: str
    request: dict[str, Any]  # the request of this image (its seed, batch 1), without embedded images
    prompt: str
    negative_prompt: str
    model_id: str
    model_hash: str
    seed: int | None
    image_path: Path
    thumbnail_path: Path | None
    parent_id: int | None
    favourite: bool
    elapsed: float | None
    width: int | None
    height: int | None
    source_path: Path | None = None
    mask_path: Path | None = None

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.created_at, tz=timezone.utc)

    @property
    def exists(self) -> bool:
        return self.image_path.is_file()

    def to_request(self) -> GenerateRequest:
        """The request, without its source image and mask (see `HistoryService.load_request`)."""
        return GenerateRequest.from_dict(self.request)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("image_path", "thumbnail_path", "source_path", "mask_path"):
            out[key] = str(out[key]) if out[key] is not None else None
        out["created"] = self.created.isoformat(timespec="seconds")
        return out


@dataclass
class CheckReport:
    """What `HistoryService.check` found and did."""

    adopted: list[Entry] = field(default_factory=list)  # images without a row, re-indexed from their metadata
    removed: list[Path] = field(default_factory=list)  # temporary files, leftovers of deletions
    set_aside: list[Path] = field(default_factory=list)  # unreadable images moved to unindexed/
    missing: list[Entry] = field(default_factory=list)  # rows whose image file is gone (kept, not dropped)
    # references an adopted image made to files the store did not write (its source or mask): not kept
    dropped: list[str] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # images without a row left for later (read-only, disk full)
    deferred: str = ""  # why some of the check's writes were left for later

    @property
    def clean(self) -> bool:
        return not (self.adopted or self.removed or self.set_aside or self.missing or self.dropped or self.skipped)

    def message(self) -> str:
        parts = []
        if self.adopted:
            parts.append(f"{len(self.adopted)} image(s) found without an entry were added back")
        if self.dropped:
            n = len(self.dropped)
            parts.append(
                f"{n} source or mask reference(s) of added-back images named files the history did not write and "
                "were dropped"
            )
        if self.set_aside:
            parts.append(f"{len(self.set_aside)} unreadable image(s) were moved to the 'unindexed' folder")
        if self.missing:
            n = len(self.missing)
            parts.append("1 entry has lost its image file" if n == 1 else f"{n} entries have lost their image files")
        if self.removed:
            parts.append(f"{len(self.removed)} leftover file(s) were cleaned up")
        if self.skipped:
            parts.append(f"{len(self.skipped)} image(s) without an entry will be added back later ({self.deferred})")
        return "; ".join(parts) + "." if parts else ""


class HistoryService(ABC):
    """What the UI, CLI and worker need from a history (InvokeAI-style service interface)."""

    recovery_message: str | None = None

    @abstractmethod
    def add(self, result: Any, parent_id: int | None = None) -> builtins.list[Entry]:
        """Save every image of a `core.events.Result`; one entry per image, newest last."""

    @abstractmethod
    def get(self, entry_id: int) -> Entry:
        """The entry, or HistoryError if there is none."""

    @abstractmethod
    def list(
        self,
        offset: int = 0,
        limit: int = 100,
        search: str | None = None,
        kind: str | Sequence[str] | None = None,
        favourite: bool | None = None,
    ) -> builtins.list[Entry]:
        """Entries newest first."""

    @abstractmethod
    def count(
        self, search: str | None = None, kind: str | Sequence[str] | None = None, favourite: bool | None = None
    ) -> int: ...

    @abstractmethod
    def set_favourite(self, ids: int | Iterable[int], favourite: bool = True) -> None: ...

    @abstractmethod
    def delete(self, ids: int | Iterable[int], to_trash: bool = False) -> builtins.list[Entry]:
        """Remove entries and their files (to the desktop trash if asked); returns what was deleted."""

    @abstractmethod
    def load_request(self, entry_id: int) -> GenerateRequest:
        """The entry's request with its source image and mask, ready to run again."""

    @abstractmethod
    def check(self, full: bool = False) -> CheckReport: ...

    @abstractmethod
    def close(self) -> None: ...


# --------------------------------------------------------------------------- file helpers


def _fsync_dir(path: Path) -> None:
    if sys.platform == "win32":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")


def _atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path`: temporary file in the same folder, fsync, os.replace."""
    tmp = _temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if durable:
            _stage("temp_written")
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill(pid, 0) would send CTRL_C; rely on age instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _encode_png(image: Image.Image, pnginfo: Any = None) -> bytes:
    buf = io.BytesIO()
    save_png(image, buf, pnginfo, compress_level=4)
    return buf.getvalue()


def _encode_thumb(image: Image.Image) -> bytes:
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _image_digest(image: Image.Image) -> str:
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:20]


def _finite(value: Any, low: float, high: float) -> float | None:
    """`value` as a float when it is a number within [low, high] (metadata may hold NaN, 1e400, "x", true)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and low <= number <= high else None


def _default_root() -> Path:
    """The data folder's history folder; its path even when it cannot be created (a read-only data folder)."""
    from desktop_app.core import paths

    try:
        return paths.history_dir()
    except OSError as exc:
        root = paths._root()  # noqa: SLF001 - history_dir() without its mkdir
        log.warning("history: cannot create the history folder: %s", exc)
        if root is not None:
            return root / "history"
        import platformdirs

        return Path(platformdirs.user_data_dir(paths.APP_NAME, appauthor=False)) / "history"


def _new_uid(now: float) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{secrets.token_hex(6)}"


def _sqlite_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc).lower()  # Python 3.10 has no sqlite_errorcode
    if "disk is full" in text:
        return _FULL_CODE
    if "readonly database" in text or "read-only" in text:
        return _READONLY_CODE
    if "disk i/o error" in text:
        return _IOERR_CODE
    if "unable to open database" in text:
        return _CANTOPEN_CODE
    return None


def _free_space(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _fault(exc: BaseException, folder: Path) -> str | None:
    """'full', 'readonly' or 'locked' when `exc` is one of those, else None."""
    code = _sqlite_code(exc) if isinstance(exc, sqlite3.Error) else None
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "full"
    if code == _FULL_CODE:
        return "full"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "readonly"
    if code == _READONLY_CODE:
        return "readonly"
    if code in (_IOERR_CODE, _CANTOPEN_CODE) or (isinstance(exc, OSError) and exc.errno == errno.EIO):
        free = _free_space(folder)
        if free is not None and free < _LOW_SPACE:
            return "full"
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
        return "locked"
    return None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} bytes"


def _full_message(folder: Path, what: str, needed: int) -> tuple[str, str]:
    free = _free_space(folder)
    room = f"{_size(free)} free, " if free is not None else ""
    return (
        f"The disk is full: {what} (the history folder {folder} has {room}about {_size(needed)} is needed).",
        f"Free at least {_size(needed)} on that disk, then try again.",
    )


def _readonly_message(folder: Path, what: str) -> tuple[str, str]:
    return (
        f"The history folder {folder} is read-only: {what}.",
        "Make the folder writable, or choose another data folder with --data-dir; the history can still be browsed.",
    )


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT; on an error, ROLLBACK if SQLite has not already rolled back (it does on
    SQLITE_FULL), and the original error goes on: a failing ROLLBACK never hides it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("history: rollback failed after an error: %s", exc)
        raise


_WHAT = {
    "set_favourite": "favourites cannot be changed",
    "delete": "entries cannot be deleted",
    "check": "the check cannot finish",
    "add": "the result was not saved to the history",
}


def _db_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """SQLite errors out of a public method become HistoryError (a UserError the UI shows)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            log.error("history: %s failed: %s", method.__name__, exc)
            raise self._db_error(exc, _WHAT.get(method.__name__, "the history cannot be changed")) from exc

    return wrapper


# --------------------------------------------------------------------------- the store


class HistoryStore(HistoryService):
    """SQLite + files implementation of `HistoryService`. Safe to share between threads."""

    def __init__(self, root: str | os.PathLike | None = None, *, check: bool = True) -> None:
        if root is None:
            root = _default_root()
        self.root = Path(root).expanduser().resolve()
        self.db_path = self.root / DB_NAME
        self.images_dir = self.root / "images"
        self.thumbs_dir = self.root / "thumbs"
        self.unindexed_dir = self.root / "unindexed"
        self.favourites_path = self.root / FAVOURITES_NAME
        self.recovery_message: str | None = None
        self.last_check: CheckReport | None = None
        # Why the history cannot be changed now (a read-only folder, a full disk), or None: it can still be read.
        self.read_only_reason: str | None = None
        self._read_only_kind: str | None = None  # "readonly" or "full"
        self._lock = threading.RLock()
        self._listeners: builtins.list[Callable[[str, Any], None]] = []
        self._conn: sqlite3.Connection | None = self._open()
        if check:
            self.check()

    @property
    def read_only(self) -> bool:
        return self.read_only_reason is not None

    # -- opening, migrations, recovery ----------------------------------------
    def _open(self) -> sqlite3.Connection:
        """The connection: read-write when the folder and the disk allow it, else read-only (see read_only_reason)."""
        self.read_only_reason = self._read_only_kind = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.images_dir.mkdir(exist_ok=True)
            self.thumbs_dir.mkdir(exist_ok=True)
            self._probe_writable()
        except OSError as exc:
            kind = _fault(exc, self.root)
            if kind not in ("readonly", "full"):
                raise HistoryError(
                    f"Cannot create the history folder {self.root}: {exc}", "Check the data folder's permissions."
                ) from exc
            self._set_read_only(kind)
            return self._open_read_only()
        try:
            return self._open_checked()
        except HistoryError as error:
            kind = _fault(error.__cause__, self.root) if error.__cause__ is not None else None
            if kind not in ("readonly", "full"):
                raise
            self._set_read_only(kind)
            return self._open_read_only()

    def _set_read_only(self, kind: str | None) -> None:
        self._read_only_kind = kind
        if kind == "full":
            self.read_only_reason = _full_message(self.root, "the history can be read but not changed", _LOW_SPACE)[0]
        else:
            where = self.root if self.root.is_dir() else self.root.parent
            self.read_only_reason = (
                f"The history folder {self.root} is read-only: it can be browsed, but nothing new is saved to it."
                if self.root.is_dir()
                else f"The data folder {where} is read-only: the history cannot be created there."
            )
        log.warning("history: %s", self.read_only_reason)

    def _probe_writable(self) -> None:
        """Raise OSError when the folder or the database cannot be written (os.access is no use as root)."""
        probe = self.root / f".write-test.{os.getpid()}.{secrets.token_hex(3)}.tmp"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
        if self.db_path.exists():
            os.close(os.open(self.db_path, os.O_RDWR))

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        """Open for reading only (nothing is written: no -shm, no migration on disk). A database of an older
        schema is copied into memory and migrated there; no database at all reads as an empty history."""
        memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        if not self.db_path.is_file():
            self._migrate(memory)
            return memory
        base = "file:" + urllib.parse.quote(str(self.db_path)) + "?mode=ro"
        conn: sqlite3.Connection | None = None
        error: sqlite3.Error | None = None
        for uri in (base, base + "&immutable=1"):  # immutable: when the -shm file cannot be made
            try:
                conn = sqlite3.connect(
                    uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
                )
                self._verify(conn)
                break
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                    conn = None
                error = exc
                if self._is_corruption(exc):
                    break
        if conn is None:
            assert error is not None
            if self._is_corruption(error):
                raise HistoryError(
                    f"The history database is damaged ({error}) and cannot be rebuilt: {self.read_only_reason}",
                    "Make the folder writable (or free some disk space) and start again; it is then rebuilt from "
                    "the images.",
                ) from error
            raise HistoryError(
                f"Cannot read the history database: {error}. {self.read_only_reason}", f"Check {self.db_path}."
            ) from error
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            self._migrate(memory)  # raises the newer-schema error
        if version < SCHEMA_VERSION:
            conn.backup(memory)
            conn.close()
            self._migrate(memory)
            return memory
        memory.close()
        conn.execute("PRAGMA query_only = 1")
        return conn

    def _open_checked(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            self._verify(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
            return conn
        except sqlite3.DatabaseError as exc:
            if not self._is_corruption(exc):
                if conn is not None:
                    conn.close()
                raise HistoryError(f"Cannot open the history database: {exc}", f"Check {self.db_path}.") from exc
            if conn is not None:
                conn.close()
            return self._recover(str(exc))
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    @staticmethod
    def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return (code & 0xFF) in _CORRUPT_CODES
        return not isinstance(exc, sqlite3.OperationalError)

    def _verify(self, conn: sqlite3.Connection) -> None:
        """Raise sqlite3.DatabaseError (SQLITE_CORRUPT) when the file is damaged."""
        rows = conn.execute("PRAGMA quick_check(1)").fetchall()
        if rows and rows[0][0] != "ok":
            error = sqlite3.DatabaseError(f"integrity check failed: {rows[0][0]}")
            error.sqlite_errorcode = 11  # type: ignore[attr-defined]
            raise error

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"The history database is from a newer Diffusion Desk (schema {version}, this one knows {SCHEMA_VERSION}).",
                "Update Diffusion Desk, or use another data folder with --data-dir.",
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with _transaction(conn):
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current < number:  # another process may have migrated meanwhile
                    for statement in MIGRATIONS[number - 1]:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")
            log.info("history: migrated %s to schema %d", self.db_path, number)

    def _recover(self, reason: str) -> sqlite3.Connection:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup = self.db_path.with_name(f"{DB_NAME}.corrupt-{stamp}")
        n = 1
        while backup.exists():
            n += 1
            backup = self.db_path.with_name(f"{DB_NAME}.corrupt-{stamp}-{n}")
        try:
            os.replace(self.db_path, backup)
            for suffix in ("-wal", "-shm"):
                side = self.db_path.with_name(DB_NAME + suffix)
                if side.exists():
                    if suffix == "-wal":
                        os.replace(side, backup.with_name(backup.name + suffix))
                    else:
                        side.unlink()
        except OSError as exc:
            raise HistoryError(
                f"The history database is damaged ({reason}) and could not be moved aside: {exc}",
                f"Move {self.db_path} away by hand and start again.",
            ) from exc
        log.error("history: %s is damaged (%s); kept as %s, starting a new one", self.db_path, reason, backup)
        conn = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._migrate(conn)
        self._conn = conn
        report = self.check(full=True, verify=False)
        self.recovery_message = (
            f"The history database was damaged ({reason}). It was kept as {backup.name} and a new one was "
            f"built from the images in the history folder: {len(report.adopted)} entr"
            f"{'y' if len(report.adopted) == 1 else 'ies'} recovered."
        )
        return conn

    # -- what cannot be written -----------------------------------------------------------
    def _require_writable(self, what: str) -> None:
        """Raise HistoryError when the history is read-only (a read-only folder, a full disk), after one try to
        open it for writing again (the user may have freed space or changed the folder's permissions)."""
        if self.read_only_reason is None:
            return
        kind = self._read_only_kind
        with self._lock:
            try:
                conn = self._open()
            except (HistoryError, OSError, sqlite3.Error) as exc:
                log.warning("history: still cannot open for writing: %s", exc)
                self._set_read_only(kind)
                conn = None
            if conn is not None:
                old, self._conn = self._conn, conn
                if old is not None:
                    old.close()
        if self.read_only_reason is None:
            return
        if self._read_only_kind == "full":
            raise HistoryError(*_full_message(self.root, what, _LOW_SPACE))
        raise HistoryError(*_readonly_message(self.root, what))

    def _save_error(self, exc: BaseException, needed: int) -> HistoryError:
        kind = _fault(exc, self.root)
        if kind == "full":
            message, hint = _full_message(self.root, "the result was not saved to the history", needed)
            return HistoryError(message, hint + " The result stays in memory: Retry, or save it elsewhere.")
        if kind == "readonly":
            message, hint = _readonly_message(self.root, "the result was not saved to it")
            return HistoryError(message, "The result stays in memory: save it elsewhere. " + hint)
        if kind == "locked":
            return HistoryError(
                "The history is busy (another Diffusion Desk is writing to it): the result was not saved.",
                "Try again in a moment; the image stays open.",
            )
        return HistoryError(f"Could not save to the history: {exc}", "The image stays open; save it with Save as.")

    def _db_error(self, exc: BaseException, what: str = "the history cannot be changed") -> HistoryError:
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and (code & 0xFF) in _CORRUPT_CODES:
            return HistoryError(
                f"The history database is damaged ({exc}).",
                "Restart Diffusion Desk: it keeps the damaged file aside and rebuilds the history from the images.",
            )
        kind = _fault(exc, self.root)
        if kind == "full":
            return HistoryError(*_full_message(self.root, what, _LOW_SPACE))
        if kind == "readonly":
            return HistoryError(*_readonly_message(self.root, what))
        if kind == "locked":
            return HistoryError(
                "The history is busy (another Diffusion Desk is writing to it).", "Try again in a moment."
            )
        return HistoryError(
            f"The history database failed: {exc}", "Restart Diffusion Desk; if it persists, run 'history check --full'."
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- listeners ---------------------------------------------------------------
    def subscribe(self, callback: Callable[[str, Any], None]) -> Callable[[], None]:
        """Call `callback(event, data)` after changes: ("added", [Entry]), ("deleted", [ids]),
        ("changed", [Entry]). Called on the thread that made the change. Returns an unsubscribe function."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def _notify(self, event: str, data: Any) -> None:
        for callback in builtins.list(self._listeners):
            try:
                callback(event, data)
            except Exception:  # noqa: BLE001 - a listener must not break saving
                log.exception("history listener failed")

    # -- paths ---------------------------------------------------------------------
    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _abs(self, rel: str | None) -> Path | None:
        return (self.root / rel) if rel else None

    def _source_abs(self, rel: Any) -> Path | None:
        """A row's source or mask, only when it names a content-addressed file of this store (older versions
        adopted any path an image's metadata named: such rows lose the reference, never point outside)."""
        return self.root / rel if isinstance(rel, str) and _SOURCE_RE.match(rel) else None

    def owned(self, path: Path | None) -> bool:
        """Whether `path` is a regular file of this store (under images/ or thumbs/, not a link): the only files
        the store deletes or exports."""
        if path is None:
            return False
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            return False
        if not rel.parts or rel.parts[0] not in ("images", "thumbs") or ".." in rel.parts:
            return False
        try:
            info = os.lstat(path)
            parent = Path(path).parent.resolve()
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode) and parent.is_relative_to(self.root)

    def _entry(self, row: Sequence[Any]) -> Entry:
        try:
            request = json.loads(row[4])
        except ValueError:
            request = {}
        return Entry(
            id=row[0],
            uid=row[1],
            created_at=row[2],
            kind=row[3],
            request=request,
            prompt=row[5],
            negative_prompt=row[6],
            model_id=row[7],
            model_hash=row[8] or "",
            seed=row[9],
            image_path=self.root / row[10]
            if isinstance(row[10], str) and _IMAGE_RE.match(row[10])
            else self.images_dir / "invalid" / f"{row[1]}.png",
            thumbnail_path=self._abs(row[11]) if isinstance(row[11], str) and _THUMB_RE.match(row[11]) else None,
            parent_id=row[12],
            favourite=bool(row[13]),
            elapsed=row[14],
            width=row[15],
            height=row[16],
            source_path=self._source_abs(row[17]),
            mask_path=self._source_abs(row[18]),
        )

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise HistoryError("The history is closed.", "Open it again.")
        return self._conn

    # -- saving ----------------------------------------------------------------------
    def _write_source(self, folder: Path, prefix: str, image: Image.Image | None) -> tuple[Path, bytes | None] | None:
        """Where the source (or mask) goes, with its PNG bytes when that file is not there yet."""
        if image is None:
            return None
        path = folder / f"{prefix}-{_image_digest(image)}.png"
        if path.exists():
            try:
                os.utime(path)  # fresh mtime: check() in another process leaves it alone
                return path, None
            except OSError:
                pass
        return path, _encode_png(image)

    @_db_errors
    def add(self, result: Any, parent_id: int | None = None) -> builtins.list[Entry]:
        if not result.images:
            raise HistoryError("The result has no images to save.", "Run the job again.")
        self._require_writable("the result was not saved to it")
        request = result.request
        now = time.time()
        folder_name = time.strftime("%Y-%m-%d", time.gmtime(now))
        images_dir = self.images_dir / folder_name
        thumbs_dir = self.thumbs_dir / folder_name
        created: builtins.list[Path] = []
        rows = []
        parent_uid = None
        if parent_id is not None:
            with self._lock:
                found = self._db().execute("SELECT uid FROM entries WHERE id = ?", (parent_id,)).fetchone()
            parent_uid, parent_id = (found[0], parent_id) if found else (None, None)
        # Everything is encoded first: the space it needs is known before the first byte is written.
        files: builtins.list[tuple[Path, bytes, bool]] = []  # path, data, durable
        sources: builtins.list[str | None] = []
        for prefix, image in (("src", getattr(request, "image", None)), ("mask", getattr(request, "mask", None))):
            found_source = self._write_source(images_dir, prefix, image)
            if found_source is not None and found_source[1] is not None:
                files.append((found_source[0], found_source[1], True))
            sources.append(self._rel(found_source[0]) if found_source is not None else None)
        source_rel, mask_rel = sources
        for index, image in enumerate(result.images):
            uid = _new_uid(now)
            meta = {
                "uid": uid,
                "created_at": now,
                "parent_uid": parent_uid,
                "source": source_rel,
                "mask": mask_rel,
                "elapsed": result.elapsed,
                "batch_index": index,
                "batch_size": len(result.images),
            }
            info = png_info(result, index, history=meta)
            image_path = images_dir / f"{uid}.png"
            thumb_path = thumbs_dir / f"{uid}.jpg"
            files.append((image_path, _encode_png(image, info), True))
            files.append((thumb_path, _encode_thumb(image), False))
            seed = result.seeds[index] if index < len(result.seeds) else request.seed
            req = request.to_dict(include_images=False)
            req["seed"] = seed
            req["batch"] = 1
            rows.append(
                (
                    uid,
                    now,
                    request.kind,
                    json.dumps(req, ensure_ascii=False),
                    request.prompt or "",
                    request.negative_prompt or "",
                    result.model_id or request.model or "",
                    result.model_hash or "",
                    seed,
                    self._rel(image_path),
                    self._rel(thumb_path),
                    parent_id,
                    result.elapsed,
                    image.width,
                    image.height,
                    source_rel,
                    mask_rel,
                )
            )
        needed = sum(len(data) for _, data, _ in files) + 64 * 1024 * len(rows)  # the rows, their index, the WAL
        try:
            images_dir.mkdir(parents=True, exist_ok=True)
            thumbs_dir.mkdir(parents=True, exist_ok=True)
            for path, data, durable in files:
                _atomic_write(path, data, durable=durable)
                created.append(path)
            _fsync_dir(images_dir)
            _stage("replaced")
            with self._lock, _transaction(self._db()) as conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO entries (uid, created_at, kind, request_json, prompt, negative_prompt,"
                    " model_id, model_hash, seed, image_path, thumb_path, parent_id, elapsed, width, height,"
                    " source_path, mask_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            _stage("committed")
        except (OSError, sqlite3.Error) as exc:
            for path in reversed(created):
                try:
                    path.unlink()
                except OSError:
                    pass
            log.error("history: saving failed: %s", exc)
            raise self._save_error(exc, needed) from exc
        entries = self._by_uids([row[0] for row in rows])
        self._notify("added", entries)
        return entries

    def _by_uids(self, uids: Sequence[str]) -> builtins.list[Entry]:
        if not uids:
            return []
        with self._lock:
            marks = ",".join("?" * len(uids))
            found = (
                self._db()
                .execute(f"SELECT {_COLUMNS} FROM entries WHERE uid IN ({marks})", builtins.list(uids))
                .fetchall()
            )
        by_uid = {row[1]: self._entry(row) for row in found}
        return [by_uid[uid] for uid in uids if uid in by_uid]

    # -- reading ---------------------------------------------------------------------------
    @_db_errors
    def get(self, entry_id: int) -> Entry:
        with self._lock:
            row = self._db().execute(f"SELECT {_COLUMNS} FROM entries WHERE id = ?", (int(entry_id),)).fetchone()
        if row is None:
            raise HistoryError(f"There is no history entry {entry_id}.", "List the entries with 'history list'.")
        return self._entry(row)

    @staticmethod
    def fts_query(text: str) -> str | None:
        """User text -> an FTS5 query: every word must appear (as a prefix); no FTS syntax gets through."""
        words = re.findall(r"\w+", text or "")
        if not words:
            return None
        return " ".join(f'"{w}"*' for w in words[:32])

    def _where(
        self, search: str | None, kind: str | Sequence[str] | None, favourite: bool | None
    ) -> tuple[str, builtins.list[Any]]:
        clauses: builtins.list[str] = []
        args: builtins.list[Any] = []
        query = self.fts_query(search) if search else None
        if query:
            clauses.append("id IN (SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?)")
            args.append(query)
        if kind:
            kinds = [kind] if isinstance(kind, str) else builtins.list(kind)
            clauses.append(f"kind IN ({','.join('?' * len(kinds))})")
            args.extend(kinds)
        if favourite is not None:
            clauses.append("favourite = ?")
            args.append(1 if favourite else 0)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    @_db_errors
    def list(
        self,
        offset: int = 0,
        limit: int = 100,
        search: str | None = None,
        kind: str | Sequence[str] | None = None,
        favourite: bool | None = None,
    ) -> builtins.list[Entry]:
        where, args = self._where(search, kind, favourite)
        sql = f"SELECT {_COLUMNS} FROM entries{where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        with self._lock:
            rows = self._db().execute(sql, [*args, int(limit), int(offset)]).fetchall()
        return [self._entry(row) for row in rows]

    entries = list

    @_db_errors
    def count(
        self, search: str | None = None, kind: str | Sequence[str] | None = None, favourite: bool | None = None
    ) -> int:
        where, args = self._where(search, kind, favourite)
        with self._lock:
            return self._db().execute(f"SELECT count(*) FROM entries{where}", args).fetchone()[0]

    @_db_errors
    def load_request(self, entry_id: int) -> GenerateRequest:
        entry = self.get(entry_id)
        try:
            request = GenerateRequest.from_dict(entry.request)
        except UserError as exc:
            raise HistoryError(
                f"Entry {entry_id} holds a request this version cannot read: {exc.message}", exc.hint
            ) from exc
        from desktop_app.core.images import load_image, load_mask

        changes: dict[str, Any] = {}
        for name, path, loader in (("image", entry.source_path, load_image), ("mask", entry.mask_path, load_mask)):
            if path is None or name not in request.field_names():
                continue
            if not path.is_file():
                raise HistoryError(
                    f"The {'source image' if name == 'image' else 'mask'} of entry {entry_id} is missing ({path}).",
                    "The entry cannot be replayed exactly; open its image instead.",
                )
            changes[name] = loader(path)
        return dataclasses.replace(request, **changes) if changes else request

    def thumbnail(self, entry: Entry) -> Path | None:
        """The entry's thumbnail, rebuilt from its image when missing; None when neither exists."""
        if entry.thumbnail_path is not None and entry.thumbnail_path.is_file():
            return entry.thumbnail_path
        if not entry.image_path.is_file():
            return None
        if self.read_only:
            return entry.image_path  # nothing can be written: the image itself, scaled by whoever shows it
        thumb = entry.thumbnail_path or (self.thumbs_dir / entry.image_path.parent.name / f"{entry.uid}.jpg")
        try:
            with Image.open(entry.image_path) as img:
                data = _encode_thumb(img)
            thumb.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(thumb, data, durable=False)
        except (OSError, ValueError) as exc:
            log.warning("history: cannot rebuild thumbnail of %s: %s", entry.image_path, exc)
            return None
        return thumb

    # -- changing --------------------------------------------------------------------------
    @_db_errors
    def set_favourite(self, ids: int | Iterable[int], favourite: bool = True) -> None:
        ids = [ids] if isinstance(ids, int) else [int(i) for i in ids]
        if not ids:
            return
        self._require_writable("favourites cannot be changed")
        marks = ",".join("?" * len(ids))
        with self._lock:
            conn = self._db()
            with _transaction(conn):
                conn.execute(f"UPDATE entries SET favourite = ? WHERE id IN ({marks})", [1 if favourite else 0, *ids])
            rows = conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE id IN ({marks})", ids).fetchall()
            self._write_favourites()
        self._notify("changed", [self._entry(r) for r in rows])

    def _write_favourites(self) -> None:
        """The favourites' uids into favourites.txt (a rebuild of a damaged database from the images reads it)."""
        uids = [r[0] for r in self._db().execute("SELECT uid FROM entries WHERE favourite = 1 ORDER BY id")]
        try:
            if uids:
                _atomic_write(self.favourites_path, ("\n".join(uids) + "\n").encode("ascii", "replace"))
            elif self.favourites_path.exists():
                self.favourites_path.unlink()
        except OSError as exc:  # the database has them; only a rebuild would miss them
            log.warning("history: cannot write %s: %s", self.favourites_path, exc)

    def _read_favourites(self) -> set[str]:
        try:
            with open(self.favourites_path, encoding="ascii", errors="replace") as f:
                return {line.strip() for line in f.read(1 << 22).splitlines() if _UID_RE.match(line.strip())}
        except OSError:
            return set()

    @_db_errors
    def delete(self, ids: int | Iterable[int], to_trash: bool = False) -> builtins.list[Entry]:
        ids = [ids] if isinstance(ids, int) else [int(i) for i in ids]
        if not ids:
            return []
        self._require_writable("entries cannot be deleted")
        marks = ",".join("?" * len(ids))
        now = time.time()
        with self._lock:
            conn = self._db()
            with _transaction(conn):
                rows = conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE id IN ({marks})", ids).fetchall()
                entries = [self._entry(r) for r in rows]
                conn.executemany(
                    "INSERT OR REPLACE INTO tombstones (uid, deleted_at) VALUES (?, ?)", [(e.uid, now) for e in entries]
                )
                conn.execute(f"DELETE FROM entries WHERE id IN ({marks})", ids)
            _stage("rows_deleted")
            # Sources still used by other entries stay.
            shared = set()
            for rel in {p for e in entries for p in (e.source_path, e.mask_path) if p is not None}:
                used = conn.execute(
                    "SELECT 1 FROM entries WHERE source_path = ? OR mask_path = ? LIMIT 1",
                    (self._rel(rel), self._rel(rel)),
                ).fetchone()
                if used:
                    shared.add(rel)
        failed: builtins.list[str] = []
        trash_error: Exception | None = None
        for entry in entries:
            files = [entry.image_path, entry.thumbnail_path]
            files += [p for p in (entry.source_path, entry.mask_path) if p is not None and p not in shared]
            for path in files:
                if path is None or not self.owned(path):  # only files of the store, never what a row names elsewhere
                    continue
                try:
                    if to_trash and path != entry.thumbnail_path:
                        from send2trash import send2trash

                        send2trash(str(path))
                    else:
                        path.unlink()
                except Exception as exc:  # noqa: BLE001 - OSError, send2trash.TrashPermissionError
                    log.warning("history: cannot remove %s: %s", path, exc)
                    failed.append(entry.uid)
                    trash_error = trash_error or exc
            shared |= {p for p in (entry.source_path, entry.mask_path) if p is not None}
        done = [e.uid for e in entries if e.uid not in failed]
        with self._lock:
            conn = self._db()
            if done:
                conn.executemany("DELETE FROM tombstones WHERE uid = ?", [(u,) for u in done])
            if failed and to_trash:
                # The files stay: without a tombstone the next check() adds them back rather than deleting them.
                conn.executemany("DELETE FROM tombstones WHERE uid = ?", [(u,) for u in set(failed)])
            if any(e.favourite for e in entries):
                self._write_favourites()
        self._notify("deleted", [e.id for e in entries])
        if failed and to_trash:
            raise HistoryError(
                f"{len(set(failed))} entr{'y' if len(set(failed)) == 1 else 'ies'} could not be moved to the trash ({trash_error}).",
                "They will reappear in the history; delete them without the trash instead.",
            )
        return entries

    # -- consistency -------------------------------------------------------------------------
    def _folders(self) -> dict[str, int]:
        """Month folders under images/ with their mtime (ns)."""
        out: dict[str, int] = {}
        if self.images_dir.is_dir():
            with os.scandir(self.images_dir) as it:
                for item in it:
                    if item.is_dir(follow_symlinks=False) and not item.name.startswith("."):
                        out[item.name] = item.stat(follow_symlinks=False).st_mtime_ns
        return out

    def _scan_folder(
        self,
        base: str,
        folder: str,
        files: dict[str, str],
        sources: builtins.list[str] | None,
        temps: builtins.list[Path],
    ) -> None:
        """Fill `files` (uid -> path relative to the root, as rows store it), `sources` and `temps`.
        Strings, not Paths: 10,000 Path objects cost more than the scan itself."""
        prefix = f"{base}/{folder}/"
        suffix = ".png" if base == "images" else ".jpg"
        try:
            it = os.scandir(self.root / base / folder)
        except OSError:
            return
        with it:
            for item in it:
                name = item.name
                if name.startswith("."):
                    if name.endswith(".tmp"):
                        temps.append(Path(item.path))
                elif name.endswith(suffix):
                    if sources is not None and name.startswith(("src-", "mask-")):
                        sources.append(prefix + name)
                    else:
                        files[name[:-4]] = prefix + name

    @staticmethod
    def _folder_of(rel: str) -> str:
        parts = rel.split("/")
        return parts[1] if len(parts) > 2 else ""

    @_db_errors
    def check(self, full: bool = False, verify: bool = True) -> CheckReport:
        """Make files and rows agree: clean temporary files, adopt (or set aside) images without a row,
        finish interrupted deletions, and report (not drop) rows whose image is gone.

        The quick form (at every open) rescans only the day folders changed since their last clean
        check; `full` rescans everything, thumbnails included, and runs SQLite's quick_check first
        (a damaged database is then set aside and rebuilt, see `recovery_message`).

        Nothing here needs to write to read: on a read-only folder or a full disk the check reports what
        it found and leaves its changes for later (`CheckReport.skipped`, `deferred`).
        """
        if full and verify:
            with self._lock:
                conn = self._db()
                try:
                    self._verify(conn)
                except sqlite3.DatabaseError as exc:
                    if not self._is_corruption(exc):
                        raise HistoryError(
                            f"Cannot check the history database: {exc}", f"Check {self.db_path}."
                        ) from exc
                    if self.read_only:
                        raise HistoryError(
                            f"The history database is damaged ({exc}) and cannot be rebuilt now: "
                            f"{self.read_only_reason}",
                            "Make the folder writable (or free some disk space) and run the check again.",
                        ) from exc
                    conn.close()
                    self._conn = self._recover(str(exc))
                    assert self.last_check is not None
                    return self.last_check
        report = CheckReport()
        writable = not self.read_only
        now = time.time()
        with self._lock:
            conn = self._db()
            tombstones = {r[0] for r in conn.execute("SELECT uid FROM tombstones")}
            state = dict(conn.execute("SELECT folder, mtime_ns FROM folder_state").fetchall())
        full = full or bool(tombstones) or not state
        folders = self._folders()
        todo = sorted(f for f, mtime in folders.items() if full or state.get(f) != mtime)
        gone = [f for f in state if f not in folders]
        images: dict[str, str] = {}
        sources: builtins.list[str] = []
        temps: builtins.list[Path] = []
        thumbs: dict[str, str] = {}
        for folder in todo:
            self._scan_folder("images", folder, images, sources, temps)
        if full and self.thumbs_dir.is_dir():
            with os.scandir(self.thumbs_dir) as it:
                thumb_folders = [e.name for e in it if e.is_dir(follow_symlinks=False)]
            for folder in thumb_folders:
                self._scan_folder("thumbs", folder, thumbs, None, temps)
        _stage("scanned")
        dirty: set[str] = set()  # folders not to mark clean
        for tmp in temps:
            match = _TEMP_RE.match(tmp.name)
            try:
                age = now - tmp.stat().st_mtime
                if writable and ((match and not _pid_alive(int(match.group(1)))) or age > TEMP_GRACE_S):
                    tmp.unlink()
                    report.removed.append(tmp)
                else:
                    dirty.add(tmp.parent.name)
            except OSError:
                pass
        with self._lock:
            conn = self._db()
            columns = "SELECT id, uid, image_path, source_path, mask_path FROM entries"
            if full:
                rows = conn.execute(columns).fetchall()
            else:
                rows = []
                for folder in [*todo, *gone]:
                    low = f"images/{folder}/"
                    rows += conn.execute(
                        f"{columns} WHERE image_path >= ? AND image_path < ?", (low, low[:-1] + "0")
                    ).fetchall()
        known_images = {r[2] for r in rows}
        referenced = {p for r in rows for p in (r[3], r[4]) if p}
        on_disk = set(images.values())
        missing_ids = [r[0] for r in rows if r[2] not in on_disk]
        dirty |= {self._folder_of(r[2]) for r in rows if r[2] not in on_disk}
        # Images without a row.
        orphans = {uid: rel for uid, rel in images.items() if rel not in known_images}
        pending_parents: builtins.list[tuple[str, str]] = []
        favourites = self._read_favourites() if orphans else set()
        digests: dict[str, bool] = {}  # source rel -> whether its content matches its name (shared by a batch)
        for uid, rel in sorted(orphans.items()):
            path = self.root / rel
            dirty.add(self._folder_of(rel))
            if not writable:
                report.skipped.append(path)
                continue
            if uid in tombstones:
                self._remove(path, report)
                if uid in thumbs:
                    self._remove(self.root / thumbs.pop(uid), report)
                continue
            try:
                entry = self._adopt(uid, path, report, pending_parents, favourites, digests)
            except (OSError, sqlite3.Error) as exc:
                kind = _fault(exc, self.root)
                if kind not in ("full", "readonly"):
                    raise
                self._defer(report, kind, exc)
                writable = False
                report.skipped.append(path)
                continue
            if entry is not None:
                referenced |= {self._rel(p) for p in (entry.source_path, entry.mask_path) if p is not None}
        if pending_parents and writable:  # a parent adopted after its child

            def link_parents(conn: sqlite3.Connection) -> None:
                for uid, parent_uid in pending_parents:
                    conn.execute(
                        "UPDATE entries SET parent_id = (SELECT id FROM entries WHERE uid = ?) WHERE uid = ?",
                        (parent_uid, uid),
                    )

            writable = self._check_write(report, link_parents)
            fixed = {e.uid: e for e in self._by_uids([u for u, _ in pending_parents])}
            report.adopted = [fixed.get(e.uid, e) for e in report.adopted]
        # Thumbnails of nothing (a deletion cut short).
        if thumbs and writable:
            live_uids = {r[1] for r in rows} | {e.uid for e in report.adopted}
            for uid, rel in thumbs.items():
                if uid not in live_uids and uid not in images:
                    self._remove(self.root / rel, report)
        # Sources nothing refers to, old enough not to belong to a save in progress.
        for rel in sources:
            if rel in referenced:
                continue
            path = self.root / rel
            try:
                if writable and now - path.stat().st_mtime > SOURCE_GRACE_S:
                    self._remove(path, report)
                else:
                    dirty.add(self._folder_of(rel))
            except OSError:
                pass
        # Remember the folders found clean; a folder changed in the last 2 s may change unseen within its mtime tick.
        clean = []
        for folder in todo:
            mtime = folders[folder]
            if folder in dirty or now - mtime / 1e9 < 2:
                continue
            try:
                if os.stat(self.images_dir / folder).st_mtime_ns != mtime:
                    continue
            except OSError:
                continue
            clean.append((folder, mtime, now))
        vanished = [f for f in gone if f not in dirty]
        done = [u for u in tombstones if u not in images or not (self.root / images[u]).exists()]
        if writable and (done or clean or vanished):  # no transaction when there is nothing to write

            def bookkeeping(conn: sqlite3.Connection) -> None:
                if done:
                    conn.executemany("DELETE FROM tombstones WHERE uid = ?", [(u,) for u in done])
                if clean:
                    conn.executemany(
                        "INSERT OR REPLACE INTO folder_state (folder, mtime_ns, checked_at) VALUES (?, ?, ?)", clean
                    )
                if vanished:
                    conn.executemany("DELETE FROM folder_state WHERE folder = ?", [(f,) for f in vanished])

            writable = self._check_write(report, bookkeeping)
        if writable and not self.favourites_path.exists():  # favourites from before favourites.txt existed
            with self._lock:
                if self._db().execute("SELECT 1 FROM entries WHERE favourite = 1 LIMIT 1").fetchone():
                    self._write_favourites()
        if missing_ids:
            with self._lock:
                marks = ",".join("?" * len(missing_ids))
                found = (
                    self._db().execute(f"SELECT {_COLUMNS} FROM entries WHERE id IN ({marks})", missing_ids).fetchall()
                )
            report.missing = [self._entry(r) for r in found]
            log.warning(
                "history: %d entr(ies) have lost their image: %s", len(found), [e.id for e in report.missing][:20]
            )
        if report.skipped and not report.deferred:
            report.deferred = self.read_only_reason or "the history cannot be written now"
        if report.adopted:
            log.warning("history: adopted %d image(s) without an entry", len(report.adopted))
            self._notify("added", report.adopted)
        self.last_check = report
        return report

    def _check_write(self, report: CheckReport, write: Callable[[sqlite3.Connection], None]) -> bool:
        """Run one of check()'s writes in a transaction; on a full disk or a read-only database it is left for
        later (False: nothing more is written in this check)."""
        try:
            with self._lock, _transaction(self._db()) as conn:
                write(conn)
            return True
        except sqlite3.Error as exc:
            kind = _fault(exc, self.root)
            if kind not in ("full", "readonly"):
                raise
            self._defer(report, kind, exc)
            return False

    def _defer(self, report: CheckReport, kind: str, exc: BaseException) -> None:
        log.warning("history: check left its changes for later: %s", exc)
        report.deferred = "the disk is full" if kind == "full" else "the history folder is read-only"

    def _remove(self, path: Path, report: CheckReport) -> None:
        try:
            path.unlink()
            report.removed.append(path)
        except OSError as exc:
            log.warning("history: cannot remove %s: %s", path, exc)

    def _adopt(
        self,
        uid: str,
        path: Path,
        report: CheckReport,
        pending_parents: builtins.list[tuple[str, str]],
        favourites: set[str] | None = None,
        digests: dict[str, bool] | None = None,
    ) -> Entry | None:
        """Index an image file from its embedded metadata; set it aside when it has none.

        The metadata is the file's, not ours: anyone can copy a PNG into images/. Its source and mask are kept
        only when they name content-addressed files this store wrote (`_trusted_source`); other values are
        dropped with a notice. Numbers out of range are dropped too."""
        try:
            info_stat = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info_stat.st_mode) or not _UID_RE.match(uid):  # a link, a fifo, an odd name
            log.warning("history: %s is not a plain image file; moving it to unindexed/", path)
            self._set_aside(path, report)
            return None
        try:
            with Image.open(path) as img:
                size = img.size
                info = read_png_metadata(img)
            history = info.data.get("history") if isinstance(info.data, dict) else None
            meta: dict[str, Any] = history if isinstance(history, dict) else {}
            request: dict[str, Any] = (
                info.request.to_dict(include_images=False) if info.request is not None else {"prompt": info.prompt}
            )
            kind = request.get("kind", "generate")
            request_json = json.dumps(request, ensure_ascii=False, default=str)
        except Image.DecompressionBombError as exc:
            log.warning("history: %s is too large to read (%s); moving it to unindexed/", path, exc)
            self._set_aside(path, report)
            return None
        except (MetadataError, OSError, ValueError, SyntaxError) as exc:
            log.warning("history: %s has no usable metadata (%s); moving it to unindexed/", path, exc)
            self._set_aside(path, report)
            return None
        except Exception as exc:  # noqa: BLE001 - a crafted file must not stop the history from opening
            log.warning("history: %s has unreadable metadata (%r); moving it to unindexed/", path, exc)
            self._set_aside(path, report)
            return None
        request["batch"] = 1
        seed = info.seed if isinstance(info.seed, int) and _INT64[0] <= info.seed <= _INT64[1] else None
        if seed is not None:
            request["seed"] = seed
        created = _finite(meta.get("created_at"), 0.0, _MAX_TIME)
        if created is None:
            created = info_stat.st_mtime
        elapsed = _finite(meta.get("elapsed"), 0.0, 1e9)
        source_rel = self._trusted_source(meta.get("source"), "src", path, report, digests)
        mask_rel = self._trusted_source(meta.get("mask"), "mask", path, report, digests)
        thumb_path = self.thumbs_dir / path.parent.name / f"{uid}.jpg"
        favourite = 1 if favourites and uid in favourites else 0
        parent_uid = meta.get("parent_uid")
        parent_uid = parent_uid if isinstance(parent_uid, str) and _UID_RE.match(parent_uid) else None
        text = [v if isinstance(v, str) else "" for v in (info.prompt, info.negative_prompt, info.model_id)]
        model_hash = info.model_hash if isinstance(info.model_hash, str) else ""
        with self._lock:
            conn = self._db()
            with _transaction(conn):
                # Within the write lock: a deletion another process committed since the scan (its tombstone, or
                # its files already gone) is not undone by adding the entry back.
                if conn.execute("SELECT 1 FROM tombstones WHERE uid = ?", (uid,)).fetchone() or not path.is_file():
                    return None
                parent_id = None
                if parent_uid is not None:
                    found = conn.execute("SELECT id FROM entries WHERE uid = ?", (parent_uid,)).fetchone()
                    parent_id = found[0] if found else None
                    if found is None:
                        pending_parents.append((uid, parent_uid))
                conn.execute(
                    "INSERT OR IGNORE INTO entries (uid, created_at, kind, request_json, prompt, negative_prompt,"
                    " model_id, model_hash, seed, image_path, thumb_path, parent_id, elapsed, width, height,"
                    " source_path, mask_path, favourite) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        uid,
                        created,
                        kind if kind in KINDS else "generate",
                        request_json,
                        *text,
                        model_hash,
                        seed,
                        self._rel(path),
                        self._rel(thumb_path),
                        parent_id,
                        elapsed,
                        size[0],
                        size[1],
                        source_rel,
                        mask_rel,
                        favourite,
                    ),
                )
        entries = self._by_uids([uid])
        if entries:
            report.adopted.append(entries[0])
            return entries[0]
        return None

    def _trusted_source(
        self, value: Any, prefix: str, image: Path, report: CheckReport, digests: dict[str, bool] | None
    ) -> str | None:
        """`value` when it names a source (or mask) this store wrote: images/<day>/<prefix>-<digest>.png, a plain
        file whose pixels have that digest. Anything else is dropped, with a notice in the report."""
        if value is None or value == "":
            return None
        match = _SOURCE_RE.match(value) if isinstance(value, str) else None
        ok = False
        if match is not None and match.group(2) == prefix:
            rel = match.group(0)
            if digests is not None and rel in digests:
                ok = digests[rel]
            else:
                ok = self._source_matches(self.root / rel, match.group(3))
                if digests is not None:
                    digests[rel] = ok
        if ok:
            return value
        what = "source" if prefix == "src" else "mask"
        shown = repr(value) if len(repr(value)) <= 120 else repr(value)[:117] + "..."
        notice = f"{image.name}: its {what} {shown} is not a file the history wrote; the reference was dropped"
        log.warning("history: %s", notice)
        report.dropped.append(notice)
        return None

    def _source_matches(self, path: Path, digest: str) -> bool:
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or not path.parent.resolve().is_relative_to(self.images_dir):
                return False
            with Image.open(path) as img:
                if img.format != "PNG":
                    return False
                img.load()
                return _image_digest(img) == digest
        except Exception as exc:  # noqa: BLE001 - any unreadable file is simply not ours
            log.debug("history: %s is not a source of the store: %s", path, exc)
            return False

    def _set_aside(self, path: Path, report: CheckReport) -> None:
        try:
            self.unindexed_dir.mkdir(exist_ok=True)
            target = self.unindexed_dir / path.name
            if target.exists():
                target = self.unindexed_dir / f"{path.stem}-{secrets.token_hex(3)}{path.suffix}"
            os.replace(path, target)
            report.set_aside.append(target)
        except OSError as exc:
            log.warning("history: cannot move %s aside: %s", path, exc)


def open_history(root: str | os.PathLike | None = None) -> HistoryStore:
    """The history store of the data folder (or `root`)."""
    return HistoryStore(root)


__all__ = [
    "CheckReport",
    "Entry",
    "HistoryService",
    "HistoryStore",
    "KINDS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "open_history",
]
