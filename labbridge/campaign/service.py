"""The campaign's operator actions and views on one store: shared by the daemon (its HTTP API) and the offline
CLI (a stopped daemon's store file), so both do exactly the same thing and return the same JSON (docs/api.md).

Each change is one write in the store's writer (:mod:`labbridge.store.campaign`): the stage, its history row
and its audit row, and for a sign-off or a rollback the held results, all in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from labbridge.campaign.report import build_report
from labbridge.campaign.stages import AUTOMATIC, DAEMON_ACTOR, STAGES, CampaignNotFound, CampaignRefused, GateMode
from labbridge.campaign.validation import Reference
from labbridge.config import Config
from labbridge.health.instrument import InstrumentHealth
from labbridge.logs import get_logger
from labbridge.store import campaign as sql
from labbridge.store.db import Store

log = get_logger("labbridge.campaign")
Json = dict[str, Any]
# An instrument's link state and reason, when a daemon runs (None: not known, e.g. the daemon is stopped).
LinkStateOf = Callable[[str], tuple[str, str] | None]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def gate_modes(config: Config) -> dict[str, GateMode]:
    """Per LIS destination, what the gate does with a not-yet-live instrument's results."""
    return {dest.id: dest.validating for dest in config.lis}


class Campaign:
    def __init__(self, store: Store, config: Config, *, link_state: LinkStateOf | None = None,
                 on_release: Callable[[], None] | None = None) -> None:
        self.store = store
        self.config = config
        self.link_state = link_state
        self.on_release = on_release  # held results were put in line: wake the relays
        # Called after each change this object makes (stage, sign-off, rollback, link-up, references): the
        # dashboard's live updates (labbridge.web.events). Must not block.
        self.observers: list[Callable[[], None]] = []

    def _changed(self) -> None:
        for observer in self.observers:
            observer()

    async def start(self) -> None:
        """Record the config's stage of every instrument the store has none for, and the destinations' modes."""
        await self.store.write(sql.init_stages, {i.id: i.stage for i in self.config.instruments},
                               gate_modes(self.config), time.time())

    async def reconfigure(self, config: Config) -> None:
        """A new config is in force (a reload): instruments it adds get its stage (before their links open: until
        then they would count as live), the destinations' modes are replaced; stored stages are kept."""
        self.config = config
        await self.start()

    def _instrument(self, instrument: str) -> None:
        if not any(i.id == instrument for i in self.config.instruments):
            raise CampaignNotFound(f"no instrument {instrument!r} in the configuration")

    @staticmethod
    def _said(actor: str, reason: str, *, reason_needed: bool = True) -> tuple[str, str]:
        actor, reason = actor.strip(), reason.strip()
        if not actor:
            raise CampaignRefused("who does it is required (--by, or \"by\" in the API)")
        if reason_needed and not reason:
            raise CampaignRefused("a reason is required (it goes to the audit trail)")
        return actor, reason

    # ---- changes -------------------------------------------------------------------------------

    async def set_stage(self, instrument: str, stage: str, *, actor: str, reason: str) -> Json:
        self._instrument(instrument)
        if stage not in STAGES:
            raise CampaignRefused(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
        actor, reason = self._said(actor, reason)
        done = await self.store.write(sql.set_stage, instrument, stage, actor=actor, reason=reason, now=time.time())
        log.info("campaign_stage", instrument=instrument, stage=stage, by=actor)
        self._changed()
        return done

    async def sign_off(self, instrument: str, *, release: bool, override: bool, actor: str, reason: str) -> Json:
        self._instrument(instrument)
        actor, reason = self._said(actor, reason, reason_needed=override)
        done = await self.store.write(sql.sign_off, instrument, release=release, override=override, actor=actor,
                                      reason=reason, now=time.time())
        log.info("campaign_signed_off", instrument=instrument, by=actor, held=done["held"], items=done["items"],
                 override=done["override"])
        if release and self.on_release is not None:
            self.on_release()
        self._changed()
        return done

    async def rollback(self, instrument: str, *, actor: str, reason: str) -> Json:
        self._instrument(instrument)
        actor, reason = self._said(actor, reason)
        done = await self.store.write(sql.rollback, instrument, actor=actor, reason=reason, now=time.time())
        log.warning("campaign_rolled_back", instrument=instrument, by=actor, held_again=done["held_again"])
        self._changed()
        return done

    async def link_up(self, instrument: str, reason: str) -> bool:
        """The daemon saw the analyzer connect: ``link-up`` if it was not that far yet."""
        moved: bool = await self.store.write(sql.advance, instrument, "link-up", reason, time.time())
        if moved:
            self._changed()
        return moved

    async def import_references(self, instrument: str, refs: Sequence[Reference], *, actor: str,
                                reason: str = "") -> Json:
        self._instrument(instrument)
        actor, reason = self._said(actor, reason or "reference values imported", reason_needed=False)
        if not refs:
            raise CampaignRefused("no reference values to import")
        done: Json = await self.store.write(sql.import_references, instrument, list(refs), actor=actor,
                                            reason=reason or "reference values imported", now=time.time())
        self._changed()
        return done

    # ---- views ---------------------------------------------------------------------------------

    async def compare(self, instrument: str) -> Json:
        self._instrument(instrument)
        return await self.store.read(lambda conn: sql.comparison(conn, instrument))

    async def history(self, instrument: str | None = None, limit: int = 500) -> list[Json]:
        rows = await self.store.read(lambda conn: sql.history_rows(conn, instrument, limit))
        return [{**row, "at": _iso(row["at"])} for row in rows]

    async def status(self, site: str | None = None) -> Json:
        """``{"sites": [{"id", "name", "progress", "instruments": [...]}]}`` (docs/api.md, GET /api/campaign)."""
        if site is not None and not any(s.id == site for s in self.config.sites):
            raise CampaignNotFound(f"no site {site!r} in the configuration")
        books = await self.store.read(sql.campaign_rows)
        validating = [i.id for i in self.config.instruments
                      if books.get(i.id, {}).get("stage", i.stage) == "validating"]
        compared = {ident: await self.compare(ident) for ident in validating}
        sites = []
        for s in self.config.sites:
            if site is not None and s.id != site:
                continue
            rows = [self._row(inst.id, inst.name, inst.stage, books.get(inst.id), compared.get(inst.id))
                    for inst in self.config.instruments if inst.site == s.id]
            sites.append({"id": s.id, "name": s.name, "progress": progress(rows), "instruments": rows})
        return {"sites": sites}

    def _row(self, ident: str, name: str, configured: str, books: Json | None, compared: Json | None) -> Json:
        books = dict(books or {"stage": configured, "stage_since": None, "stage_by": "config",
                               "stage_reason": "not recorded yet (the daemon records it at its start)"})
        known = self.link_state(ident) if self.link_state is not None else None
        row: Json = {"id": ident, "name": name, "stage": books.pop("stage"),
                     "state": known[0] if known else None, "state_reason": known[1] if known else None}
        for key in ("held", "delivered", "pending", "discarded", "dead", "sent_as_test", "backlog_pending",
                    "backlog_delivered", "references", "qc_held"):
            row[key] = int(books.pop(key, 0) or 0)
        row["stage_since"] = _iso(books.pop("stage_since", None))
        row["live_since"] = _iso(books.pop("live_since", None)) if row["stage"] == "live" else None
        row["stage_by"] = books.pop("stage_by", None)
        row["stage_reason"] = books.pop("stage_reason", None)
        if compared is not None:
            row["validation"] = {k: compared[k] for k in ("references", "within", "outside", "missing", "ok")}
        row["blocked"] = blocked_because(row)
        return row

    async def report(self, site: str | None = None) -> Json:
        return build_report(await self.status(site), node=self.config.node, generated_at=time.time(),
                            group=site is None)


def blocked_because(row: Json) -> str | None:
    """What stops an instrument from going (or staying) live, in a technician's words; None: nothing."""
    stage, state = row["stage"], row.get("state")
    if stage == "rolled-back":
        return f"rolled back: {row.get('stage_reason') or 'no reason recorded'}"
    if state == "failed":
        return f"link failed: {row.get('state_reason') or ''}".rstrip(": ")
    validation = row.get("validation")
    if stage == "validating" and validation is not None and not validation["ok"]:
        if not validation["references"]:
            return "validating: no reference values imported (labbridge validate import)"
        return (f"validating: {validation['outside']} result(s) outside tolerance, {validation['missing']} "
                "missing (labbridge validate compare)")
    if state == "down":
        return f"link down: {row.get('state_reason') or ''}".rstrip(": ")
    if row.get("dead"):
        return f"{row['dead']} result(s) in the dead letters (labbridge outbox list --state dead)"
    return None


def progress(rows: Sequence[Json]) -> Json:
    """A site's (or the group's) progress: instruments per stage, live out of all, held and blocked."""
    stages = dict.fromkeys(STAGES, 0)
    for row in rows:
        stages[row["stage"]] = stages.get(row["stage"], 0) + 1
    return {"instruments": len(rows), "live": stages["live"], "validating": stages["validating"],
            "stages": stages, "blocked": sum(1 for r in rows if r["blocked"]),
            "held": sum(r["held"] for r in rows), "pending": sum(r["pending"] for r in rows),
            "delivered": sum(r["delivered"] for r in rows), "dead": sum(r["dead"] for r in rows),
            "discarded": sum(r["discarded"] for r in rows), "qc_held": sum(r["qc_held"] for r in rows)}


LINK_UP_POLL_S = 5.0  # also looks without a wakeup: a shared listener's connections, a stage set back by hand


async def watch_links(campaign: Campaign, healths: Callable[[], Iterable[InstrumentHealth]],
                      wakeup: asyncio.Event) -> None:
    """Advance to ``link-up`` each instrument (inventoried or cabled) whose analyzer has connected.

    Woken by the runners when an analyzer connects (``wakeup``); never in the data path: the session goes on
    while this writes the stage."""
    while True:
        wakeup.clear()
        stages = await campaign.store.read(sql.stage_rows)
        for health in healths():
            if stages.get(health.id) in AUTOMATIC["link-up"] and health.counters.connections > 0:
                where = f" from {health.peer}" if health.peer else ""
                if await campaign.link_up(health.id, f"analyzer connected{where}"):
                    log.info("campaign_stage", instrument=health.id, stage="link-up", by=DAEMON_ACTOR)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINK_UP_POLL_S):
                await wakeup.wait()
