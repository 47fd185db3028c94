"""Per-instrument link health: the separate facts, the counters, and a state with a reason.

States (DESIGN §3): planned, connecting, up, idle, degraded, down, failed. Every state carries a reason
a technician can act on.

Theory of operation: the runner, the session and the sink set a *base* state with :meth:`set_state` (and
:meth:`connected` / :meth:`connection_ended`): planned, connecting, up, down, failed; ``degraded`` for a
failure they saw themselves (a commit that failed); ``idle`` when the analyzer closed its connection cleanly
between transmissions (analyzers that connect per transmission: waiting is their normal state, not
``down``). :meth:`effective_state` judges the state shown from the base state and the facts, at ``now``:

* planned, connecting, down and failed are shown as set;
* ``degraded`` when something needs checking: frames rejected (NAK ratio), bytes that never form a message
  or frames that never complete one (wrong baud rate or parity, missing framing, another dialect; the
  likely cause read from the last bytes themselves by
  :mod:`labbridge.health.unframed`, e.g. "records without E1381 framing: try link.framing = "raw""), the
  analyzer rejecting our frames or stopping mid-message
  (recent NAKs received, timeouts), results waiting for the LIS too long, dead letters;
* else ``idle`` when no message came for longer than expected for this instrument now (configured or
  learned: :mod:`labbridge.health.traffic`), or, when nothing is known of it, ``idle_after_s`` without a
  byte;
* else ``up``.

The store-derived facts (backlog, dead letters, learned traffic) are set by a periodic task (the daemon's
``health`` task): the judging reads only memory. :meth:`observe` logs a change of the shown state once
(warning to down or degraded from a working state, and to failed; info otherwise, recoveries included);
retries are not logged.
"""

from __future__ import annotations

import time
import zoneinfo
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import tzinfo
from typing import Any, Literal

from labbridge.health.traffic import ConfiguredTraffic, Expectation, LearnedTraffic, clock, duration
from labbridge.health.unframed import SAMPLE_BYTES, Diagnosis, diagnose
from labbridge.logs import get_logger

log = get_logger("labbridge.health")

LinkState = Literal["planned", "connecting", "up", "idle", "degraded", "down", "failed"]
STATES: tuple[LinkState, ...] = ("planned", "connecting", "up", "idle", "degraded", "down", "failed")
_ALARMS: frozenset[str] = frozenset({"down", "failed", "degraded"})  # a change to these logs a warning

# A link with more than this share of rejected frames over its recent frames is degraded.
DEGRADED_REJECT_RATIO = 0.2
RECENT_FRAMES = 50
_TRIM_SLACK = 50  # the recent frames' outcomes are trimmed back to RECENT_FRAMES past this many more
_BYTES_SLACK = 512  # likewise the bytes kept past SAMPLE_BYTES
# Bytes with no decoded frame or message: at least this many, for at least undecoded_after_s.
UNFRAMED_MIN_BYTES = 8
# Frames accepted with no message completed: at least this many, for at least undecoded_after_s.
UNFINISHED_MIN_FRAMES = 2
# Timeouts mid-message, or NAKs from the analyzer to our frames: this many within the window degrade.
RECENT_WINDOW_S = 900.0
RECENT_TROUBLE = 3
WAITING = "waiting for the next transmission"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(slots=True)
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
    # ---- what may connect, fairness and limits (docs/security.md) ----
    peers_refused: int = 0  # connections from an address not in allow_peers
    connections_replaced: int = 0  # a silent connection replaced by a new one (second-connection policy)
    idle_closed: int = 0  # connections closed after idle_timeout_s without a byte
    throttled: int = 0  # times the link went over link.max_bytes_per_s (reading slowed down)
    over_limit: int = 0  # frames, messages or connections refused for going over a configured limit

    def as_dict(self) -> dict[str, int]:
        """Every counter by name, in declaration order."""
        return {name: getattr(self, name) for name in COUNTER_NAMES}


@dataclass(frozen=True, slots=True)
class StoreFacts:
    """What the store knows of one instrument, read periodically (never on a link's path)."""

    pending_items: int = 0  # outbox items not yet delivered (all destinations)
    pending_results: int = 0
    oldest_pending_at: float | None = None  # when the oldest of them was stored
    dead: tuple[tuple[str, int], ...] = ()  # dead letters by kind (operator holds excluded)
    last_stored_message_at: float | None = None  # survives a restart, unlike last_message_at
    last_delivery_at: float | None = None  # the LIS accepted one of its results
    read_at: float = 0.0

    @property
    def dead_letters(self) -> int:
        return sum(n for _, n in self.dead)


class _Recent:
    """Timestamps of one kind of trouble within a sliding window (bounded; nothing held until the first: a
    deque takes half a kilobyte from the start, two per instrument)."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: deque[float] | None = None

    def add(self, at: float) -> None:
        if self._at is None:
            self._at = deque(maxlen=64)
        self._at.append(at)

    def count(self, now: float) -> int:
        return 0 if self._at is None else sum(1 for at in self._at if now - at <= RECENT_WINDOW_S)


COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Counters))  # every per-instrument counter


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
    # Judging inputs: the instrument's zone, its framing (for reasons), expected traffic, thresholds.
    timezone: str = "UTC"
    framing: str = ""
    expected: ConfiguredTraffic | None = None
    undecoded_after_s: float = 120.0
    lis_backlog_after_s: float = 600.0
    learned: LearnedTraffic | None = None  # set by the daemon's health task
    store: StoreFacts | None = None  # set by the daemon's health task
    started_at: float = field(default_factory=time.time)
    connected_since: float | None = None
    last_disconnect_at: float | None = None
    last_disconnect_clean: bool | None = None  # closed by the analyzer between transmissions
    _recent: list[bool] = field(default_factory=list, repr=False)
    # Called after each change of ``state`` by set_state (the link history records it at once); must not block.
    observers: list[Callable[[InstrumentHealth], None]] = field(default_factory=list, repr=False)
    _decoded_bytes: int = field(default=0, repr=False)  # bytes_received when something last decoded
    _decoded_at: float | None = field(default=None, repr=False)
    _timeouts: _Recent = field(default_factory=_Recent, repr=False)
    _naks_in: _Recent = field(default_factory=_Recent, repr=False)
    _shown: LinkState | None = field(default=None, repr=False)
    _shown_since: float = field(default=0.0, repr=False)
    _tz: tzinfo | None = field(default=None, repr=False)
    # A connection that has sent nothing since it opened, for longer than this, is not shown "up" (an idle
    # squatter, not the analyzer): the link's receive timeout (set by the runner; None: not judged).
    squat_after_s: float | None = None
    # Recent notices of what may connect and of limits (a refused peer, a replaced connection, throttling,
    # input over a limit): kind -> (when, text). Shown while recent (RECENT_WINDOW_S), and they degrade.
    _notices: dict[str, tuple[float, str]] = field(default_factory=dict, repr=False)
    # ---- issue 20, part 6: what the bytes that never frame look like (labbridge.health.unframed) ----
    # The link's dialect, to say which setting to try; the last bytes received (SAMPLE_BYTES) to read the
    # cause from; frames accepted and when, as of the last message (frames that never complete a message).
    frame_numbers: bool = True
    checksums: bool = True
    record_terminator: str = "cr"
    _recent_bytes: bytearray = field(default_factory=bytearray, repr=False)
    _frames_at_message: int = field(default=0, repr=False)
    _message_mark_at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._shown, self._shown_since = self.state, self.state_since  # the state it started in

    # ---- what the runner, the session, the roles and the sink tell ------------------------------

    def set_state(self, state: LinkState, reason: str) -> None:
        if state == self.state and reason == self.reason:
            return
        changed = state != self.state
        if changed:
            self.state_since = time.time()
        self.state = state
        self.reason = reason
        self.observe()
        if changed:
            for observer in self.observers:
                observer(self)

    def connected(self, peer: str, now: float | None = None) -> None:
        """A connection of this instrument is open (``peer``: its address or the serial device)."""
        now = time.time() if now is None else now
        self.counters.connections += 1
        self.peer = peer
        self.connected_since = now
        self._decoded_bytes, self._decoded_at = self.counters.bytes_received, None
        self._recent_bytes.clear()
        self._frames_at_message, self._message_mark_at = self.counters.frames_accepted, now
        self.set_state("up", f"analyzer connected from {peer}")

    def connection_ended(self, *, clean: bool, reason: str, now: float | None = None) -> None:
        """The connection closed: ``clean`` (by the analyzer, between transmissions) shows ``idle``, waiting
        for the next one; else ``down`` with ``reason`` (say when, and what to check)."""
        now = time.time() if now is None else now
        self.peer = None
        self.connected_since = None
        self.last_disconnect_at = now
        self.last_disconnect_clean = clean
        if clean:
            self.set_state("idle", WAITING)
        else:
            self.set_state("down", reason)

    def frame_outcome(self, accepted: bool, now: float | None = None) -> None:
        """A frame accepted or rejected (``now``: when its bytes came, as given to :meth:`received`)."""
        recent = self._recent
        recent.append(accepted)
        if len(recent) > RECENT_FRAMES + _TRIM_SLACK:  # trimmed now and then, not at every frame
            del recent[:-RECENT_FRAMES]
        now = time.time() if now is None else now
        if accepted:
            self.counters.frames_accepted += 1
            self._decoded_bytes = self.counters.bytes_received  # as decoded(now), without the call per frame
            self._decoded_at = now
        self.last_frame_at = now

    def received(self, data: bytes, now: float | None = None) -> None:
        """Bytes from the analyzer at ``now`` (wall clock; read if not given): counted, and the last
        SAMPLE_BYTES of them kept to read a cause from (:meth:`recent_bytes`)."""
        self.counters.bytes_received += len(data)
        self.last_byte_at = time.time() if now is None else now
        recent = self._recent_bytes
        if len(data) >= SAMPLE_BYTES:
            recent[:] = data[-SAMPLE_BYTES:]
        else:
            recent += data
            if len(recent) > SAMPLE_BYTES + _BYTES_SLACK:  # one move every few reads, not a move per read
                del recent[:-SAMPLE_BYTES]

    def recent_bytes(self) -> bytes:
        """The last SAMPLE_BYTES bytes received (fewer before that many came)."""
        return bytes(self._recent_bytes[-SAMPLE_BYTES:])

    def decoded(self, now: float | None = None) -> None:
        """The bytes so far made sense (a frame, a message, a keep-alive)."""
        self._decoded_bytes = self.counters.bytes_received
        self._decoded_at = time.time() if now is None else now

    def message_counted(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.counters.messages_received += 1
        self.last_message_at = now
        self._frames_at_message, self._message_mark_at = self.counters.frames_accepted, now
        self.decoded(now)

    def count_timeout(self, now: float | None = None) -> None:
        """A transfer timed out (E1381: the analyzer silent mid-message, or not answering ours)."""
        self.counters.timeouts += 1
        self._timeouts.add(time.time() if now is None else now)

    def count_nak_received(self, now: float | None = None) -> None:
        """The analyzer NAKed a frame of ours."""
        self.counters.naks_received += 1
        self._naks_in.add(time.time() if now is None else now)

    def notice(self, kind: str, text: str, now: float | None = None) -> None:
        """Something about what may connect or a limit, shown (and degrading) for RECENT_WINDOW_S; the latest
        text of each kind is kept. ``text`` names addresses and limits, never patient data."""
        self._notices[kind] = (time.time() if now is None else now, text)
        self.observe()

    def notices(self, now: float) -> list[str]:
        """The recent notices, oldest first, each with its time."""
        recent = sorted((at, text) for at, text in self._notices.values() if now - at <= RECENT_WINDOW_S)
        return [f"{text} (last at {self.clock(at, now)})" for at, text in recent]

    def reject_ratio(self) -> float:
        recent = self._recent[-RECENT_FRAMES:]
        if not recent:
            return 0.0
        return recent.count(False) / len(recent)

    # ---- judging ----------------------------------------------------------------------------------

    @property
    def tz(self) -> tzinfo:
        if self._tz is None:
            try:
                self._tz = zoneinfo.ZoneInfo(self.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                self._tz = zoneinfo.ZoneInfo("UTC")
        return self._tz

    def clock(self, ts: float, now: float | None = None) -> str:
        """``ts`` in the instrument's local time, for reasons ('10:42', or with the date if not today)."""
        return clock(ts, time.time() if now is None else now, self.tz)

    def expectation(self, now: float) -> Expectation | None:
        """What traffic is expected now: configured, else learned, else None."""
        if self.expected is not None:
            return self.expected.at(now, self.tz)
        if self.learned is not None:
            return self.learned.at(now, self.tz)
        return None

    def effective_state(self, now: float | None = None) -> tuple[LinkState, str]:
        """The state as shown (see the module's docstring)."""
        now = time.time() if now is None else now
        if self.state not in ("up", "idle", "degraded"):
            return self.state, self.reason
        problems = self.problems(now)
        if self.state == "degraded":
            problems.insert(0, self.reason)
        if problems:
            return "degraded", "; also ".join(problems)
        silence = self._silence(now)
        if self.state == "idle":
            return "idle", silence or self._waiting(now)
        if silence is not None:
            return "idle", silence
        squatting = self._squatting(now)
        if squatting is not None:
            return "idle", squatting
        return "up", self.reason

    def _squatting(self, now: float) -> str | None:
        """The reason when the open connection has sent nothing at all for longer than ``squat_after_s``."""
        since = self.connected_since
        if self.squat_after_s is None or since is None or now - since <= self.squat_after_s:
            return None
        if self.last_byte_at is not None and self.last_byte_at >= since:
            return None
        return (f"a connection from {self.peer} is open since {self.clock(since, now)} but has sent nothing: if "
                "it is not the analyzer, the analyzer's next connection replaces it; check the analyzer's host "
                "address and port")

    def problems(self, now: float) -> list[str]:
        """What degrades the link now, each with what to check (empty: nothing)."""
        out: list[str] = self.notices(now)
        ratio = self.reject_ratio()
        if ratio > DEGRADED_REJECT_RATIO:
            found = self._diagnosis()
            check = (found.cause if found is not None and not found.line_settings
                     else "check the cable, baud rate or the analyzer's line settings")
            out.append(f"{ratio:.0%} of recent frames rejected (checksum or framing errors): {check}")
        since = self._decoded_at or self.connected_since
        unframed = self.counters.bytes_received - self._decoded_bytes
        if (self.connected_since is not None and since is not None and unframed >= UNFRAMED_MIN_BYTES
                and now - since >= self.undecoded_after_s):
            out.append(f"{unframed} bytes received in {duration(now - since)} but none formed a "
                       f"{'frame or message' if self.framing == 'e1381' else 'message'}: {self._unframed_check()}")
        else:
            frames = self.counters.frames_accepted - self._frames_at_message
            mark = self._message_mark_at
            # E1381 only: an HL7 "frame" is a whole message (a query or an answer is not stored as one)
            if (self.framing == "e1381" and self.connected_since is not None and mark is not None
                    and frames >= UNFINISHED_MIN_FRAMES and now - mark >= self.undecoded_after_s):
                found = self._diagnosis()
                check = found.cause if found is not None and not found.line_settings else (
                    "check the analyzer's ASTM dialect against [instruments.link] (frame_numbers, "
                    "record_terminator) and that it ends each message with an L record")
                out.append(f"{frames} frames accepted in {duration(now - mark)} but none completed a message: "
                           f"{check}")
        naks = self._naks_in.count(now)
        if naks >= RECENT_TROUBLE:
            out.append(f"the analyzer rejected {naks} of labbridge's frames in the last "
                       f"{duration(RECENT_WINDOW_S)}: check the cable and the analyzer's line settings")
        timeouts = self._timeouts.count(now)
        if timeouts >= RECENT_TROUBLE:
            out.append(f"{timeouts} transfers timed out in the last {duration(RECENT_WINDOW_S)} (the analyzer "
                       "went silent mid-message or stopped answering): check the cable and the analyzer's "
                       "communication settings")
        facts = self.store
        if facts is not None:
            oldest = facts.oldest_pending_at
            if facts.pending_items and oldest is not None and now - oldest >= self.lis_backlog_after_s:
                out.append(f"{facts.pending_results} results of this analyzer waiting for the LIS for "
                           f"{duration(now - oldest)} (oldest stored at {self.clock(oldest, now)}): check the LIS "
                           "destination's state on the dashboard and the network to the LIS")
            if facts.dead_letters:
                kinds = ", ".join(f"{kind} {n}" for kind, n in facts.dead)
                out.append(f"{facts.dead_letters} dead letters ({kinds}) will not reach the LIS without a "
                           f"person: see `labbridge outbox list --state dead`, fix the cause, then retry")
        return out

    def _diagnosis(self) -> Diagnosis | None:
        return diagnose(self.recent_bytes(), framing=self.framing, frame_numbers=self.frame_numbers,
                        checksums=self.checksums, record_terminator=self.record_terminator)

    def _unframed_check(self) -> str:
        """What to check about bytes that never frame: the likely cause from what they look like, else in general."""
        serial = self.transport.startswith("serial")
        line = (f"check that the baud rate, parity, data bits and stop bits ({self.transport}) match the "
                "analyzer's")
        found = self._diagnosis()
        if found is not None and found.line_settings:
            return (f"{found.cause}: {line}" if serial else
                    f"{found.cause} (of a serial-to-network converter on the way), or another protocol on this port")
        if found is not None:
            return found.cause
        if serial:
            return f"{line}, and its protocol setting"
        return (f"check that the analyzer's protocol setting matches this link's framing "
                f"({self.framing or 'see [instruments.link]'}) and that the right analyzer uses this port")

    def _silence(self, now: float) -> str | None:
        """The reason when no message came for longer than expected now, else None."""
        last = max((t for t in (self.last_message_at, self.store.last_stored_message_at if self.store else None)
                    if t is not None), default=None)
        connected = self.connected_since is not None
        expect = self.expectation(now)
        if expect is not None:
            start = max(last if last is not None else self.started_at, expect.since)
            if now - start <= expect.allowed_s:
                return None
            quiet = (f"no message for {duration(now - last)}" if last is not None
                     else f"no message since labbridge started at {self.clock(self.started_at, now)}")
            return (f"{'connected, ' if connected else WAITING + ', but '}{quiet} while this analyzer usually "
                    f"sends {'at least ' if expect.learned else ''}every {duration(expect.every_s)}"
                    f"{' ' + expect.where if expect.where else ''}: check that it is running, has samples, and "
                    "its host transmission is switched on")
        if self.expected is None and connected:  # nothing known of its traffic: the plain idle rule
            quiet_since = self.last_byte_at or self.connected_since or self.state_since
            if now - quiet_since > self.idle_after_s:
                return (f"connected, but nothing received for {int((now - quiet_since) // 60)} min: check that "
                        "the analyzer is running and its host transmission is switched on")
        return None

    def _waiting(self, now: float) -> str:
        closed = self.last_disconnect_at
        if self.last_message_at is not None:
            return (f"{WAITING} (the analyzer closes its connection after each; the last message came at "
                    f"{self.clock(self.last_message_at, now)})")
        if closed is not None:
            return f"{WAITING} (the analyzer closed its connection at {self.clock(closed, now)})"
        return WAITING

    def observe(self, now: float | None = None) -> tuple[LinkState, str]:
        """The shown state, logged once when it changes (warning to down, failed, degraded; else info)."""
        now = time.time() if now is None else now
        state, reason = self.effective_state(now)
        if state != self._shown:
            before = self._shown
            self._shown, self._shown_since = state, now
            # A warning when the link loses something (or needs a person); starting up is not a loss.
            alarm = state == "failed" or (state in _ALARMS and before not in ("connecting", "planned"))
            (log.warning if alarm else log.info)("link_state", instrument=self.id, state=state, previous=before,
                                                 reason=reason)
        return state, reason

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        state, reason = self.observe(now)
        expect = self.expectation(now)
        facts = self.store
        return {
            "id": self.id,
            "name": self.name,
            "site": self.site,
            "driver": self.driver,
            "transport": self.transport,
            "state": state,
            "reason": reason,
            "state_since": _iso(self._shown_since or self.state_since),
            "listening": self.listening,
            "peer": self.peer,
            "connected_since": _iso(self.connected_since),
            "last_disconnect_at": _iso(self.last_disconnect_at),
            "last_disconnect_clean": self.last_disconnect_clean,
            "last_byte_at": _iso(self.last_byte_at),
            "last_frame_at": _iso(self.last_frame_at),
            "last_message_at": _iso(self.last_message_at or (facts.last_stored_message_at if facts else None)),
            "last_delivery_at": _iso(facts.last_delivery_at if facts else None),
            "expected_every_s": expect.every_s if expect else None,
            "expected_source": None if expect is None else "learned" if expect.learned else "configured",
            "lis_pending_results": facts.pending_results if facts else None,
            "dead_letters": facts.dead_letters if facts else None,
            "messages_received": self.counters.messages_received,
            "results_received": self.counters.results_received,
            "counters": self.counters.as_dict(),
            "notices": self.notices(now),
        }
