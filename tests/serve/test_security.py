"""Hostile and broken requests: each gets one clear 4xx JSON line, nothing outside the index is
read, no filter runs code, and the server keeps answering afterwards."""

from __future__ import annotations

import io
import logging
import os
import zlib

import pandas as pd
import pytest
from PIL import Image

from mmpath.serve import _upload

from .conftest import hostile_filters


def _png(size=(64, 64), colour=(200, 120, 160)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _ok(client):
    r = client.post("/api/search/text", json={"text": "dense nuclei", "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def _error(r, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    msg = r.json()["error"]
    assert "\n" not in msg and "Traceback" not in msg
    for w in words:
        assert w in msg, msg
    return msg


BAD_SLIDE_PATHS = [
    "/api/slides/nope",
    "/api/slides/nope.dzi",
    "/api/slides/nope_files/0/0_0.jpeg",
    "/api/slides/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/slides/%2Fetc%2Fpasswd",
    "/api/slides/..",
    "/api/slides/%2e%2e.dzi",
    "/api/slides/..%2Fslides%2FA.svs_files/0/0_0.jpeg",
    "/api/slides/A.svs",
    "/api/slides/etc/passwd",
    "/api/slides/A/../../../../etc/passwd",
    "/api/tiles/999999999/thumb.jpg",
    "/api/tiles/-1/thumb.jpg",
    "/api/tiles/..%2F..%2Fetc%2Fpasswd/thumb.jpg",
    "/static/../_app.py",
    "/static/%2e%2e/_app.py",
    "/static/..%2F..%2F__init__.py",
]


def test_only_indexed_slides_are_served_nothing_else_is_opened(client, monkeypatch):
    import builtins

    import mmpath.io.slide as slide_mod
    import mmpath.io.tiles as tiles_mod

    opened = []
    real_open = builtins.open

    def spy_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(tiles_mod, "open_slide", lambda *a, **k: opened.append(a) or 1 / 0)
    monkeypatch.setattr(slide_mod, "open_slide", lambda *a, **k: opened.append(a) or 1 / 0)
    monkeypatch.setattr(builtins, "open", spy_open)
    for path in BAD_SLIDE_PATHS:
        r = client.get(path)
        assert r.status_code in (404, 400), (path, r.status_code, r.text)
        assert "root:" not in r.text and "import" not in r.text, path
    assert not [o for o in opened if "passwd" in str(o) or str(o).endswith(".svs")], opened
    assert not [o for o in opened if isinstance(o, tuple)], opened  # no slide opened


def test_unknown_slide_is_404_json(client):
    _error(client.get("/api/slides/nope"), 404, "not in the index")
    _error(client.get("/api/slides/nope.dzi"), 404, "not in the index")
    _error(client.get("/api/tiles/999999/thumb.jpg"), 404, "not in the index")
    _error(client.get("/api/search/tile/999999"), 404, "not in the index")


def test_uploads_non_image_truncated_bomb_too_big(client):
    url = "/api/search/image?k=3"
    _error(client.post(url, content=b""), 400, "empty")
    _error(client.post(url, content=b"GIF89a not really"), 415, "not an image")
    _error(client.post(url, content=b"#!/bin/sh\nrm -rf /\n"), 415, "not an image")
    _error(client.post(url, content=b"%PDF-1.7\n" + b"x" * 1000), 415, "not an image")
    png = _png((256, 256))
    _error(client.post(url, content=png[: len(png) // 2]), 400, "truncated")
    jpeg = io.BytesIO()
    Image.new("RGB", (256, 256), (10, 200, 30)).save(jpeg, format="JPEG")
    _error(client.post(url, content=jpeg.getvalue()[:300]), 400, "truncated")
    # a bomb: a few kB of PNG that decodes to 400 megapixels
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 200_000
    _error(client.post(url, content=bomb.getvalue()), 413, "megapixels")
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (_upload.MAX_UPLOAD_BYTES + 10)
    _error(client.post(url, content=big), 413, "limit")
    _ok(client)  # still serving
    good = client.post(url, content=_png())
    assert good.status_code == 200 and len(good.json()["results"]) == 3


def test_png_with_a_lying_header_is_refused_before_decoding(client):
    # IHDR claims 60000 x 60000; Pillow must not be asked to allocate it
    def chunk(kind, data):
        return (
            len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
        )

    ihdr = (60000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
    _error(client.post("/api/search/image", content=data), 413, "megapixels")


def test_text_and_k_limits(client):
    _error(client.post("/api/search/text", json={"text": "x" * 501}), 400, "limit is 500")
    _error(client.post("/api/search/text", json={"text": "   "}), 400, "empty")
    _error(client.post("/api/search/text", json={"text": "nuclei", "k": 0}), 400, "k must")
    _error(client.post("/api/search/text", json={"text": "nuclei", "k": 10**9}), 400, "k must")
    _error(client.post("/api/search/text", json={"k": 3}), 400, "text")
    _error(client.post("/api/search/text", content=b"{not json"), 400, "bad request")
    _error(client.post("/api/search/text", json={"text": "a", "level": "x"}), 400, "level")
    _error(client.get("/api/search/tile/abc"), 400, "tile_id")
    _ok(client)


def test_hostile_filters_through_the_api_run_nothing(client, archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sentinel = tmp_path / "pwned"
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    monkeypatch.setattr(pd.DataFrame, "query", lambda *a, **k: called.append(a))
    monkeypatch.setattr(pd.DataFrame, "eval", lambda *a, **k: called.append(a))
    tid = int(archive.idx.metadata.index[0])
    png = _png()
    for where in hostile_filters(str(sentinel)):
        if not where.strip():
            continue  # an empty filter is no filter
        r = client.post("/api/search/text", json={"text": "nuclei", "k": 3, "where": where})
        _error(r, 400, "filter")
        r = client.post("/api/search/image", params={"k": 3, "where": where}, content=png)
        _error(r, 400, "filter")
        r = client.get(f"/api/search/tile/{tid}", params={"k": 3, "where": where})
        _error(r, 400, "filter")
        r = client.post(
            "/api/search/text", json={"text": "a", "k": 2, "where": where, "level": "slides"}
        )
        _error(r, 400, "filter")
    assert not sentinel.exists() and called == []
    _ok(client)


def test_binds_loopback_by_default_and_warns_otherwise(monkeypatch, caplog, index_path, encoder):
    import uvicorn

    from mmpath import serve
    from mmpath.cli import build_parser

    args = build_parser().parse_args(["serve", str(index_path)])
    assert args.host == "127.0.0.1"
    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append((app, kw)))
    with caplog.at_level(logging.WARNING, logger="mmpath.serve"):
        serve.run(index_path, encoder=encoder)
    assert runs[-1][1]["host"] == "127.0.0.1" and not caplog.records
    with caplog.at_level(logging.WARNING, logger="mmpath.serve"):
        serve.run(index_path, encoder=encoder, host="0.0.0.0", port=8123)
    assert runs[-1][1]["host"] == "0.0.0.0" and runs[-1][1]["port"] == 8123
    assert any("reachable from the network" in r.getMessage() for r in caplog.records)


def test_loopback_app_refuses_foreign_host_headers(archive):
    from fastapi.testclient import TestClient

    from mmpath.serve import create_app

    c = TestClient(create_app(archive, allowed_hosts=["127.0.0.1", "localhost"]))
    assert c.get("/api/info", headers={"host": "127.0.0.1:8000"}).status_code == 200
    assert c.get("/api/info", headers={"host": "evil.example"}).status_code == 400  # rebinding


def test_cli_errors_are_one_line(tmp_path, capsys):
    from mmpath.cli import main

    assert main(["serve", str(tmp_path / "missing.idx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/info"])
def test_pages_carry_a_self_only_csp(client, path):
    r = client.get(path)
    assert r.status_code == 200
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_page_loads_nothing_from_other_hosts(client):
    html = client.get("/").text
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    js = client.get("/static/app.js").text
    assert "http" not in js


@pytest.mark.slow  # builds the demo index from scratch (tiling + embedding the sample)
def test_cli_serve_demo_builds_the_index_then_serves_loopback(tmp_path, monkeypatch):
    import uvicorn

    from mmpath import index
    from mmpath.cli import main

    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    out = tmp_path / "serve.idx"
    assert main(["-q", "serve", str(out), "--demo", "--port", "8124"]) == 0  # `make serve`
    idx = index.load(out)
    assert idx.embedding_key.endswith("_proj") and len(idx) > 100  # text search works on it
    assert runs == [
        {"host": "127.0.0.1", "port": 8124, "log_level": "warning", "access_log": False}
    ]
