"""Demo step: a small archive run (the sample + two synthetic slides), a rerun, the status.

Runs :func:`mmpath.archive.run` in-process (``workers=0``) with the demo encoder and the
tiling step's tile size, then reruns it to show that finished slides are skipped, and shows
the per-slide status table that ``mmpath archive status`` prints.
"""

from __future__ import annotations

import html
import time

from mmpath import archive
from mmpath.datasets import default_spec, sample_slide_path, write_synthetic_slide
from mmpath.demo.report import DemoContext, Section, table_html
from mmpath.demo.step_embed import DEMO_ENCODER
from mmpath.demo.step_tiling import TILE_MPP, TILE_SIZE

TITLE = "Archive run (many slides, resumable)"


def run(ctx: DemoContext) -> list[Section]:
    slides = ctx.out / "archive-slides"
    slides.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        spec = default_spec(1536, 1024, mpp=0.5, seed=10 + i, levels=(1, 4))
        write_synthetic_slide(slides / f"synthetic-{i}.tif", spec, tile_size=256)
    inputs = [sample_slide_path(), slides]
    out = ctx.out / "archive"
    cfg = {
        "tiling": {"size": TILE_SIZE, "mpp": TILE_MPP},
        "encoders": [DEMO_ENCODER],
        "engine": {"workers": 0, "batch_size": 32},
    }
    t0 = time.perf_counter()
    first = archive.run(inputs, out, config=cfg)
    t1 = time.perf_counter()
    again = archive.run(inputs, out, config=cfg)
    t2 = time.perf_counter()
    arc = archive.open(out)
    status = arc.slides
    failed = status[status.state != "done"]
    if len(failed):
        raise RuntimeError(
            f"archive demo: {len(failed)} slide(s) not done: {failed.error.tolist()}"
        )
    rows = [
        {
            "slide": r.slide_id,
            "state": r.state,
            "tiles": r.n_tiles,
            "job s": round(r.seconds, 2),
            "embeddings": r.encoders,
        }
        for r in status.itertuples()
    ]
    stats = {
        "first run": f"{int((first.action == 'ran').sum())} of {len(first)} slides processed "
        f"in {t1 - t0:.1f} s",
        "rerun": f"{int((again.action == 'skipped').sum())} of {len(again)} skipped "
        f"(unchanged files and config) in {t2 - t1:.2f} s",
        "cohort view": f"{sum(t.n_obs for t in arc.iter_tables())} tiles in "
        f"{len(arc.table_paths())} tables, concatenated on demand",
    }
    body = (
        f"<p>Command line: <code>mmpath archive run SLIDES -o {html.escape(str(out))} "
        f"--encoder {DEMO_ENCODER} --mpp {TILE_MPP} --size {TILE_SIZE}</code>, then "
        "<code>mmpath archive status</code>. The same job runs on Ray or Dask "
        "(<code>--engine ray|dask</code>) with identical outputs.</p>"
        + table_html(stats)
        + table_html(rows)
    )
    ctx.state["archive"] = out
    return [Section(TITLE, body)]
