"""The web snippet as the beacon serves it: minified (``t.min.js``, built from ``t.js`` by
``npm run build:snippet``), compressed once at start (brotli where the client asks, else gzip),
at ``/t.js`` for installs that want the latest (short cache), and at a versioned URL that
never changes (``/t/<version>.js``, cached for a year, safe to pin with an SRI hash)."""

from __future__ import annotations

import base64
import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

import brotli
from aiohttp import web

from tracker.http import json_response

__all__ = ["Snippet", "add_snippet_routes"]

_TYPE = "application/javascript; charset=utf-8"
_LATEST_CACHE = "public, max-age=300"
_PINNED_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Snippet:
    body: bytes
    gzipped: bytes
    brotli: bytes
    version: str
    integrity: str

    @classmethod
    def load(cls) -> Snippet:
        body = resources.files("collectors.beacon").joinpath("t.min.js").read_bytes()
        return cls(
            body=body,
            gzipped=gzip.compress(body, compresslevel=9, mtime=0),
            brotli=brotli.compress(body, quality=11),
            version=hashlib.sha256(body).hexdigest()[:16],
            integrity="sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode(),
        )

    @property
    def path(self) -> str:
        return f"/t/{self.version}.js"

    def response(self, request: web.Request, cache: str) -> web.Response:
        etag = f'"{self.version}"'
        headers = {"ETag": etag, "Cache-Control": cache, "Vary": "Accept-Encoding"}
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        accepted = _encodings(request.headers.get("Accept-Encoding", ""))
        body = self.body
        if "br" in accepted:
            body, headers["Content-Encoding"] = self.brotli, "br"
        elif "gzip" in accepted:
            body, headers["Content-Encoding"] = self.gzipped, "gzip"
        return web.Response(body=body, headers={**headers, "Content-Type": _TYPE})


def add_snippet_routes(app: web.Application) -> None:
    snippet = Snippet.load()

    async def latest(request: web.Request) -> web.Response:
        return snippet.response(request, _LATEST_CACHE)

    async def pinned(request: web.Request) -> web.Response:
        if request.match_info["version"] != snippet.version:
            return web.Response(
                status=404,
                text=f"// this beacon serves {snippet.path}; see GET /t.json\n",
                content_type="application/javascript",
            )
        return snippet.response(request, _PINNED_CACHE)

    async def describe(_: web.Request) -> web.Response:
        return json_response(
            {"url": snippet.path, "integrity": snippet.integrity, "version": snippet.version}
        )

    app.router.add_get("/t.js", latest)
    app.router.add_get("/t/{version}.js", pinned)
    app.router.add_get("/t.json", describe)


def _encodings(header: str) -> set[str]:
    """The codings an ``Accept-Encoding`` header allows (``q=0`` refuses one)."""
    allowed = set()
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        quality = params.strip().removeprefix("q=").strip() if params else "1"
        try:
            if float(quality or "1") > 0:
                allowed.add(coding.strip().lower())
        except ValueError:
            continue
    return allowed
