"""``mmpath serve``: a search web page over a tile index, with a deep-zoom slide viewer.

The page (``static/``: HTML, JS, CSS and a vendored OpenSeadragon, nothing from a CDN) calls a
JSON API under ``/api/`` that scripts can call too: search by text, by an uploaded image or by
an indexed tile, slide-level search, slide info, Deep Zoom descriptors and tiles, thumbnails.

Stack: **FastAPI on uvicorn** (ASGI). Picked over Flask because uploads are read as a stream
and refused at the size limit without buffering the rest, request parameters are validated
and documented in one place (the OpenAPI schema at ``/api/openapi.json`` documents the API
for scripts), blocking work (faiss, torch, slide reads) runs in a bounded thread pool while the
event loop keeps answering, and the test client runs the app in-process. Both are optional
(``pip install 'mmpath[serve]'``); ``import mmpath`` never imports them.

Layer: above ``index``/``io``/``tl`` (it calls their public API only), below ``cli``.

Example
-------
>>> from mmpath import serve
>>> app = serve.create_app("archive.idx", encoder="conch", remap={"/old": "/mnt/new"})
>>> serve.run("archive.idx", encoder="conch", port=8000)  # blocks; 127.0.0.1 by default
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from mmpath.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["create_app", "open_archive", "run", "demo_index", "LOOPBACK"]

LOOPBACK = "127.0.0.1"


def _require_stack() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the web app needs FastAPI and uvicorn; install them with pip install 'mmpath[serve]'"
        ) from None


def open_archive(
    idx,
    *,
    encoder=None,
    weights: str | None = None,
    remap: Mapping[str, str] | None = None,
):
    """Load an index (a path or a TileIndex) and its encoder, once, for serving.

    Parameters
    ----------
    idx
        An index directory or a loaded :class:`~mmpath.index.TileIndex`.
    encoder
        An encoder name or instance; ``None`` uses the index's recorded encoder (queries that
        need one are switched off, with a message, when the index records none).
    weights
        Weights for an encoder given by name.
    remap
        ``{old_prefix: new_prefix}`` for slides that moved since they were indexed.

    Returns
    -------
    An ``Archive`` (index, encoder, slide caches).
    """
    from mmpath import index
    from mmpath.serve._archive import Archive

    if isinstance(idx, (str, os.PathLike)):
        idx = index.load(idx)
    name = encoder if encoder is not None else idx.encoder
    enc = None
    if name is not None:
        from mmpath.tl.embed import resolve_encoder

        enc = resolve_encoder(name, weights=weights)
        idx.check_encoder(enc.info.name)
        enc.eval()
        log.info("encoder %s loaded", enc.info.name)
    else:
        log.warning("the index records no encoder and none was given: only browsing works")
    return Archive(idx, enc, remap=dict(remap) if remap else None)


def create_app(
    idx,
    *,
    encoder=None,
    weights: str | None = None,
    remap: Mapping[str, str] | None = None,
    allowed_hosts: list[str] | None = None,
):
    """The ASGI app (FastAPI) serving the search page and ``/api/`` over an index.

    Parameters
    ----------
    idx
        An index directory, a :class:`~mmpath.index.TileIndex`, or an archive from
        :func:`open_archive`.
    encoder, weights, remap
        As in :func:`open_archive`.
    allowed_hosts
        Host headers the app answers (``None``: any); :func:`run` passes the loopback names
        when it binds to loopback, so a web page elsewhere cannot reach it by DNS rebinding.

    Returns
    -------
    A ``fastapi.FastAPI`` app (run it with uvicorn, or test it with its TestClient).

    Example
    -------
    >>> from fastapi.testclient import TestClient
    >>> client = TestClient(mm_serve.create_app("archive.idx"))
    >>> client.post("/api/search/text", json={"text": "dense nuclei", "k": 5}).json()
    """
    _require_stack()
    from mmpath.serve._app import create_app as _create
    from mmpath.serve._archive import Archive

    archive = (
        idx
        if isinstance(idx, Archive)
        else open_archive(idx, encoder=encoder, weights=weights, remap=remap)
    )
    return _create(archive, allowed_hosts=allowed_hosts)


def is_loopback(host: str) -> bool:
    """True for ``127.0.0.1``, ``::1`` and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(
    idx,
    *,
    encoder=None,
    weights: str | None = None,
    remap: Mapping[str, str] | None = None,
    host: str = LOOPBACK,
    port: int = 8000,
) -> None:
    """Serve the search page until interrupted (binds to 127.0.0.1 unless told otherwise).

    Parameters
    ----------
    idx, encoder, weights, remap
        As in :func:`create_app`.
    host
        Address to bind. Anything but loopback exposes the archive's slides to the network
        and is logged as a warning.
    port
        TCP port.

    Example
    -------
    >>> mm_serve.run("archive.idx", port=8000)
    """
    _require_stack()
    import uvicorn

    if not 0 < int(port) < 65536:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    if is_loopback(host):
        allowed = ["127.0.0.1", "localhost", "[::1]", "::1"]
    else:
        log.warning(
            "binding to %s: the page, its slides and its API are reachable from the network "
            "with no authentication; bind to 127.0.0.1 (the default) unless that is intended",
            host,
        )
        allowed = None
    app = create_app(idx, encoder=encoder, weights=weights, remap=remap, allowed_hosts=allowed)
    log.info("serving on http://%s:%d/ (Ctrl-C to stop)", host, port)
    uvicorn.run(app, host=host, port=int(port), log_level="warning", access_log=False)


def demo_index(path: str | os.PathLike[str]) -> Path:
    """Build the demo's searchable index on the bundled sample slide (if it is not there).

    Tiles the sample (112 px at 0.5 µm/px, the demo image-text model's input), embeds it with
    ``mmpath-demo-lit`` (a demo model, not diagnostic) and indexes its joint image-text space,
    so text and image search both work.

    Parameters
    ----------
    path
        Index directory to write (kept when it already holds an index).

    Returns
    -------
    The index path.

    Example
    -------
    >>> mm_serve.demo_index("demo-out/serve.idx")
    """
    import warnings

    from mmpath import _keys as K
    from mmpath import datasets, index, pp, tl

    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    slide = datasets.sample_slide()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tiles = pp.tile(slide, 112, mpp=0.5, min_tissue=0.5)
    tl.embed(tiles, "mmpath-demo-lit", slide=slide, num_workers=0)
    key = next(k for k in tiles.obsm if str(k).endswith(K.PROJ_SUFFIX))
    idx = index.build(tiles, use_rep=key)
    out = idx.save(path)
    log.info("built the demo index: %d tiles of the sample slide -> %s", len(idx), out)
    return out
