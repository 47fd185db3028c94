"""ASTM E1381 / CLSI LIS1-A low-level protocol as a sans-I/O state machine.

Theory of operation
-------------------
The link is half duplex: at any moment one side is the *sender* and the other the *receiver*; both
start *neutral*. This module never reads, writes or sleeps: the caller feeds it bytes with
:meth:`E1381Link.receive_data` (and the current monotonic time ``now``), drains the bytes it wants
sent with :meth:`E1381Link.data_to_send`, collects events with :meth:`E1381Link.next_event`, and arms
one timer at :meth:`E1381Link.get_timer`, calling :meth:`E1381Link.handle_timer` when it expires.
Tests drive it with a fake clock.

Rules implemented (numbers refer to PROTOCOLS.md, part a):

* neutral: only ENQ matters (R-A1). An ENQ is answered with ACK and the side becomes receiver.
* sender: ENQ then wait 15 s for a reply (R-A2, R-A5). ACK -> transfer; NAK -> wait >= 10 s before
  the next ENQ (R-A4); ENQ -> contention: the instrument has priority (R-A7..R-A9): an instrument
  waits 1 s and asks again, a host gives up the line and waits 20 s before it tries again.
* frames: ``STX FN text ETB|ETX C1 C2 CR LF`` (R-A10), at most 240 characters of text, longer records
  continue in ETB frames (R-A11); FN runs 1..7,0,1.. from the first frame of each transfer (R-A13);
  checksum = sum of FN..ETB/ETX modulo 256 as two hex digits (R-A14), lower case accepted on input.
* receiver: ACK a good frame, NAK a bad one (checksum, layout, unexpected FN); a frame repeating the
  last accepted FN is a retransmission whose ACK was lost: ACK it and discard it (R-A18). The
  receiver gives up after 30 s without a frame (timers table). EOT ends the transfer (R-A21); an
  unfinished message is reported as :class:`IncompleteMessage`, never as a message.
* sender: on NAK retransmit the same frame; the 6th failure of one frame aborts the transfer with EOT
  (R-A19). EOT in place of ACK (receiver interrupt) means the frame was received; this sender carries
  on (R-A20 allows it), or with ``LinkProfile.honor_interrupt`` ends the transfer and waits
  ``interrupt_wait`` (15 s) before its next ENQ.

Timers are :class:`LinkProfile` fields whose defaults are the standard's values (the ``T_*`` constants):
``reply_timeout`` 15 s, ``receive_timeout`` 30 s, ``busy_wait`` 10 s, ``contention_wait_instrument`` 1 s,
``contention_wait_host`` 20 s, ``interrupt_wait`` 15 s. They are deadlines against the caller's ``now``.

Persist before acknowledging: when a frame completes a message (its L record), the receiver does not
ACK it. It emits :class:`MessageReceived` and holds; the caller commits the message durably, then
calls :meth:`E1381Link.accept_message` (ACK goes out) or :meth:`E1381Link.reject_message` (NAK: the
analyzer retransmits the frame, and the message is offered again).

Records are split on CR inside frames, so a vendor that puts a whole message in one long frame is
accepted (PROTOCOLS.md, vendor deviation 1); frames are bounded by ``LinkProfile.max_frame_bytes``.

Dialects are flags on :class:`LinkProfile` (PROTOCOLS.md "Common vendor deviations"), never subclasses:

* ``frame_numbers=False`` / ``checksums=False``: frames without the FN digit and/or without C1 C2 (Snibe
  MAGLUMI: ``STX H|..CR..L|1|N CR ETX`` then EOT). Without frame numbers a lost ACK cannot be told from a
  new frame by its number: a frame byte-identical to the last accepted one is taken as the retransmission.
* ``record_terminator``: ``b"\r"`` (the standard), ``b"\n"`` or ``b"\r\n"``; with LF or CRLF records are
  split on LF and stray CRs are dropped.
* ``lenient_whitespace``: CR and LF around frames (a leading newline before STX, an extra CR after the
  frame) are not junk, and the CR LF after the checksum may be missing.
* ``enq_eot_keepalive``: ENQ answered and followed at once by EOT is a keep-alive (:class:`KeepAlive`),
  not an empty transfer.
* ``one_frame_per_message`` (sending only): the whole message in one frame of any length.
"""

from __future__ import annotations

import enum
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Final

from labbridge.protocols.link import Answer, ReceiverQueues

# Control characters (PROTOCOLS.md "Control characters").
STX: Final = 0x02
ETX: Final = 0x03
EOT: Final = 0x04
ENQ: Final = 0x05
ACK: Final = 0x06
LF: Final = 0x0A
CR: Final = 0x0D
NAK: Final = 0x15
ETB: Final = 0x17

# Timers, in seconds (PROTOCOLS.md timers table): the standard's values, the defaults of the LinkProfile fields
# the link reads (reply_timeout, receive_timeout, busy_wait, contention_wait_*, interrupt_wait).
T_SENDER_REPLY = 15.0  # LIS1-A: sender waits 15 s for a reply to ENQ or to a frame
T_RECEIVER = 30.0  # LIS1-A: receiver waits 30 s for the next frame or EOT
T_BUSY = 10.0  # LIS1-A: after a NAK to its ENQ, the sender waits at least 10 s
T_CONTENTION_INSTRUMENT = 1.0  # the instrument repeats its ENQ after at least 1 s on contention
T_CONTENTION_HOST = 20.0  # the host waits at least 20 s before its own ENQ after contention
T_INTERRUPT = 15.0  # a sender that honours a receiver interrupt waits 15 s before its next ENQ (R-A20)

MAX_FRAME_TEXT = 240  # LIS1-A: 247-character frame minus 7 characters of overhead
MAX_FRAME_ATTEMPTS = 6  # LIS1-A: the 6th failed attempt to send one frame aborts the transfer


class Role(enum.Enum):
    """Who this side is. The role decides contention (R-A7): the instrument has priority."""

    HOST = "host"
    INSTRUMENT = "instrument"


class State(enum.Enum):
    NEUTRAL = "neutral"
    SENDER_ENQ = "sender: waiting for reply to ENQ"
    SENDER_FRAME = "sender: waiting for reply to frame"
    RECEIVER = "receiver"
    RECEIVER_HOLD = "receiver: final frame held for commit"


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """Per-instrument protocol settings and vendor quirks (flags, not subclasses)."""

    # LIS1-A numbers the first frame 1; some analyzers start at 0 or any digit.
    strict_frame_numbers: bool = True
    # Bound on one frame (STX to LF). Vendors that send a whole message in one frame exceed 247.
    max_frame_bytes: int = 64 * 1024
    # Bound on one message (H to L), in bytes of accepted frames.
    max_message_bytes: int = 4 * 1024 * 1024
    # Bound on the records of one message: over it, refused like an over-long message (its frames NAKed).
    max_records: int = 10_000
    # ---- dialects (defaults are the standard) ----
    frame_numbers: bool = True  # False: no FN digit after STX
    checksums: bool = True  # False: no C1 C2 after ETB/ETX
    record_terminator: bytes = b"\r"  # b"\r", b"\n" or b"\r\n"
    lenient_whitespace: bool = False  # CR/LF around frames is not junk; CR LF after the checksum optional
    enq_eot_keepalive: bool = False  # ENQ then EOT with no frame is a keep-alive
    one_frame_per_message: bool = False  # sending: all records of a message in one frame
    # ---- timers, in seconds (defaults are LIS1-A's; tests and odd analyzers may change them) ----
    reply_timeout: float = T_SENDER_REPLY  # sender: wait for the reply to ENQ or to a frame
    receive_timeout: float = T_RECEIVER  # receiver: wait for the next frame or EOT
    busy_wait: float = T_BUSY  # sender: after a NAK to ENQ, an aborted or a timed-out transfer
    contention_wait_instrument: float = T_CONTENTION_INSTRUMENT  # instrument: re-ENQ after contention
    contention_wait_host: float = T_CONTENTION_HOST  # host: own ENQ again after yielding on contention
    interrupt_wait: float = T_INTERRUPT  # sender that honours a receiver interrupt: next ENQ after this
    # R-A20: EOT in place of ACK asks the sender to stop. False (the default): carry on with the message (the
    # frame was received); True: end the transfer after that frame and wait ``interrupt_wait`` before the
    # next ENQ, so the receiver can take the line; the message is sent again whole.
    honor_interrupt: bool = False

    @property
    def skips_whitespace(self) -> bool:
        """CR and LF between frames are expected (and not junk) in these dialects."""
        return self.lenient_whitespace or not self.checksums or self.record_terminator != b"\r"


# ---- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A whole message (H..L) arrived. The final frame's ACK is held until accept/reject."""

    records: tuple[bytes, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class IncompleteMessage:
    """Records that never became a message (EOT or timeout before L, or a new H). Not a result."""

    records: tuple[bytes, ...]
    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame was NAKed (or, as sender, a frame of ours was NAKed by the peer)."""

    reason: str
    by_peer: bool = False


@dataclass(frozen=True, slots=True)
class FrameAccepted:
    """A frame passed every check (for a final frame: once the message is accepted)."""

    frame_number: int


_FRAME_ACCEPTED: Final = tuple(FrameAccepted(fn) for fn in range(8))  # immutable: one per frame number, shared


@dataclass(frozen=True, slots=True)
class FrameRetransmitted:
    """The peer repeated the last accepted frame (our ACK was lost): ACKed and discarded."""

    frame_number: int


@dataclass(frozen=True, slots=True)
class JunkDiscarded:
    """Bytes outside any frame that the protocol ignores."""

    count: int


@dataclass(frozen=True, slots=True)
class TransferStarted:
    as_sender: bool


@dataclass(frozen=True, slots=True)
class TransferEnded:
    as_sender: bool
    reason: str  # "eot", "timeout", "aborted", "restarted", "interrupted"


@dataclass(frozen=True, slots=True)
class MessageSent:
    """Every frame of a queued message was acknowledged by the peer."""

    handle: int


@dataclass(frozen=True, slots=True)
class SendAborted:
    """A transfer of ours ended before the whole message went through; it stays queued."""

    handle: int
    reason: str


@dataclass(frozen=True, slots=True)
class Contention:
    """Both sides sent ENQ at once."""

    yielded: bool


@dataclass(frozen=True, slots=True)
class PeerBusy:
    """The peer answered our ENQ with NAK."""


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """ENQ followed at once by EOT, with no frame (``LinkProfile.enq_eot_keepalive``)."""


Event = (MessageReceived | IncompleteMessage | FrameRejected | FrameAccepted | FrameRetransmitted | JunkDiscarded
         | TransferStarted | TransferEnded | MessageSent | SendAborted | Contention | PeerBusy | KeepAlive)


# ---- frames ------------------------------------------------------------------------------------


def checksum(body: bytes) -> bytes:
    """Two upper-case hex digits of the byte sum of FN..ETB/ETX modulo 256 (R-A14)."""
    return b"%02X" % (sum(body) & 0xFF)


def build_frames(records: list[bytes] | tuple[bytes, ...], first_fn: int = 1,
                 profile: LinkProfile | None = None) -> list[bytes]:
    """Frame a message: each record (without its CR) ends with CR; > 240 characters continue in ETB frames.

    With a ``profile``, its dialect flags apply (terminator, frame numbers, checksums, one frame per message).
    """
    p = profile or _DEFAULT_PROFILE
    frames: list[bytes] = []
    fn = first_fn
    texts = [r + p.record_terminator for r in records]
    if p.one_frame_per_message:
        texts = [b"".join(texts)]
    for text in texts:
        step = len(text) or 1 if p.one_frame_per_message else MAX_FRAME_TEXT
        for start in range(0, len(text), step):
            chunk = text[start:start + step]
            term = ETX if start + step >= len(text) else ETB
            body = (b"%d" % fn if p.frame_numbers else b"") + chunk + bytes((term,))
            frames.append(b"\x02" + body + (checksum(body) if p.checksums else b"") + b"\r\n")
            fn = (fn + 1) % 8
    return frames


def split_records(text: bytes, terminator: bytes = b"\r") -> list[bytes]:
    """Records of a stretch of E1394 text: split on CR (or on LF for LF/CRLF dialects), empty ones dropped."""
    if terminator == b"\r":
        pieces, strip = text.split(b"\r"), b"\n"
    else:
        pieces, strip = text.split(b"\n"), b"\r"
    stripped = [p.strip(strip) for p in pieces]
    return [r for r in stripped if r]


_DEFAULT_PROFILE = LinkProfile()
_TERMINATORS: Final = (ETX, ETB)
_WHITESPACE: Final = (CR, LF)


def _count_except(buf: bytearray, skipped: tuple[int, ...], end: int) -> int:
    """How many of ``buf[:end]``'s bytes are not one of ``skipped`` (junk counted, keep-alives not)."""
    return end - sum([buf.count(b, 0, end) for b in skipped])
_RESTARTS: Final = (STX, EOT, ENQ)
_TERMINATOR_RECORD: Final = (b"L", b"l")
# The plain-frame path (E1381Link._take_plain_frame) takes a whole, well-formed frame of the standard layout
# at the start of the buffer: STX, FN, text free of terminators and of the bytes that restart a transfer, ETX
# or ETB, two hex digits, CR LF; whatever else takes the general path.
_adler32 = zlib.adler32
# The value of each two-digit checksum, either case ("0a" and "0A" alike).
_HEX_VALUE: Final = {b"%02X" % v: v for v in range(256)} | {b"%02x" % v: v for v in range(256)} | {
    b"%X%x" % (v >> 4, v & 15): v for v in range(256)} | {b"%x%X" % (v >> 4, v & 15): v for v in range(256)}
# First bytes of a record that the general path must see: a header or terminator record, or stray LF.
_SPECIAL_RECORD_START: Final = frozenset(b"HhLl\n")


def _first_of(buf: bytearray, values: tuple[int, ...], start: int, end: int) -> int:
    """Index of the first of ``values`` in ``buf[start:end]``, or -1 (C-speed scans, not a Python loop)."""
    best = -1
    for value in values:
        i = buf.find(value, start, end)
        if i >= 0 and (best < 0 or i < best):
            best = i
            end = i
    return best


@dataclass(slots=True)
class _Outgoing:
    handle: int
    records: tuple[bytes, ...]


@dataclass(slots=True)
class _Snapshot:
    """Receiver state before the final frame, restored if the held message is rejected."""

    records: tuple[bytes, ...]
    partial: bytes
    raw: bytes


class E1381Link(ReceiverQueues[Event]):
    """One end of an E1381 link. See the module docstring for the theory of operation."""

    def __init__(self, role: Role, profile: LinkProfile | None = None) -> None:
        self.role = role
        self.profile = profile or LinkProfile()
        p = self.profile
        # The standard's layout (frame numbers, checksums, CR records, no whitespace leniency): frames take
        # the plain-frame path first (_take_plain_frame).
        self._plain = p.frame_numbers and p.checksums and not p.skips_whitespace
        self.state = State.NEUTRAL
        self._inbuf = bytearray()
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._deadline: float | None = None  # reply/receive timer of the current state
        self._not_before = 0.0  # earliest time for our next ENQ (busy, contention)
        # receiver
        self._expected_fn = 1
        self._last_fn: int | None = None
        self._records: list[bytes] = []
        self._partial = b""  # text of a record continued in ETB frames
        self._raw = bytearray()
        self._hold_snapshot: _Snapshot | None = None
        self._refusing: str | None = None  # the transfer's message went over the limit: its frames are NAKed
        self._frames_in_transfer = 0
        self._last_frame = b""  # without frame numbers: the last accepted frame, to spot a retransmission
        self._prev_last_frame = b""
        # sender
        self._queue: deque[_Outgoing] = deque()
        self._next_handle = 1
        self._frames: list[bytes] = []
        self._frame_index = 0
        self._attempts = 0

    # ---- public API ----------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        self._inbuf += data
        self._process(now)

    def get_timer(self) -> float | None:
        """The next deadline at which :meth:`handle_timer` must be called, or None."""
        if self._deadline is not None:
            return self._deadline
        if self.state is State.NEUTRAL and self._queue:
            return self._not_before
        return None

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            self._on_timeout(now)
        if self.state is State.NEUTRAL:
            self._maybe_start_sending(now)

    def send_message(self, records: list[bytes] | tuple[bytes, ...], now: float) -> int:
        """Queue a message (records without terminators) for sending; returns its handle."""
        handle = self._next_handle
        self._next_handle += 1
        self._queue.append(_Outgoing(handle, tuple(records)))
        if self.state is State.NEUTRAL:
            self._maybe_start_sending(now)
        return handle

    @property
    def pending_messages(self) -> int:
        return len(self._queue)

    @property
    def holding(self) -> bool:
        return self.state is State.RECEIVER_HOLD

    @property
    def in_transfer(self) -> bool:
        """Between ENQ and EOT, either way (LIS1-A 8.2: the link is back to neutral only after EOT)."""
        return self.state is not State.NEUTRAL

    def accept_message(self, now: float, answer: Answer | None = None) -> None:
        """The held message is committed: acknowledge its final frame (E1381 says no more than ACK)."""
        if self.state is not State.RECEIVER_HOLD:
            return  # the transfer ended (peer closed or gave up) while the caller committed
        self._hold_snapshot = None
        self._send_byte(ACK)
        self._accepted_frame()
        self.state = State.RECEIVER
        self._deadline = now + self.profile.receive_timeout
        self._process(now)

    def reject_message(self, now: float, answer: Answer | None = None) -> None:
        """The held message could not be committed: NAK its final frame so the peer retransmits it."""
        if self.state is not State.RECEIVER_HOLD:
            return
        snap = self._hold_snapshot
        assert snap is not None
        self._records = list(snap.records)
        self._partial = snap.partial
        self._raw = bytearray(snap.raw)
        self._hold_snapshot = None
        self._last_frame = self._prev_last_frame  # the retransmitted final frame is new again
        self._send_byte(NAK)
        self._events.append(FrameRejected("message could not be stored"))
        self.state = State.RECEIVER
        self._deadline = now + self.profile.receive_timeout
        self._process(now)

    def connection_lost(self) -> None:
        """The transport went away: an unfinished message is reported; queued messages stay queued."""
        if self.state in (State.RECEIVER, State.RECEIVER_HOLD):
            self._abandon_message("connection lost")
            self._events.append(TransferEnded(as_sender=False, reason="connection lost"))
        elif self.state in (State.SENDER_ENQ, State.SENDER_FRAME) and self._queue:
            self._events.append(SendAborted(self._queue[0].handle, "connection lost"))
            self._events.append(TransferEnded(as_sender=True, reason="connection lost"))
        self._reset_neutral()
        self._inbuf.clear()
        self._out.clear()

    # ---- internals -----------------------------------------------------------------------------

    def _send_byte(self, byte: int) -> None:
        self._out.append(byte)

    def _reset_neutral(self) -> None:
        self.state = State.NEUTRAL
        self._refusing = None
        self._deadline = None
        self._hold_snapshot = None
        self._records.clear()
        self._partial = b""
        self._raw.clear()

    def _process(self, now: float) -> None:
        buf = self._inbuf
        while buf:
            state = self.state
            if state is State.RECEIVER:
                if buf[0] == STX and self._plain and self._take_plain_frame(now):
                    continue
                if not self._process_receiver(now):
                    return  # need more data
            elif state is State.NEUTRAL:
                self._process_neutral(now)
            elif state is State.RECEIVER_HOLD:
                self._bound_held_input()
                return
            elif state is State.SENDER_ENQ:
                self._process_sender_enq(now)
            else:
                self._process_sender_frame(now)
        if self.state is State.NEUTRAL:
            self._maybe_start_sending(now)

    def _bound_held_input(self) -> None:
        overflow = len(self._inbuf) - self.profile.max_frame_bytes
        if overflow > 0:
            del self._inbuf[:overflow]
            self._events.append(JunkDiscarded(overflow))

    def _junk(self, count: int) -> None:
        if count:
            self._events.append(JunkDiscarded(count))

    def _process_neutral(self, now: float) -> None:
        buf = self._inbuf
        idx = buf.find(ENQ)
        ignored = (EOT, *_WHITESPACE) if self.profile.skips_whitespace else (EOT,)
        if idx < 0:
            # R-A1: outside a transfer everything but ENQ is ignored. A lone EOT is a common keep-alive.
            self._junk(_count_except(buf, ignored, len(buf)))
            buf.clear()
            return
        self._junk(_count_except(buf, ignored, idx))
        del buf[:idx + 1]
        self._start_receiving(now)

    def _start_receiving(self, now: float) -> None:
        self._send_byte(ACK)
        self.state = State.RECEIVER
        self._expected_fn = 1
        self._last_fn = None
        self._last_frame = b""
        self._frames_in_transfer = 0
        self._deadline = now + self.profile.receive_timeout
        self._events.append(TransferStarted(as_sender=False))

    def _process_receiver(self, now: float) -> bool:
        """Handle what starts the buffer; return False when a frame is incomplete."""
        buf = self._inbuf
        first = buf[0]
        if first == EOT:
            del buf[0]
            keepalive = (self.profile.enq_eot_keepalive and self._frames_in_transfer == 0
                         and not self._records and not self._partial)
            self._abandon_message("EOT before the message terminator (L) record")
            self._reset_neutral()
            if keepalive:
                self._events.append(KeepAlive())
            else:
                self._events.append(TransferEnded(as_sender=False, reason="eot"))
            return True
        if first == ENQ:
            # The sender gave up on us (its timer ran out) and starts again: restart the transfer.
            del buf[0]
            self._abandon_message("sender restarted the transfer (ENQ)")
            self._reset_neutral()
            self._events.append(TransferEnded(as_sender=False, reason="restarted"))
            self._start_receiving(now)
            return True
        if first != STX:
            # Junk before a frame (R-A15): skip to the next byte that matters.
            end = _first_of(buf, _RESTARTS, 0, len(buf))
            if end < 0:
                end = len(buf)
            if self.profile.skips_whitespace:
                self._junk(_count_except(buf, _WHITESPACE, end))
            else:
                self._junk(end)
            del buf[:end]
            return True
        return self._take_frame(now)

    def _take_frame(self, now: float) -> bool:
        buf = self._inbuf
        limit = self.profile.max_frame_bytes
        end = min(len(buf), limit)
        term_at = _first_of(buf, _TERMINATORS, 1, end)
        cut_at = _first_of(buf, _RESTARTS, 1, term_at if term_at >= 0 else end)
        if cut_at >= 0:
            # A frame cut short: the peer started over. Reject what we had.
            del buf[:cut_at]
            self._reject(now, "frame interrupted before ETX/ETB")
            return True
        if term_at < 0:
            if len(buf) >= limit:
                # Only the frame's first ``limit`` bytes go: the rest of it is skipped as junk up to the next
                # STX, EOT or ENQ, which is acted on whether it came in this read or a later one.
                self._reject(now, f"frame longer than {limit} bytes")
                del buf[:limit]
                return True
            return False
        profile = self.profile
        sum_len = 2 if profile.checksums else 0
        end = term_at + 1 + sum_len
        if profile.skips_whitespace:
            # The CR LF after the checksum is optional here: it is skipped as whitespace between frames, and
            # the frame (as kept in the raw message) runs from STX through its checksum, whatever the chunking.
            if len(buf) < end:
                return False
        else:
            if len(buf) < end + 2:
                return False  # checksum, CR, LF still to come
            end += 2
        frame = bytes(buf[:end])
        del buf[:end]
        body = frame[1:term_at + 1]
        if profile.checksums:
            sent_sum = frame[term_at + 1:term_at + 3].upper()
            if not profile.skips_whitespace and frame[term_at + 3:term_at + 5] != b"\r\n":
                self._reject(now, "frame not ended by CR LF after its checksum")
                return True
            if sent_sum != checksum(body):
                self._reject(now, f"checksum mismatch: frame says {sent_sum.decode('latin-1')!r}, "
                                  f"computed {checksum(body).decode()!r}")
                return True
        if not profile.frame_numbers:
            if self._last_frame and frame.rstrip(b"\r\n") == self._last_frame:
                self._send_byte(ACK)
                self._deadline = now + self.profile.receive_timeout
                self._events.append(FrameRetransmitted(self._last_fn or 0))
                return True
            self._prev_last_frame = self._last_frame
            self._last_frame = frame.rstrip(b"\r\n")
            self._accept_frame(frame, body[:-1], final=body[-1] == ETX, now=now)
            return True
        fn_char = body[0]
        if not 0x30 <= fn_char <= 0x37:
            self._reject(now, "frame number is not a digit 0-7")
            return True
        fn = fn_char - 0x30
        if self._last_fn is not None and fn == self._last_fn:
            self._send_byte(ACK)
            self._deadline = now + self.profile.receive_timeout
            self._events.append(FrameRetransmitted(fn))
            return True
        if fn != self._expected_fn and (self.profile.strict_frame_numbers or self._last_fn is not None):
            self._reject(now, f"unexpected frame number {fn} (expected {self._expected_fn})")
            return True
        self._expected_fn = fn
        self._accept_frame(frame, body[1:-1], final=body[-1] == ETX, now=now)
        return True

    def _take_plain_frame(self, now: float) -> bool:
        """The common case, a well-formed frame in sequence with a good checksum, in fewer steps.

        Returns False, having changed nothing, for anything else (an incomplete or malformed frame, a wrong
        checksum or frame number, a retransmission): the general path then handles it as it always has. A
        frame that completes an ordinary record (not H or L) is taken here whole; others go on to
        :meth:`_accept_frame`. Both paths give the same ACKs, events and state (tests/protocols).
        """
        buf = self._inbuf
        profile = self.profile
        # The frame ends at the first CR LF (the checksum's); a CR LF inside the text, or no CR LF within the
        # profile's frame size, is the general path's to handle. (Most reads hold one frame: then the search
        # needs no bounds, and the frame is the whole buffer.)
        size = len(buf)
        limit = profile.max_frame_bytes
        end = (buf.find(b"\r\n") if size <= limit else buf.find(b"\r\n", 0, limit)) + 2
        if end < 7:  # not found (or shorter than STX FN ETX C1 C2 CR LF)
            return False
        frame = bytes(buf) if end == size else bytes(buf[:end])
        sum_at = end - 4
        term = frame[sum_at - 1]
        fn = self._expected_fn
        if term not in _TERMINATORS or frame[1] - 0x30 != fn or self._refusing is not None:
            return False
        summed = frame[1:sum_at]  # FN, text, ETX/ETB: what the checksum covers
        text = frame[2:sum_at - 1]
        # No byte of the text may end or restart a frame (STX ETX ETB EOT ENQ; FN is a digit, checked above): an
        # int `in` bytes is one memchr, no method call. The sum modulo 256: over at most 256 bytes the sum stays
        # below Adler-32's modulus (65521), so Adler-32's low half, less its initial 1, is that sum (C, not a
        # Python loop); a longer frame is summed in Python.
        if (STX in text or ETX in text or ETB in text or EOT in text or ENQ in text
                or (((_adler32(summed) & 0xFFFF) - 1 if sum_at <= 257 else sum(summed)) & 0xFF)
                != _HEX_VALUE.get(frame[sum_at:sum_at + 2])):
            return False
        del buf[:end]
        final = term == ETX
        record = text[:-1]
        # An ordinary record ends the text with its CR, the only CR in it (else the general path splits it).
        if (not final or self._partial or len(text) < 2 or text[-1] != CR or CR in record
                or text[0] in _SPECIAL_RECORD_START or text[-2] == LF
                or len(self._raw) + end > profile.max_message_bytes or len(self._records) >= profile.max_records):
            self._accept_frame(frame, text, final=final, now=now)
            return True
        # One ordinary record, whole in this frame: what _accept_frame would do for it, without its checks.
        self._frames_in_transfer += 1
        self._raw += frame
        self._records.append(record)
        self._out.append(ACK)
        self._events.append(_FRAME_ACCEPTED[fn])
        self._last_fn = fn
        self._expected_fn = (fn + 1) & 7
        self._deadline = now + profile.receive_timeout
        return True

    def _reject(self, now: float, reason: str) -> None:
        self._send_byte(NAK)
        self._deadline = now + self.profile.receive_timeout
        self._events.append(FrameRejected(reason))

    def _accepted_frame(self) -> None:
        self._events.append(_FRAME_ACCEPTED[self._expected_fn])
        self._last_fn = self._expected_fn
        self._expected_fn = (self._expected_fn + 1) % 8

    def _accept_frame(self, frame: bytes, text: bytes, *, final: bool, now: float) -> None:
        if self._refusing is None:
            over = self._over_limit(frame, text, final)
            if over is not None:
                # Over a limit: what came so far is reported (kept for inspection, never a result), and this
                # frame and every one after it in this transfer is NAKed, so the sender gives up (R-A19) knowing
                # the message was not received, instead of having it ACKed and dropped.
                self._abandon_message(over)
                self._refusing = f"{over}: refused until the sender ends its transfer"
        if self._refusing is not None:
            self._reject(now, self._refusing)
            return
        self._frames_in_transfer += 1
        records: list[bytes] = []
        snapshot = None
        if final:
            records = split_records(self._partial + text, self.profile.record_terminator)
            # The state before this frame, restored if the message it completes cannot be stored. Taken only
            # for a frame that completes one (an L record): copying the message so far at every frame made
            # receiving a message quadratic in its frames.
            if any(record[:1] in _TERMINATOR_RECORD for record in records):
                snapshot = _Snapshot(tuple(self._records), self._partial, bytes(self._raw))
        self._raw += frame
        if not final:
            self._partial += text
            self._send_byte(ACK)
            self._accepted_frame()
            self._deadline = now + self.profile.receive_timeout
            return
        self._partial = b""
        completed: list[MessageReceived] = []
        for record in records:
            kind = record[:1].upper()
            if kind == b"H" and self._records:
                self._abandon_message("new header (H) record before the terminator (L) record",
                                      keep_raw_tail=len(frame))
            self._records.append(record)
            if kind == b"L":
                completed.append(MessageReceived(tuple(self._records), bytes(self._raw)))
                self._records.clear()
                self._raw.clear()
        if completed:
            self._events.extend(completed)
            self._hold_snapshot = snapshot
            self.state = State.RECEIVER_HOLD
            self._deadline = None  # the caller owns the time while it commits
            return
        self._send_byte(ACK)
        self._accepted_frame()
        self._deadline = now + self.profile.receive_timeout

    def _over_limit(self, frame: bytes, text: bytes, final: bool) -> str | None:
        """Why the message this frame belongs to goes over the profile's bounds (None: it does not)."""
        p = self.profile
        if len(self._raw) + len(frame) > p.max_message_bytes:
            return f"message longer than {p.max_message_bytes} bytes"
        term = p.record_terminator
        if final and len(self._records) + self._partial.count(term) + text.count(term) > p.max_records:
            return f"message of more than {p.max_records} records"
        return None

    def _abandon_message(self, reason: str, keep_raw_tail: int = 0) -> None:
        if self._records or self._partial:
            records = list(self._records)
            if self._partial:
                records.append(self._partial)
            raw_end = len(self._raw) - keep_raw_tail
            self._events.append(IncompleteMessage(tuple(records), bytes(self._raw[:raw_end]), reason))
            del self._raw[:raw_end]
        elif not keep_raw_tail:
            self._raw.clear()
        self._records.clear()
        self._partial = b""

    # ---- sender --------------------------------------------------------------------------------

    def _maybe_start_sending(self, now: float) -> None:
        if self.state is State.NEUTRAL and self._queue and now >= self._not_before:
            self._send_byte(ENQ)
            self.state = State.SENDER_ENQ
            self._deadline = now + self.profile.reply_timeout

    def _process_sender_enq(self, now: float) -> None:
        buf = self._inbuf
        byte = buf[0]
        del buf[0]
        if byte == ACK:
            self._frames = build_frames(self._queue[0].records, profile=self.profile)
            self._frame_index = 0
            self._attempts = 0
            self.state = State.SENDER_FRAME
            self._events.append(TransferStarted(as_sender=True))
            self._send_current_frame(now)
        elif byte == NAK:
            self.state = State.NEUTRAL
            self._deadline = None
            self._not_before = now + self.profile.busy_wait
            self._events.append(PeerBusy())
        elif byte == ENQ:
            if self.role is Role.INSTRUMENT:
                # R-A8: the instrument keeps priority; it asks again after 1 s.
                self._not_before = now + self.profile.contention_wait_instrument
                self.state = State.NEUTRAL
                self._deadline = None
                self._events.append(Contention(yielded=False))
            else:
                # R-A7/R-A9: the host yields: it waits for the instrument's next ENQ, and waits 20 s
                # before trying to send again.
                self._not_before = now + self.profile.contention_wait_host
                self.state = State.NEUTRAL
                self._deadline = None
                self._events.append(Contention(yielded=True))
        else:
            self._junk(1)

    def _send_current_frame(self, now: float) -> None:
        self._out += self._frames[self._frame_index]
        self._deadline = now + self.profile.reply_timeout

    def _process_sender_frame(self, now: float) -> None:
        buf = self._inbuf
        byte = buf[0]
        del buf[0]
        if byte in (ACK, EOT, NAK):
            # One reply per frame: whatever else is already buffered was sent before our next frame went out,
            # so it is stale (a duplicated ACK must not acknowledge a frame the peer has not seen).
            self._junk(len(buf))
            buf.clear()
        if byte in (ACK, EOT):
            # EOT in place of ACK is a receiver interrupt: the frame was received (R-A20).
            self._frame_index += 1
            self._attempts = 0
            if self._frame_index < len(self._frames):
                if byte == EOT and self.profile.honor_interrupt:
                    # Stop and leave the line to the receiver; the message goes again whole later.
                    self._events.append(SendAborted(self._queue[0].handle, "receiver interrupt (EOT)"))
                    self._not_before = now + self.profile.interrupt_wait
                    self._end_sending(now, "interrupted")
                    return
                self._send_current_frame(now)
                return
            done = self._queue.popleft()
            self._events.append(MessageSent(done.handle))
            self._end_sending(now, "eot")
        elif byte == NAK:
            self._attempts += 1
            self._events.append(FrameRejected("peer NAKed our frame", by_peer=True))
            if self._attempts >= MAX_FRAME_ATTEMPTS:
                self._events.append(SendAborted(self._queue[0].handle,
                                                f"frame refused {MAX_FRAME_ATTEMPTS} times"))
                self._not_before = now + self.profile.busy_wait
                self._end_sending(now, "aborted")
                return
            self._send_current_frame(now)
        else:
            self._junk(1)

    def _end_sending(self, now: float, reason: str) -> None:
        self._send_byte(EOT)
        self.state = State.NEUTRAL
        self._deadline = None
        self._frames = []
        self._events.append(TransferEnded(as_sender=True, reason=reason))
        self._maybe_start_sending(now)

    def _on_timeout(self, now: float) -> None:
        if self.state in (State.SENDER_ENQ, State.SENDER_FRAME):
            # R-A5: no reply in 15 s: termination phase, back to neutral; the message stays queued.
            self._events.append(SendAborted(self._queue[0].handle,
                                            f"no reply from the peer within {self.profile.reply_timeout:g} s"))
            self._not_before = now + self.profile.busy_wait
            self._end_sending(now, "timeout")
        elif self.state is State.RECEIVER:
            self._abandon_message(f"no frame from the sender within {self.profile.receive_timeout:g} s")
            self._reset_neutral()
            self._events.append(TransferEnded(as_sender=False, reason="timeout"))
