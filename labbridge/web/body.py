"""The body of a POST that changes something: a JSON object only (a browser cannot send that cross-site
without a CORS preflight, which this server never grants), else 415 or 400 with ``{"error": ...}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text='{"error": "send JSON (Content-Type: application/json)"}',
                                           content_type="application/json")
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "the body must be a JSON object"}', content_type="application/json")
    return body
