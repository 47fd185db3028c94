"""HL7 Minimal Lower Layer Protocol framing as a sans-I/O decoder (PROTOCOLS.md part c).

A block is ``SB data EB CR`` with SB = 0x0B and EB = 0x1C (R-C1). It is a stream: one read may
hold part of a block or several blocks (R-C4). Bytes outside blocks are counted and discarded; a block
larger than the bound is dropped and reported once it ends, with its first ``HEAD_KEPT`` bytes (where its MSH
is, so the sender can be answered and the start kept for inspection), so memory stays bounded whatever the
peer sends.

A block must end with ``EB CR``. Some senders omit the CR; that is accepted only when configured
(``allow_missing_cr``, PROTOCOLS.md "receiver robustness"): then a block ends at EB and a CR right after
it is swallowed. Otherwise a block whose EB is not followed by CR is dropped and reported
(:class:`MllpBadEnd`), since its end cannot be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

SB = 0x0B  # start block (VT)
EB = 0x1C  # end block (FS)
CR = 0x0D

DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
HEAD_KEPT = 4096  # of a block over the bound: its start, with the MSH


@dataclass(frozen=True, slots=True)
class MllpMessage:
    payload: bytes


@dataclass(frozen=True, slots=True)
class MllpJunk:
    count: int


@dataclass(frozen=True, slots=True)
class MllpOversize:
    """A block larger than ``limit``, dropped once it ended: its first bytes and its size."""

    limit: int
    head: bytes = b""
    size: int = 0


@dataclass(frozen=True, slots=True)
class MllpBadEnd:
    """A block ended by EB without the CR after it (and ``allow_missing_cr`` is off): dropped."""

    size: int


MllpEvent = MllpMessage | MllpJunk | MllpOversize | MllpBadEnd


def frame(payload: bytes) -> bytes:
    return b"\x0b" + payload + b"\x1c\r"


class MllpDecoder:
    """Feed bytes, get whole messages back."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE, *, allow_missing_cr: bool = False) -> None:
        self.max_message = max_message
        self.allow_missing_cr = allow_missing_cr
        self._buf = bytearray()
        self._in_block = False
        self._skipping = False  # inside an oversize block: drop until its end
        self._head = b""  # the start of the oversize block being dropped
        self._skipped = 0  # its bytes so far
        self._swallow_cr = False  # lenient mode: a block ended at EB; its CR may follow

    @property
    def in_block(self) -> bool:
        """A start block byte was read and the block has not ended yet."""
        return self._in_block

    def pending(self) -> bytes:
        """The bytes of an unfinished block (e.g. when the connection ends; of one over the bound, its start),
        and forget them."""
        out = self._head if self._skipping else bytes(self._buf) if self._in_block else b""
        self._buf.clear()
        self._in_block = self._skipping = False
        self._head, self._skipped = b"", 0
        return out

    def _oversize(self, tail: int) -> MllpOversize:
        """The block being dropped ended, ``tail`` bytes after what was skipped before."""
        event = MllpOversize(self.max_message, self._head, self._skipped + tail)
        self._skipping = False
        self._head, self._skipped = b"", 0
        return event

    def receive_data(self, data: bytes) -> list[MllpEvent]:
        events: list[MllpEvent] = []
        self._buf += data
        buf = self._buf
        if self._swallow_cr and buf:
            self._swallow_cr = False
            if buf[0] == CR:
                del buf[:1]
        while buf:
            if not self._in_block:
                start = buf.find(SB)
                if start < 0:
                    events.append(MllpJunk(len(buf)))
                    buf.clear()
                    break
                if start:
                    events.append(MllpJunk(start))
                del buf[:start + 1]
                self._in_block = True
                continue
            end = buf.find(EB)
            if end < 0:
                if self._skipping:
                    self._skipped += len(buf)
                    buf.clear()
                elif len(buf) > self.max_message:
                    self._skipping = True
                    self._head, self._skipped = bytes(buf[:HEAD_KEPT]), len(buf)
                    buf.clear()
                break
            if self.allow_missing_cr:
                payload = bytes(buf[:end])
                if len(buf) > end + 1 and buf[end + 1] == CR:
                    del buf[:end + 2]
                else:
                    del buf[:end + 1]
                    self._swallow_cr = not buf
            else:
                if len(buf) < end + 2:
                    break  # wait for the CR after EB
                payload = bytes(buf[:end])
                if buf[end + 1] != CR:
                    del buf[:end + 1]
                    self._in_block = False
                    if self._skipping:
                        events.append(self._oversize(len(payload)))
                    else:
                        events.append(MllpBadEnd(len(payload)))
                    continue
                del buf[:end + 2]
            self._in_block = False
            if self._skipping:
                events.append(self._oversize(len(payload)))
                continue
            if len(payload) > self.max_message:
                events.append(MllpOversize(self.max_message, payload[:HEAD_KEPT], len(payload)))
                continue
            events.append(MllpMessage(payload))
        return events
