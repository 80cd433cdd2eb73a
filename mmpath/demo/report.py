"""A small self-contained HTML report (images inlined as base64)."""

from __future__ import annotations

import base64
import html
import io as _io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmpath._version import __version__
from mmpath.io._atomic import atomic_write_text


@dataclass
class Section:
    """One block of the report."""

    title: str
    body_html: str
    failed: bool = False
    seconds: float = 0.0


@dataclass
class DemoContext:
    """What demo steps share: the output folder and whatever earlier steps produced."""

    out: Path
    quiet: bool = False
    sections: list[Section] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


def figure_html(fig, alt: str = "") -> str:
    """A matplotlib figure as an inline <img>."""
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(rows: list[dict[str, Any]] | dict[str, Any]) -> str:
    """A dict (key/value) or list of dicts as an HTML table."""
    if isinstance(rows, dict):
        rows = [{"": k, "value": v} for k, v in rows.items()]
    if not rows:
        return "<p>(empty)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:2px 8px}
img{max-width:100%} .failed{color:#b00} .note{background:#fff6d6;padding:.5em;border-radius:4px}
.muted{color:#777;font-size:.9em}
"""


def write_report(ctx: DemoContext) -> Path:
    """Write ``report.html`` into ``ctx.out`` atomically and return its path."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>mmpath demo</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>mmpath demo report</h1><p class='muted'>mmpath {__version__}. Research software: "
        "outputs are <b>not diagnostic</b>.</p>",
    ]
    for s in ctx.sections:
        cls = " class='failed'" if s.failed else ""
        parts.append(
            f"<h2{cls}>{html.escape(s.title)}</h2>{s.body_html}"
            f"<p class='muted'>{s.seconds:.1f} s</p>"
        )
    parts.append("</body></html>")
    path = ctx.out / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path
