"""The history against hostile files and unlucky disks (issue 17): crafted PNGs copied into the history folder,
a read-only folder, a full disk, a delete racing another process's check, a rebuild, odd prompts.

Each case asserts the message the user gets and that nothing in the history changed that should not have.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PySide6.QtCore import Qt
from test_history_support import assert_consistent, edit_result, generate_result

from desktop_app.cli.history import add_history_parser, run_history
from desktop_app.core import history as history_module
from desktop_app.core.errors import HistoryError
from desktop_app.core.history import HistoryStore
from desktop_app.core.images import save_png
from desktop_app.core.infotext import png_info

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- helpers


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_history_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = run_history(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under `root` (but the database's -wal/-shm) with its content's hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.endswith(("-wal", "-shm")) and rel not in skip:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def rows(root: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{root / 'history.db'}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT uid, image_path, source_path, mask_path, favourite FROM entries ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def plant(store: HistoryStore, uid: str, meta: dict[str, Any], prompt: str = "planted") -> Path:
    """A PNG with our metadata chunk copied into a day folder of the history, without a row."""
    folder = store.images_dir / "2026-01-02"
    folder.mkdir(parents=True, exist_ok=True)
    result = generate_result(prompt=prompt)
    path = folder / f"{uid}.png"
    save_png(result.images[0], path, png_info(result, 0, history=meta))
    return path


@pytest.fixture
def populated(tmp_path):
    """A history with a plain entry and an edit (source and mask), a file outside it, and its snapshot."""
    root = tmp_path / "history"
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("not yours")
    with HistoryStore(root) as store:
        plain = store.add(generate_result(prompt="a plain cube"))[0]
        edit = store.add(edit_result(prompt="an edited cube"))[0]
    return root, plain, edit, outside


# --------------------------------------------------------------------------- Major 1: adopted paths


def hostile_values(root: Path, plain: Any, edit: Any, outside: Path) -> list[Any]:
    assert edit.source_path is not None and edit.mask_path is not None
    day = edit.source_path.parent.name
    return [
        "history.db",
        plain.image_path.relative_to(root).as_posix(),  # another entry's image
        str(outside),  # absolute
        str(root / "history.db"),  # absolute, inside
        "../outside-secret.txt",
        "images/../history.db",
        f"images/{day}/src-{'0' * 20}.png",  # the right shape, no such file
        edit.mask_path.relative_to(root).as_posix().replace("mask-", "src-"),  # the shape of a source, not one
        f"images/{day}/src-{edit.mask_path.name[5:]}",  # a mask's digest under a source's name
        123,
        ["images"],
        {"path": "history.db"},
        "x\x00y",
        "images/" + "a/" * 300 + "src-00.png",
    ]


def test_adopted_png_cannot_name_files_the_store_did_not_write(populated, tmp_path):
    root, plain, edit, outside = populated
    with HistoryStore(root) as store:
        values = hostile_values(root, plain, edit, outside)
        for i, value in enumerate(values):
            plant(store, f"20260102-000000-{i:012x}", {"source": value, "mask": value})
        # a link named like a source, pointing out of the store, and a source's copy with another image's pixels
        day = edit.source_path.parent
        link = day / f"src-{'1' * 20}.png"
        link.symlink_to(outside)
        fake = day / f"src-{'2' * 20}.png"
        shutil.copy(plain.image_path, fake)
        plant(store, "20260102-000001-aaaaaaaaaaaa", {"source": link.relative_to(root).as_posix()})
        plant(store, "20260102-000001-bbbbbbbbbbbb", {"source": fake.relative_to(root).as_posix()})
    with HistoryStore(root) as store:  # no crash on any of them
        report = store.last_check
        assert report is not None
        assert len(report.adopted) == len(values) + 2
        assert all(e.source_path is None and e.mask_path is None for e in report.adopted)
        assert len(report.dropped) == 2 * len(values) + 2  # source and mask of each, the link, the fake
        assert "not a file the history wrote" in report.dropped[0]
        assert "were dropped" in report.message()
        planted = [e.id for e in report.adopted]
    # export copies nothing from outside; delete removes only the planted images
    for entry_id in planted:
        code, out, err = run_cli_at(root, ["history", "export", str(entry_id), "--out", str(tmp_path / "out")])
        assert code == 0, err
    exported = {p.name for p in (tmp_path / "out").iterdir()}
    assert not any(name.endswith((".source.png", ".mask.png")) for name in exported)
    assert all(
        hashlib.sha256(p.read_bytes()).hexdigest() != hashlib.sha256(b"not yours").hexdigest()
        for p in (tmp_path / "out").iterdir()
    )
    code, out, err = run_cli_at(root, ["history", "delete", *map(str, planted)])
    assert code == 0 and f"Deleted {len(planted)} entries" in out, err
    assert outside.read_text() == "not yours"
    after = snapshot(root)
    for rel in (
        "history.db",
        plain.image_path.relative_to(root).as_posix(),
        edit.source_path.relative_to(root).as_posix(),
        edit.mask_path.relative_to(root).as_posix(),
    ):
        assert rel in after
    with HistoryStore(root) as store:
        assert [e.uid for e in store.list()] == [edit.uid, plain.uid]
        assert store.load_request(edit.id).image is not None
    assert link.is_symlink()  # the link (not its target) is left, as any stray file in images/


def run_cli_at(root: Path, argv: list[str]) -> tuple[int, str, str]:
    old = os.environ.get("DIFFUSION_DESK_DATA_DIR")
    os.environ["DIFFUSION_DESK_DATA_DIR"] = str(root.parent)
    try:
        return run_cli(argv)
    finally:
        if old is None:
            os.environ.pop("DIFFUSION_DESK_DATA_DIR", None)
        else:
            os.environ["DIFFUSION_DESK_DATA_DIR"] = old


_values = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(["history.db", "/etc/passwd", "../x.png", "images", "images/2026-01-02", "favourites.txt"]),
    st.builds(
        lambda d, h: f"images/{d}/src-{h}.png",
        st.sampled_from(["2026-01-02", "..", "/tmp"]),
        st.text("0123456789abcdef", min_size=20, max_size=20),
    ),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    meta=st.fixed_dictionaries(
        {},
        optional={
            "source": _values,
            "mask": _values,
            "created_at": _values,
            "elapsed": _values,
            "parent_uid": _values,
            "uid": _values,
            "batch_index": _values,
        },
    ),
    prompt=st.text(max_size=30),
)
def test_adoption_fuzz(fuzz_store, meta, prompt):
    """Whatever a PNG's history record says: the open does not crash, the entry names no file it should not, and
    deleting it leaves everything else in place."""
    store, keep, before, before_rows = fuzz_store
    path = plant(store, "20260102-000000-" + os.urandom(6).hex(), meta, prompt=prompt)
    report = store.check(full=True)
    [entry] = [e for e in report.adopted if e.image_path == path]
    assert entry.created.year >= 1970  # a date it can show
    for ref in (entry.source_path, entry.mask_path):
        assert ref is None or (store.owned(ref) and ref.name.startswith(("src-", "mask-")))
    store.delete([entry.id])
    assert not path.exists()
    assert snapshot(store.root, skip=("favourites.txt", "history.db")) == before  # (a checkpoint rewrites the db)
    assert rows(store.root) == before_rows and [e.uid for e in store.list()] == keep


@pytest.fixture
def fuzz_store(tmp_path):
    root = tmp_path / "history"
    store = HistoryStore(root)
    store.add(generate_result(prompt="keep me"))
    store.add(edit_result(prompt="keep my source"))
    store.check(full=True)
    (tmp_path / "outside.txt").write_text("outside")
    keep = [e.uid for e in store.list()]
    yield store, keep, snapshot(root, skip=("history.db",)), rows(root)
    store.close()
    assert (tmp_path / "outside.txt").read_text() == "outside"


# --------------------------------------------------------------------------- Major 2: a read-only folder


@contextmanager
def read_only_folder(folder: Path):
    """Make `folder` read-only for real: permissions for a user, a read-only bind mount for root."""
    if not IS_ROOT:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def _check_read_only_store(root: Path, plain: Any, edit: Any, before: dict[str, str]) -> None:
    with HistoryStore(root) as store:
        assert store.read_only and "read-only" in (store.read_only_reason or "")
        assert [e.uid for e in store.list()] == [edit.uid, plain.uid]
        assert store.count(search="edited") == 1
        assert store.thumbnail(store.get(plain.id)) is not None
        for call, what in (
            (lambda: store.add(generate_result()), "the result was not saved"),
            (lambda: store.set_favourite(plain.id), "favourites cannot be changed"),
            (lambda: store.delete([plain.id]), "entries cannot be deleted"),
        ):
            with pytest.raises(HistoryError, match="read-only") as info:
                call()
            assert str(root) in info.value.message and what in info.value.message and info.value.hint
    code, out, err = run_cli_at(root, ["history", "list", "--search", "cube"])
    assert code == 0 and "2 of 2 entries" in out and "read-only" in err and "Traceback" not in err
    code, out, err = run_cli_at(root, ["history", "check", "--full"])
    assert code == 0, err
    code, out, err = run_cli_at(root, ["history", "delete", str(plain.id)])
    assert code == 2 and "read-only" in err and "entries cannot be deleted" in err
    assert snapshot(root) == before


def test_read_only_history_folder_is_browsed_not_changed(populated):
    root, plain, edit, _ = populated
    before = snapshot(root)
    with read_only_folder(root):
        _check_read_only_store(root, plain, edit, before)


def test_read_only_simulated(populated, monkeypatch):
    """The same where the folder cannot be made read-only: the probe fails as on a read-only mount."""
    root, plain, edit, _ = populated
    before = snapshot(root)

    def refuse(self):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(HistoryStore, "_probe_writable", refuse)
    _check_read_only_store(root, plain, edit, before)


def test_read_only_data_folder_without_history(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with read_only_folder(data):
        with HistoryStore(data / "history") as store:
            assert store.read_only and "read-only" in (store.read_only_reason or "")
            assert store.list() == [] and store.count() == 0
            with pytest.raises(HistoryError, match="read-only"):
                store.add(generate_result())
        code, out, err = run_cli_at(data / "history", ["history", "list"])
        assert code == 0 and "0 of 0 entries" in out and "read-only" in err
    assert not (data / "history").exists()


# --------------------------------------------------------------------------- Major 3: a full disk


def _full_error(message: str = "database or disk is full", code: int = 13) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # pyright: ignore[reportAttributeAccessIssue]
    return error


class FullOnCommit:
    """A connection whose COMMIT fails as SQLite does on SQLITE_FULL (it has rolled back already) and whose
    ROLLBACK then fails with 'no transaction is active', the error that used to hide the real one."""

    def __init__(self, conn: sqlite3.Connection, error: sqlite3.Error) -> None:
        self.conn, self.error = conn, error

    in_transaction = True  # a lie: the helper must survive its ROLLBACK failing too

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.conn.execute("ROLLBACK")
            raise self.error
        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


@pytest.mark.parametrize(
    "error, low_space",
    [
        (_full_error(), False),
        (_full_error("disk I/O error", 778), True),  # SQLITE_IOERR_WRITE with the disk (nearly) full
    ],
)
def test_full_disk_at_commit_says_so(populated, monkeypatch, error, low_space):
    root, plain, edit, _ = populated
    before, before_rows = snapshot(root), rows(root)
    if low_space:
        monkeypatch.setattr(history_module.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9, 0))  # pyright: ignore[reportAttributeAccessIssue]
    with HistoryStore(root) as store:
        real = store._conn
        assert real is not None
        store._conn = cast(sqlite3.Connection, FullOnCommit(real, error))
        result = generate_result(prompt="made while full")
        with pytest.raises(HistoryError) as info:
            store.add(result)
        message = info.value.message
        assert message.startswith("The disk is full: the result was not saved to the history")
        assert str(root) in message and "is needed" in message and "no transaction" not in message
        assert "Free at least" in info.value.hint and "stays in memory" in info.value.hint
        with pytest.raises(HistoryError, match="The disk is full: favourites cannot be changed"):
            store.set_favourite(plain.id)
        store._conn = real
        assert len(result.images) == 1  # the result is still in memory
        assert store.count() == 2
    assert snapshot(root) == before and rows(root) == before_rows


def test_enospc_writing_an_image_names_the_folder_and_the_space(populated, monkeypatch):
    root, *_ = populated
    before = snapshot(root)
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with HistoryStore(root) as store:
        monkeypatch.setattr(history_module.os, "write", full)
        with pytest.raises(HistoryError, match="The disk is full") as info:
            store.add(generate_result(n=2))
        monkeypatch.setattr(history_module.os, "write", real_write)
        assert str(root) in info.value.message and "KB is needed" in info.value.message
    assert snapshot(root) == before


def test_reading_while_full_needs_no_write(populated, monkeypatch):
    """The open-time check's own writes fail on a full disk: the history still opens, lists and checks."""
    root, plain, edit, _ = populated
    with HistoryStore(root) as store:  # something for the check to write: an image without a row
        store._db().execute("DELETE FROM entries WHERE id = ?", (plain.id,))
    before = snapshot(root)

    @contextmanager
    def full_transaction(conn):
        raise _full_error()
        yield conn

    monkeypatch.setattr(history_module, "_transaction", full_transaction)
    with HistoryStore(root) as store:
        assert [e.uid for e in store.list()] == [edit.uid]
        report = store.last_check
        assert report is not None and report.skipped == [plain.image_path]
        assert "added back later (the disk is full)" in report.message()
    for argv in (["history", "list"], ["history", "check", "--full"]):
        code, out, err = run_cli_at(root, argv)
        assert code == 0 and "Traceback" not in err, err
    assert snapshot(root) == before
    monkeypatch.undo()
    with HistoryStore(root) as store:  # once there is room, the image comes back
        assert {e.uid for e in store.list()} == {plain.uid, edit.uid}


@pytest.fixture
def tmpfs(tmp_path):
    if sys.platform != "linux" or not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount is not permitted here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_real_full_disk_on_a_small_tmpfs(tmpfs):
    root = tmpfs / "history"
    saved = []
    noise = generate_result(prompt="noisy")
    error = None
    with HistoryStore(root) as store:
        for i in range(40):
            result = generate_result(prompt=f"noisy {i}")
            result.images[0] = Image.frombytes("RGB", (160, 160), os.urandom(160 * 160 * 3))
            try:
                saved += store.add(result)
            except HistoryError as exc:
                error = exc
                break
    assert error is not None, "the 1 MB disk never filled"
    assert error.message.startswith("The disk is full") and str(root) in error.message, error.message
    assert "is needed" in error.message and "no transaction" not in error.message
    # Fill what is left, then read: open, list, search, check --full.
    fd = os.open(tmpfs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\1" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    before = snapshot(root)
    with HistoryStore(root) as store:
        assert store.count() == len(saved) and store.count(search="noisy") == len(saved)
        with pytest.raises(HistoryError, match="The disk is full"):
            store.add(noise)
    for argv in (["history", "list"], ["history", "check", "--full"]):
        code, out, err = run_cli_at(root, argv)
        assert code == 0 and "Traceback" not in err, err
        assert argv[1] != "list" or f"of {len(saved)} entries" in out
    assert snapshot(root) == before
    (tmpfs / "filler").unlink()
    with HistoryStore(root) as store:
        assert store.add(noise)  # room again: saving works
    assert assert_consistent(root) == len(saved) + 1


# --------------------------------------------------------------------------- the minor items


@pytest.mark.parametrize("files_gone", [False, True])
def test_delete_racing_another_process_check_stays_deleted(populated, files_gone):
    """Process B scans (the image is there), process A commits the deletion (and, or not yet, removes the files),
    B reads the rows (none for it): B must not add the entry back as '[image missing]'."""
    root, plain, edit, _ = populated
    a, b = HistoryStore(root), HistoryStore(root, check=False)

    def deleter(stage: str) -> None:
        if stage != "scanned":
            return
        history_module._fault_hook = None
        if files_gone:
            a.delete([plain.id])
        else:  # A's commit, its files not yet removed
            with a._lock:
                conn = a._db()
                conn.execute("INSERT INTO tombstones (uid, deleted_at) VALUES (?, 0)", (plain.uid,))
                conn.execute("DELETE FROM entries WHERE id = ?", (plain.id,))

    history_module._fault_hook = deleter
    try:
        report = b.check(full=True)
    finally:
        history_module._fault_hook = None
    assert report.adopted == [] and report.missing == []
    assert [e.uid for e in b.list()] == [edit.uid]
    a.check(full=True)  # A (or its next start) finishes the deletion
    assert not plain.image_path.exists()
    assert [e.uid for e in a.list()] == [edit.uid] and a.check(full=True).clean
    a.close()
    b.close()
    assert assert_consistent(root) == 1


def test_favourites_survive_a_rebuild(populated):
    root, plain, edit, _ = populated
    with HistoryStore(root) as store:
        store.set_favourite(edit.id)
    assert (root / "favourites.txt").read_text().split() == [edit.uid]
    (root / "history.db").write_bytes(b"no longer a database" * 50)
    with HistoryStore(root) as store:
        assert store.recovery_message and "2 entries recovered" in store.recovery_message
        assert {e.uid: e.favourite for e in store.list()} == {edit.uid: True, plain.uid: False}
        store.set_favourite([e.id for e in store.list()], False)
    assert not (root / "favourites.txt").exists()


def test_favourites_from_before_the_side_file(populated):
    root, plain, _edit, _ = populated
    conn = sqlite3.connect(root / "history.db")
    conn.execute("UPDATE entries SET favourite = 1 WHERE uid = ?", (plain.uid,))
    conn.commit()
    conn.close()
    HistoryStore(root).close()
    assert (root / "favourites.txt").read_text().split() == [plain.uid]


def test_missing_image_grammar(populated):
    root, plain, edit, _ = populated
    plain.image_path.unlink()
    with HistoryStore(root) as store:
        assert store.last_check is not None
        assert store.last_check.message() == "1 entry has lost its image file."
        edit.image_path.unlink()
        assert store.check(full=True).message() == "2 entries have lost their image files."


def test_control_characters_in_a_prompt_are_escaped(tmp_path):
    root = tmp_path / "history"
    prompt = "a cube\x00 with \x1b[31mred\x1b[0m \u202eevil\r"
    with HistoryStore(root) as store:
        entry = store.add(generate_result(prompt=prompt))[0]
    for argv in (["history", "list"], ["history", "show", str(entry.id)]):
        code, out, err = run_cli_at(root, argv)
        assert code == 0, err
        assert "\x00" not in out and "\x1b" not in out and "\u202e" not in out and "\r" not in out
        assert "\\x1b[31mred" in out and "\\u202eevil" in out
        assert argv[1] != "list" or "a cube\\x00 with" in out
    code, out, _ = run_cli_at(root, ["history", "list", "--json"])
    assert code == 0 and "\x00" not in out and "\\u0000" in out


@pytest.mark.parametrize(
    "argv, text",
    [
        (["history", "show", "999"], "There is no history entry 999."),
        (["history", "delete", "999"], "There is no history entry 999."),
        (["history", "export", "999", "--out", "x"], "There is no history entry 999."),
    ],
)
def test_history_user_errors_exit_2(populated, argv, text):
    root, *_ = populated
    before = snapshot(root)
    code, out, err = run_cli_at(root, argv)
    assert code == 2 and err.startswith(f"error: {text}") and "hint: " in err and "Traceback" not in err
    assert snapshot(root) == before


# --------------------------------------------------------------------------- the window's side


def test_full_disk_in_the_window_keeps_the_result_and_saves_it_elsewhere(qtbot, populated, monkeypatch, tmp_path):
    from desktop_app.core.infotext import read_png_metadata
    from desktop_app.model.history_saver import HistorySaver
    from desktop_app.ui.history_panel import HistoryPanel

    root, *_ = populated
    store = HistoryStore(root)
    saver = HistorySaver(store)
    panel = HistoryPanel(store, saver)
    qtbot.addWidget(panel)
    panel.show()
    before = snapshot(root)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(history_module, "_atomic_write", full)
    result = generate_result(prompt="made on a full disk", n=2)
    with qtbot.waitSignal(saver.failed, timeout=10000) as failed:
        saver.save(result)
    message, hint = failed.args
    assert message.startswith("The disk is full") and str(root) in message and "stays in memory" in hint
    assert panel.save_banner.isVisible() and "The disk is full" in panel.save_label.text()
    assert panel.save_elsewhere_button.isVisible() and panel.retry_button.isVisible()
    assert saver.unsaved() == [result]
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setattr(panel, "_ask_folder", lambda: str(elsewhere))
    qtbot.mouseClick(panel.save_elsewhere_button, Qt.MouseButton.LeftButton)
    files = sorted(elsewhere.glob("*.png"))
    assert len(files) == 2 and read_png_metadata(files[0]).prompt == "made on a full disk"
    assert "Saved 2 image(s)" in panel.save_label.text() and saver.unsaved() == [result]
    assert snapshot(root) == before  # the history untouched
    monkeypatch.undo()
    with qtbot.waitSignal(saver.saved, timeout=10000):
        qtbot.mouseClick(panel.retry_button, Qt.MouseButton.LeftButton)
    saver.wait(10)
    assert store.count() == 4 and saver.unsaved() == []
    saver.close()
    store.close()


def test_save_elsewhere_on_an_unwritable_folder_says_so(qtbot, tmp_path):
    from desktop_app.model.history_saver import HistorySaver

    saver = HistorySaver()  # no history yet: the result waits in memory
    saver.save(generate_result())
    (tmp_path / "file").write_text("x")
    with pytest.raises(HistoryError, match="Cannot save to") as info:
        saver.save_unsaved_to(tmp_path / "file" / "sub")
    assert "another disk" in info.value.hint and len(saver.unsaved()) == 1


def test_the_window_says_why_the_history_is_not_open(qtbot):
    from desktop_app.ui.history_panel import HistoryPanel

    panel = HistoryPanel()
    qtbot.addWidget(panel)
    reason = "The history database is from a newer Diffusion Desk (schema 9, this one knows 4)."
    panel.set_history(None, reason=reason)
    assert panel.empty_label.text() == (
        "The history is not open: The history database is from a newer Diffusion Desk (schema 9, this one knows 4). "
        "Results are not saved to it."
    )


def test_a_read_only_history_in_the_window(qtbot, populated, monkeypatch):
    from desktop_app.ui.history_panel import HistoryPanel

    root, plain, edit, _ = populated
    monkeypatch.setattr(HistoryStore, "_probe_writable", lambda self: (_ for _ in ()).throw(PermissionError(13, "no")))
    store = HistoryStore(root)
    panel = HistoryPanel(store)
    qtbot.addWidget(panel)
    panel.show()
    assert panel.model.rowCount() == 2
    assert "read-only" in panel.banner.text() and panel.banner.isVisible()
    menu = panel._build_menu(panel.model.entry(0), [panel.model.entry(0)])
    enabled = {a.text(): a.isEnabled() for a in menu.actions() if a.text()}
    assert enabled["Open on canvas"] and not enabled["Add to favourites"] and not enabled["Delete…"]
    errors = []
    panel.errorRaised.connect(lambda m, h: errors.append(m))
    assert not panel.delete_entries([panel.model.entry(0)], confirm=False)
    assert errors and "read-only" in errors[0] and panel.model.rowCount() == 2
    store.close()
