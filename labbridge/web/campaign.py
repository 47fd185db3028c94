"""The campaign's HTTP routes (docs/api.md): the status per site, the report, the stage changes, the sign-off
and rollback, reference values and their comparison. Every change takes JSON only (no cross-site form can
post it) with, where the audit trail needs one, a ``reason`` (who: the authenticated account,
:func:`labbridge.web.auth.actor_of`; ``by`` counts only with authentication off); refusals are 400 with the
reason a technician can act on, an unknown instrument 404."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from labbridge.campaign.report import FORMATS, render_html, render_markdown
from labbridge.campaign.stages import CampaignNotFound, CampaignRefused
from labbridge.campaign.validation import REQUIRED_COLUMNS, Reference, tolerance_problem
from labbridge.runtime.api import DaemonApi
from labbridge.web import params
from labbridge.web.auth import actor_of
from labbridge.web.body import json_object

MAX_TEXT = 2000  # characters of a who, a reason, a stage name

PAGE_REFRESH_S = 15
REFERENCE_FIELDS = frozenset({*REQUIRED_COLUMNS, "unit", "note"})


def _error(text: str, status: int = 400) -> web.Response:
    return web.json_response({"error": text}, status=status)


async def _body(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    body = await json_object(request)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"unknown field(s): {', '.join(unknown)}"}),
                                 content_type="application/json")
    for key in ("by", "reason", "stage", "held"):
        if key in body and not isinstance(body[key], str):
            raise web.HTTPBadRequest(text=f'{{"error": "{key} must be a string"}}', content_type="application/json")
        params.text(body, key, max_length=MAX_TEXT)  # bounded: it goes to the audit trail
    return body


def _refused(exc: CampaignRefused) -> web.Response:
    return _error(str(exc), 404 if isinstance(exc, CampaignNotFound) else 400)


def campaign_routes(api: DaemonApi) -> list[web.RouteDef]:
    """The routes, on the daemon's campaign (labbridge.campaign.service.Campaign, through the DaemonApi)."""

    async def status(request: web.Request) -> web.Response:
        try:
            return web.json_response(await api.campaign.status(request.query.get("site") or None))
        except CampaignRefused as exc:
            return _refused(exc)

    async def report(request: web.Request) -> web.Response:
        fmt = request.query.get("format", "json")
        if fmt not in FORMATS:
            return _error(f"format must be one of {', '.join(FORMATS)}")
        try:
            built = await api.campaign.report(request.query.get("site") or None)
        except CampaignRefused as exc:
            return _refused(exc)
        if fmt == "md":
            return web.Response(text=render_markdown(built), content_type="text/markdown")
        if fmt == "html":
            return web.Response(text=render_html(built), content_type="text/html")
        return web.json_response(built)

    async def history(request: web.Request) -> web.Response:
        return web.json_response(await api.campaign.history(request.query.get("instrument") or None))

    async def set_stage(request: web.Request) -> web.Response:
        body = await _body(request, frozenset({"stage", "by", "reason"}))
        try:
            done = await api.campaign.set_stage(request.match_info["id"], str(body.get("stage") or ""),
                                                actor=actor_of(request, body.get("by")),
                                                reason=str(body.get("reason") or ""))
        except CampaignRefused as exc:
            return _refused(exc)
        return web.json_response(done)

    async def sign_off(request: web.Request) -> web.Response:
        body = await _body(request, frozenset({"by", "held", "override", "reason"}))
        if body.get("held") not in ("release", "discard"):
            return _error('held must be "release" (send the held results) or "discard" (keep them, never send)')
        override = body.get("override", False)
        if not isinstance(override, bool):
            return _error("override must be true or false")
        try:
            done = await api.campaign.sign_off(request.match_info["id"], release=body["held"] == "release",
                                               override=override, actor=actor_of(request, body.get("by")),
                                               reason=str(body.get("reason") or ""))
        except CampaignRefused as exc:
            return _refused(exc)
        return web.json_response(done)

    async def rollback(request: web.Request) -> web.Response:
        body = await _body(request, frozenset({"by", "reason"}))
        try:
            done = await api.campaign.rollback(request.match_info["id"], actor=actor_of(request, body.get("by")),
                                               reason=str(body.get("reason") or ""))
        except CampaignRefused as exc:
            return _refused(exc)
        return web.json_response(done)

    async def references(request: web.Request) -> web.Response:
        body = await _body(request, frozenset({"by", "reason", "references"}))
        given = body.get("references")
        if not isinstance(given, list) or not given:
            return _error("references must be a non-empty list of {sample, test, expected, tolerance}")
        refs: list[Reference] = []
        for n, entry in enumerate(given):
            if not isinstance(entry, dict) or set(entry) - REFERENCE_FIELDS or \
                    not all(isinstance(entry.get(k, ""), str) for k in REFERENCE_FIELDS):
                return _error(f"references[{n}]: an object of strings with {', '.join(REQUIRED_COLUMNS)}"
                              " (unit and note optional)")
            ref = Reference(entry.get("sample", ""), entry.get("test", ""), entry.get("expected", ""),
                            entry.get("tolerance", ""), entry.get("unit", ""), entry.get("note", ""))
            problem = tolerance_problem(ref.tolerance) or next(
                (f"{k} is empty" for k in ("sample", "test", "expected") if not getattr(ref, k)), None)
            if problem:
                return _error(f"references[{n}]: {problem}")
            refs.append(ref)
        try:
            done = await api.campaign.import_references(request.match_info["id"], refs,
                                                        actor=actor_of(request, body.get("by")),
                                                        reason=str(body.get("reason") or ""))
        except CampaignRefused as exc:
            return _refused(exc)
        return web.json_response(done)

    async def validation(request: web.Request) -> web.Response:
        try:
            return web.json_response(await api.campaign.compare(request.match_info["id"]))
        except CampaignRefused as exc:
            return _refused(exc)

    async def page(request: web.Request) -> web.Response:
        """The dashboard's campaign page: the report with the validating instruments' comparisons."""
        try:
            built = await api.campaign.report(request.query.get("site") or None)
        except CampaignRefused as exc:
            return _refused(exc)
        comparisons = {v["id"]: await api.campaign.compare(v["id"]) for s in built["sites"] for v in s["validating"]}
        return web.Response(text=render_html(built, comparisons=comparisons, refresh_s=PAGE_REFRESH_S),
                            content_type="text/html")

    return [
        web.get("/campaign", page),
        web.get("/api/campaign", status),
        web.get("/api/campaign/report", report),
        web.get("/api/campaign/history", history),
        web.post("/api/instruments/{id}/stage", set_stage),
        web.post("/api/instruments/{id}/sign-off", sign_off),
        web.post("/api/instruments/{id}/rollback", rollback),
        web.post("/api/instruments/{id}/references", references),
        web.get("/api/instruments/{id}/validation", validation),
    ]
