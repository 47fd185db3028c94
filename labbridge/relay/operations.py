"""The operator's outbox actions, shared by the daemon's HTTP API and the offline CLI (daemon stopped).

Retrying a dead letter the LIS refused, or results the mapping held (kind ``held``: this releases
them), puts it back in line. Retrying one that labbridge held back (no driver could decode it, an
unmapped test code, an unknown sender) re-decodes the stored raw message with the driver and config in
force now, so fixing the mapping and retrying is enough. Every action is written
to the audit table with who, when and why, in the same transaction as the change itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from labbridge.links.intake import InstrumentDecoder
from labbridge.outbox import DEAD_UNDECODABLE, Held, Route
from labbridge.store.db import Store, wall_clock


class Operations:
    def __init__(self, store: Store, decoder_for: Callable[[str], InstrumentDecoder | None], *,
                 backlog_after_s: float | None = None, on_change: Callable[[], None] | None = None,
                 route_for: Callable[[str], Route | None] | None = None) -> None:
        """``route_for``: a destination's route as configured now (which results it takes, QC held, sent
        marked or not queued); a re-decode queues by it. None, or a destination it does not know: the
        defaults."""
        self.store = store
        self.route_for = route_for
        self.decoder_for = decoder_for
        self.backlog_after_s = backlog_after_s
        self.on_change = on_change

    async def retry(self, item_ids: Sequence[int] | None, *, actor: str, reason: str) -> list[dict[str, Any]]:
        """Retry the given dead letters, or every dead letter (``None``). One outcome per item."""
        if not reason.strip():
            raise ValueError("a retry needs a reason (it goes to the audit trail)")
        outcomes = await self.store.retry_dead(item_ids, actor=actor, reason=reason, now=wall_clock())
        final: list[dict[str, Any]] = []
        for outcome in outcomes:
            if outcome["outcome"] == "needs-redecode":
                final.append(await self._redecode(outcome["id"], actor=actor, reason=reason))
            else:
                final.append(outcome)
        if self.on_change is not None:
            self.on_change()
        return final

    async def _redecode(self, item_id: int, *, actor: str, reason: str) -> dict[str, Any]:
        rows = await self.store.outbox_rows(state="dead", limit=1, item_id=item_id)
        if not rows:
            return {"id": item_id, "outcome": "not-found"}
        row = rows[0]
        decoder = self.decoder_for(row["instrument"])
        if decoder is None:
            return {"id": item_id, "outcome": "cannot-redecode",
                    "detail": f"instrument {row['instrument']!r} is not in the config or its driver cannot load"}
        raw = await self.store.raw_message(row["message_id"])
        if raw is None or not raw.raw:
            return {"id": item_id, "outcome": "cannot-redecode", "detail": "the raw message was pruned"}
        intake = decoder.decode_raw(raw.protocol, raw.raw)
        held = list(intake.held)
        if intake.error is not None:
            held.insert(0, Held(DEAD_UNDECODABLE, f"no driver could decode this message: {intake.error}"))
        return await self.store.apply_redecode(item_id, results=intake.results, held=held, actor=actor,
                                               reason=reason, now=wall_clock(),
                                               backlog_after_s=self.backlog_after_s,
                                               held_results=intake.held_results, hold_reason=intake.hold_reason,
                                               route=self.route_for(row["destination"]) if self.route_for else None)

    async def purge(self, *, item_ids: Sequence[int] | None, state: str | None, older_than_s: float | None,
                    actor: str, reason: str) -> dict[str, Any]:
        if not reason.strip():
            raise ValueError("a purge needs a reason (it goes to the audit trail)")
        return await self.store.purge(item_ids=item_ids, state=state, older_than_s=older_than_s, actor=actor,
                                      reason=reason, now=wall_clock())
