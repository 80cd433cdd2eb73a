"""The JSON API in-process (FastAPI's TestClient) on a real index of real slide pixels."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from .conftest import TILE


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_info_lists_columns_slides_and_switches(client, archive):
    info = client.get("/api/info").json()
    assert info["n_tiles"] == len(archive.idx) and info["n_slides"] == 3
    assert info["text_search"] is True and info["image_search"] is True
    cols = {c["name"]: c for c in info["columns"]}
    assert cols["site"]["kind"] == "text" and cols["site"]["values"] == ["colon", "lung"]
    assert cols["grade"]["kind"] == "number" and (cols["grade"]["min"], cols["grade"]["max"]) == (
        1.0,
        2.0,
    )
    assert [s["slide_id"] for s in info["slides"]] == ["A", "B", "C"]
    assert all(s["mpp"] == pytest.approx(0.499) for s in info["slides"])


def test_text_search_ranks_and_filters(client, archive):
    r = client.post("/api/search/text", json={"text": "dense nuclei", "k": 12})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 12
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    # the same answer as the library call
    ref = archive.idx.search_text("dense nuclei", 12, encoder=archive.encoder)
    assert [h["tile_id"] for h in hits] == ref["tile_id"].tolist()
    assert all(h["size0"] == pytest.approx(TILE * 0.5 / 0.499, rel=0.01) for h in hits)
    r = client.post(
        "/api/search/text", json={"text": "dense nuclei", "k": 12, "where": "site == 'lung'"}
    )
    assert {h["slide_id"] for h in r.json()["results"]} == {"B"}
    assert {h["site"] for h in r.json()["results"]} == {"lung"}


def test_image_upload_finds_the_tile_and_its_twin(client, archive):
    import mmpath as mm

    meta = archive.idx.metadata
    tid = int(meta.index[(meta["slide_id"] == "A").to_numpy()][7])
    px = mm.io.read_tiles(None, archive.idx.tiles([tid]), remap=None)[0]
    mpp = float(meta.loc[tid, "mpp"])
    r = client.post(f"/api/search/image?k=4&mpp={mpp}", content=_png(px))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["note"] is None  # mpp given: nothing assumed
    top = body["results"][:3]
    assert {h["slide_id"] for h in top} == {"A", "B", "C"}  # the tile and its identical twins
    assert all(
        (h["x"], h["y"]) == (meta.loc[tid, "x"], meta.loc[tid, "y"]) and h["score"] > 0.99
        for h in top
    )
    r = client.post("/api/search/image?k=4", content=_png(px))
    assert "encoder's magnification" in r.json()["note"]  # the assumption is said


def test_more_like_this_leaves_the_tile_out_and_finds_its_twin(client, archive):
    meta = archive.idx.metadata
    tid = int(meta.index[(meta["slide_id"] == "A").to_numpy()][3])
    hits = client.get(f"/api/search/tile/{tid}?k=5").json()["results"]
    assert tid not in [h["tile_id"] for h in hits]
    twin = hits[0]
    assert twin["slide_id"] in ("B", "C") and twin["score"] > 0.99
    assert (twin["x"], twin["y"]) == (meta.loc[tid, "x"], meta.loc[tid, "y"])
    slides = client.get(f"/api/search/tile/{tid}?k=3&level=slides").json()["results"]
    assert sorted(s["slide_id"] for s in slides) == ["A", "B", "C"]
    assert all(s["votes"] == 1 and s["best_score"] > 0.99 for s in slides)


def test_slide_level_text_search(client):
    r = client.post("/api/search/text", json={"text": "dense nuclei", "k": 2, "level": "slides"})
    rows = r.json()["results"]
    assert [s["rank"] for s in rows] == [1, 2]
    assert {"votes", "median_score", "best_score", "site"} <= set(rows[0])


def test_slide_info_dzi_and_tiles(client, archive):
    info = client.get("/api/slides/A").json()
    assert info["readable"] is True and info["dims"] == [2220, 2967]
    xml = ET.fromstring(client.get("/api/slides/A.dzi").text)
    assert xml.get("TileSize") == "254" and xml.get("Overlap") == "1"
    size = xml.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert (size.get("Width"), size.get("Height")) == ("2220", "2967")
    top = int(np.ceil(np.log2(2967)))  # levels halve down to 1x1
    r = client.get(f"/api/slides/A_files/{top}/1_2.jpeg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    tile = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), float)
    assert tile.shape == (256, 256, 3)  # interior tile: 254 + 1 + 1
    ref = archive.slide("A").read_region((254 - 1, 2 * 254 - 1), 0, (256, 256)).astype(float)
    assert np.abs(tile - ref).mean() < 4  # JPEG, same pixels
    assert client.get("/api/slides/A_files/0/0_0.jpeg").status_code == 200  # 1x1 level
    assert client.get(f"/api/slides/A_files/{top + 1}/0_0.jpeg").status_code == 404
    assert client.get(f"/api/slides/A_files/{top}/99_0.jpeg").status_code == 404


def test_thumbnail_is_the_tile(client, archive):
    import mmpath as mm

    meta = archive.idx.metadata
    tid = int(meta.index[(meta["slide_id"] == "B").to_numpy()][5])
    r = client.get(f"/api/tiles/{tid}/thumb.jpg")
    assert r.status_code == 200
    th = Image.open(io.BytesIO(r.content)).convert("RGB")
    px = mm.io.read_tiles(None, archive.idx.tiles([tid, tid + 1]))
    err = [
        np.abs(
            np.asarray(th, float)
            - np.asarray(Image.fromarray(p).resize(th.size, Image.Resampling.LANCZOS), float)
        ).mean()
        for p in px
    ]
    assert err[0] < 10 and err[0] < 0.5 * err[1], err  # JPEG of this tile, not its neighbour


def test_moved_slide_viewer_says_so_gallery_still_works(client, archive_dir):
    info = client.get("/api/slides/C").json()
    assert info["readable"] is False
    assert "does not exist" in info["message"] and "--remap" in info["message"]
    r = client.get("/api/slides/C.dzi")
    assert r.status_code == 503 and "--remap" in r.json()["error"]
    meta_c = client.post(
        "/api/search/text", json={"text": "dense nuclei", "k": 5, "where": "slide_id == 'C'"}
    )
    hits = meta_c.json()["results"]
    assert len(hits) == 5 and {h["slide_id"] for h in hits} == {"C"}  # listed all the same
    assert client.get(f"/api/tiles/{hits[0]['tile_id']}/thumb.jpg").status_code == 503
    assert client.get("/api/slides/A").json()["readable"] is True  # others unaffected


def test_remap_reopens_moved_slides(index_path, archive_dir, encoder):
    from fastapi.testclient import TestClient

    from mmpath import serve

    old = str(archive_dir / "slides") + "/C.svs"
    remap = {old: str(archive_dir / "moved" / "C.svs")}
    app = serve.create_app(index_path, encoder=encoder, remap=remap)
    c = TestClient(app)
    assert c.get("/api/slides/C").json()["readable"] is True
    assert c.get("/api/slides/C_files/0/0_0.jpeg").status_code == 200


def test_openapi_schema_documents_the_api_and_no_cdn_docs(client):
    paths = client.get("/api/openapi.json").json()["paths"]
    for p in ("/api/search/text", "/api/search/image", "/api/search/tile/{tile_id}", "/api/info"):
        assert p in paths
    assert client.get("/api/docs").status_code == 404  # Swagger UI would load from a CDN
