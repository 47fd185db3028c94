"""The contract every sans-I/O link core implements, and the answer a shell gives about a held message.

A link is one end of one connection's protocol: E1381 (:class:`labbridge.protocols.e1381.E1381Link`), bare
E1394 records (:class:`labbridge.protocols.raw.RawLink`) or HL7 over MLLP
(:class:`labbridge.protocols.hl7_ack.Hl7Receiver`). The shell that drives one
(:class:`labbridge.links.session.LinkSession`) knows only this contract:

* bytes in with :meth:`Link.receive_data` and the caller's monotonic clock ``now``; bytes out with
  :meth:`Link.data_to_send`; events out with :meth:`Link.next_event` (None: nothing more for now);
* one deadline, :meth:`Link.get_timer`, at which the shell calls :meth:`Link.handle_timer`;
* persist before acknowledging: a complete message is an event after which the link *holds* (it
  acknowledges nothing more and takes no further message) until the shell has tried to commit it and
  says so with :meth:`Link.accept_message` (committed) or :meth:`Link.reject_message` (not committed);
  the :class:`Answer` says what the analyzer is told where the protocol can say more than yes or no (HL7
  AA/AE/AR with a reason); E1381 answers ACK or NAK, raw framing nothing;
* :meth:`Link.connection_lost` when the transport went away (an unfinished message becomes an event).

No I/O, no clock and no asyncio here: time is always an argument.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

E_co = TypeVar("E_co", covariant=True)


class Outcome(enum.Enum):
    """What became of a received message, as the sender is told (HL7 MSA-1's second letter)."""

    ACCEPTED = "A"  # stored and understood (or a duplicate of one that was): AA
    ERROR = "E"  # stored for inspection, but the message is wrong: AE, the sender should fix it
    REJECTED = "R"  # unsupported type/version, or labbridge could not store it: AR, may be resent


@dataclass(frozen=True, slots=True)
class Answer:
    """The shell's answer about a held message: the outcome, a reason safe to send, and the wall-clock time
    for acknowledgements that carry one (HL7 MSH-7)."""

    outcome: Outcome
    at: datetime
    text: str = ""
    error_code: str = ""


class Link(Protocol[E_co]):
    """One connection's protocol state machine (see the module docstring)."""

    def receive_data(self, data: bytes, now: float) -> None: ...

    def data_to_send(self) -> bytes: ...

    def next_event(self) -> E_co | None: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def accept_message(self, now: float, answer: Answer | None = None) -> None: ...

    def reject_message(self, now: float, answer: Answer | None = None) -> None: ...

    def connection_lost(self) -> None: ...

    @property
    def holding(self) -> bool: ...

    @property
    def in_transfer(self) -> bool:
        """A transfer is under way: part of a message received or sent, or a message held (closing the
        connection now would cut it off; a shell that retires a link waits until this is False)."""
        ...


# What the cores say when input goes over a configured limit (bytes of a frame, record or message, records or
# segments of a message): the shells count such refusals apart (``over_limit``) and show them.
_OVER_LIMIT = ("longer than", "more than", "larger than the limit")


def over_limit(reason: str) -> bool:
    """Whether a core's reason for refusing or abandoning input is a configured limit."""
    return any(words in reason for words in _OVER_LIMIT)


E = TypeVar("E")


class ReceiverQueues(Generic[E]):
    """What the receivers share of the :class:`Link` interface: the events they queue for the shell, taken one
    at a time or all at once, and the bytes they owe the peer (``_out``; a receiver that answers nothing, as
    raw framing, leaves it empty)."""

    _events: deque[E]
    _out: bytearray

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> E | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[E]:
        out = list(self._events)
        self._events.clear()
        return out
