"""History under faults: a writer killed at each stage, a corrupt database, a full disk, two processes."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import cast

import pytest
from test_history_support import assert_consistent, edit_result, generate_result

from desktop_app.core import history as history_module
from desktop_app.core.errors import HistoryError
from desktop_app.core.history import HistoryStore

TESTS = Path(__file__).resolve().parent
NAMES = ("alpha", "beta", "gamma")

WRITER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from desktop_app.core import history
    from test_history_support import generate_result, edit_result

    stage, nth, kind = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    seen = {{}}

    def hook(name):
        seen[name] = seen.get(name, 0) + 1
        if name == stage and seen[name] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    if stage == "mid_write":  # die with half of the image written to its temporary file
        real_write = os.write
        def half_write(fd, data):
            real_write(fd, bytes(data[: len(data) // 2]))
            os.kill(os.getpid(), signal.SIGKILL)
        os.write = half_write
    history._fault_hook = hook
    store = history.HistoryStore(sys.argv[1])
    if kind == "delete":
        store.delete([e.id for e in store.list()])
    else:
        store.add(generate_result(n=2) if kind == "batch" else edit_result())
    print("finished")
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.parametrize(
    "stage, nth, kind, expected",
    [
        ("mid_write", 1, "batch", 0),
        ("temp_written", 1, "batch", 0),
        ("temp_written", 2, "batch", None),  # first image in place, second in its temp file
        ("replaced", 1, "batch", 2),
        ("committed", 1, "batch", 2),
        ("temp_written", 1, "edit", 0),  # the source image's temp file
        ("temp_written", 3, "edit", 0),  # source and mask in place, image in its temp file
        ("replaced", 1, "edit", 1),
    ],
)
def test_writer_killed_at_each_stage(tmp_path, stage, nth, kind, expected):
    root = tmp_path / "history"
    HistoryStore(root).close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(TESTS)))
    proc = subprocess.run(
        [sys.executable, str(script), str(root), stage, str(nth), kind], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "finished" not in proc.stdout
    with HistoryStore(root) as store:
        count = assert_consistent(root)  # complete entries or none; no temp file left
        if expected is not None:
            assert count == expected
        for entry in store.list():
            assert entry.seed is not None and entry.prompt
            if kind == "edit":
                request = store.load_request(entry.id)  # replayable: source and mask came along
                assert request.image is not None and request.mask is not None
                assert request.source_prompt == "a green cube, on: wood"
        if stage in ("replaced",):
            assert store.last_check is not None
            assert len(store.last_check.adopted) == count


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_deleter_killed_after_commit(tmp_path):
    """Rows gone, files not yet: the next start finishes the deletion instead of adopting the files back."""
    root = tmp_path / "history"
    with HistoryStore(root) as store:
        entries = store.add(edit_result()) + store.add(generate_result(n=2))
        keep = store.add(generate_result(prompt="keep me"))[0]
        store.set_favourite(keep.id)
    script = tmp_path / "deleter.py"
    script.write_text(WRITER.format(tests=str(TESTS)).replace("store.list()", "store.list(favourite=False)"))
    proc = subprocess.run(
        [sys.executable, str(script), str(root), "rows_deleted", "1", "delete"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert all(e.image_path.exists() for e in entries)  # the crash left the files
    with HistoryStore(root) as store:
        assert [e.id for e in store.list()] == [keep.id]
        assert store.last_check is not None
        assert not store.last_check.adopted
        assert not any(e.image_path.exists() or e.thumbnail_path.exists() for e in entries)
        assert store._db().execute("SELECT count(*) FROM tombstones").fetchone()[0] == 0
    assert assert_consistent(root) == 1


def test_corrupt_database_is_set_aside_and_rebuilt(tmp_path):
    root = tmp_path / "history"
    with HistoryStore(root) as store:
        parent = store.add(generate_result(prompt="first cube"))[0]
        child = store.add(edit_result(prompt="second cube"), parent_id=parent.id)[0]
        store.add(generate_result(prompt="third lighthouse", n=2))
    db = root / "history.db"
    with open(db, "r+b") as f:
        f.write(b"this is no longer a database" * 10)
    with HistoryStore(root) as store:
        assert store.recovery_message and "damaged" in store.recovery_message
        backups = list(root.glob("history.db.corrupt-*"))
        assert backups and backups[0].read_bytes().startswith(b"this is no longer")
        assert store.count() == 4
        assert store.count(search="lighthouse") == 2
        [again] = store.list(search="second")
        assert again.uid == child.uid and again.parent_id == store.list(search="first")[0].id
        assert store.load_request(again.id).image is not None
    with HistoryStore(root) as store:  # the new one is healthy
        assert store.recovery_message is None and store.count() == 4
    assert_consistent(root)


def test_damaged_pages_are_detected(tmp_path):
    root = tmp_path / "history"
    with HistoryStore(root) as store:
        for i in range(30):
            store.add(generate_result(prompt=f"cube {i} " + "words " * 50))
    db = root / "history.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = db.stat().st_size
    with open(db, "r+b") as f:  # scribble over the second half, header intact
        f.seek(size // 2)
        f.write(os.urandom(size - size // 2))
    with HistoryStore(root) as store:
        assert store.recovery_message
        assert store.count() == 30
    assert_consistent(root)


def test_disk_full_while_writing_image(tmp_path, monkeypatch):
    store = HistoryStore(tmp_path / "h")
    store.add(generate_result(prompt="before"))
    result = generate_result(n=2)
    real_write = os.write
    calls = {"n": 0}

    def full(fd, data):
        calls["n"] += 1
        if calls["n"] >= 2:  # the first file fits, the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with monkeypatch.context() as m:
        m.setattr(history_module.os, "write", full)
        with pytest.raises(HistoryError, match="disk is full") as info:
            store.add(result)
    assert info.value.hint and "Free" in info.value.hint
    assert len(result.images) == 2 and result.images[0].size == (64, 64)  # still in memory
    assert store.count() == 1
    assert assert_consistent(store.root) == 1
    assert store.add(result)  # once there is room again, the same result saves
    store.close()


def test_disk_full_while_committing(tmp_path):
    store = HistoryStore(tmp_path / "h")

    class FullConnection:
        def __init__(self, conn):
            self.conn = conn

        def executemany(self, *a, **k):
            error = sqlite3.OperationalError("database or disk is full")
            # sqlite_errorcode is set by sqlite3 from Python 3.11; the stubs hide it for the 3.10 target
            error.sqlite_errorcode = 13  # pyright: ignore[reportAttributeAccessIssue]
            raise error

        def __getattr__(self, name):
            return getattr(self.conn, name)

    real = store._conn
    store._conn = cast(sqlite3.Connection, FullConnection(real))  # a stand-in: delegates all but executemany
    with pytest.raises(HistoryError, match="disk is full"):
        store.add(generate_result())
    store._conn = real
    assert store.count() == 0
    assert assert_consistent(store.root) == 0  # the images written are removed again
    store.close()


def _worker(root: str, tag: int, n: int) -> None:
    sys.path.insert(0, str(TESTS))
    from test_history_support import generate_result

    from desktop_app.core.history import HistoryStore

    store = HistoryStore(root)
    for i in range(n):
        store.add(generate_result(prompt=f"process {NAMES[tag]} image {i}", n=1 + i % 2, seed=tag * 1000 + i))
        store.list(limit=20, search="image")
        if i % 4 == 0:
            store.check()
    store.close()


def test_two_processes_same_folder(tmp_path):
    root = str(tmp_path / "history")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(root, tag, 10)) for tag in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    expected = 3 * sum(1 + i % 2 for i in range(10))
    with HistoryStore(root) as store:
        assert store.last_check is not None
        assert store.last_check.clean, store.last_check
        assert store.count() == expected
        assert store.count(search="process beta") == expected // 3
    assert assert_consistent(Path(root)) == expected
