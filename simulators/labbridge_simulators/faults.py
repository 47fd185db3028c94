"""Receiver-side fault injection for the simulators: what a misbehaving receiver does to a sender's frames.

A simulator that receives (the analyzer simulator taking labbridge's query answers and orders, or the
simulated host taking an analyzer's results) runs labbridge's E1381 core as its receiver and passes the
bytes through a :class:`ReceiverFaults` on the way in (:meth:`ReceiverFaults.incoming`) and on the way out
(:meth:`ReceiverFaults.outgoing`). The core's state stays consistent with what the sender sees:

* ``ignore_frames=N`` (lost ACKs): the next N frames are dropped before the core sees them, so nothing
  answers them; the sender's reply timer (15 s) must end its transfer and it must send the message again.
* ``nak_frames=N`` (NAK storm): the next N frames get one byte spoiled (the frame number, or the first
  text byte) before the core reads them, so the core itself NAKs them; 6 in a row abort the sender's
  transfer (R-A19).
* ``interrupt_frames=N`` (receiver interrupt): the ACK of the next N frames goes out as EOT (R-A20): the
  frame was received, and the sender may carry on or stop.

``after_frames=N`` lets the first N frames through untouched (to hit a frame in the middle of a message).
Frames are recognised on the byte stream (STX up to its LF), across any chunking. Counts of what was
injected are kept on the object.
"""

from __future__ import annotations

from dataclasses import dataclass

STX = 0x02
ETX = 0x03
ETB = 0x17
EOT = 0x04
ACK = 0x06
LF = 0x0A
SPOIL = 0x3F  # "?": not a frame number, and a changed text byte fails the checksum


@dataclass
class ReceiverFaults:
    ignore_frames: int = 0
    nak_frames: int = 0
    interrupt_frames: int = 0
    after_frames: int = 0  # frames let through before any fault applies
    # what was injected
    ignored: int = 0
    naked: int = 0
    interrupted: int = 0
    _dropping: bool = False  # inside a frame being dropped (until its LF)
    _spoil_next: bool = False  # spoil the next byte (the one after STX)
    _frame_ended: bool = False  # a frame ended since our last output: an ACK now answers it
    _spared: bool = False  # that frame was one of after_frames

    @property
    def active(self) -> bool:
        return bool(self.ignore_frames or self.nak_frames or self.interrupt_frames or self._dropping)

    def incoming(self, data: bytes) -> bytes:
        """The bytes the receiving core gets: dropped or spoiled frames per the remaining budgets."""
        if not self.active and not self._spoil_next and not self.after_frames:
            if ETX in data or ETB in data:
                self._frame_ended = True
            return data
        out = bytearray()
        for byte in data:
            if self._dropping:
                if byte == LF:
                    self._dropping = False
                continue
            if self._spoil_next:
                self._spoil_next = False
                out.append(SPOIL if byte != SPOIL else 0x21)
                continue
            if byte == STX:
                if self.after_frames:
                    self.after_frames -= 1
                    self._spared = True
                elif self.ignore_frames:
                    self.ignore_frames -= 1
                    self.ignored += 1
                    self._dropping = True
                    continue
                if self.nak_frames:
                    self.nak_frames -= 1
                    self.naked += 1
                    self._spoil_next = True
            elif byte in (ETX, ETB):
                self._frame_ended = True
            out.append(byte)
        return bytes(out)

    def outgoing(self, data: bytes) -> bytes:
        """The bytes the receiving core sends, with an ACK to a frame turned into EOT per the budget."""
        if not data:
            return data
        if self._frame_ended and not self._spared and self.interrupt_frames and data[:1] == bytes([ACK]):
            self.interrupt_frames -= 1
            self.interrupted += 1
            data = bytes([EOT]) + data[1:]
        self._frame_ended = False
        self._spared = False
        return data
