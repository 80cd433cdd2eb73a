#!/usr/bin/env python
"""mpp estimation accuracy (issue 15): mm.pp.estimate_mpp against known resolutions.

Prints one JSON object: for the bundled Aperio sample (0.499 µm/px), the histolytics HGSC
stroma image (taken as 0.5 µm/px: its scale is undocumented, see mmpath/pp/mpp.py) and a
synthetic H&E slide (0.5 µm/px), each resampled by 0.5x, 1x, 2x and 4x (1.0-0.125 µm/px), the
estimate, its relative error, confidence, 90% range (and whether it holds the truth) and
time, and the error distribution. The README's
table comes from this. Needs the test data (``make testdata``) for the stroma image.

Usage::

    python tools/bench/bench_mpp.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _resample(img: np.ndarray, f: float) -> np.ndarray:
    if f == 1:
        return img
    h, w = img.shape[:2]
    kind = Image.Resampling.LANCZOS if f > 1 else Image.Resampling.BOX
    return np.asarray(Image.fromarray(img).resize((round(w * f), round(h * f)), kind))


def main() -> int:
    import mmpath as mm
    from mmpath.datasets import default_spec, render

    sources = {}
    with mm.datasets.sample_slide() as s:
        sources["sample_cmu1"] = (s.read_region((0, 0), 0, s.dimensions), 0.499)
    root = Path(os.environ.get("MMPATH_TESTDATA", "~/.cache/mmpath/testdata")).expanduser()
    stroma = root / "histolytics" / "hgsc_stromal_he.jpg"
    if stroma.exists():
        sources["stroma_histolytics"] = (np.asarray(Image.open(stroma).convert("RGB")), 0.5)
    syn = render(default_spec(2000, 2000, mpp=0.5, levels=(1,), seed=0), (0, 0), (2000, 2000))
    sources["synthetic"] = (syn, 0.5)
    rows = []
    for name, (img, mpp) in sources.items():
        for f in (0.5, 1.0, 2.0, 4.0):
            truth = mpp / f
            t0 = time.perf_counter()
            est = mm.pp.estimate_mpp(mm.io.ArraySlide(_resample(img, f), slide_id=name))
            rows.append(
                {
                    "source": name,
                    "resample": f,
                    "truth": round(truth, 4),
                    "estimate": round(est.mpp, 4),
                    "rel_error": round(est.mpp / truth - 1, 4),
                    "confidence": est.confidence,
                    "low": round(est.low, 4),
                    "high": round(est.high, 4),
                    "truth_in_range": bool(est.low <= truth <= est.high),
                    "n_patches": est.n_patches,
                    "n_nuclei": est.n_nuclei,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
    err = np.array([r["rel_error"] for r in rows])
    res = {
        "bench": "mpp",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cases": rows,
        "abs_rel_error": {
            "median": round(float(np.median(np.abs(err))), 4),
            "p90": round(float(np.percentile(np.abs(err), 90)), 4),
            "max": round(float(np.abs(err).max()), 4),
            "mean_signed": round(float(err.mean()), 4),
        },
        "within_25pct": int((np.abs(err) <= 0.25).sum()),
        "truth_in_range": sum(r["truth_in_range"] for r in rows),
        "n": len(rows),
    }
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
