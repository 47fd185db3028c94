"""Per-instrument link health: the separate facts, the counters, and a state with a reason.

States (DESIGN §3): planned, connecting, up, idle, degraded, down, failed. Every state carries a reason
a technician can act on. A change of state is logged once; retries are not logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from labbridge.logs import get_logger

log = get_logger("labbridge.health")

LinkState = Literal["planned", "connecting", "up", "idle", "degraded", "down", "failed"]
STATES: tuple[LinkState, ...] = ("planned", "connecting", "up", "idle", "degraded", "down", "failed")

# A link with more than this share of rejected frames over its recent frames is degraded.
DEGRADED_REJECT_RATIO = 0.2
RECENT_FRAMES = 50


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass
class Counters:
    bytes_received: int = 0
    frames_accepted: int = 0
    frames_rejected: int = 0  # NAKs we sent
    naks_received: int = 0
    checksum_errors: int = 0
    retransmissions: int = 0  # duplicate frames received and discarded
    timeouts: int = 0
    junk_bytes: int = 0
    connections: int = 0
    connections_refused: int = 0
    messages_received: int = 0
    results_received: int = 0
    duplicate_results: int = 0
    incomplete_transmissions: int = 0
    decode_errors: int = 0
    store_failures: int = 0
    duplicate_messages: int = 0  # HL7: the same MSH-10 and content again (acknowledged, not stored twice)
    acks_sent: int = 0  # HL7 acknowledgements sent (AA/AE/AR, CA/CE/CR)
    host_queries: int = 0  # Q records received
    query_answers_sent: int = 0  # answers the analyzer acknowledged
    orders_sent: int = 0  # orders delivered (query answers and pushes), acknowledged by the analyzer
    sends_aborted: int = 0  # transfers of ours that failed (retried by the link)
    keepalives: int = 0  # ENQ/EOT keep-alives (link.enq_eot_keepalive)
    contentions: int = 0  # our ENQ crossed the analyzer's: we yielded the line (R-A7)


@dataclass
class InstrumentHealth:
    id: str
    site: str
    driver: str
    transport: str
    name: str = ""
    state: LinkState = "connecting"
    reason: str = "starting"
    state_since: float = field(default_factory=time.time)
    listening: str | None = None  # "127.0.0.1:4001" when a listener is bound
    peer: str | None = None
    last_byte_at: float | None = None
    last_frame_at: float | None = None
    last_message_at: float | None = None
    idle_after_s: float = 1800.0
    counters: Counters = field(default_factory=Counters)
    _recent: list[bool] = field(default_factory=list, repr=False)
    # Called after each change of ``state`` by set_state (the link history records it at once); must not block.
    observers: list[Callable[[InstrumentHealth], None]] = field(default_factory=list, repr=False)

    def set_state(self, state: LinkState, reason: str) -> None:
        if state == self.state and reason == self.reason:
            return
        changed = state != self.state
        self.state = state
        self.reason = reason
        if changed:
            self.state_since = time.time()
            log.info("link_state", instrument=self.id, state=state, reason=reason)
            for observer in self.observers:
                observer(self)

    def frame_outcome(self, accepted: bool) -> None:
        self._recent.append(accepted)
        if len(self._recent) > RECENT_FRAMES:
            del self._recent[0]
        if accepted:
            self.counters.frames_accepted += 1
        self.last_frame_at = time.time()

    def reject_ratio(self) -> float:
        if not self._recent:
            return 0.0
        return self._recent.count(False) / len(self._recent)

    def effective_state(self, now: float | None = None) -> tuple[LinkState, str]:
        """The state as shown: a connected link may be idle or degraded by what it has (not) done."""
        now = time.time() if now is None else now
        if self.state != "up":
            return self.state, self.reason
        ratio = self.reject_ratio()
        if ratio > DEGRADED_REJECT_RATIO:
            return "degraded", (f"{ratio:.0%} of recent frames rejected (checksum or framing errors): "
                                "check the cable, baud rate or the analyzer's line settings")
        last = self.last_byte_at or self.state_since
        if now - last > self.idle_after_s:
            minutes = int((now - last) // 60)
            return "idle", (f"connected, but nothing received for {minutes} min: check that the analyzer "
                            "is running and its host transmission is switched on")
        return "up", self.reason

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        state, reason = self.effective_state(now)
        return {
            "id": self.id,
            "name": self.name,
            "site": self.site,
            "driver": self.driver,
            "transport": self.transport,
            "state": state,
            "reason": reason,
            "state_since": _iso(self.state_since),
            "listening": self.listening,
            "peer": self.peer,
            "last_byte_at": _iso(self.last_byte_at),
            "last_frame_at": _iso(self.last_frame_at),
            "last_message_at": _iso(self.last_message_at),
            "messages_received": self.counters.messages_received,
            "results_received": self.counters.results_received,
            "counters": dict(vars(self.counters)),
        }
