"""Which start method mmpath's own worker pools use: ``fork`` when it is safe, else
``forkserver``.

``fork`` is the fast way to start reader workers (no re-import, in-memory slides and shared
buffers reach the children as they are), but forking a process in which other libraries run
threads can deadlock the child: a thread that held a lock (a gRPC/Ray client's, malloc's) at
the fork is gone in the child and the lock stays taken forever. Ray leaves its gRPC threads
running even after ``ray.shutdown()``; a live Dask ``Client`` runs its event loop in a thread.
So a later DataLoader in the same notebook or script (``mm.tl.embed`` after
``mm.archive.run(..., engine="ray")``) could hang.

:func:`worker_start_method` looks at the live threads first and picks ``forkserver`` (a clean
server process started from scratch; its children are forked from it) when foreign threads
are alive: Python threads that are not daemons or belong to Ray, Dask, tornado or gRPC
(``threading.enumerate()``), and native gRPC/Ray threads (``/proc/self/task/*/comm``).
Like ``spawn``, ``forkserver`` re-imports a script's ``__main__`` in the workers, so such
scripts need the ``if __name__ == "__main__":`` guard (Dask's LocalCluster needs it anyway).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["foreign_threads", "worker_start_method"]

# Python threads started by these packages make fork unsafe (even when daemons).
_FOREIGN_MODULES = ("ray", "distributed", "dask", "tornado", "grpc")
# Native thread names (Linux comm, 15 chars) of gRPC cores and Ray's C++ client.
_NATIVE_PREFIXES = (
    "grpc", "gcs_client", "event_engine", "default-executo", "resolver-execut",
    "timer_manager", "client.poll", "server.poll", "worker.io", "global.accessor",
    "task_event_buff", "nexting_thread",
)  # fmt: skip
_TOLD: set[tuple[str, ...]] = set()


def _native_thread_names() -> list[str]:
    names = []
    for comm in Path("/proc/self/task").glob("*/comm"):
        try:
            names.append(comm.read_text().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return names


def foreign_threads() -> list[str]:
    """Names of live threads that make ``fork`` unsafe in this process (see the module doc).

    Example
    -------
    >>> foreign_threads()
    []
    """
    main = threading.main_thread()
    found = []
    for t in threading.enumerate():
        if t is main or t.name.startswith("mmpath-"):
            continue
        target = getattr(t, "_target", None)
        module = getattr(target, "__module__", None) or type(t).__module__ or ""
        if not t.daemon or module.split(".")[0] in _FOREIGN_MODULES:
            found.append(t.name)
    found += [n for n in _native_thread_names() if n.startswith(_NATIVE_PREFIXES)]
    return found


def worker_start_method() -> str:
    """``"fork"`` when this process can fork safely, else ``"forkserver"`` (``"spawn"`` where
    neither exists). Logs once per set of threads why fork was avoided.

    Example
    -------
    >>> ctx = multiprocessing.get_context(worker_start_method())
    """
    methods = mp.get_all_start_methods()
    if "fork" not in methods:
        return "spawn"
    found = foreign_threads()
    if not found:
        return "fork"
    key = tuple(sorted(set(found)))
    if key not in _TOLD:
        _TOLD.add(key)
        log.info(
            "threads of other libraries are alive (%s); worker processes start with "
            "forkserver instead of fork",
            ", ".join(key[:5]) + (" ..." if len(key) > 5 else ""),
        )
    return "forkserver" if "forkserver" in methods else "spawn"
