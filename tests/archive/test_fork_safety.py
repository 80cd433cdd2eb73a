"""mmpath's own worker pools avoid ``fork`` while other libraries' threads are alive.

Ray leaves gRPC threads running after ``ray.shutdown()``, and forking such a process can
deadlock the child; reader pools then start with ``forkserver``. Each case runs in a child
Python (the engines must never run inside pytest: their threads would stay in it).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from .archive_helpers import make_slide

# Reads a slide's tiles with 2 reader workers (io.iter_tiles) after SETUP and checks they equal
# an in-process read; checks the start method tl.embed's DataLoader gets; with EMBED, also
# embeds with 2 DataLoader workers and compares with an in-process embedding.
_CHILD = """
import sys, threading, numpy as np
import mmpath as mm
from mmpath._fork import foreign_threads, worker_start_method

def main():
    print("BEFORE", worker_start_method())
    {setup}
    slide = mm.io.open_slide(sys.argv[1])
    tiles = mm.pp.tile(slide, 64, mpp=2.0, min_tissue=0.5)
    ref = np.concatenate([b for _, b in mm.io.iter_tiles(tiles, batch_size=8, slide=slide)])
    par = np.concatenate(
        [b for _, b in mm.io.iter_tiles(tiles, batch_size=8, num_workers=2, slide=slide)]
    )
    assert ref.shape[0] > 5 and ref.tobytes() == par.tobytes()
    from mmpath.tl import _embed_data as D
    from mmpath.tl.embed import resolve_encoder

    model = resolve_encoder("tiny_vit")  # random weights: one instance for every read
    prep = D.slide_preprocess(tiles, tiles.obs["slide_id"].iloc[0], model.info.data)
    loader = D.make_loader(
        D.EmbedDataset(tiles, prep, slide=slide), [[0, 1]], num_workers=2
    )
    print("LOADER", loader.multiprocessing_context.get_start_method())
    if {embed}:
        emb = {{}}
        for w in (0, 2):
            t = tiles.copy()
            mm.tl.embed(t, model, slide=slide, batch_size=8, num_workers=w)
            emb[w] = t.obsm["X_tiny_vit"]
        assert emb[0].tobytes() == emb[2].tobytes()
    print("METHOD", worker_start_method(), "THREADS", ",".join(foreign_threads()))
    STOP.set()  # let a test's own non-daemon thread end

STOP = threading.Event()

if __name__ == "__main__":
    main()
"""


def _child(tmp_path, setup: str, *, embed: bool) -> str:
    slide = make_slide(tmp_path / "s.tif", 3)
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(setup=textwrap.indent(setup, "    ").strip(), embed=embed))
    res = subprocess.run(
        [sys.executable, str(script), str(slide)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    before = next(ln for ln in res.stdout.splitlines() if ln.startswith("BEFORE"))
    assert before.split()[1] == "fork"  # a plain process forks its reader workers
    loader = next(ln for ln in res.stdout.splitlines() if ln.startswith("LOADER"))
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("METHOD"))
    assert loader.split()[1] == line.split()[1]  # tl.embed's DataLoader starts the same way
    return line


def test_forkserver_while_another_librarys_thread_is_alive(tmp_path):
    # a non-daemon thread of another library: reader pools start with forkserver, same bytes
    setup = "threading.Thread(target=STOP.wait, name='their-worker', daemon=False).start()\n"
    line = _child(tmp_path, setup, embed=False)
    assert line.split()[1] == "forkserver" and "their-worker" in line


@pytest.mark.slow  # starts a local Ray cluster in the child (~10 s)
def test_reader_pools_after_ray_use_forkserver_and_finish(tmp_path):
    pytest.importorskip("ray", reason="needs mmpath[ray]")
    setup = (
        "import ray\n"
        "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "ray.shutdown()  # its gRPC threads stay\n"
        "assert any(n.startswith('grpc') for n in foreign_threads()), foreign_threads()\n"
    )
    line = _child(tmp_path, setup, embed=True)  # and tl.embed's readers give the same bytes
    assert line.split()[1] == "forkserver"
