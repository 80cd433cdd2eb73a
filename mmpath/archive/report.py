"""``summary.md`` of an archive: counts, failures with their errors, throughput, versions."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import pandas as pd

from mmpath._version import __version__
from mmpath.archive import store as S

_PACKAGES = ("torch", "timm", "anndata", "openslide-python", "ray", "dask", "distributed")


def versions() -> dict[str, str]:
    out = {"mmpath": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def summary_line(summ: dict[str, Any]) -> str:
    """One line: ``20 slides: 19 done, 1 failed; 1234 tiles; 85.2 tiles/s``."""
    counts = ", ".join(f"{n} {s}" for s, n in summ["counts"].items()) or "none"
    rate = summ["tiles_per_s"]
    eta = summ["eta_seconds"]
    return (
        f"{summ['slides']} slide(s): {counts}; {summ['tiles']} tiles"
        + (f"; {rate:.1f} tiles/s" if rate else "")
        + (f"; ETA {_fmt_s(eta)}" if eta else "")
    )


def summary_markdown(
    store: S.ArchiveStore,
    df: pd.DataFrame,
    summ: dict[str, Any],
    *,
    sheet: tuple[Any, int] = (None, 0),
) -> str:
    meta = S._read_json(store.meta) or {}
    lines = [
        f"# Archive `{store.root}`",
        "",
        summary_line(summ),
        "",
        "| state | slides |",
        "|---|---|",
        *[f"| {s} | {n} |" for s, n in summ["counts"].items()],
        "",
        f"* tiles: {summ['tiles']}",
        f"* throughput: {summ['tiles_per_s'] or 0:.1f} tiles/s over "
        f"{_fmt_s(summ['wall_seconds'])} (first start to last finish of the done slides)",
        f"* mean job time per slide: {_fmt_s(summ['seconds_per_slide'])}",
        f"* tiling: `{meta.get('tiling')}`",
    ]
    encs = sorted({e for v in df.encoders.dropna() for e in str(v).split(",") if e})
    lines.append(f"* embeddings: {', '.join(f'`{e}`' for e in encs) or 'none'}")
    bad = df[df.state.isin([S.FAILED, S.INTERRUPTED])]
    lines += ["", f"## Failures ({len(bad)})", ""]
    if len(bad):
        lines += ["| slide | state | error |", "|---|---|---|"]
        for r in bad.itertuples():
            err = str(r.error or "").replace("|", "\\|")
            lines.append(f"| {r.slide_id} | {r.state} | {err} |")
    else:
        lines.append("none")
    path, shown = sheet
    if path is not None:
        done = int((df.state == S.DONE).sum())
        which = f"all {done}" if shown == done else f"the first {shown} of {done}"
        lines += [
            "",
            "## Contact sheet",
            "",
            f"Tiles coloured by tissue fraction over each slide ({which} done slides, by id; "
            "every slide's picture is in `thumbs/`).",
            "",
            f"![contact sheet]({path.name})",
        ]
    lines += ["", "## Versions", ""]
    lines += [f"* {k} {v}" for k, v in versions().items()]
    return "\n".join(lines) + "\n"
