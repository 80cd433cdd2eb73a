"""Fixtures for the web app: a real index over three copies of the bundled sample slide.

Slides ``A`` and ``B`` are byte-identical copies (so a tile of ``A`` has an exact twin in
``B``: "more like this" must find it with score 1), ``C`` is indexed and then moved away (the
viewer must say so, the gallery must still list its hits). Embeddings come from the shipped
demo image-text model, so text and image queries go through real towers.
"""

from __future__ import annotations

import ast
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="pip install 'mmpath[serve]' to test the web app")
pytest.importorskip("httpx", reason="pip install httpx to test the web app")

from mmpath import _keys as K  # noqa: E402

ENCODER = "mmpath-demo-lit"
SITES = {"A": "colon", "B": "lung", "C": "colon"}
TILE = 112


@pytest.fixture(scope="session")
def encoder():
    """The demo image-text model, loaded once for the session (as the server loads it once)."""
    import mmpath as mm

    return mm.models.create_encoder(ENCODER)


@pytest.fixture(scope="session")
def archive_dir(tmp_path_factory, encoder) -> Path:
    import mmpath as mm
    from mmpath import datasets

    root = tmp_path_factory.mktemp("archive")
    src = Path(datasets.sample_slide().path)
    tables = []
    enc = encoder
    for sid, site in SITES.items():
        path = root / "slides" / f"{sid}.svs"
        path.parent.mkdir(exist_ok=True)
        shutil.copy(src, path)
        slide = mm.io.open_slide(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            t = mm.pp.tile(slide, TILE, mpp=0.5, min_tissue=0.5)
        t.obs["site"] = site
        t.obs["grade"] = np.where(np.arange(t.n_obs) % 3 == 0, 2, 1)
        mm.tl.embed(t, enc, slide=slide, num_workers=0)
        tables.append(t)
    key = K.rep_key(enc.info.slug, proj=True)
    idx = mm.index.build(tables, use_rep=key)
    idx.save(root / "archive.idx")
    moved = root / "moved"
    moved.mkdir()
    shutil.move(str(root / "slides" / "C.svs"), moved / "C.svs")
    return root


@pytest.fixture(scope="session")
def index_path(archive_dir) -> Path:
    return archive_dir / "archive.idx"


@pytest.fixture(scope="session")
def archive(index_path, encoder):
    from mmpath import serve

    return serve.open_archive(index_path, encoder=encoder)


@pytest.fixture(scope="session")
def client(archive):
    from fastapi.testclient import TestClient

    from mmpath import serve

    return TestClient(serve.create_app(archive))


def hostile_filters(sentinel: str) -> list[str]:
    """The hostile ``where`` payloads of the filter tests (issue 10), read from that test file
    so the list stays one list."""
    src = Path(__file__).parents[1] / "index" / "test_filter.py"
    tree = ast.parse(src.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "payloads")
    scope: dict = {}
    exec(compile(ast.Module([fn], []), str(src), "exec"), scope)  # noqa: S102 - our own test code
    return scope["payloads"](sentinel)
