"""The 20-slide archive (one corrupt slide) through each engine on a local 2-worker cluster.

Every engine must give the same bytes for every slide's table, the corrupt slide must fail
alone with a one-line error, and a missing engine or an address that does not answer must be
one clear error, fast.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

import mmpath as mm
from mmpath.errors import EngineError

from .archive_helpers import CONFIG, CORRUPT, N_SLIDES, assert_same_tables

GOOD = [f"s{i:03d}" for i in range(N_SLIDES - 1)]


def _cli_run(slides, out, engine: str, *extra: str, config=None) -> subprocess.CompletedProcess:
    """`mmpath archive run` in a child process, as a user runs it. Ray and Dask leave gRPC /
    event-loop threads in the process that used them, and a later fork there (DataLoader
    reader workers, index build workers) can deadlock: the engines never run inside pytest."""
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(config or CONFIG))
    argv = [sys.executable, "-m", "mmpath", "-q", "archive", "run", str(slides), "-o", str(out)]
    argv += ["--config", str(cfg), "--engine", engine, *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def _check_workers(out) -> None:
    """Each worker process loaded the encoder once, before its first slide, and kept it."""
    recs = [json.loads(p.read_text()) for p in (out / "slides").glob("*.json")]
    done = [r for r in recs if r["state"] == "done"]
    # loaded in the worker's start-up (already 1 when its first job began), never again
    loads = {(r["encoder_loads_at_start"], r["encoder_loads"]) for r in done}
    assert loads == {(1, 1)}, loads
    pids = {r["pid"] for r in done}
    assert len(pids) == 2 and len(done) > len(pids)


def _check_run(table) -> None:
    table = table.set_index("slide_id")
    assert len(table) == N_SLIDES
    assert table.loc[CORRUPT, "state"] == "failed"
    err = table.loc[CORRUPT, "error"]
    assert err and "\n" not in err
    assert (table.loc[GOOD, "state"] == "done").all()
    assert (table.loc[GOOD, "n_tiles"] > 5).all()


@pytest.fixture(scope="module")
def local_archive(archive_slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "local"
    table = mm.archive.run(archive_slides, out, config=CONFIG, engine="local", workers=2)
    return out, table


def test_local_engine_two_workers(local_archive, archive_slides):
    out, table = local_archive
    _check_run(table)
    _check_workers(out)
    assert sorted(mm.archive.open(out).slide_ids) == GOOD
    # the same archive in-process gives the same bytes (the job is pure)
    sub = out.parent / "inproc"
    mm.archive.run(
        [next(archive_slides.rglob(f"{s}.tif")) for s in GOOD[:3]], sub, config=CONFIG, workers=0
    )
    assert_same_tables(out, sub, GOOD[:3])


def test_ray_engine_equals_local(local_archive, archive_slides):
    pytest.importorskip("ray", reason="needs mmpath[ray]")
    ref, _ = local_archive
    out = ref.parent / "ray"
    res = _cli_run(archive_slides, out, "ray", "--workers", "2")
    assert res.returncode == 2, res.stderr[-2000:]  # the corrupt slide fails, the rest go on
    _check_run(mm.archive.status(out))
    _check_workers(out)
    assert_same_tables(ref, out, GOOD)


def test_dask_engine_equals_local(local_archive, archive_slides):
    pytest.importorskip("distributed", reason="needs mmpath[dask]")
    ref, _ = local_archive
    out = ref.parent / "dask"
    res = _cli_run(archive_slides, out, "dask", "--workers", "2")
    assert res.returncode == 2, res.stderr[-2000:]  # the corrupt slide fails, the rest go on
    _check_run(mm.archive.status(out))
    _check_workers(out)
    assert_same_tables(ref, out, GOOD)


@pytest.mark.parametrize(
    ("engine", "module", "extra"), [("ray", "ray", "ray"), ("dask", "distributed", "dask")]
)
def test_missing_engine_names_the_extra(engine, module, extra, few_slides, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(EngineError, match=rf"pip install 'mmpath\[{extra}\]'"):
        mm.archive.run(few_slides, tmp_path / "o", config=CONFIG, engine=engine)


@contextlib.contextmanager
def _silent_port():
    """A loopback port that accepts connections and never answers (127.0.0.1 only)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


@pytest.mark.parametrize("engine", ["ray", "dask"])
def test_silent_address_fails_fast(engine, few_slides, tmp_path):
    """A port that accepts but never answers: one clear error within the timeout."""
    pytest.importorskip("ray" if engine == "ray" else "distributed")
    cfg = {**CONFIG, "engine": {**CONFIG["engine"], "connect_timeout": 1.0}}
    with _silent_port() as port:
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="accepts connections but no") as err:
            mm.archive.run(
                few_slides, tmp_path / "o", config=cfg, engine=engine, address=f"127.0.0.1:{port}"
            )
        assert time.monotonic() - t0 < 5
    assert "\n" not in str(err.value) and "within 1 s" in str(err.value)
    assert not (tmp_path / "o").exists()


# Ray printed 4 lines for a silent address (its own logging); the CLI shows one.
@pytest.mark.parametrize("engine", ["ray", pytest.param("dask", marks=pytest.mark.slow)])
def test_silent_address_cli_one_line(engine, few_slides, tmp_path):
    pytest.importorskip("ray" if engine == "ray" else "distributed")
    cfg = {**CONFIG, "engine": {**CONFIG["engine"], "connect_timeout": 1.0}}
    with _silent_port() as port:
        res = _cli_run(few_slides, tmp_path / "o", engine, "--address", f"127.0.0.1:{port}",
                       config=cfg)  # fmt: skip
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert "cannot reach the" in lines[0] and "within 1 s" in lines[0], lines


@pytest.mark.parametrize("engine", ["ray", "dask"])
def test_refused_address_fails_fast(engine, few_slides, tmp_path):
    """A loopback port nothing listens on (only 127.0.0.1 is ever contacted)."""
    pytest.importorskip("ray" if engine == "ray" else "distributed")
    with socket.socket() as s:  # a free port, closed again: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="cannot reach the .* within 1 s") as err:
        mm.archive.run(
            few_slides,
            tmp_path / "o",
            config={**CONFIG, "engine": {**CONFIG["engine"], "connect_timeout": 1.0}},
            engine=engine,
            address=f"127.0.0.1:{port}",
        )
    assert time.monotonic() - t0 < 5 and "\n" not in str(err.value)


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["local", "ray", "dask"])
def test_engines_on_gpus(engine, few_slides, tmp_path):
    import torch

    if engine != "local":
        pytest.importorskip("ray" if engine == "ray" else "distributed")
    n = torch.cuda.device_count()
    table = mm.archive.run(few_slides, tmp_path / engine, config=CONFIG, engine=engine, workers=n)
    assert (table.state == "done").all()
