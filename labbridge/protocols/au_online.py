"""Beckman Coulter AU "online" link (AU480, AU680, AU5800; the Olympus AU400/AU640/AU2700/AU5400 before
them) as a sans-I/O core: the receiving end labbridge runs for an AU analyzer.

Theory of operation
-------------------
The AU does not speak ASTM. Its host link carries *texts*, each classed by its first two characters (the
"text classification"): ``DB`` start of the result transfer, ``D `` a sample's results, ``DH`` a rerun's,
``d `` / ``dH`` STAT (fast) results, ``DQ`` a QC sample's, ``DA`` calibration, ``DR`` reagent blank, ``DE``
end of the result transfer; ``RB``/``R ``/``RH``/``RE`` the sample-information (T.R.I.) inquiry, and ``S``
texts, the host's answers. On the wire one text is one or more *blocks*::

    STX  text  ETX|ETB  [BCC]

* ``ETX`` ends the (last block of a) text; ``ETB`` ends a block that another block of the same text follows
  (long texts are blocked when "using ETB" is set on the AU; each block then repeats the text's head and
  carries its block identification number, which is the driver's business, not the link's).
* ``BCC`` (optional, set on the AU's [ONLINE] [PROTOCOL] menu): one byte, the exclusive OR of every byte from
  the text classification through the end code (:func:`bcc`). :attr:`AuProfile.bcc` must match the AU.
* Class B transmission (the usual one, :attr:`AuProfile.acknowledge`): the receiver answers every block
  with ``ACK`` (received) or ``NAK`` (not received: the AU sends the same block again, up to its retry
  count, then gives up on that text). Class A: no answers at all.

Persist before acknowledging: a result text is a message of its own. Once the AU has an ``ACK`` for a text,
it never sends it again, so the ``ACK`` of a text's last block is the final acknowledgement, and it waits
for the shell: the link *holds* (answers nothing and reads no further block) until
:meth:`AuLink.accept_message` (stored: ``ACK``) or :meth:`AuLink.reject_message` (not stored: ``NAK``, the
AU resends the block; the text's earlier blocks are kept, so the resent last block completes it again).
Intermediate blocks (``ETB``) and the ``DB``/``DE``/``RB``/``RE`` markers carry no result of their own and
are acknowledged at once (``TransferStarted``/``TransferEnded`` events, for the counters). Results
committed one text at a time mean a connection cut between ``DB`` and ``DE`` loses nothing acknowledged.

Bad input, counted and never a crash or a hang:

* bytes outside a block (no ``STX``) are junk (:class:`~labbridge.protocols.e1381.JunkDiscarded`);
* a block whose ``BCC`` does not match, or too short to carry a classification, is refused: ``NAK``
  (:class:`~labbridge.protocols.e1381.FrameRejected`), and the AU sends it again;
* an intermediate block received twice in a row (our ``ACK`` was lost) is acknowledged again and kept once
  (:class:`~labbridge.protocols.e1381.FrameRetransmitted`);
* a block longer than ``max_block_bytes`` or a text longer than ``max_text_bytes`` is discarded (counted as
  junk), refused with ``NAK`` once its end code arrives, and the unfinished text is abandoned;
* a new ``STX`` inside a block restarts it (the partial block is junk); a new text before the last block
  of the previous one, ``receive_timeout`` seconds of silence inside a text, or the connection closing
  abandon the unfinished text as an :class:`~labbridge.protocols.e1381.IncompleteMessage`, never a result.

Events are those of :mod:`labbridge.protocols.e1381`, so the ASTM role of the connection shell
(:class:`labbridge.links.astm.AstmRole`) runs this link unchanged: a message's ``records`` are the texts of
its blocks (control characters removed), its ``raw`` the blocks as received. No I/O, no clock: ``now`` is
an argument and the one timer a deadline (:meth:`AuLink.get_timer`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from labbridge.protocols.e1381 import (
    Event,
    FrameAccepted,
    FrameRejected,
    FrameRetransmitted,
    IncompleteMessage,
    JunkDiscarded,
    MessageReceived,
    TransferEnded,
    TransferStarted,
)
from labbridge.protocols.link import Answer, ReceiverQueues

STX = 0x02
ETX = 0x03
ACK = 0x06
NAK = 0x15
ETB = 0x17

T_AU_RECEIVE = 30.0  # silence inside a block, or between the blocks of one text, before it is abandoned

#: Texts that only mark the start or the end of a transfer (fixed length, no results): acknowledged at once.
START_MARKERS = frozenset({b"DB", b"RB"})
END_MARKERS = frozenset({b"DE", b"RE"})


@dataclass(frozen=True, slots=True)
class AuProfile:
    """The AU's [ONLINE] [PROTOCOL] settings this end must match, and the link's bounds."""

    bcc: bool = True  # a block check character follows each end code
    acknowledge: bool = True  # class B: every block is answered ACK/NAK (False: class A, no answers)
    receive_timeout: float = T_AU_RECEIVE
    max_block_bytes: int = 64 * 1024
    max_text_bytes: int = 1024 * 1024


def bcc(body: bytes) -> int:
    """The block check character: the exclusive OR of the text classification through the end code."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def build_block(text: bytes, *, last: bool = True, with_bcc: bool = True) -> bytes:
    """One block on the wire: STX, the text, ETX (``last``) or ETB, and the BCC when the link uses one."""
    body = text + bytes((ETX if last else ETB,))
    return bytes((STX,)) + body + (bytes((bcc(body),)) if with_bcc else b"")


@dataclass(frozen=True, slots=True)
class _Block:
    text: bytes
    last: bool  # ended by ETX (ETB: another block of the same text follows)
    raw: bytes  # as received, STX through the BCC


class AuLink(ReceiverQueues[Event]):
    """Receiver of AU online texts (the host's end). See the module docstring."""

    def __init__(self, profile: AuProfile | None = None) -> None:
        self.profile = profile or AuProfile()
        self._inbuf = bytearray()
        self._events: deque[Event] = deque()
        self._out = bytearray()
        self._deadline: float | None = None
        self._now = 0.0
        # The text being received (its earlier blocks, acknowledged) and its classification.
        self._blocks: list[bytes] = []
        self._raw = bytearray()
        self._class = b""
        self._last_intermediate: bytes | None = None  # raw of the last intermediate block acknowledged
        # A whole text handed to the shell, not answered yet: (blocks, raw, the raw length of its last block).
        self._held: tuple[tuple[bytes, ...], bytes, int] | None = None
        self._skipping = False  # discarding an over-size block up to its end code (then its BCC)
        self._skip_bcc = False
        self._accepted = 0  # blocks accepted (FrameAccepted's running number, modulo 8 like E1381's)

    # ---- the Link interface (labbridge.protocols.link) ---------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        if not data:
            return
        self._now = now
        self._inbuf += data
        self._process()

    def get_timer(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        self._now = now
        why = f"no byte for {self.profile.receive_timeout:g} s"
        partial = len(self._inbuf) if not self._held else 0
        if partial:
            self._inbuf.clear()
            self._junk(partial)
            self._events.append(FrameRejected(f"block not finished ({why})"))
        self._skipping = self._skip_bcc = False
        if self._blocks:
            self._abandon(f"text not finished ({why})")
        self._events.append(TransferEnded(as_sender=False, reason="timeout"))

    def accept_message(self, now: float, answer: Answer | None = None) -> None:
        """The held text is stored: its last block is acknowledged, and reading goes on."""
        if self._held is None:
            return
        self._held = None
        self._answer(ACK)
        self._now = now
        self._process()

    def reject_message(self, now: float, answer: Answer | None = None) -> None:
        """The held text could not be stored: NAK, so the AU sends its last block again (class A: nothing can
        ask for it again; it is said so)."""
        if self._held is None:
            if not self.profile.acknowledge:
                self._events.append(FrameRejected("text could not be stored (class A cannot ask for a resend)"))
            return
        blocks, raw, last_len = self._held
        self._held = None
        # Keep the earlier blocks (acknowledged): the resent last block completes the text again.
        self._blocks = list(blocks[:-1])
        self._raw = bytearray(raw[:len(raw) - last_len])
        self._class = blocks[0][:2] if len(blocks) > 1 else b""
        self._answer(NAK)
        self._events.append(FrameRejected("text not stored: refused (NAK) so that the analyzer sends it again"))
        self._now = now
        self._process()

    def connection_lost(self) -> None:
        self._held = None
        partial = len(self._inbuf)
        self._inbuf.clear()
        self._junk(partial)
        self._skipping = self._skip_bcc = False
        if self._blocks:
            self._abandon("connection lost")
        self._deadline = None

    @property
    def holding(self) -> bool:
        return self._held is not None

    @property
    def in_transfer(self) -> bool:
        """A block or a blocked text is part-received, a text is held, or events wait to be handled."""
        return bool(self._inbuf or self._blocks or self._held or self._events or self._skipping)

    # ---- internals -------------------------------------------------------------------------------

    def _process(self) -> None:
        """Read whole blocks from the buffer (not while a text is held: the AU waits for our answer)."""
        while self._held is None and self._inbuf:
            if not self._step():
                break
        self._bound_buffer()
        busy = self._held is None and (self._inbuf or self._blocks or self._skipping)
        self._deadline = self._now + self.profile.receive_timeout if busy else None

    def _step(self) -> bool:
        """Take one thing off the buffer; False when what is there is not complete yet."""
        buf = self._inbuf
        if self._skipping:
            return self._skip()
        start = buf.find(STX)
        if start != 0:
            junk = len(buf) if start < 0 else start
            del buf[:junk]
            self._junk(junk)
            return bool(buf)
        end = _first_end(buf, 1)
        restart = buf.find(STX, 1, end if end >= 0 else len(buf))
        if restart > 0:  # a new block before this one ended: the partial one is junk
            del buf[:restart]
            self._junk(restart)
            self._events.append(FrameRejected("block restarted (STX before its end code)"))
            return True
        if end < 0:
            if len(buf) - 1 > self.profile.max_block_bytes:
                self._oversize(len(buf))
                self._skipping = True  # and the rest of it, through its end code
                return True
            return False
        size = end + 1 + (1 if self.profile.bcc else 0)
        if len(buf) < size:
            return False
        if end - 1 > self.profile.max_block_bytes:  # whole, but too long
            self._oversize(size)
            self._answer(NAK)
            return True
        raw = bytes(buf[:size])
        del buf[:size]
        self._block(raw)
        return True

    def _skip(self) -> bool:
        """Discard an over-size block through its end code and BCC, then refuse it."""
        buf = self._inbuf
        if self._skip_bcc:
            del buf[:1]
            self._junk(1)
            self._skip_bcc = False
            self._skipping = False
            self._answer(NAK)
            return True
        end = _first_end(buf, 0)
        stx = buf.find(STX)
        if stx >= 0 and (end < 0 or stx < end):  # the AU gave up on it and started another block
            del buf[:stx]
            self._junk(stx)
            self._skipping = False
            return True
        if end < 0:
            self._junk(len(buf))
            buf.clear()
            return False
        del buf[:end + 1]
        self._junk(end + 1)
        if self.profile.bcc:
            self._skip_bcc = True
            return bool(buf)
        self._skipping = False
        self._answer(NAK)
        return True

    def _oversize(self, count: int) -> None:
        """Discard the first ``count`` bytes of an over-size block; the text it belongs to is abandoned."""
        del self._inbuf[:count]
        self._junk(count)
        self._events.append(FrameRejected(f"block longer than {self.profile.max_block_bytes} bytes"))
        if self._blocks:
            self._abandon(f"block longer than {self.profile.max_block_bytes} bytes")

    def _bound_buffer(self) -> None:
        """While a text is held the AU should send nothing; what it sends anyway is bounded."""
        limit = self.profile.max_block_bytes
        if self._held is not None and len(self._inbuf) > limit:
            extra = len(self._inbuf) - limit
            del self._inbuf[limit:]
            self._junk(extra)

    def _block(self, raw: bytes) -> None:
        body = raw[1:len(raw) - (1 if self.profile.bcc else 0)]
        text, last = body[:-1], body[-1] == ETX
        if self.profile.bcc and raw[-1] != bcc(body):
            self._refuse(f"checksum mismatch (BCC {raw[-1]:02X}, computed {bcc(body):02X})")
            return
        if len(text) < 2:
            self._refuse("block too short to carry a text classification")
            return
        kind = text[:2]
        if kind in START_MARKERS or kind in END_MARKERS:
            if self._blocks:
                self._abandon(f"{kind.decode('latin-1')} before the last block of the text")
            self._accept_block()
            if kind in START_MARKERS:
                self._events.append(TransferStarted(as_sender=False))
            else:
                self._events.append(TransferEnded(as_sender=False, reason="eot"))
            return
        if self._blocks and kind != self._class:
            self._abandon("a new text before the last block of the previous one")
        if not last and self._blocks and raw == self._last_intermediate:
            self._answer(ACK)  # our ACK was lost: the AU sent the same block again
            self._events.append(FrameRetransmitted(self._accepted % 8))
            return
        if len(self._raw) + len(raw) > self.profile.max_text_bytes:
            self._junk(len(raw))
            self._abandon(f"text longer than {self.profile.max_text_bytes} bytes")
            self._refuse(f"text longer than {self.profile.max_text_bytes} bytes")
            return
        self._class = kind
        self._blocks.append(text)
        self._raw += raw
        if not last:
            self._last_intermediate = raw
            self._accept_block()
            return
        blocks, whole = tuple(self._blocks), bytes(self._raw)
        self._blocks.clear()
        self._raw.clear()
        self._class = b""
        self._last_intermediate = None
        self._accepted += 1
        self._events.append(FrameAccepted(self._accepted % 8))
        self._events.append(MessageReceived(blocks, whole))
        if self.profile.acknowledge:
            self._held = (blocks, whole, len(raw))

    def _accept_block(self) -> None:
        self._accepted += 1
        self._events.append(FrameAccepted(self._accepted % 8))
        self._answer(ACK)

    def _refuse(self, reason: str) -> None:
        self._events.append(FrameRejected(reason))
        self._answer(NAK)

    def _answer(self, byte: int) -> None:
        if self.profile.acknowledge:
            self._out.append(byte)

    def _abandon(self, reason: str) -> None:
        self._events.append(IncompleteMessage(tuple(self._blocks), bytes(self._raw), reason))
        self._blocks.clear()
        self._raw.clear()
        self._class = b""
        self._last_intermediate = None

    def _junk(self, count: int) -> None:
        if count:
            self._events.append(JunkDiscarded(count))


def _first_end(buf: bytearray, start: int) -> int:
    """Index of the first ETX or ETB at or after ``start``, or -1."""
    etx, etb = buf.find(ETX, start), buf.find(ETB, start)
    if etx < 0:
        return etb
    return etx if etb < 0 else min(etx, etb)


def split_texts(capture: bytes, profile: AuProfile | None = None) -> Iterator[tuple[bytes, ...] | IncompleteMessage
                                                                               | FrameRejected]:
    """The whole texts of a capture (what an AU sent, blocks as on the wire), and what went wrong on the way:
    the same receiver the daemon runs, every text accepted as it comes (the driver test kit's replay)."""
    link = AuLink(profile)
    link.receive_data(capture, 0.0)
    ended = False
    while True:
        event = link.next_event()
        if event is None:
            if ended:
                return
            ended = True
            link.connection_lost()  # the capture is over: an unfinished text becomes an event
            continue
        if isinstance(event, MessageReceived):
            yield event.records
            link.accept_message(0.0)  # and read on
        elif isinstance(event, FrameRejected | IncompleteMessage):
            yield event
