"""``diffusion-desk history ...``: list, show, export and delete history entries headless.

`desktop_app.cli` adds these with `add_history_parser(subparsers)` and runs them
with `run_history(args)`; the data folder (``--data-dir``) is set before that.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import unicodedata
from pathlib import Path
from typing import Any, TextIO

from desktop_app.core.errors import UserError


def add_history_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``history`` and its subcommands to `subparsers` (from ``parser.add_subparsers()``)."""
    parser = subparsers.add_parser("history", help="list, show, export or delete history entries")
    sub = parser.add_subparsers(dest="history_command", metavar="{list,show,export,delete,check}")
    sub.required = True

    p_list = sub.add_parser("list", help="list entries, newest first")
    p_list.add_argument("--search", metavar="TEXT", help="full-text search in prompts")
    p_list.add_argument("--kind", choices=("generate", "img2img", "inpaint", "edit"), help="only this kind")
    p_list.add_argument("--favourites", action="store_true", help="only favourites")
    p_list.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0 for all)")
    p_list.add_argument("--offset", type=int, default=0, help="skip this many")
    p_list.add_argument("--json", action="store_true", help="print JSON (one array)")

    p_show = sub.add_parser("show", help="show one entry and its parameters")
    p_show.add_argument("id", type=int)
    p_show.add_argument("--json", action="store_true", help="print JSON")

    p_export = sub.add_parser("export", help="copy an entry's image (with its metadata), source, mask and request")
    p_export.add_argument("id", type=int)
    p_export.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created if needed)")

    p_delete = sub.add_parser("delete", help="delete entries and their files")
    p_delete.add_argument("id", type=int, nargs="+")
    p_delete.add_argument("--trash", action="store_true", help="move the files to the desktop trash")

    p_check = sub.add_parser("check", help="make files and database agree; report entries whose image is gone")
    p_check.add_argument("--full", action="store_true", help="rescan every folder and verify the database file")

    parser.set_defaults(run=run_history)
    return parser


def _store() -> Any:
    from desktop_app.core.history import HistoryStore

    return HistoryStore()


_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def printable(text: Any, keep: str = "") -> str:
    """`text` with control characters (a NUL, an escape sequence, a bidi override...) shown as \\xNN / \\uNNNN,
    so a prompt cannot garble or fake the terminal's output; characters in `keep` (e.g. a newline) stay."""
    out = []
    for ch in str(text):
        if ch in keep or not (unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI or ch in "\u2028\u2029"):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def _line(entry: Any) -> str:
    prompt = printable(entry.prompt.replace("\n", " "))
    if len(prompt) > 60:
        prompt = prompt[:57] + "..."
    star = "*" if entry.favourite else " "
    size = f"{entry.width}x{entry.height}" if entry.width else "?"
    gone = "  [image missing]" if not entry.exists else ""
    return (
        f"{entry.id:>6} {star} {entry.created.astimezone().strftime('%Y-%m-%d %H:%M')}  {entry.kind:<8} "
        f"{size:>9}  seed {entry.seed}  {prompt}{gone}"
    )


def _list(store: Any, args: argparse.Namespace, out: TextIO) -> int:
    limit = args.limit if args.limit and args.limit > 0 else 1 << 62
    favourite = True if args.favourites else None
    entries = store.list(
        offset=max(args.offset, 0), limit=limit, search=args.search, kind=args.kind, favourite=favourite
    )
    if args.json:
        json.dump([e.to_dict() for e in entries], out, ensure_ascii=False, indent=2)
        out.write("\n")
        return 0
    total = store.count(search=args.search, kind=args.kind, favourite=favourite)
    for entry in entries:
        out.write(_line(entry) + "\n")
    out.write(f"{len(entries)} of {total} entr{'y' if total == 1 else 'ies'}\n")
    return 0


def _show(store: Any, args: argparse.Namespace, out: TextIO) -> int:
    entry = store.get(args.id)
    if args.json:
        json.dump(entry.to_dict(), out, ensure_ascii=False, indent=2)
        out.write("\n")
        return 0
    out.write(f"Entry {entry.id} ({entry.kind}), {entry.created.astimezone().strftime('%Y-%m-%d %H:%M:%S')}\n")
    out.write(f"Image:     {entry.image_path}{'' if entry.exists else '  [missing]'}\n")
    if entry.source_path:
        out.write(f"Source:    {entry.source_path}\n")
    if entry.mask_path:
        out.write(f"Mask:      {entry.mask_path}\n")
    if entry.parent_id is not None:
        out.write(f"Parent:    {entry.parent_id}\n")
    out.write(f"Model:     {printable(entry.model_id)} {printable(entry.model_hash)}\n")
    out.write(f"Favourite: {'yes' if entry.favourite else 'no'}\n")
    if entry.elapsed is not None:
        out.write(f"Time:      {entry.elapsed:.2f} s\n")
    text = None
    if entry.exists:
        try:
            from PIL import Image

            with Image.open(entry.image_path) as img:
                text = img.info.get("parameters")
        except (OSError, ValueError):
            pass
    if text:
        out.write("\n" + printable(text, keep="\n\t") + "\n")
    else:
        out.write("\n" + json.dumps(entry.request, ensure_ascii=False, indent=2) + "\n")
    return 0


def _export(store: Any, args: argparse.Namespace, out: TextIO) -> int:
    from desktop_app.core.errors import HistoryError

    entry = store.get(args.id)
    if not entry.exists:
        raise HistoryError(f"The image of entry {entry.id} is missing ({entry.image_path}).", "Nothing to export.")
    folder = Path(args.out).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        owned = getattr(store, "owned", None)
        if owned is not None and not owned(entry.image_path):  # only the store's own files, never a link out of it
            raise HistoryError(
                f"The image of entry {entry.id} is not a file of the history ({entry.image_path}).",
                "Nothing was exported; run 'history check --full'.",
            )
        written = [shutil.copy2(entry.image_path, folder / entry.image_path.name)]
        for label, path in (("source", entry.source_path), ("mask", entry.mask_path)):
            if path is not None and path.is_file() and (owned is None or owned(path)):
                written.append(shutil.copy2(path, folder / f"{entry.uid}.{label}.png"))
        request_file = folder / f"{entry.uid}.request.json"
        request_file.write_text(json.dumps(entry.request, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        written.append(request_file)
    except OSError as exc:
        raise HistoryError(f"Cannot export to {folder}: {exc}", "Choose a folder you can write to.") from exc
    for path in written:
        out.write(f"{path}\n")
    return 0


def _delete(store: Any, args: argparse.Namespace, out: TextIO) -> int:
    ids = list(dict.fromkeys(args.id))
    for entry_id in ids:
        store.get(entry_id)  # unknown ids: an error before anything is deleted
    deleted = store.delete(ids, to_trash=args.trash)
    out.write(
        f"Deleted {len(deleted)} entr{'y' if len(deleted) == 1 else 'ies'}{' (files in the trash)' if args.trash else ''}.\n"
    )
    return 0


def _check(store: Any, args: argparse.Namespace, out: TextIO) -> int:
    report = store.check(full=args.full)
    if store.recovery_message:
        out.write(store.recovery_message + "\n")
    out.write((report.message() or "The history is consistent.") + "\n")
    for entry in report.missing:
        out.write(f"missing image: entry {entry.id}: {entry.image_path}\n")
    for path in report.set_aside:
        out.write(f"set aside (no metadata): {printable(path)}\n")
    for notice in report.dropped:
        out.write(f"dropped: {printable(notice)}\n")
    for path in report.skipped:
        out.write(f"not added yet ({report.deferred}): {printable(path)}\n")
    return 0


_COMMANDS = {"list": _list, "show": _show, "export": _export, "delete": _delete, "check": _check}


USER_ERROR = 2  # the exit status of a user error, as in every other command


def _error(err: TextIO, exc: UserError) -> int:
    err.write(f"error: {printable(exc.message)}\n" + (f"hint: {printable(exc.hint)}\n" if exc.hint else ""))
    return USER_ERROR


def run_history(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed ``history`` command; 0 on success, 2 on a user error (message and hint on stderr)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    assert out is not None and err is not None  # sys.stdout is None only in a windowed bundle, which has no CLI
    try:
        store = _store()
    except UserError as exc:
        return _error(err, exc)
    try:
        if getattr(store, "read_only_reason", None):
            err.write(f"note: {printable(store.read_only_reason)}\n")
        if store.recovery_message:
            err.write(f"note: {printable(store.recovery_message)}\n")
        elif store.last_check is not None and store.last_check.message():
            err.write(f"note: {printable(store.last_check.message())}\n")
        return _COMMANDS[args.history_command](store, args, out)
    except UserError as exc:
        return _error(err, exc)
    finally:
        store.close()
