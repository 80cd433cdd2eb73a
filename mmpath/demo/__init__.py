"""``mmpath demo``: the main job on the bundled sample, written up as an HTML report.

The demo is a list of steps (:data:`STEPS`); each capability adds its own step module here
and one line to the list. A step takes the shared :class:`DemoContext` (which later steps
read: the slide, the tile table...) and returns report sections. A failing step is reported
in the page and makes the run fail, after the report is written.
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from pathlib import Path

from mmpath.demo.report import DemoContext, Section, write_report

log = logging.getLogger(__name__)

__all__ = ["run_demo", "STEPS", "DemoContext", "Section"]

# (module under mmpath.demo, title): run in order.
STEPS: list[tuple[str, str]] = [
    ("step_tiling", "Tissue detection and tiling"),
    ("step_embed", "Embedding, UMAP and clusters"),
    ("step_search", "Tile search (FAISS index)"),
    ("step_zeroshot", "Zero-shot classification (demo model, not diagnostic)"),
    ("step_expression", "Image-to-RNA (smoke demo)"),
    ("step_heads", "Segmentation and anomaly heads (toy models)"),
]
STEPS += [("step_mil", "Slide-level learning: attention MIL (synthetic cohort)")]
STEPS += [("step_archive", "Archive run (many slides, resumable)")]


def run_demo(out_dir: str | Path = "demo-out", *, quiet: bool = False) -> Path:
    """Run every demo step on the bundled sample and write ``<out_dir>/report.html``.

    Returns
    -------
    Path of the report.

    Example
    -------
    >>> run_demo("demo-out")
    """
    ctx = DemoContext(out=Path(out_dir), quiet=quiet)
    ctx.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for module, title in STEPS:
        t0 = time.perf_counter()
        try:
            step = importlib.import_module(f"mmpath.demo.{module}")
            sections = step.run(ctx)
        except Exception as err:  # noqa: BLE001 - reported in the page, then re-raised
            log.error("demo step %r failed: %s", title, err)
            sections = [Section(title, f"<pre>{traceback.format_exc()}</pre>", failed=True)]
            failed.append((title, err))
        for s in sections:
            s.seconds = s.seconds or time.perf_counter() - t0
        ctx.sections.extend(sections)
    report = write_report(ctx)
    if failed:
        title, err = failed[0]
        from mmpath.errors import MmpathError

        raise MmpathError(f"demo step {title!r} failed ({err}); see {report}")
    return report
