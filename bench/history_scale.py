"""History at scale (a benchmark, not a test).

Builds a history of 10,000 entries in a temporary folder (real rows and real
small PNG files carrying their metadata), then prints:

- open the store (migrations check, quick_check, the folder scan of check()) and list the first page,
- a full-text search (first page and count),
- adding one entry, the image encode excluded (and, for reference, included).

Targets: < 100 ms, < 50 ms, < 50 ms.

    python bench/history_scale.py [--entries 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

from PIL import Image

from desktop_app.core import history as history_module
from desktop_app.core.events import Result
from desktop_app.core.history import HistoryStore, _encode_png, _encode_thumb, _new_uid
from desktop_app.core.infotext import build_png_info
from desktop_app.core.requests import GenerateRequest

WORDS = [
    "red",
    "blue",
    "green",
    "yellow",
    "cube",
    "sphere",
    "cone",
    "table",
    "wood",
    "glass",
    "lighthouse",
    "dusk",
    "forest",
    "river",
    "mountain",
    "portrait",
    "cat",
    "dog",
    "robot",
    "castle",
    "city",
    "night",
    "rain",
    "snow",
    "sunset",
    "ocean",
    "bridge",
    "tower",
    "flower",
    "garden",
    "desert",
]


def populate(root: Path, n: int) -> None:
    """n entries, written in bulk: same files and rows as HistoryStore.add, without per-file fsync."""
    store = HistoryStore(root)
    rnd = random.Random(1)
    tiny = Image.new("RGB", (16, 16), "gray")
    thumb = _encode_thumb(tiny)
    rows = []
    start = time.time() - n * 60
    for i in range(n):
        created = start + i * 60
        month = time.strftime("%Y-%m-%d", time.gmtime(created))
        uid = _new_uid(created)
        prompt = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 14)))
        negative = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(0, 4)))
        request = GenerateRequest(
            prompt=prompt, negative_prompt=negative, steps=20, guidance=7.0, width=512, height=512, seed=i
        )
        info = build_png_info(request, i, "builtin", "0123456789", history={"uid": uid, "created_at": created})
        image_path = root / "images" / month / f"{uid}.png"
        thumb_path = root / "thumbs" / month / f"{uid}.jpg"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        thumb_path.parent.mkdir(parents=True, exist_ok=True)
        image_path.write_bytes(_encode_png(tiny, info))
        thumb_path.write_bytes(thumb)
        req = request.to_dict(include_images=False)
        rows.append(
            (
                uid,
                created,
                "generate",
                json.dumps(req),
                prompt,
                negative,
                "builtin",
                "0123456789",
                i,
                image_path.relative_to(root).as_posix(),
                thumb_path.relative_to(root).as_posix(),
                None,
                3.2,
                512,
                512,
                None,
                None,
            )
        )
    conn = store._db()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO entries (uid, created_at, kind, request_json, prompt, negative_prompt, model_id, model_hash, seed,"
        " image_path, thumb_path, parent_id, elapsed, width, height, source_path, mask_path)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


T = TypeVar("T")


def timed(fn: Callable[[], T], repeat: int = 7) -> tuple[float, T]:
    times = []
    value: T | None = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), cast(T, value)  # repeat >= 1: fn's last value


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--keep", help="build (or reuse) the history in this folder and keep it")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dd-history-bench-"))
    try:
        if not (root / "history.db").exists():
            t0 = time.perf_counter()
            populate(root, args.entries)
            print(f"built {args.entries} entries in {time.perf_counter() - t0:.1f} s at {root}")

        def open_and_list():
            store = HistoryStore(root)
            page = store.list(limit=100)
            total = store.count()
            store.close()
            return page, total

        ms_open, (page, total) = timed(open_and_list)
        assert len(page) == 100 and total >= args.entries

        # After a session that saved something, today's folder is rescanned at the next open.
        tiny_result = Result(
            request=GenerateRequest(prompt="one more", steps=20, guidance=7.0, width=64, height=64, seed=2),
            images=[Image.new("RGB", (64, 64))],
            seeds=[2],
            model_id="builtin",
        )
        after_add = []
        for _ in range(5):
            with HistoryStore(root, check=False) as other:
                other.add(tiny_result)
            t0 = time.perf_counter()
            open_and_list()
            after_add.append((time.perf_counter() - t0) * 1000)
        ms_open_after_add = statistics.median(after_add)
        today = max((root / "images").iterdir()).name
        today_files = sum(1 for _ in (root / "images" / today).iterdir())

        store = HistoryStore(root)

        def open_nocheck():
            with HistoryStore(root, check=False) as s:
                return s.list(limit=100)

        ms_open_nocheck, _ = timed(open_nocheck)
        ms_search, hits = timed(lambda: (store.list(search="red cube", limit=100), store.count(search="red cube")))
        ms_search_page, _ = timed(lambda: store.list(search="red cube", limit=100))
        ms_search_rare, _ = timed(lambda: store.list(search="lighthouse dusk snow", limit=100))

        big = Image.new("RGB", (512, 512))
        big.putdata([(x % 256, (x // 512) % 256, 128) for x in range(512 * 512)])
        request = GenerateRequest(
            prompt="a benchmark cube on a table", steps=20, guidance=7.0, width=512, height=512, seed=1
        )

        def result():
            return Result(
                request=request, images=[big], seeds=[1], model_id="builtin", model_hash="0123456789", elapsed=3.0
            )

        ms_add_full, _ = timed(lambda: store.add(result()), repeat=5)
        # Encode excluded: the PNG and thumbnail bytes are made beforehand.
        png = _encode_png(big, build_png_info(request, 1, "builtin", "0123456789"))
        jpg = _encode_thumb(big)
        real_png, real_thumb = history_module._encode_png, history_module._encode_thumb
        history_module._encode_png = lambda image, pnginfo=None: png
        history_module._encode_thumb = lambda image: jpg
        try:
            ms_add, _ = timed(lambda: store.add(result()), repeat=9)
        finally:
            history_module._encode_png, history_module._encode_thumb = real_png, real_thumb
        store.close()

        print(f"entries: {total}")
        print(f"open + check + first page (100) + count: {ms_open:7.1f} ms   (target < 100 ms)")
        print(f"  same, after another session saved (rescans today's {today_files} files): {ms_open_after_add:.1f} ms")
        print(f"  open without check() + first page:     {ms_open_nocheck:7.1f} ms")
        print(f"full-text search 'red cube' (page+count): {ms_search:7.1f} ms   (target < 50 ms; {hits[1]} hits)")
        print(f"  search 'red cube' (page only):          {ms_search_page:7.1f} ms")
        print(f"  search 'lighthouse dusk snow' (page):   {ms_search_rare:7.1f} ms")
        print(f"add one entry, 512x512, encode excluded:  {ms_add:7.1f} ms   (target < 50 ms)")
        print(f"  add one entry, encode included:         {ms_add_full:7.1f} ms")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
