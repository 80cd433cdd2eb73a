"""The page in a real browser: Debian's headless Chromium driven by playwright, against the app
served by uvicorn on 127.0.0.1. Screenshots are checked for content (a non-blank slide in the
viewer, the hit inside the visible region), never pixel by pixel."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("MMPATH_CHROMIUM", "/usr/bin/chromium")
HOW = (
    "browser tests need Debian's chromium and playwright: apt-get install -y chromium && "
    "pip install playwright (or set MMPATH_CHROMIUM to a Chromium binary)"
)

if not (shutil.which(CHROMIUM) or os.path.exists(CHROMIUM)):
    pytest.skip(HOW, allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason=HOW)
uvicorn = pytest.importorskip("uvicorn", reason=HOW)

TIMEOUT = 20_000  # ms, per wait


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(archive):
    from mmpath.serve import create_app

    port = _free_port()
    app = create_app(archive, allowed_hosts=["127.0.0.1", "localhost"])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Exception as err:  # noqa: BLE001 - a broken browser install is a skip, not a fail
            pytest.skip(f"{HOW} ({type(err).__name__}: {str(err).splitlines()[0]})")
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    # bypass_csp: playwright evaluates its wait predicates as strings, which our CSP forbids
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(TIMEOUT)
    pg.goto(server + "/")
    pg.wait_for_function("window.mmpath && window.mmpath.info !== null")
    yield pg
    ctx.close()
    assert not errors, errors  # no JavaScript errors on the page


def _search_text(pg, text: str, k: int = 8, where: str = "") -> None:
    pg.fill("#k", str(k))
    pg.fill("#where", where)
    pg.fill("#text", text)
    pg.press("#text", "Enter")


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_text_query_fills_gallery_and_hit_opens_zoomed(page, archive):
    _search_text(page, "dense nuclei", k=8, where="slide_id != 'C'")
    page.wait_for_function("document.querySelectorAll('#gallery .hit').length == 8")
    assert "8 hit(s)" in page.inner_text("#status")
    # thumbnails loaded from the slides
    page.wait_for_function(
        "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth)"
    )
    first = page.locator("#gallery .hit").first
    tid = int(first.get_attribute("data-tile"))
    first.locator("img").click()
    page.wait_for_function("window.mmpath.open && window.mmpath.open.ready")
    page.wait_for_function("window.mmpath.viewer.world.getItemAt(0).getFullyLoaded()")
    page.wait_for_timeout(300)
    meta = archive.idx.metadata.loc[tid]
    size0 = archive.records[str(meta["slide_id"])]["tiling"]["size0"]
    vis = page.evaluate("window.mmpath.visibleImageRect()")
    # zoomed in on the hit: it lies inside the visible region, which is a small part of the slide
    assert vis["x"] <= meta["x"] and meta["x"] + size0 <= vis["x"] + vis["width"]
    assert vis["y"] <= meta["y"] and meta["y"] + size0 <= vis["y"] + vis["height"]
    assert vis["width"] < 0.5 * 2220
    # the outline overlay is drawn around the hit, near the middle of the viewer
    box = page.locator("#viewer").bounding_box()
    hit = page.locator("#hit-outline").bounding_box()
    cx, cy = hit["x"] + hit["width"] / 2, hit["y"] + hit["height"] / 2
    assert abs(cx - (box["x"] + box["width"] / 2)) < 0.15 * box["width"]
    assert abs(cy - (box["y"] + box["height"] / 2)) < 0.15 * box["height"]
    assert hit["width"] > 40  # zoomed: the 112 px tile spans many screen pixels
    # other hits on the same slide are marked, the scale bar says µm
    n_same = sum(
        1 for t in page.locator("#gallery .hit").all() if t.get_attribute("data-slide") == "A"
    )
    if str(meta["slide_id"]) == "A":
        assert page.locator("#viewer .other").count() == n_same - 1
    assert "µm" in page.inner_text("#scalebar-text")
    # the canvas shows tissue: not blank, not one colour
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#viewer").screenshot())).convert("RGB"))
    assert shot.std() > 15 and (shot.mean(axis=2) < 200).mean() > 0.05


def test_image_upload_and_more_like_this(page, archive, tmp_path):
    import mmpath as mm

    meta = archive.idx.metadata
    tid = int(meta.index[(meta["slide_id"] == "B").to_numpy()][10])
    px = mm.io.read_tiles(None, archive.idx.tiles([tid]))[0]
    path = tmp_path / "query.png"
    path.write_bytes(_png(px))
    page.fill("#k", "5")
    page.fill("#mpp", str(float(meta.loc[tid, "mpp"])))
    page.fill("#where", "slide_id != 'C'")  # C was moved away: "more like this" needs pixels
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.querySelectorAll('#gallery .hit').length == 5")
    assert "image: query.png" in page.inner_text("#status")
    top = page.locator("#gallery .hit").first
    assert float(top.locator("dd.score").inner_text()) > 0.99
    # more like this on a hit: the hit itself leaves the gallery
    before = top.get_attribute("data-tile")
    top.locator("button.more").click()
    page.wait_for_function(f"document.querySelector('#status').textContent.includes('{before}')")
    tiles = [h.get_attribute("data-tile") for h in page.locator("#gallery .hit").all()]
    assert before not in tiles and len(tiles) == 5
    # the slides tab ranks slides for the same query
    page.click("#tab-slides")
    page.wait_for_function("!document.querySelector('#slides-table').hidden")
    rows = page.locator("#slides-table tbody tr").all()
    assert sorted(r.get_attribute("data-slide") for r in rows) == ["A", "B"]  # C filtered out


def test_bad_inputs_show_a_message_and_the_page_keeps_working(page, archive, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("!document.querySelector('#message').hidden")
    assert "not an image" in page.inner_text("#message")
    sentinel = tmp_path / "pwned"
    _search_text(page, "nuclei", where=f"__import__('os').system('touch {sentinel}') == 0")
    page.wait_for_function(
        "document.querySelector('#message').textContent.includes('filter not allowed')"
    )
    assert not sentinel.exists()
    _search_text(page, "nuclei", k=4, where="slide_id == 'C'")  # C was moved away
    page.wait_for_function("document.querySelectorAll('#gallery .hit').length == 4")
    assert page.locator("#message").is_hidden()
    page.locator("#gallery .hit button.view").first.click()  # its thumbnail is missing
    page.wait_for_function("!document.querySelector('#viewer-msg').hidden")
    msg = page.inner_text("#viewer-msg")
    assert "Cannot show this slide" in msg and "--remap" in msg
    page.wait_for_function("document.querySelectorAll('.nothumb').length == 4")  # said, per hit
