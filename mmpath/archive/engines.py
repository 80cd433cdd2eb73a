"""Engines: thin adapters that run :func:`mmpath.archive.job.run_job` over many slides.

An engine takes an iterable of job payloads and yields each slide's record as it finishes. It
decides *where* jobs run, never *what* they compute, so every engine writes the same tables.

* ``local`` (default): a ``concurrent.futures.ProcessPoolExecutor`` (spawned processes) of
  ``workers`` model processes, one per GPU (``CUDA``) or several on the CPU, each decoding its
  slide's tiles in ``reader_workers`` torch DataLoader processes; ``workers=0`` runs in this
  process (debugging, tests).
* ``ray`` (``pip install 'mmpath[ray]'``): an actor pool (``ray.util.ActorPool``) of
  ``workers`` actors (``num_gpus=1`` each, one per GPU, when the cluster has GPUs), each
  running one slide at a time; a local cluster of ``workers`` CPUs
  (``ray.init(num_cpus=..., include_dashboard=False)``) or ``address=`` for an existing one.
* ``dask`` (``pip install 'mmpath[dask]'``): ``distributed.Client`` on a ``LocalCluster`` of
  ``workers`` single-threaded processes or ``address=`` for an existing scheduler (Slurm,
  Kubernetes); tasks ask ``resources={"GPU": 1}`` when GPUs exist.

Every worker loads the run's encoders once, before its first slide, and keeps them
(:func:`~mmpath.archive.job.warm_up` in the local pool's initializer, the Ray actor's
constructor, and a Dask worker plugin). At most ``2 * workers`` jobs are in flight at any
time, so a run over 10^6 slides never holds 10^6 futures. A worker process that dies (OOM
killer, ``kill -9``) while it holds a slide turns that slide's record into ``interrupted``
(redone by the next run); the other slides go on. An address that does not answer fails
within ``connect_timeout`` seconds.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlparse

from mmpath.archive import store as S
from mmpath.archive.job import run_job
from mmpath.errors import EngineError

log = logging.getLogger(__name__)

__all__ = ["preflight", "run_engine", "cuda_count", "default_workers"]


def cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover
        return 0


def _interrupted(payload: dict[str, Any], why: str) -> dict[str, Any]:
    """Record a slide whose worker died mid-job as interrupted (the next run redoes it)."""
    task = payload["task"]
    store = S.ArchiveStore(payload["out"])
    lock = store.lock(task["slide_id"], stale_seconds=payload["config"]["stale_lock_seconds"])
    rec = store.read_record(task["slide_id"]) or {"slide_id": task["slide_id"]}
    rec = {**rec, "path": task["path"], "state": S.INTERRUPTED, "error": why}
    if lock.acquire():  # free or stale: nobody else works on it
        try:
            store.write_record(rec)
        finally:
            lock.release()
    return {**rec, "action": "ran"}


# An HTTP/2 client preface and an empty SETTINGS frame: a Ray GCS or Ray Client server (gRPC)
# answers it with its own SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _check_reachable(address: str, timeout: float, engine: str) -> None:
    """Fail fast (within about ``timeout`` s) when nothing answers at a cluster address.

    Connecting is not enough: a port that accepts and never replies (a stuck process, a
    firewall that holds connections) hangs ``distributed.Client`` past its timeout. Both
    servers speak first (a Dask scheduler's handshake, a gRPC server's SETTINGS), so a
    few bytes within ``timeout`` prove something of the kind listens. ``tls://`` Dask
    addresses are only connected to (a TLS server waits for the client).
    """
    if address == "auto":
        return
    url = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = url.hostname, url.port
    if not host or not port:
        raise EngineError(f"{engine} address {address!r} must look like HOST:PORT")
    hint = "check the address, or omit --address to start a local cluster"
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise EngineError(
            f"cannot reach the {engine} cluster at {address!r} within {timeout:g} s ({err}); "
            + hint
        ) from None
    with sock:
        if engine == "Dask" and url.scheme not in ("tcp", ""):
            return
        try:
            if engine == "Ray":
                sock.sendall(_H2_PREFACE)
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            answer = sock.recv(64)
        except OSError:  # timed out or reset
            answer = b""
    if not answer:
        what = "scheduler" if engine == "Dask" else "cluster (GCS or Ray Client server)"
        raise EngineError(
            f"cannot reach the {engine} cluster at {address!r} within {timeout:g} s (it "
            f"accepts connections but no {engine} {what} answers there); " + hint
        )


def _windowed(
    payloads: Iterable[dict], window: int, submit, wait_one
) -> Iterator[tuple[dict, Any, BaseException | None]]:
    """Keep ``window`` jobs in flight; yields (payload, result, error) as jobs finish."""
    it = iter(payloads)
    pending: dict[Any, dict] = {}

    def fill() -> None:
        while len(pending) < window:
            p = next(it, None)
            if p is None:
                return
            pending[submit(p)] = p

    fill()
    while pending:
        handle, result, error = wait_one(pending)
        yield pending.pop(handle), result, error
        fill()


# -- local -----------------------------------------------------------------------------------


def _init_local_worker(devices, level: int, config: dict | None) -> None:
    from mmpath.archive import job

    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if devices is not None:
        job.WORKER_DEVICE = devices.get()
    if config is not None:
        job.warm_up(config)


def _run_local(payloads: Iterable[dict], workers: int, config: dict | None) -> Iterator[dict]:
    if workers == 0:
        for p in payloads:
            yield run_job(p)
        return
    import multiprocessing as mp
    from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # never fork a process that may hold torch threads
    gpus = cuda_count()
    level = logging.getLogger("mmpath").getEffectiveLevel()
    retry: collections.deque = collections.deque()
    source = iter(payloads)
    restarts = 0
    while True:
        devices = None
        if gpus:
            devices = ctx.Queue()
            for i in range(workers):
                devices.put(f"cuda:{i % gpus}")
        pool = ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_init_local_worker,
            initargs=(devices, level, config),
        )
        pending: dict[Any, dict] = {}
        broken: list[dict] = []
        try:
            while True:
                while len(pending) < 2 * workers:
                    p = retry.popleft() if retry else next(source, None)
                    if p is None:
                        break
                    try:
                        pending[pool.submit(run_job, p)] = p
                    except BrokenProcessPool:
                        broken.append(p)
                        break
                if not pending:
                    break
                mode = ALL_COMPLETED if broken else FIRST_COMPLETED
                for f in wait(list(pending), return_when=mode).done:
                    p = pending.pop(f)
                    try:
                        yield f.result()
                    except BrokenProcessPool:
                        broken.append(p)
                    except Exception as err:  # noqa: BLE001 - e.g. an unpicklable result
                        yield _interrupted(p, f"the worker raised {type(err).__name__}: {err}")
                if broken:  # the pool is dead: collect what is left of it, then restart
                    for f in wait(list(pending)).done:
                        p = pending.pop(f)
                        try:
                            yield f.result()
                        except Exception:  # noqa: BLE001
                            broken.append(p)
                    break
        finally:
            procs = dict(getattr(pool, "_processes", None) or {})
            # a broken pool is joined so its dead workers are reaped before their locks are read
            pool.shutdown(wait=bool(broken), cancel_futures=True)
        if not broken:
            return
        # A worker died (killed, out of memory): slides whose lock a dead process holds were
        # mid-job and are recorded as interrupted; the others go to a fresh pool.
        restarts += 1
        log.warning("a worker process died; restarting the pool (%d)", restarts)
        # The executor SIGTERMs the surviving workers of a broken pool: their slides did
        # nothing wrong and are retried; only the slide of the worker that died is interrupted.
        terminated = {pid for pid, proc in procs.items() if proc.exitcode == -signal.SIGTERM}
        for p in broken:
            lock = S.ArchiveStore(p["out"]).lock(
                p["task"]["slide_id"], stale_seconds=p["config"]["stale_lock_seconds"]
            )
            holder = lock.holder()
            died = holder is not None and holder.get("pid") not in terminated and lock.is_stale()
            if died or restarts > 3:
                yield _interrupted(p, DIED)
            else:
                retry.append(p)


DIED = "its worker process died mid-slide (killed, or out of memory); rerun to redo it"


# -- ray ---------------------------------------------------------------------------------------


def _run_ray(
    payloads: Iterable[dict], workers: int, address: str | None, timeout: float, config
) -> Iterator[dict]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise EngineError("engine 'ray' needs Ray: pip install 'mmpath[ray]'") from None
    started = False
    if not ray.is_initialized():
        if address:
            _ray_connect(ray, address, timeout)
        else:
            try:
                ray.init(
                    num_cpus=workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            except Exception as err:  # noqa: BLE001 - Ray raises bare Exception on start-up
                why = " ".join(str(err).split())[:200]
                raise EngineError(
                    f"could not start a local Ray cluster ({why}); retry when the machine is "
                    "less busy, or use --engine local"
                ) from None
        started = True
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = workers or int(ray.cluster_resources().get("CPU", 1))
        if gpus:
            n = min(n, gpus)  # one actor per GPU; more would wait for a GPU forever
        # An actor pool: each actor loads the encoders once (its constructor) and keeps them;
        # an actor killed mid-slide is restarted by Ray (its slide is recorded interrupted).
        actor = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=3)(_RayWorker)
        pool = ActorPool([actor.remote(config) for _ in range(max(1, n))])
        busy: dict[Any, Any] = {}

        def submit(p):
            a = pool.pop_idle()
            ref = a.run.remote(p)
            busy[ref] = a
            return ref

        def wait_one(pending):
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            try:
                return ref, ray.get(ref), None
            except Exception as err:  # noqa: BLE001 - a crashed worker, reported per slide
                return ref, None, err
            finally:
                pool.push(busy.pop(ref))  # free again (Ray restarts it if it died)

        for p, result, err in _windowed(payloads, max(1, n), submit, wait_one):
            if err is None:
                yield result
            else:
                why = " ".join(str(err).split())[:200]
                yield _interrupted(p, f"its Ray worker died mid-slide ({type(err).__name__}: "
                                      f"{why}); rerun to redo it")  # fmt: skip
    finally:
        if started:
            ray.shutdown()


class _RayWorker:
    """A Ray actor running :func:`run_job`; it loads the run's encoders once, when it starts."""

    def __init__(self, config: dict | None) -> None:
        logging.basicConfig(level=logging.WARNING)
        if config is not None:
            from mmpath.archive import job

            job.warm_up(config)

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        return run_job(payload)


def _ray_connect(ray, address: str, timeout: float) -> None:
    """``ray.init(address=...)`` bounded by ``timeout``: Ray retries its GCS connection about
    once a second for ``RAY_gcs_server_port_wait_time_s`` attempts (20 by default)."""
    key = "RAY_gcs_server_port_wait_time_s"
    old = os.environ.get(key)
    if old is None:
        os.environ[key] = str(max(1, round(timeout)))
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as err:
        raise EngineError(
            f"cannot reach the Ray cluster at {address!r} within {timeout:g} s "
            f"({' '.join(str(err).split())[:200]}); check the address, or omit --address"
        ) from None
    finally:
        if old is None:
            os.environ.pop(key, None)


# -- dask --------------------------------------------------------------------------------------


def _run_dask(
    payloads: Iterable[dict], workers: int, address: str | None, timeout: float, config
) -> Iterator[dict]:
    try:
        import dask
        from distributed import Client, LocalCluster, wait
    except ImportError:
        raise EngineError("engine 'dask' needs Dask: pip install 'mmpath[dask]'") from None
    cluster = None
    gpus = cuda_count()
    # Non-daemonic workers may start the torch DataLoader's reader processes.
    with dask.config.set({"distributed.worker.daemon": False}):
        if address:
            try:
                client = Client(address, timeout=f"{timeout}s")
            except Exception as err:  # noqa: BLE001 - timeouts, refusals, or not a scheduler
                why = " ".join(f"{type(err).__name__}: {err}".split())[:200]
                raise EngineError(
                    f"cannot reach the Dask cluster at {address!r} within {timeout:g} s ({why}); "
                    "check that a Dask scheduler listens there, or omit --address"
                ) from None
        else:
            cluster = LocalCluster(
                n_workers=max(1, workers),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                resources={"GPU": 1} if gpus else None,
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)
    try:
        if config is not None:  # every worker (and any that joins later) loads the models once
            from mmpath.archive._dask_plugin import WarmUp

            client.register_plugin(WarmUp(config), name="mmpath-archive-warm-up")
        n = workers or max(1, len(client.scheduler_info().get("workers", {})))
        resources = {"GPU": 1} if gpus else None

        def submit(p):
            return client.submit(_dask_job, p, pure=False, resources=resources, retries=0)

        def wait_one(pending):
            done = wait(list(pending), return_when="FIRST_COMPLETED").done
            f = next(iter(done))
            try:
                return f, f.result(), None
            except Exception as err:  # noqa: BLE001 - a killed worker, reported per slide
                return f, None, err

        for p, result, err in _windowed(payloads, 2 * n, submit, wait_one):
            if err is None:
                yield result
            else:
                why = " ".join(str(err).split())[:200]
                yield _interrupted(p, f"its Dask worker died mid-slide ({type(err).__name__}: "
                                      f"{why}); rerun to redo it")  # fmt: skip
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def preflight(name: str, address: str | None, timeout: float) -> None:
    """Before anything is written: the engine is installed and its address answers."""
    if name == "local":
        if address:
            raise EngineError("engine 'local' takes no address; use --engine ray or dask")
        return
    if name not in ("ray", "dask"):
        raise EngineError(f"unknown engine {name!r}; use local, ray or dask")
    require_engine(name)
    if address:
        _check_reachable(address, timeout, name.capitalize())


def dask_device(worker) -> None:
    """On a GPU machine, worker ``i`` of a LocalCluster (named 0, 1, ...) uses ``cuda:i``
    (Dask does not pin devices as Ray does)."""
    from mmpath.archive import job

    gpus = cuda_count()
    if gpus and job.WORKER_DEVICE is None:
        name = worker.name
        index = name if isinstance(name, int) else abs(hash(name))
        job.WORKER_DEVICE = f"cuda:{index % gpus}"


def _dask_job(payload: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_job` on a Dask worker (see :mod:`._dask_plugin`)."""
    from distributed import get_worker

    dask_device(get_worker())
    return run_job(payload)


def run_engine(
    name: str,
    payloads: Iterable[dict],
    *,
    workers: int,
    address: str | None = None,
    timeout: float = 10.0,
    config: dict | None = None,
) -> Iterator[dict]:
    """Run the job over ``payloads`` on engine ``name``; yields records as slides finish.

    Call :func:`preflight` first (it checks the engine and the address). ``config`` (the
    run's resolved config) lets each worker load the encoders once when it starts.
    """
    if name == "local":
        return _run_local(payloads, workers, config)
    run = _run_ray if name == "ray" else _run_dask
    return run(payloads, workers, address, timeout, config)


def require_engine(name: str) -> None:
    """Import the engine's library, or one line naming the extra to install."""
    import importlib

    for module in ("ray",) if name == "ray" else ("dask", "distributed"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise EngineError(
                f"engine {name!r} needs {module}, which is not installed: "
                f"pip install 'mmpath[{name}]'"
            ) from None


def default_workers() -> int:
    """One model process per GPU, else half the CPUs (each reads and embeds its slides)."""
    return cuda_count() or max(1, (os.cpu_count() or 2) // 2)
