"""Benchmark the search web app: request latency over HTTP vs calling the index directly.

Index: the demo's index of the bundled sample slide (real pixels, the shipped demo image-text
model: ``mmpath.serve.demo_index``). The server runs as its own process (``mmpath serve``, on
127.0.0.1 only); clients are threads of this process with keep-alive connections.

Measured, side by side in one run:

* **direct**: ``TileIndex.search_text`` / ``search_image`` and one Deep Zoom tile render,
  called in this process, one at a time, in a worker thread as the server calls them;
* **http, 1 client**: the same requests through the API one at a time: the difference of the
  p50s is what the HTTP path adds (goal: <= 20 ms);
* **http, N clients**: ``--clients`` concurrent clients for ``--seconds`` each (bounded loops),
  p50/p95 and requests/s, for text queries, image queries and Deep Zoom tiles (cached after
  the first read: the cold reads are reported separately);
* **10^5 tiles**: a second server over an index of ``--big`` tiles (the demo slide's
  provenance, random vectors in the model's space): text and image query p50/p95 over HTTP.

Prints one JSON object. Everything is bounded: a few seconds per phase, loopback only.

    .venv/bin/python tools/bench/bench_serve.py
    .venv/bin/python tools/bench/bench_serve.py --quick
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

TEXTS = [
    "dense nuclei",
    "eosin-rich stroma",
    "background glass",
    "tumour epithelium with mitotic figures",
    "loose connective tissue",
    "nuclei",
    "pink stroma",
    "haematoxylin-dense region",
]


def pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    if not len(a):
        return {"n": 0}
    return {
        "n": int(len(a)),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mmpath serve`` in a child process on 127.0.0.1 (ended by its pid when done)."""

    def __init__(self, index: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmpath", "-q", "serve", str(index), "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def __enter__(self):
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                if httpx.get(self.url + "/api/info", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("server did not start in 300 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def png_bytes(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def sequential(fn, items, seconds: float, max_n: int) -> list[float]:
    out, t_end, i = [], time.monotonic() + seconds, 0
    while (time.monotonic() < t_end or len(out) < 5) and len(out) < max_n:
        t0 = time.perf_counter()
        fn(items[i % len(items)])
        out.append(time.perf_counter() - t0)
        i += 1
    return out


def paired(fd, fh, xd, xh, seconds: float, max_n: int) -> tuple[list[float], list[float]]:
    """Alternate a direct call and its HTTP twin on the same input; latencies of each."""
    d, h, i = [], [], 0
    t_end = time.monotonic() + seconds
    while (time.monotonic() < t_end or len(d) < 5) and len(d) < max_n:
        for f, x, acc in ((fd, xd, d), (fh, xh, h)) if i % 2 == 0 else ((fh, xh, h), (fd, xd, d)):
            t0 = time.perf_counter()
            f(x[i % len(x)])
            acc.append(time.perf_counter() - t0)
        i += 1
    return d, h


def concurrent(url: str, make_request, items, clients: int, seconds: float, max_n: int):
    """``clients`` threads, each with its own keep-alive connection, for ``seconds``."""
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    t_end = time.monotonic() + seconds

    def worker(w: int) -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=60) as c:
            i = w
            while time.monotonic() < t_end and len(mine) < max_n:
                t0 = time.perf_counter()
                r = make_request(c, items[i % len(items)])
                mine.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    with lock:
                        errors[0] += 1
                i += clients
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {**pct(lat), "req_per_s": round(len(lat) / wall, 1), "errors": errors[0]}


def text_req(c, t):
    return c.post("/api/search/text", json={"text": t, "k": 20})


def image_req(c, data):
    return c.post("/api/search/image?k=20&mpp=0.499", content=data)


def tile_req(c, path):
    return c.get(path)


def big_index(n: int, src_index: Path, out: Path) -> Path:
    """``n`` tiles over the demo slide's provenance, random vectors in the model's space."""
    import anndata as ad
    import pandas as pd

    from mmpath import _keys as K
    from mmpath import index

    src = index.load(src_index)
    rec = src.manifest["slides"]
    sid = next(iter(rec))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, src.dim)).astype(np.float32)
    per = 5000
    sids = [f"{sid}-{i // per}" for i in range(n)]
    W, H = rec[sid]["dims"]
    obs = pd.DataFrame(
        {
            K.SLIDE_ID: pd.Categorical(sids),
            K.X: rng.integers(0, W - 112, n),
            K.Y: rng.integers(0, H - 112, n),
            K.TISSUE_FRAC: rng.random(n),
        },
        index=[K.obs_name(s, i) for i, s in enumerate(sids)],
    )
    t = ad.AnnData(obs=obs)
    t.obsm[src.embedding_key] = x
    slides = {s: rec[sid] for s in dict.fromkeys(sids)}
    t.uns[K.UNS] = {K.UNS_VERSION: "bench", K.UNS_SLIDES: slides}
    t.uns[K.UNS][K.UNS_EMBEDDINGS] = {src.embedding_key: {"encoder": src.encoder}}
    idx = index.build(t, use_rep=src.embedding_key)
    return idx.save(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8.0, help="per loaded phase")
    ap.add_argument("--big", type=int, default=100_000, help="tiles of the large index")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.big = 3.0, 20_000
    import faiss

    import mmpath as mm
    from mmpath import serve
    from mmpath.serve._deepzoom import DeepZoom

    faiss.omp_set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    idx_path = serve.demo_index(tmp / "demo.idx")
    arch = serve.open_archive(idx_path)
    idx, enc = arch.idx, arch.encoder
    tids = idx.metadata.index.to_numpy()[:: max(1, len(idx) // 8)][:8]
    images = [png_bytes(p) for p in mm.io.read_tiles(None, idx.tiles(tids))]
    from PIL import Image

    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    slide = arch.slide(idx.slide_ids[0])
    dz = DeepZoom(slide)
    top = dz.level_count - 1
    addrs = [
        (z, c, r)
        for z in (top, top - 1, top - 2)
        for c in range(dz.level_tiles[z][0])
        for r in range(dz.level_tiles[z][1])
    ]
    sid = idx.slide_ids[0]
    tile_paths = [f"/api/slides/{sid}_files/{z}/{c}_{r}.jpeg" for z, c, r in addrs]
    sec = args.seconds
    out: dict = {
        "index": {"tiles": len(idx), "factory": idx.factory, "encoder": idx.encoder},
        "clients": args.clients,
        "seconds_per_phase": sec,
        "cpus": os.cpu_count(),
    }
    with Server(idx_path) as srv:
        import httpx

        with httpx.Client(base_url=srv.url, timeout=60) as c:
            # direct and HTTP calls alternate, so both see the same machine load
            calls = {
                "text": (
                    lambda t: idx.search_text(t, 20, encoder=enc),
                    lambda t: text_req(c, t),
                    TEXTS,
                    TEXTS,
                ),
                "image": (
                    lambda im: idx.search_image(im, 20, encoder=enc, mpp=0.499),
                    lambda d: image_req(c, d),
                    pil,
                    images,
                ),
            }
            direct, one = {}, {}
            # the direct calls run in a worker thread, as the server runs them (on a busy
            # 2-core box torch's OpenMP team in the main thread ran 10x slower than in a worker
            # thread here), so the difference is the HTTP path only
            pool = ThreadPoolExecutor(1)
            for kind, (fd0, fh, xd, xh) in calls.items():
                fd = functools.partial(lambda f, x: pool.submit(f, x).result(), fd0)
                fd(xd[0]), fh(xh[0])  # warm up both paths
                d, h = paired(fd, fh, xd, xh, sec, 400)
                direct[kind], one[kind] = pct(d), pct(h)
            direct["dz_tile_render"] = pct(
                sequential(
                    lambda a: pool.submit(dz.tile_jpeg, *a).result(), addrs, sec / 2, len(addrs)
                )
            )
            pool.shutdown()
            one["dz_tile_cold"] = pct(
                sequential(lambda p: tile_req(c, p), tile_paths, 60, len(tile_paths))
            )
            one["dz_tile_cached"] = pct(
                sequential(lambda p: tile_req(c, p), tile_paths, sec / 2, 400)
            )
        out["direct"] = direct
        out["http_1_client"] = one
        out["http_overhead_p50_ms"] = {
            "text": round(one["text"]["p50_ms"] - direct["text"]["p50_ms"], 2),
            "image": round(one["image"]["p50_ms"] - direct["image"]["p50_ms"], 2),
            "dz_tile_cold": round(
                one["dz_tile_cold"]["p50_ms"] - direct["dz_tile_render"]["p50_ms"], 2
            ),
        }
        n = args.clients
        out[f"http_{n}_clients"] = {
            "text": concurrent(srv.url, text_req, TEXTS, n, sec, 2000),
            "image": concurrent(srv.url, image_req, images, n, sec, 2000),
            "dz_tile_cached": concurrent(srv.url, tile_req, tile_paths, n, sec, 5000),
        }
    big = big_index(args.big, idx_path, tmp / "big.idx")
    bidx = mm.index.load(big)
    with Server(big) as srv:
        import httpx

        with httpx.Client(base_url=srv.url, timeout=60) as c:
            text_req(c, "warm up")
            out["big_index"] = {
                "tiles": len(bidx),
                "factory": bidx.factory,
                "text_http_1_client": pct(
                    sequential(lambda t: text_req(c, t), TEXTS, sec / 2, 200)
                ),
                "image_http_1_client": pct(
                    sequential(lambda d: image_req(c, d), images, sec / 2, 200)
                ),
            }
        out["big_index"][f"text_http_{n}_clients"] = concurrent(
            srv.url, text_req, TEXTS, n, sec, 2000
        )
    ok_overhead = max(out["http_overhead_p50_ms"].values()) <= 20
    ok_big = out["big_index"]["text_http_1_client"]["p50_ms"] < 1000
    out["goals"] = {"http_adds_le_20ms_p50": ok_overhead, "big_index_query_under_1s": ok_big}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
