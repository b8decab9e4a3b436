"""HistoryStore: saving, listing, search, favourites, delete, replay, migrations, check(), CLI."""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import time

import pytest
from PIL import Image
from test_history_support import assert_consistent, edit_result, generate_result, image, inpaint_result

from desktop_app.cli.history import add_history_parser, run_history
from desktop_app.core.errors import HistoryError
from desktop_app.core.history import MIGRATIONS, SCHEMA_VERSION, HistoryService, HistoryStore
from desktop_app.core.infotext import read_png_metadata
from desktop_app.core.requests import EditRequest, InpaintRequest


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(tmp_path / "history")
    yield s
    s.close()


def test_add_batch_one_entry_per_image(store: HistoryStore):
    entries = store.add(generate_result(n=3, seed=40))
    assert isinstance(store, HistoryService)
    assert [e.seed for e in entries] == [40, 41, 42]
    for e in entries:
        assert e.image_path.is_file() and e.thumbnail_path.is_file()
        assert e.kind == "generate" and e.model_id == "builtin" and e.model_hash == "0123456789"
        assert e.width == 64 and e.height == 64 and e.elapsed == 1.25
        assert e.request["seed"] == e.seed and e.request["batch"] == 1
        parsed = read_png_metadata(e.image_path)
        assert parsed.seed == e.seed and parsed.data["history"]["uid"] == e.uid
        with Image.open(e.image_path) as img:
            assert img.info["parameters"].startswith("a red cube on a table\nNegative prompt: blurry\nSteps: 20")
    assert store.get(entries[0].id) == entries[0]
    assert_consistent(store.root)


def test_list_newest_first_paging_and_count(store):
    ids = []
    for i in range(5):
        ids += [e.id for e in store.add(generate_result(prompt=f"cube number {i}"))]
    listed = store.list(limit=3)
    assert [e.id for e in listed] == ids[::-1][:3]
    assert [e.id for e in store.list(offset=3, limit=3)] == ids[::-1][3:]
    assert store.count() == 5


def test_search_kind_and_favourite_filters(store):
    a = store.add(generate_result(prompt="a red cube on a table", negative_prompt="blurry"))[0]
    b = store.add(generate_result(prompt="a lighthouse at dusk", negative_prompt="people, watermark"))[0]
    c = store.add(edit_result(prompt="a blue cube"))[0]
    assert {e.id for e in store.list(search="cube")} == {a.id, c.id}
    assert [e.id for e in store.list(search="light")] == [b.id]  # prefix match
    assert [e.id for e in store.list(search="watermark")] == [b.id]  # negative prompt indexed
    assert [e.id for e in store.list(search="RED table")] == [a.id]  # every word, any case
    assert store.count(search="cube") == 2
    for weird in ['"', "AND OR NOT", "*", "col:umn", "(", "NEAR(a b)", "'; DROP TABLE entries; --"]:
        store.list(search=weird)  # FTS syntax never gets through
    assert store.count() == 3
    assert [e.id for e in store.list(kind="edit")] == [c.id]
    assert {e.id for e in store.list(kind=["edit", "generate"])} == {a.id, b.id, c.id}
    store.set_favourite([a.id, c.id])
    assert {e.id for e in store.list(favourite=True)} == {a.id, c.id}
    assert [e.id for e in store.list(favourite=True, search="blue")] == [c.id]
    store.set_favourite(a.id, False)
    assert store.get(a.id).favourite is False and store.count(favourite=False) == 2


def test_edit_sources_stored_and_replayed(store):
    parent = store.add(generate_result())[0]
    source = image((10, 200, 30))
    entry = store.add(edit_result(source=source), parent_id=parent.id)[0]
    assert entry.parent_id == parent.id
    assert entry.source_path.is_file() and entry.mask_path.is_file()
    assert entry.source_path.parent == entry.image_path.parent
    request = store.load_request(entry.id)
    assert isinstance(request, EditRequest)
    assert request.image is not None and request.mask is not None
    assert request.image.tobytes() == source.tobytes()
    assert request.mask.mode == "L" and request.mask.getextrema() == (0, 255)
    assert request.source_prompt == "a green cube, on: wood" and request.t0 == 600 and request.seed == 7
    request.validate()
    inpaint = store.add(inpaint_result())[0]
    assert isinstance(store.load_request(inpaint.id), InpaintRequest)
    # A second edit of the same source shares the file; deleting one keeps it for the other.
    twin = store.add(edit_result(source=source))[0]
    assert twin.source_path == entry.source_path
    store.delete(entry.id)
    assert twin.source_path.is_file()
    store.delete(twin.id)
    assert not twin.source_path.exists()
    assert store.get(inpaint.id).source_path.is_file()


def test_parent_deleted_sets_null(store):
    parent = store.add(generate_result())[0]
    child = store.add(edit_result(), parent_id=parent.id)[0]
    store.delete(parent.id)
    assert store.get(child.id).parent_id is None


def test_delete_many_in_one_go(store):
    entries = store.add(generate_result(n=4))
    keep = store.add(generate_result(prompt="keep me"))[0]
    deleted = store.delete([e.id for e in entries])
    assert len(deleted) == 4 and store.count() == 1
    for e in entries:
        assert not e.image_path.exists() and not e.thumbnail_path.exists()
    with pytest.raises(HistoryError):
        store.get(entries[0].id)
    assert store.list()[0].id == keep.id
    assert store.list(search="cube") == []
    assert_consistent(store.root)


def test_delete_to_trash(store, tmp_path, monkeypatch):
    trashed = []
    import send2trash

    monkeypatch.setattr(send2trash, "send2trash", lambda path: (trashed.append(path), os.remove(path)))
    entry = store.add(generate_result())[0]
    store.delete(entry.id, to_trash=True)
    assert trashed == [str(entry.image_path)]
    assert store.count() == 0


def test_delete_to_trash_failure_keeps_files(store, monkeypatch):
    import send2trash

    def refuse(path):
        raise OSError("no trash here")

    monkeypatch.setattr(send2trash, "send2trash", refuse)
    entry = store.add(generate_result())[0]
    with pytest.raises(HistoryError, match="trash"):
        store.delete(entry.id, to_trash=True)
    assert entry.image_path.is_file()
    report = store.check()  # nothing lost: it comes back
    assert [e.uid for e in report.adopted] == [entry.uid]


def test_listeners(store):
    events = []
    unsubscribe = store.subscribe(lambda kind, data: events.append((kind, data)))
    entry = store.add(generate_result())[0]
    store.set_favourite(entry.id)
    store.delete(entry.id)
    unsubscribe()
    store.add(generate_result())
    assert [k for k, _ in events] == ["added", "changed", "deleted"]
    assert events[0][1][0].id == entry.id and events[1][1][0].favourite and events[2][1] == [entry.id]


def test_check_reports_missing_and_adopts_orphans(store, tmp_path):
    a, b = store.add(generate_result(n=2))
    a.image_path.unlink()
    report = store.check()
    assert [e.id for e in report.missing] == [a.id]  # reported, not dropped
    assert store.count() == 2
    # An image without its row (e.g. the database was restored from an older copy).
    store._db().execute("DELETE FROM entries WHERE id = ?", (b.id,))
    report = store.check()
    assert [e.uid for e in report.adopted] == [b.uid]
    adopted = report.adopted[0]
    assert adopted.seed == b.seed and adopted.prompt == b.prompt and adopted.request == b.request
    assert adopted.created_at == pytest.approx(b.created_at)
    # A PNG with no metadata is set aside, not deleted.
    stray = b.image_path.parent / "stray.png"
    image().save(stray)
    report = store.check()
    assert not stray.exists() and report.set_aside and report.set_aside[0].is_file()
    # Thumbnails are rebuilt on demand.
    b2 = store.list()[0]
    b2.thumbnail_path.unlink()
    assert store.thumbnail(b2).is_file()


def test_old_schema_is_migrated_in_place(tmp_path):
    root = tmp_path / "history"
    (root / "images" / "2025-01").mkdir(parents=True)
    img_rel = "images/2025-01/old-entry.png"
    image().save(root / img_rel)
    conn = sqlite3.connect(root / "history.db")
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    request = generate_result(prompt="an old lighthouse").request.to_dict(include_images=False)
    conn.execute(
        "INSERT INTO entries (uid, created_at, kind, request_json, prompt, negative_prompt, model_id, seed, image_path)"
        " VALUES ('old-entry', 1700000000, 'generate', ?, 'an old lighthouse', '', 'builtin', 5, ?)",
        (json.dumps(request), img_rel),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with HistoryStore(root) as store:
        version = store._db().execute("PRAGMA user_version").fetchone()[0]
        assert version == SCHEMA_VERSION
        [entry] = store.list(search="lighthouse")
        assert entry.uid == "old-entry" and entry.width == 64 and entry.model_hash == ""
        store.add(generate_result())
        assert store.count() == 2
    # Opening again is a no-op.
    with HistoryStore(root) as store:
        assert store.count() == 2


def test_newer_schema_is_refused(tmp_path):
    root = tmp_path / "h"
    HistoryStore(root).close()
    conn = sqlite3.connect(root / "history.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(HistoryError, match="newer"):
        HistoryStore(root)


def test_open_and_list_with_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_DESK_DATA_DIR", str(tmp_path / "data"))
    with HistoryStore() as store:
        assert store.root == (tmp_path / "data" / "history").resolve()


# -- CLI ------------------------------------------------------------------------------


def run_cli(argv):
    parser = argparse.ArgumentParser()
    add_history_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = run_history(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_DESK_DATA_DIR", str(tmp_path / "data"))
    with HistoryStore() as store:
        a = store.add(generate_result(prompt="a red cube"))[0]
        b = store.add(edit_result(prompt="a blue cube"))[0]
        store.add(generate_result(prompt="a lighthouse"))
    code, out, _ = run_cli(["history", "list", "--search", "cube"])
    assert code == 0 and "a red cube" in out and "a blue cube" in out and "lighthouse" not in out
    code, out, _ = run_cli(["history", "list", "--json"])
    data = json.loads(out)
    assert code == 0 and len(data) == 3 and data[0]["prompt"] == "a lighthouse"
    code, out, _ = run_cli(["history", "show", str(a.id)])
    assert code == 0 and "Steps: 20" in out and "a red cube" in out
    code, out, _ = run_cli(["history", "export", str(b.id), "--out", str(tmp_path / "out")])
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert f"{b.uid}.png" in names and f"{b.uid}.source.png" in names and f"{b.uid}.mask.png" in names
    exported = read_png_metadata(tmp_path / "out" / f"{b.uid}.png").request
    assert isinstance(exported, EditRequest) and exported.t0 == 600
    code, _, err = run_cli(["history", "show", "999"])
    assert code == 2 and "no history entry 999" in err
    code, out, _ = run_cli(["history", "delete", str(a.id)])
    assert code == 0 and "Deleted 1" in out
    code, out, _ = run_cli(["history", "list"])
    assert "a red cube" not in out and "2 of 2" in out


def test_quick_check_rescans_only_changed_folders(store):
    entry = store.add(generate_result())[0]
    folder = entry.image_path.parent
    old = time.time() - 60
    os.utime(folder, (old, old))
    store.check()
    recorded = dict(store._db().execute("SELECT folder, mtime_ns FROM folder_state").fetchall())
    assert recorded == {folder.name: folder.stat().st_mtime_ns}
    # A row lost without the folder changing: only the full check sees it.
    store._db().execute("DELETE FROM entries WHERE id = ?", (entry.id,))
    assert store.check().adopted == []
    assert [e.uid for e in store.check(full=True).adopted] == [entry.uid]
    # A file appearing changes the folder: the quick check sees it.
    os.utime(folder, (old, old))
    store.check()
    store._db().execute("DELETE FROM entries WHERE uid = ?", (entry.uid,))
    copy = folder / "20200101-000000-aaaaaaaaaaaa.png"
    copy.write_bytes(entry.image_path.read_bytes())
    adopted = {e.uid for e in store.check().adopted}
    assert adopted == {entry.uid, copy.stem}
    # A missing image is reported at every open, not only once.
    entry.image_path.unlink()
    os.utime(folder, (old + 5, old + 5))
    assert store.check().missing and store.check().missing


def test_sqlite_errors_become_history_errors(store):
    class Broken:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, *a, **k):
            error = sqlite3.DatabaseError("database disk image is malformed")
            # sqlite_errorcode is set by sqlite3 from Python 3.11; the stubs hide it for the 3.10 target
            error.sqlite_errorcode = 11  # pyright: ignore[reportAttributeAccessIssue]
            raise error

        def __getattr__(self, name):
            return getattr(self.conn, name)

    real = store._conn
    store._conn = Broken(real)
    try:
        for call in (lambda: store.list(), lambda: store.count(search="x"), lambda: store.get(1)):
            with pytest.raises(HistoryError, match="damaged") as info:
                call()
            assert "Restart" in info.value.hint
    finally:
        store._conn = real


def test_cli_check(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_DESK_DATA_DIR", str(tmp_path / "data"))
    with HistoryStore() as store:
        [entry] = store.add(generate_result())
    entry.image_path.unlink()
    code, out, err = run_cli(["history", "check", "--full"])
    assert code == 0 and f"missing image: entry {entry.id}" in out
