"""The FastAPI app: the page (static files in the package) and the JSON API under ``/api/``."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmpath.errors import MmpathError, ModelError, SlideError
from mmpath.serve._archive import Archive, NotFound, Unavailable
from mmpath.serve._upload import MAX_UPLOAD_BYTES, UploadError, decode_image

log = logging.getLogger(__name__)

STATIC = resources.files("mmpath.serve") / "static"
# Everything the page loads comes from this server: no CDN, works air-gapped.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


class TextQuery(BaseModel):
    """Body of ``POST /api/search/text``."""

    text: str = Field(..., description="what to find, e.g. 'dense nuclei'")
    k: int = Field(20, description="hits (slides with level='slides')")
    where: str | None = Field(None, description="metadata filter (the safe filter language)")
    level: str = Field("tiles", description="'tiles' or 'slides'")


class _SecurityHeaders:
    """Adds the CSP and nosniff headers to every response (plain ASGI: cheaper than
    Starlette's ``BaseHTTPMiddleware`` on every request)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Content-Security-Policy"] = CSP
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def status_of(err: Exception) -> int:
    """The HTTP status of an mmpath error: the client's fault is 4xx, an unreadable slide 503."""
    if isinstance(err, UploadError):
        return err.status
    if isinstance(err, NotFound):
        return 404
    if isinstance(err, (Unavailable, SlideError)):
        return 503
    return 400


def create_app(archive: Archive, *, allowed_hosts: list[str] | None = None):
    """The ASGI app of the search page over ``archive``.

    Parameters
    ----------
    archive
        An :class:`~mmpath.serve._archive.Archive` (index, encoder, remap).
    allowed_hosts
        Host headers accepted (guards a loopback server against DNS rebinding); ``None``
        accepts any.
    """
    app = FastAPI(
        title="mmpath search",
        docs_url=None,  # Swagger UI loads from a CDN: not on an air-gapped page
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.archive = archive
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    app.add_middleware(_SecurityHeaders)

    @app.exception_handler(MmpathError)
    async def _mmpath_error(request: Request, err: MmpathError):
        return JSONResponse({"error": " ".join(str(err).split())}, status_code=status_of(err))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, err: RequestValidationError):
        parts = []
        for e in err.errors()[:3]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
            parts.append(f"{where or 'request'}: {e.get('msg')}")
        return JSONResponse({"error": "bad request: " + "; ".join(parts)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unexpected error on %s", request.url.path)
        text = " ".join(str(err).split())[:200]
        return JSONResponse(
            {"error": f"internal error ({type(err).__name__}: {text}); see the server log"},
            status_code=500,
        )

    # -- the page ---------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    # -- API ---------------------------------------------------------------------------------

    def _level(level: str) -> str:
        if level not in ("tiles", "slides"):
            raise ModelError(f"level must be 'tiles' or 'slides', got {level!r}")
        return level

    def _where(where: str | None) -> str | None:
        return where if where is not None and where.strip() else None

    def _answer(kind: str, level: str, results: list, note: str | None = None) -> dict[str, Any]:
        return {"query": kind, "level": level, "results": results, "note": note}

    @app.get("/api/info")
    def info() -> dict:
        """The index: size, encoder, metadata columns (for filters), limits and slides."""
        return archive.info()

    @app.post("/api/search/text")
    def search_text(q: TextQuery) -> dict:
        """Tiles (or slides) matching a text, in the index's joint image-text space."""
        level, where = _level(q.level), _where(q.where)
        if level == "slides":
            return _answer("text", level, archive.search_slides(text=q.text, k=q.k, where=where))
        return _answer("text", level, archive.search_text(q.text, q.k, where))

    @app.post("/api/search/image")
    async def search_image(
        request: Request,
        k: int = Query(20),
        where: str | None = Query(None),
        mpp: float | None = Query(None, gt=0, description="µm/px of the uploaded image"),
        level: str = Query("tiles"),
    ) -> dict:
        """Tiles (or slides) like an uploaded image: the request body is the image file."""
        level, where = _level(level), _where(where)
        data = await _read_body(request)
        if level == "slides" and mpp is not None:
            raise ModelError(
                "slide-level image search assumes the encoder's magnification; leave mpp "
                "empty (or rescale the image) for the slides tab"
            )

        def work():  # decode and search in one worker-thread hop
            image = decode_image(data)
            if level == "slides":
                return archive.search_slides(image=image, k=k, where=where)
            return archive.search_image(image, k, where, mpp)

        res = await run_in_threadpool(work)
        if level == "slides":
            return _answer("image", level, res)
        note = None
        if mpp is None:
            note = "the image was taken to be at the encoder's magnification (set mpp to rescale)"
        return _answer("image", level, res, note)

    @app.get("/api/search/tile/{tile_id}")
    def search_tile(
        tile_id: int, k: int = Query(20), where: str | None = None, level: str = "tiles"
    ) -> dict:
        """Tiles (or slides) most like an indexed tile ("more like this"); the tile is left out."""
        level, where = _level(level), _where(where)
        if level == "slides":
            res = archive.search_slides(tile_id=tile_id, k=k, where=where)
        else:
            res = archive.search_tile(tile_id, k, where)
        return _answer("tile", level, res)

    @app.get("/api/slides")
    def slides() -> list:
        """Every slide in the index (from provenance; no file is opened)."""
        return [archive.slide_summary(s) for s in sorted(archive.records)]

    @app.get("/api/slides/{slide_id}.dzi")
    def dzi(slide_id: str):
        """The slide's Deep Zoom descriptor (tile 254, overlap 1, JPEG)."""
        return Response(archive.deepzoom(slide_id).dzi(), media_type="application/xml")

    @app.get("/api/slides/{slide_id}_files/{level}/{col}_{row}.jpeg")
    def dz_tile(slide_id: str, level: int, col: int, row: int):
        """One Deep Zoom tile, read from the slide by mmpath's readers (cached)."""
        archive._record(slide_id)
        data = archive.dz_tile(slide_id, level, col, row)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/slides/{slide_id}")
    def slide(slide_id: str) -> dict:
        """A slide: size, mpp, tiles, and whether it can be read now (with a message if not)."""
        return archive.slide_info(slide_id)

    @app.get("/api/tiles/{tile_id}/thumb.jpg")
    def thumb(tile_id: int):
        """A hit's thumbnail, read from its slide (reopened from provenance; cached)."""
        data = archive.thumbnail(int(tile_id))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


async def _read_body(request) -> bytes:
    """The request body, refused as soon as it passes the upload limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise UploadError(
            f"the upload is {int(declared) / 2**20:.1f} MB; the limit is "
            f"{MAX_UPLOAD_BYTES // 2**20} MB (crop the region of interest)",
            413,
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise UploadError(
                f"the upload exceeds the {MAX_UPLOAD_BYTES // 2**20} MB limit "
                "(crop the region of interest)",
                413,
            )
        chunks.append(chunk)
    return b"".join(chunks)
