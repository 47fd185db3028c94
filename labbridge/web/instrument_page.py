"""The dashboard's pages and the reads only they need (docs/api.md, "Dashboard").

* ``GET /instruments/{id}``: an instrument's page (static/instrument.html; its script reads the JSON API:
  the instrument, its history, recent messages, dead letters, the campaign's validation and sign-off);
* ``GET /static/{name}``: the pages' own stylesheet and scripts (hand-written, no build step, nothing fetched
  from elsewhere: the dashboard works offline);
* ``GET /api/instruments/{id}/messages?limit=``: its newest stored messages with their results. Patients'
  identifiers are masked unless ``[dashboard] show_patient_identifiers`` is true: a patient id becomes
  ``MASK``, a patient sample's id keeps only its last ``SAMPLE_TAIL`` characters (enough to find a tube in
  a rack, not to name anyone); QC samples are shown as they are;
* ``GET /api/instruments/{id}/dead-letters?limit=``: its dead letters (retried with ``POST /api/outbox/retry``).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from labbridge.runtime.api import DaemonApi
from labbridge.store import dashboard as queries

MASK = "••••••"
SAMPLE_TAIL = 3
DEFAULT_LIMIT = 25
STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript", "instrument.js": "text/javascript"}


def static_text(name: str) -> str:
    return resources.files("labbridge.web").joinpath(f"static/{name}").read_text(encoding="utf-8")


def mask_result(result: dict[str, Any]) -> dict[str, Any]:
    """The result with its patient's identifiers masked (QC samples keep their ids: no patient)."""
    out = dict(result)
    if out.get("patient_id"):
        out["patient_id"] = MASK
    sample = str(out.get("sample_id") or "")
    if sample and out.get("kind", "patient") == "patient":
        out["sample_id"] = "•••" + sample[-SAMPLE_TAIL:] if len(sample) > SAMPLE_TAIL else "•••"
    return out


def identifiers_shown(api: DaemonApi) -> bool:
    """Whether the pages may show patients' identifiers (``[dashboard] show_patient_identifiers``)."""
    return api.config.dashboard.show_patient_identifiers


def _limit(request: web.Request) -> int:
    try:
        limit = int(request.query.get("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "limit must be an integer"}',
                                 content_type="application/json") from None
    if not 1 <= limit <= queries.MAX_ROWS:
        raise web.HTTPBadRequest(text=f'{{"error": "limit must be from 1 to {queries.MAX_ROWS}"}}',
                                 content_type="application/json")
    return limit


def page_routes(api: DaemonApi) -> list[web.RouteDef]:
    def known(ident: str) -> bool:
        return any(item["id"] == ident for item in api.instruments_json())

    def unknown(ident: str) -> web.Response:
        return web.json_response({"error": f"no instrument {ident!r}"}, status=404)

    async def instrument_page(request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        return web.Response(text=static_text("instrument.html"), content_type="text/html",
                            status=200 if known(ident) else 404, headers={"Cache-Control": "no-cache"})

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            return web.json_response({"error": f"no file {name!r}"}, status=404)
        return web.Response(text=static_text(name), content_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    async def messages(request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        if not known(ident):
            return unknown(ident)
        limit = _limit(request)
        rows = await api.store.read(lambda conn: queries.recent_messages(conn, ident, limit))
        shown = identifiers_shown(api)
        if not shown:
            for row in rows:
                row["results"] = [mask_result(r) for r in row["results"]]
        return web.json_response({"instrument": ident, "identifiers": "shown" if shown else "masked",
                                  "messages": rows})

    async def dead_letters(request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        if not known(ident):
            return unknown(ident)
        limit = _limit(request)
        rows = await api.store.read(lambda conn: queries.dead_letters(conn, ident, limit))
        return web.json_response({"instrument": ident, "items": rows})

    return [
        web.get("/instruments/{id}", instrument_page),
        web.get("/static/{name}", static),
        web.get("/api/instruments/{id}/messages", messages),
        web.get("/api/instruments/{id}/dead-letters", dead_letters),
    ]
