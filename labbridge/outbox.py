"""The outbox's vocabulary: what the store hands out and takes in, shared by every layer above it.

Pure values (dataclasses and constants; no SQLite, no I/O): the links, the relay, the operator actions
and the web layer speak these, and :mod:`labbridge.store` stores them. The store's tables are described
in :mod:`labbridge.store.schema`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labbridge.model import Result, positional_pickle

# Upper bounds of the store's commit-group size histogram (requests per COMMIT, ``<=`` each bucket).
GROUP_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# Why an item is in the dead letters (outbox.dead_kind).
DEAD_LIS_REJECTED = "lis-rejected"
DEAD_UNDELIVERED = "undelivered"
DEAD_UNDECODABLE = "undecodable"
DEAD_UNMAPPED = "unmapped"
DEAD_UNKNOWN_SENDER = "unknown-sender"
# Results the instrument's mapping holds back (hold_tests): stored, not sent until an operator
# releases them with a retry (which puts them in line as they are, no re-decoding).
DEAD_HELD = "held"
# Kinds fixed by re-decoding the stored raw message with the current driver and config.
REDECODE_KINDS = frozenset({DEAD_UNDECODABLE, DEAD_UNMAPPED, DEAD_UNKNOWN_SENDER})


@positional_pickle  # sent to the store's writer with every message
@dataclass(frozen=True, slots=True)
class Route:
    """Which results one LIS destination takes (issue 20, part 2), decided when they are stored.

    ``qc``: a QC result is queued ``hold`` (in the dead letters, kind ``held``, until an operator releases
    it), ``send-marked`` (pending: sent, marked as QC) or ``drop`` (not queued for this destination; it
    stays in the store). ``results``: ``all``, or ``qc`` (patient results are not queued here).
    """

    destination: str
    qc: str = "hold"
    results: str = "all"

    @classmethod
    def of(cls, destination: str | Route) -> Route:
        """A route, from a destination ID alone (the defaults) or a route."""
        return destination if isinstance(destination, Route) else cls(destination)


QC_HOLD_REASON = ("QC result held for destination {destination} (qc = \"hold\": it is never taken for a patient's "
                  "result): release it with `labbridge outbox retry` to send it, marked as QC")


@positional_pickle
@dataclass(frozen=True, slots=True)
class Queued:
    """An outbox item a commit queued to go now (pending, live, past the gate), told back to the caller so the
    relay can send it without reading it back (:meth:`labbridge.relay.relay.Relay.offer`).

    ``results`` are positions in the ``results`` the caller committed, in the order the store keeps them (an
    item read back lists its results by row id: the same order).
    """

    id: int
    destination: str
    control_id: str
    results: tuple[int, ...]
    test: bool = False


@positional_pickle
@dataclass(frozen=True, slots=True)
class StoredMessage:
    message_id: int
    new_results: int
    duplicate_results: int
    outbox_ids: tuple[int, ...]
    duplicate: bool = False  # the same message (sender's ID and content) was already stored: nothing new
    queued: tuple[Queued, ...] = ()  # the items of outbox_ids that may go now and are not backlog (see Queued)


@positional_pickle
@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    destination: str
    control_id: str
    instrument: str
    message_id: int
    attempts: int
    created_at: float
    results: tuple[Result, ...]
    backlog: bool = False
    test: bool = False  # sent flagged as a test result (an instrument being validated; see labbridge.campaign)


def handed_off(stored: StoredMessage, *, instrument: str, received_at: float,
               results: Sequence[Result]) -> list[OutboxItem]:
    """The items a commit queued to go now (``stored.queued``) as the relay would read them back, built from the
    ``results`` committed (their ``message_id`` not filled in: only a JSON rendering shows it)."""
    return [OutboxItem(q.id, q.destination, q.control_id, instrument, stored.message_id, 0, received_at,
                       tuple([results[i] for i in q.results]), False, q.test) for q in stored.queued]


@positional_pickle
@dataclass(frozen=True, slots=True)
class Held:
    """Part of a message kept out of the LIS for a person to fix: one dead letter per destination."""

    kind: str  # one of the DEAD_* kinds
    reason: str


@dataclass(frozen=True, slots=True)
class RawMessage:
    id: int
    instrument: str
    protocol: str
    raw: bytes
    received_at: float


@dataclass(frozen=True, slots=True)
class StoreSize:
    file_bytes: int
    wal_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.file_bytes + self.wal_bytes


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the store keeps what no longer waits for anyone (seconds)."""

    raw_messages_s: float
    delivered_s: float
    incomplete_s: float
    history_s: float = 90 * 86400.0  # link state changes and daily figures (labbridge.store.history)
