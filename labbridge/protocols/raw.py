"""E1394 records on a byte stream with no low-level framing ("raw" mode) as a sans-I/O core.

Theory of operation
-------------------
Many analyzers and TCP middlewares send bare LIS2-A2 records: no ENQ, no STX/ETX, no checksum, no
acknowledgement (PROTOCOLS.md "Common vendor deviations" 3). The stream is cut into records on the record
terminator (CR, or LF for the LF/CRLF dialects; the other character is stripped), and the record types
give the message boundaries: a message is an H record through the next L record (R-B1: H is the first
record, L the last).

* Records outside H..L are junk (:class:`~labbridge.protocols.e1381.JunkDiscarded`), never results.
* A new H before the L, the connection closing, or ``idle_timeout`` seconds of silence in the middle of a
  message end it as an :class:`~labbridge.protocols.e1381.IncompleteMessage`, never as a result. An L
  record whose terminator never came is complete once the stream is closed or idle.
* Buffers are bounded: one record by ``max_record_bytes``, one message by ``max_message_bytes``.

There is nothing to acknowledge in this framing, so :meth:`RawLink.accept_message` and
:meth:`RawLink.reject_message` only keep the interface of :class:`~labbridge.protocols.e1381.E1381Link`;
the caller still stores a message before it does anything else with it. Time is an input (``now``); the
idle timer is a deadline (:meth:`RawLink.get_timer`, :meth:`RawLink.handle_timer`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from labbridge.protocols.e1381 import Event, FrameRejected, IncompleteMessage, JunkDiscarded, MessageReceived
from labbridge.protocols.link import Answer, ReceiverQueues

T_RAW_IDLE = 30.0  # like LIS1-A's receiver timer: 30 s without a byte ends an unfinished message


@dataclass(frozen=True, slots=True)
class RawProfile:
    record_terminator: bytes = b"\r"  # b"\r", b"\n" or b"\r\n"
    idle_timeout: float = T_RAW_IDLE
    max_record_bytes: int = 64 * 1024
    max_message_bytes: int = 4 * 1024 * 1024
    max_records: int = 10_000  # records in one message; over it the message is kept as incomplete


class RawLink(ReceiverQueues[Event]):
    """Receiver of bare E1394 records. See the module docstring."""

    def __init__(self, profile: RawProfile | None = None) -> None:
        self.profile = profile or RawProfile()
        self._split = b"\r" if self.profile.record_terminator == b"\r" else b"\n"
        self._strip = b"\n" if self._split == b"\r" else b"\r"
        self._inbuf = bytearray()
        self._records: list[bytes] = []
        self._raw = bytearray()
        self._events: deque[Event] = deque()
        self._out = bytearray()  # raw framing acknowledges nothing: always empty
        self._deadline: float | None = None
        self._skipping = False  # discarding an over-long record up to its terminator

    # ---- the Link interface (labbridge.protocols.link) ---------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        if not data:
            return
        self._inbuf += data
        self._process()
        self._deadline = now + self.profile.idle_timeout if (self._records or self._inbuf) else None

    def get_timer(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            self._end_of_stream(f"no L record and no byte for {self.profile.idle_timeout:g} s")

    def accept_message(self, now: float, answer: Answer | None = None) -> None:
        """Nothing to acknowledge in raw framing."""

    def reject_message(self, now: float, answer: Answer | None = None) -> None:
        """The message could not be stored; raw framing has no way to ask for it again."""
        self._events.append(FrameRejected("message could not be stored (raw framing cannot ask for a resend)"))

    def connection_lost(self) -> None:
        self._end_of_stream("connection closed before the L record")
        self._inbuf.clear()
        self._deadline = None

    @property
    def holding(self) -> bool:
        return False

    @property
    def in_transfer(self) -> bool:
        """Records of an unfinished message (or part of a record) are buffered."""
        return bool(self._records or self._inbuf or self._events)

    # ---- internals -------------------------------------------------------------------------------

    def _process(self) -> None:
        buf = self._inbuf
        start = 0
        while True:
            end = buf.find(self._split, start)
            if end < 0:
                break
            piece = bytes(buf[start:end + 1])
            overlong = end - start > self.profile.max_record_bytes
            start = end + 1
            if self._skipping:
                self._skipping = False
                self._junk(len(piece))
                continue
            if overlong:
                # Too long for a record, though it came whole in one read: dropped as when it comes in pieces.
                self._drop_overlong()
                self._junk(len(piece))
                continue
            self._record(piece)
        del buf[:start]
        if len(buf) > self.profile.max_record_bytes:
            # One record cannot be this long: drop it (and the rest of it, up to its terminator).
            self._drop_overlong()
            self._junk(len(buf))
            buf.clear()
            self._skipping = True

    def _drop_overlong(self) -> None:
        """A record over ``max_record_bytes``: the message it is part of cannot be whole."""
        if self._records:
            self._abandon(f"record longer than {self.profile.max_record_bytes} bytes")

    def _record(self, piece: bytes) -> None:
        record = piece.strip(self._strip + self._split)
        if not record:
            return  # blank line between records
        kind = record[:1].upper()
        if kind == b"H":
            if self._records:
                self._abandon("new header (H) record before the terminator (L) record")
            self._records.append(record)
            self._raw += piece
            return
        if not self._records:
            self._junk(len(piece))
            return
        if len(self._raw) + len(piece) > self.profile.max_message_bytes:
            self._abandon(f"message longer than {self.profile.max_message_bytes} bytes")
            self._junk(len(piece))
            return
        if len(self._records) >= self.profile.max_records:
            self._abandon(f"message of more than {self.profile.max_records} records")
            self._junk(len(piece))
            return
        self._records.append(record)
        self._raw += piece
        if kind == b"L":
            self._events.append(MessageReceived(tuple(self._records), bytes(self._raw)))
            self._records.clear()
            self._raw.clear()

    def _end_of_stream(self, reason: str) -> None:
        tail = bytes(self._inbuf)
        self._inbuf.clear()
        if self._skipping:
            # The end of an over-long record already dropped: junk too, whatever it starts with.
            self._skipping = False
            self._junk(len(tail))
        elif tail.strip(b"\r\n"):
            # The last record lacks its terminator: take it as it is (an L completes the message), its bytes
            # as they came (no terminator is added to the raw message or to a junk count).
            self._record(tail)
        if self._records:
            self._abandon(reason)

    def _abandon(self, reason: str) -> None:
        self._events.append(IncompleteMessage(tuple(self._records), bytes(self._raw), reason))
        self._records.clear()
        self._raw.clear()

    def _junk(self, count: int) -> None:
        if count:
            self._events.append(JunkDiscarded(count))
