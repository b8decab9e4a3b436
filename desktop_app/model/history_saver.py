"""HistorySaver: the one place where results are written to the history.

Made by the app's wiring (``jobs.resultReady -> saver.save``), not by a widget, so a result is saved once whichever
widgets show it. Writes run on one background thread, in the order the results came; the news comes back on the
GUI thread as signals. A write that fails (disk full, read-only folder...) loses nothing: the result stays in
memory, `unsaved()` lists it, `retry()` writes it again and `save_unsaved_to(folder)` writes its images elsewhere
(PNGs with their metadata) while the history cannot take them.

    saver = HistorySaver(store)      # or HistorySaver() and set_store(store) once the history is open
    saver.save(result, parent_id=None)
    saver.saved(list[Entry]); saver.failed(str message, str hint)
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from desktop_app.core.errors import HistoryError, UserError

log = logging.getLogger(__name__)


class _Item:
    """A result waiting to be written, with the entry it was made from."""

    __slots__ = ("result", "parent_id")

    def __init__(self, result: Any, parent_id: int | None) -> None:
        self.result, self.parent_id = result, parent_id


class HistorySaver(QObject):
    """Writes results to a HistoryStore off the GUI thread; see the module docstring."""

    saved = Signal(list)  # the new history entries, on the GUI thread
    failed = Signal(str, str)  # message, hint (the result is kept: see unsaved / retry)
    unsavedChanged = Signal(int)  # how many results are waiting for a retry
    # emitted on the writing thread; the receiver (self) lives on the GUI thread, so it arrives queued
    _written = Signal(object, object, object)  # item, entries or None, exception or None

    def __init__(self, store: Any = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._store = store
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        self._unsaved: list[_Item] = []
        # which entries each recent result became (by object identity): the same result is never saved twice,
        # and the window can ask which entry an image it shows came from (the parent of an edit of it)
        self._entries: collections.OrderedDict[int, tuple[Any, list[Any]]] = collections.OrderedDict()
        self._written.connect(self._on_written)

    def close(self, wait: bool = True) -> None:
        """Stop the writing thread (after the queued writes when `wait`); a later save starts a new one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)

    # -- the store -------------------------------------------------------------------
    def store(self) -> Any:
        return self._store

    def set_store(self, store: Any) -> None:
        """Use `store` from now on (the window opens before the history does); results kept meanwhile are written."""
        self._store = store
        if store is not None and self._unsaved:
            self.retry()

    # -- writing ---------------------------------------------------------------------------
    @Slot(object)
    def save(self, result: Any, parent_id: int | None = None) -> None:
        """Write `result` (all its images) in the background; `saved` or `failed` tells how it went."""
        if result is None or not getattr(result, "images", None):
            return
        if id(result) in self._entries and self._entries[id(result)][0] is result:
            return  # already in the history (saved before, or opened from it)
        if any(item.result is result for item in self._unsaved):
            return
        item = _Item(result, parent_id)
        if self._store is None:  # no history yet: kept until set_store
            self._unsaved.append(item)
            self.unsavedChanged.emit(len(self._unsaved))
            return
        self._submit(item)

    def _submit(self, item: _Item) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-save")
        store, written = self._store, self._written
        self._remember(item.result, [])  # claimed: a second save of it while this one runs is a no-op

        def write() -> None:
            entries, error = None, None
            try:
                entries = store.add(item.result, parent_id=item.parent_id)
            except Exception as exc:  # noqa: BLE001 - reported on the GUI thread
                error = exc
            try:
                written.emit(item, entries, error)
            except RuntimeError:  # the saver is gone (quitting)
                pass

        self._futures = [f for f in self._futures if not f.done()] + [self._pool.submit(write)]

    @Slot(object, object, object)
    def _on_written(self, item: _Item, entries: Any, error: Any) -> None:
        if error is None:
            entries = list(entries or [])
            self._remember(item.result, entries)
            self.saved.emit(entries)
            return
        self._entries.pop(id(item.result), None)
        if isinstance(error, UserError):
            message, hint = error.message, error.hint
        else:
            log.error("history: saving failed", exc_info=error)
            message, hint = (
                f"Could not save the result to the history: {error}",
                "The image stays open; save it with Save as.",
            )
        self._unsaved.append(item)
        self.unsavedChanged.emit(len(self._unsaved))
        self.failed.emit(message, hint)

    def retry(self) -> int:
        """Write the results that could not be written again; returns how many were queued."""
        if self._store is None or not self._unsaved:
            return 0
        items, self._unsaved = self._unsaved, []
        self.unsavedChanged.emit(0)
        for item in items:
            self._submit(item)
        return len(items)

    def unsaved(self) -> list[Any]:
        """The results that are not in the history (a write failed, or there was no history yet)."""
        return [item.result for item in self._unsaved]

    def save_unsaved_to(self, folder: str | os.PathLike) -> list[Path]:
        """Write every image of the results not in the history into `folder`, as PNGs with their parameters and
        our metadata (the history can adopt them later). They stay in memory for `retry()`. Raises HistoryError
        (naming the folder) when it cannot be written; files written before that stay."""
        from desktop_app.core.images import save_png
        from desktop_app.core.infotext import png_info

        target = Path(folder).expanduser()
        written: list[Path] = []
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            target.mkdir(parents=True, exist_ok=True)
            for n, item in enumerate(self._unsaved, 1):
                for index, image in enumerate(item.result.images):
                    path = target / f"diffusion-desk-{stamp}-{n}-{index + 1}.png"
                    k = 1
                    while path.exists():
                        k += 1
                        path = target / f"diffusion-desk-{stamp}-{n}-{index + 1}-{k}.png"
                    save_png(image, path, png_info(item.result, index))
                    written.append(path)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
            raise HistoryError(
                f"Cannot save to {target}: {'the disk is full' if full else exc.strerror or exc}"
                f"{f' ({len(written)} image(s) written)' if written else ''}.",
                "Choose a folder on another disk; the results stay in memory.",
            ) from exc
        log.info("history: %d unsaved image(s) written to %s", len(written), target)
        return written

    def pending(self) -> int:
        """Writes queued or running."""
        return sum(1 for f in self._futures if not f.done())

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until the queued writes are done (tests, quitting); the signals follow through the event loop."""
        pending = [f for f in self._futures if not f.done()]
        if not pending:
            return True
        _done, not_done = concurrent.futures.wait(pending, timeout=timeout)
        return not not_done

    # -- which entries a result became ----------------------------------------------------------
    def _remember(self, result: Any, entries: list[Any]) -> None:
        self._entries[id(result)] = (result, entries)
        self._entries.move_to_end(id(result))
        while len(self._entries) > 64:
            self._entries.popitem(last=False)

    def remember(self, result: Any, entries: list[Any]) -> None:
        """`result` is already in the history as `entries` (opened from it): never save it again."""
        self._remember(result, list(entries))

    def entries_for(self, result: Any) -> list[Any]:
        """The history entries a recent result became (one per image; empty while it is being written)."""
        known = self._entries.get(id(result))
        return list(known[1]) if known is not None and known[0] is result else []


__all__ = ["HistorySaver"]
