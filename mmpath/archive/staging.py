"""Staging: copy slides from slow (network) storage to a local folder ahead of the workers.

A background thread copies the next slides, in run order, into ``<dir>/<slide_id>/`` while the
workers embed the current ones; jobs read the local copy and the copy is deleted as soon as
its slide's record comes back. The staged bytes never exceed ``max_gb`` (a slide larger than
that alone is read in place), and at most ``ahead`` slides wait staged. Multi-file formats
(``.mrxs``, ``.vms``, DICOM folders) are read in place: their companion files are not copied.
Tables record the slide's real path, never the staging copy.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MULTI_FILE = (".mrxs", ".vms", ".vmu")
_END = object()


class Stager:
    """Copies slides ahead of the workers into a bounded local cache (see the module doc)."""

    def __init__(self, directory: str | Path, *, max_gb: float, ahead: int = 4) -> None:
        self.dir = Path(directory).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_gb * 1e9)
        self.ahead = max(1, int(ahead))
        self.used = 0
        self.peak = 0
        self._sizes: dict[str, int] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()

    def _copy(self, payload: dict[str, Any]) -> dict[str, Any]:
        src = Path(payload["task"]["path"])
        sid = payload["task"]["slide_id"]
        try:
            if not src.is_file() or src.suffix.lower() in _MULTI_FILE:
                return payload
            size = src.stat().st_size
        except OSError:
            return payload
        if size > self.max_bytes:
            log.info("%s is larger than the staging bound; read in place", src)
            return payload
        with self._cond:
            self._cond.wait_for(lambda: self.used + size <= self.max_bytes or self._stop.is_set())
            if self._stop.is_set():
                return payload
            self.used += size
            self.peak = max(self.peak, self.used)
            self._sizes[sid] = size
        dst = self.dir / sid / src.name
        tmp = dst.with_name(f".{dst.name}.part")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
        except OSError as err:  # unreadable source or full cache: the job reads the original
            log.warning("could not stage %s (%s); reading it in place", src, err)
            self.release(sid)
            return payload
        return {**payload, "staged": str(dst)}

    def stage(self, payloads: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield ``payloads`` with ``"staged"`` set to the local copy, copying ahead."""
        ready: queue.Queue = queue.Queue(maxsize=self.ahead)

        def work() -> None:
            try:
                for p in payloads:
                    if self._stop.is_set():
                        break
                    ready.put(self._copy(p))
            finally:
                ready.put(_END)

        thread = threading.Thread(target=work, daemon=True, name="mmpath-stager")
        thread.start()
        try:
            while (item := ready.get()) is not _END:
                yield item
        finally:
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            with contextlib.suppress(queue.Empty):
                while True:  # unblock the copier if it waits on a full queue
                    ready.get_nowait()

    def release(self, slide_id: str) -> None:
        """Delete a slide's staged copy (its job is over) and free its bytes."""
        shutil.rmtree(self.dir / slide_id, ignore_errors=True)
        with self._cond:
            self.used -= self._sizes.pop(slide_id, 0)
            self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for sid in list(self._sizes):
            self.release(sid)
