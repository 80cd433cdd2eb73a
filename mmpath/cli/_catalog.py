"""The encoder registry's metadata without torch, for light CLI commands (issue 11).

``mmpath list`` and an encoder whose weights are missing must answer in well under the 5-8 s
it takes to import torch, timm, open_clip and transformers, which the registry's entries
import to register themselves. The metadata (names, aliases, kinds, sizes, licences, weights
specs) is therefore read once from the live registry and cached as JSON in
``$MMPATH_HOME/cache/``, keyed by a digest of mmpath's version and of every source file under
``mmpath/models``: an edited or added entry makes a new key, so the cache is never stale.
What changes on disk (installed weights, verified markers, optional packages) is looked up at
each call, without torch (:mod:`mmpath._weights`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from mmpath._registry import Registry

log = logging.getLogger(__name__)

# Columns of list_encoders that come from the registry (the rest are looked up on disk).
STATIC = ["name", "aliases", "kind", "dim", "proj_dim", "input_size", "mpp", "pooling"]
STATIC += ["license", "source", "verified"]


def _digest() -> str:
    from mmpath._version import __version__

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha1(__version__.encode())
    files = sorted((root / "models").rglob("*.py")) + [root / "_weights.py", root / "_registry.py"]
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:20]


def _build() -> list[dict[str, Any]]:
    """One record per entry, from the live registry (imports torch)."""
    from dataclasses import asdict

    from mmpath.models.registry import encoders, list_encoders

    df = list_encoders("*")
    records = []
    for row in df.to_dict("records"):
        meta = encoders.get(row["name"]).meta
        rec = {k: (None if _isna(row[k]) else row[k]) for k in STATIC}
        rec["spec"] = None if meta.weights is None else asdict(meta.weights)
        rec["requires"] = meta.requires
        rec["install"] = meta.install
        records.append(json.loads(json.dumps(rec, default=_plain)))
    return records


def _isna(v: Any) -> bool:
    try:
        return bool(v != v) or v is None or str(v) == "<NA>"
    except (TypeError, ValueError):
        return False


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else str(v)


def records() -> tuple[dict[str, Any], ...]:
    """The entries' records: from the live registry when it is already imported (it may hold
    entries registered at run time: tests, notebooks), else from the cache (built, with
    torch, when it is missing or stale)."""
    if _live():
        return tuple(_build())
    return _cached()


def _live() -> bool:
    """Whether the registry is already imported (then reading it costs nothing)."""
    return "mmpath.models.registry" in sys.modules


@lru_cache(maxsize=1)
def _cached() -> tuple[dict[str, Any], ...]:
    from mmpath._settings import mmpath_home
    from mmpath.io._atomic import atomic_path

    path = mmpath_home() / "cache" / f"encoders-{_digest()}.json"
    try:
        return tuple(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    recs = _build()
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(recs), encoding="utf-8")
    except OSError as err:  # a read-only home: correct, just not faster next time
        log.debug("cannot cache the encoder catalog in %s: %s", path, err)
    return tuple(recs)


def catalog() -> Registry:
    """A torch-free :class:`~mmpath._registry.Registry` of the encoder records (same names,
    aliases and unknown-name errors as ``mmpath.models.encoders``)."""
    reg: Registry = Registry("encoder")
    for rec in records():
        aliases = tuple(a for a in (rec["aliases"] or "").split(",") if a)
        reg.register(rec["name"], meta=rec, aliases=aliases)(_no_factory)
    return reg


def _no_factory(**_: Any):  # pragma: no cover - the catalog never builds models
    raise RuntimeError("the catalog holds metadata only; use mmpath.models.create_encoder")


def _spec(rec: dict[str, Any]):
    from mmpath._weights import WeightsSpec

    spec = rec["spec"]
    return None if spec is None else WeightsSpec(**{**spec, "files": tuple(spec["files"])})


def list_table(pattern: str = "*"):
    """What :func:`mmpath.models.list_encoders` returns, without torch."""
    import pandas as pd

    from mmpath._weights import requirement_available, weights_status

    reg = catalog()
    rows = []
    for name in reg.list(pattern):
        rec = reg.get(name).meta
        row = {k: rec[k] for k in STATIC}
        row["available"] = requirement_available(rec["requires"])
        row["weights"] = weights_status(name, _spec(rec))
        rows.append(row)
    order = ["name", "aliases", "kind", "dim", "proj_dim", "input_size", "mpp", "pooling"]
    order += ["license", "source", "available", "weights", "verified"]
    df = pd.DataFrame(rows, columns=order if rows else ["name"])
    for col in ("proj_dim", "input_size"):
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def check_encoder(name: Any, weights: Any = None) -> None:
    """Refuse, without torch, an encoder name that cannot be built here: unknown entry, a
    missing optional package, or no weights (the same one-line errors as
    :func:`mmpath.models.create_encoder`). Prefixed names (``timm:``, ``local-dir:``...)
    and instances are left to it."""
    if not isinstance(name, str) or not name or ":" in name:
        return
    from mmpath._weights import requirement_available, resolve_weights
    from mmpath.errors import ModelError

    entry = catalog().get(name)  # unknown name: the registry's own message
    rec = entry.meta
    req = rec["requires"]
    if not requirement_available(req):
        how = rec["install"] or f"pip install {req}"
        raise ModelError(
            f"encoder {entry.name!r} needs the optional package {req!r}, which is not "
            f"installed: {how}"
        )
    if weights is None and rec["spec"] is not None:
        resolve_weights(entry.name, _spec(rec))  # raises WeightsError saying what to do
