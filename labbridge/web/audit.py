"""The audit trail's HTTP routes: ``GET /api/audit/verify`` (the hash chain checked, the first broken entry
named; ``?head=ID:HASH`` an entry noted earlier that must still be there) and ``GET /api/audit/export``
(every entry with its hashes, oldest first). Read-only: viewer (labbridge.web.auth)."""

from __future__ import annotations

from aiohttp import web

from labbridge.runtime.api import StoreView
from labbridge.store import audit


def audit_routes(store: StoreView) -> list[web.RouteDef]:
    async def verify(request: web.Request) -> web.Response:
        head = request.query.get("head") or None
        verdict = await store.read(lambda conn: audit.verify(conn, head))
        return web.json_response(verdict.to_json())

    async def export(_request: web.Request) -> web.Response:
        return web.json_response(await store.read(audit.export))

    return [web.get("/api/audit/verify", verify), web.get("/api/audit/export", export)]
