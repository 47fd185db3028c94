"""The campaign's part of :class:`~labbridge.cli.client.OperatorClient`: the same actions against the running
daemon (its HTTP API, :mod:`labbridge.web.campaign`) or a stopped daemon's store (the daemon's own
:class:`~labbridge.campaign.service.Campaign` on the file), returning the same JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

from labbridge.campaign.service import Campaign
from labbridge.campaign.validation import Reference
from labbridge.cli.local import local_actor
from labbridge.config import Config
from labbridge.errors import LabbridgeError
from labbridge.store.db import Store

Json = dict[str, Any]


class CampaignOperator(Protocol):
    async def campaign_status(self, *, site: str | None) -> Json: ...
    async def campaign_report(self, *, site: str | None) -> Json: ...
    async def campaign_history(self, *, instrument: str | None) -> list[Json]: ...
    async def campaign_set(self, instrument: str, stage: str, *, actor: str, reason: str) -> Json: ...
    async def campaign_sign_off(self, instrument: str, *, release: bool, override: bool, actor: str,
                                reason: str) -> Json: ...
    async def campaign_rollback(self, instrument: str, *, actor: str, reason: str) -> Json: ...
    async def validate_import(self, instrument: str, refs: Sequence[Reference], *, actor: str, reason: str) -> Json: ...
    async def validate_compare(self, instrument: str) -> Json: ...


class HttpCampaignCalls:
    """Mixed into HttpOperatorClient, whose ``_call`` does the HTTP."""

    async def _call(self, method: str, path: str, *, query: Json | None = None, body: Json | None = None,
                    slow: bool = False, missing: bool = False) -> Any:
        raise NotImplementedError

    async def campaign_status(self, *, site: str | None) -> Json:
        return cast(Json, await self._call("GET", "/api/campaign", query={"site": site}))

    async def campaign_report(self, *, site: str | None) -> Json:
        return cast(Json, await self._call("GET", "/api/campaign/report", query={"site": site, "format": "json"}))

    async def campaign_history(self, *, instrument: str | None) -> list[Json]:
        return cast(list[Json], await self._call("GET", "/api/campaign/history", query={"instrument": instrument}))

    async def campaign_set(self, instrument: str, stage: str, *, actor: str, reason: str) -> Json:
        return cast(Json, await self._call("POST", f"/api/instruments/{instrument}/stage",
                                           body={"stage": stage, "by": actor, "reason": reason}))

    async def campaign_sign_off(self, instrument: str, *, release: bool, override: bool, actor: str,
                                reason: str) -> Json:
        body = {"held": "release" if release else "discard", "override": override, "by": actor, "reason": reason}
        return cast(Json, await self._call("POST", f"/api/instruments/{instrument}/sign-off", body=body, slow=True))

    async def campaign_rollback(self, instrument: str, *, actor: str, reason: str) -> Json:
        return cast(Json, await self._call("POST", f"/api/instruments/{instrument}/rollback",
                                           body={"by": actor, "reason": reason}))

    async def validate_import(self, instrument: str, refs: Sequence[Reference], *, actor: str, reason: str) -> Json:
        body = {"by": actor, "reason": reason, "references": [r.to_json() for r in refs]}
        return cast(Json, await self._call("POST", f"/api/instruments/{instrument}/references", body=body))

    async def validate_compare(self, instrument: str) -> Json:
        return cast(Json, await self._call("GET", f"/api/instruments/{instrument}/validation"))


class LocalCampaignCalls:
    """Mixed into LocalOperatorClient: the campaign on the store file, which needs the config (its sites and
    instruments); the stages the config gives are recorded first for instruments the store has none for,
    as the daemon does at its start. Changes are audited as ``local:<unix user>`` (the ``actor`` given is
    not used)."""

    config: Config | None

    async def _open(self, *, create: bool) -> Store:
        raise NotImplementedError

    async def _campaign(self) -> Campaign:
        if self.config is None:
            raise LabbridgeError("the campaign needs the daemon's config (its sites and instruments): use -c CONFIG")
        campaign = Campaign(await self._open(create=True), self.config)
        await campaign.start()
        return campaign

    async def campaign_status(self, *, site: str | None) -> Json:
        return await (await self._campaign()).status(site)

    async def campaign_report(self, *, site: str | None) -> Json:
        return await (await self._campaign()).report(site)

    async def campaign_history(self, *, instrument: str | None) -> list[Json]:
        return await (await self._campaign()).history(instrument)

    async def campaign_set(self, instrument: str, stage: str, *, actor: str, reason: str) -> Json:
        return await (await self._campaign()).set_stage(instrument, stage, actor=local_actor(), reason=reason)

    async def campaign_sign_off(self, instrument: str, *, release: bool, override: bool, actor: str,
                                reason: str) -> Json:
        return await (await self._campaign()).sign_off(instrument, release=release, override=override,
                                                       actor=local_actor(),
                                                       reason=reason)

    async def campaign_rollback(self, instrument: str, *, actor: str, reason: str) -> Json:
        return await (await self._campaign()).rollback(instrument, actor=local_actor(), reason=reason)

    async def validate_import(self, instrument: str, refs: Sequence[Reference], *, actor: str, reason: str) -> Json:
        return await (await self._campaign()).import_references(instrument, refs, actor=local_actor(), reason=reason)

    async def validate_compare(self, instrument: str) -> Json:
        return await (await self._campaign()).compare(instrument)
