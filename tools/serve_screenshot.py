"""Take the README's screenshot of the search page (docs/serve.png) with headless Chromium.

Serves the demo index (built on first use) on 127.0.0.1, types a text query, opens the first
hit in the viewer, and saves a small palette PNG.

    .venv/bin/python tools/serve_screenshot.py [--out docs/serve.png] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import io
import socket
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/serve.png")
    ap.add_argument("--index", default="demo-out/serve.idx")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--query", default="dense nuclei")
    args = ap.parse_args()

    import uvicorn
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from mmpath import serve

    idx = serve.demo_index(args.index)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = serve.create_app(idx, allowed_hosts=["127.0.0.1"])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            ctx = b.new_context(viewport={"width": 1280, "height": 760}, bypass_csp=True)
            pg = ctx.new_page()
            pg.set_default_timeout(30_000)
            pg.goto(f"http://127.0.0.1:{port}/")
            pg.wait_for_function("window.mmpath && window.mmpath.info")
            pg.fill("#k", "12")
            pg.fill("#where", "tissue_frac > 0.9")
            pg.fill("#text", args.query)
            pg.press("#text", "Enter")
            pg.wait_for_function("document.querySelectorAll('#gallery .hit').length == 12")
            pg.wait_for_function(
                "[...document.querySelectorAll('#gallery img')]"
                ".every(i => i.complete && i.naturalWidth)"
            )
            pg.locator("#gallery .hit img").nth(1).click()
            pg.wait_for_function("window.mmpath.open && window.mmpath.open.ready")
            pg.wait_for_function("window.mmpath.viewer.world.getItemAt(0).getFullyLoaded()")
            pg.wait_for_timeout(500)
            png = pg.screenshot()
            b.close()
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.LANCZOS)
    img = img.quantize(colors=96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    print(f"{out} ({out.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
