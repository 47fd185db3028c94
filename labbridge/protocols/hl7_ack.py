"""The analyzer side of HL7 over MLLP as a sans-I/O core: messages in, acknowledgements out.

Theory of operation (PROTOCOLS.md part c, R-C5..R-C7):

* Bytes go in with :meth:`Hl7Receiver.receive_data`; the MLLP framer cuts blocks (R-C1, R-C4) and each
  block becomes one :class:`Hl7Received` event holding the raw bytes and either the parsed message or
  the :class:`~labbridge.protocols.hl7_parse.Hl7ParseError` that says why it cannot be read.
* The receiver then holds (the :class:`~labbridge.protocols.link.Link` contract): the shell stores the
  message (raw, always: a malformed one is kept for inspection), then calls
  :meth:`Hl7Receiver.accept_message` or :meth:`Hl7Receiver.reject_message` with an
  :class:`~labbridge.protocols.link.Answer`; only then are acknowledgement bytes queued
  (:meth:`data_to_send`) and the next message taken. So an acknowledgement that says "accepted" (AA, CA)
  can only follow a commit.
* Original mode (MSH-15 and MSH-16 both empty): one application ACK, AA / AE / AR.
* Enhanced mode (either non-empty): a commit ACK (CA when stored, CE when the message cannot be read, CR
  when it could not be stored), sent per MSH-15; then, only after a CA, the application ACK (AA / AE / AR)
  per MSH-16. AL = always, NE = never, ER = only when not accepted, SU = only when accepted; an empty
  field in enhanced mode means NE (the sender asked for the other one only). A value outside HL7 table
  0155 counts as empty: Mindray's v2.3.1 dialect puts the result type (``0``, ``1``, ``2``) in MSH-16,
  and such analyzers expect an original-mode ACK.
* Every ACK: MSH-9 ``ACK^<trigger>^ACK``, MSH-3/4 and MSH-5/6 swapped, the same MSH-12 version and MSH-11
  processing ID, MSA-2 = the original MSH-10, MSA-3 and ERR with the reason when not accepted (ERR-3/4/8
  from v2.5 on, ERR-1 before).

Time is an input (the answer's aware datetime for MSH-7); there are no timers on this side: the sender
owns the retry.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime

from labbridge.errors import LocalProtocolError
from labbridge.protocols import mllp
from labbridge.protocols.hl7_parse import (
    DEFAULT_SEPARATORS,
    ERR_INTERNAL,
    ERROR_TEXT,
    Hl7Message,
    Hl7ParseError,
    Segment,
    Separators,
    escape,
    parse_message,
)
from labbridge.protocols.link import Answer, Outcome

__all__ = ["Answer", "Hl7Event", "Hl7Received", "Hl7Receiver", "IncompleteBlock", "Outcome", "ack_codes", "build_ack"]

MSA_TEXT_MAX = 80
ACK_CONDITIONS = frozenset({"AL", "NE", "ER", "SU"})  # HL7 table 0155  # MSA-3 is ST(80) in v2.5.1


@dataclass(frozen=True, slots=True)
class Hl7Received:
    raw: bytes
    message: Hl7Message | None
    error: Hl7ParseError | None


@dataclass(frozen=True, slots=True)
class IncompleteBlock:
    """The bytes of a block (or of input held behind a message) that the end of the connection cut off."""

    raw: bytes


Hl7Event = Hl7Received | mllp.MllpJunk | mllp.MllpOversize | mllp.MllpBadEnd | IncompleteBlock


def _wanted(condition: str, accepted: bool) -> bool:
    if condition == "AL":
        return True
    if condition == "ER":
        return not accepted
    if condition == "SU":
        return accepted
    return False  # NE, empty (in enhanced mode) or unknown


def ack_codes(accept_ack_type: str, application_ack_type: str, *, outcome: Outcome, stored: bool,
              readable: bool = True) -> list[str]:
    """Which MSA-1 codes to send, in order, for one message (R-C5, R-C6)."""
    accept_ack_type = accept_ack_type if accept_ack_type in ACK_CONDITIONS else ""
    application_ack_type = application_ack_type if application_ack_type in ACK_CONDITIONS else ""
    if not accept_ack_type and not application_ack_type:
        return ["A" + outcome.value]
    codes: list[str] = []
    commit = "CA" if stored and readable else ("CE" if not readable else "CR")
    if _wanted(accept_ack_type, commit == "CA"):
        codes.append(commit)
    if commit == "CA":
        app = "A" + outcome.value
        if _wanted(application_ack_type, app == "AA"):
            codes.append(app)
    return codes


def hl7_now(now: datetime) -> str:
    return now.strftime("%Y%m%d%H%M%S%z")


def _version_at_least_25(version: str) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) >= (2, 5)
    except ValueError:
        return True


def build_ack(code: str, *, header: Segment | None, separators: Separators = DEFAULT_SEPARATORS,
              charset: str = "utf-8", control_id: str, now: datetime, text: str = "",
              error_code: str = "") -> bytes:
    """One ACK for a message whose MSH (possibly None, when there was none) is ``header``."""
    s = separators
    f = s.field

    def raw(n: int) -> str:
        return header.raw(n) if header is not None else ""

    trigger = raw(9).split(s.component)[1] if s.component in raw(9) else ""
    version = raw(12) or "2.5.1"
    message_type = s.component.join(["ACK", trigger, "ACK"]) if trigger else "ACK"
    msh = f.join(["MSH", s.encoding_characters, raw(5), raw(6), raw(3), raw(4), hl7_now(now), "", message_type,
                  control_id, raw(11) or "P", version, "", "", "", "", "", raw(18)]).rstrip(f)
    msa_text = escape(text[:MSA_TEXT_MAX], s)
    original_id = raw(10).split(s.component)[0] if header is not None else ""
    segments = [msh, f.join(["MSA", code, original_id, msa_text]).rstrip(f)]
    if code not in ("AA", "CA") and (error_code or text):
        error_code = error_code or "207"
        label = ERROR_TEXT.get(error_code, "Application internal error")
        if _version_at_least_25(version):
            segments.append(f.join(["ERR", "", "", s.component.join([error_code, label, "HL70357"]), "E", "", "",
                                    "", escape(text, s)]))
        else:
            segments.append(f.join(["ERR", s.component.join(["", "", "", s.subcomponent.join(
                [error_code, escape(label, s), "HL70357"])])]))
    return ("\r".join(segments) + "\r").encode(charset, errors="replace")


DEFAULT_MAX_SEGMENTS = 10_000  # segments in one received message (the config's max_records_per_message)


def _segment_count(payload: bytes, limit: int) -> int:
    """The segments in a message (non-empty lines); counted exactly only when the quick bound exceeds ``limit``."""
    quick = payload.count(b"\r") + payload.count(b"\n") + 1
    if quick <= limit:
        return quick
    return sum(1 for line in payload.replace(b"\n", b"\r").split(b"\r") if line.strip())


class Hl7Receiver:
    """One analyzer connection's HL7 receiving side: MLLP blocks in, acknowledgement bytes out (a
    :class:`labbridge.protocols.link.Link`).

    Each block becomes one :class:`Hl7Received`; after it the receiver holds: input is kept (up to one
    message's bound; beyond it is dropped and reported as junk) and no further event comes out until the shell
    answers with :meth:`accept_message` (the message is committed: its answer's outcome says AA, AE or AR,
    in the sender's acknowledgement mode) or :meth:`reject_message` (not committed: AR, or CR in enhanced
    mode). So messages are answered one at a time, in order, and nothing accepting precedes a commit.
    """

    def __init__(self, *, default_charset: str = "latin-1", max_message: int = mllp.DEFAULT_MAX_MESSAGE,
                 allow_missing_cr: bool = False, ack_id_prefix: str = "LBA",
                 max_segments: int = DEFAULT_MAX_SEGMENTS) -> None:
        self.default_charset = default_charset
        self.max_message = max_message
        self.max_segments = max_segments
        self._decoder = mllp.MllpDecoder(max_message=max_message, allow_missing_cr=allow_missing_cr)
        self._events: deque[Hl7Event] = deque()
        self._held: Hl7Received | None = None
        self._waiting = bytearray()  # input that arrived while a message was held
        self._dropped = 0  # bytes of it beyond the bound
        self._out = bytearray()
        self._ack_prefix = ack_id_prefix
        self.acks_sent = 0  # acknowledgements queued so far (a message may get none, one or two)

    def receive_data(self, data: bytes, now: float) -> None:
        if self._held is None:
            self._decode(data)
            return
        room = self.max_message - len(self._waiting)
        self._waiting += data[:max(room, 0)]
        self._dropped += max(len(data) - max(room, 0), 0)

    def _decode(self, data: bytes) -> None:
        for event in self._decoder.receive_data(data):
            if isinstance(event, mllp.MllpMessage):
                segments = _segment_count(event.payload, self.max_segments)
                if segments > self.max_segments:
                    self._events.append(self._refused(
                        event.payload, event.payload,
                        f"message of more than {self.max_segments} segments ({segments}) is over the limit; "
                        "it was not taken (it is kept for inspection)"))
                    continue
                try:
                    message = parse_message(event.payload, default_charset=self.default_charset)
                except Hl7ParseError as exc:
                    self._events.append(Hl7Received(event.payload, None, exc))
                else:
                    self._events.append(Hl7Received(event.payload, message, None))
            elif isinstance(event, mllp.MllpOversize):
                self._events.append(self._oversize(event))
            else:
                self._events.append(event)

    def _oversize(self, event: mllp.MllpOversize) -> Hl7Received:
        """A block over the bound is answered AR with the reason (from its MSH, when its start holds one) and
        its start kept for inspection, never dropped unanswered."""
        reason = (f"message of {event.size} bytes is larger than the limit of {event.limit} bytes; "
                  "it was not taken (only its start is kept)")
        return self._refused(event.head, event.head, reason)

    def _refused(self, head_bytes: bytes, kept: bytes, reason: str) -> Hl7Received:
        """A message over a limit: AR with ``reason``, in the sender's terms when its MSH can be read; ``kept``
        is what is stored for inspection."""
        try:
            head = parse_message(head_bytes.split(b"\r", 1)[0], default_charset=self.default_charset)
        except Hl7ParseError as exc:
            error = Hl7ParseError(reason, ack_code="AR", error_code=ERR_INTERNAL, header=exc.header,
                                  separators=exc.separators, charset=exc.charset)
        else:
            error = Hl7ParseError(reason, ack_code="AR", error_code=ERR_INTERNAL, header=head.header,
                                  separators=head.separators, charset=head.charset)
        return Hl7Received(kept, None, error)

    def next_event(self) -> Hl7Event | None:
        if self._held is not None or not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, Hl7Received):
            self._held = event
        return event

    def get_timer(self) -> float | None:
        return None  # the sender owns the retry: nothing to time on this side

    def handle_timer(self, now: float) -> None:
        return

    @property
    def holding(self) -> bool:
        return self._held is not None

    @property
    def in_transfer(self) -> bool:
        """A message is held or waiting, or an MLLP block has begun and not ended."""
        return self._held is not None or bool(self._waiting or self._events) or self._decoder.in_block

    def accept_message(self, now: float, answer: Answer | None = None) -> None:
        """The held message is committed: queue the acknowledgement(s) its answer gives."""
        self._settle(answer, stored=True)

    def reject_message(self, now: float, answer: Answer | None = None) -> None:
        """The held message could not be committed: AR (CR in enhanced mode) with the answer's reason."""
        self._settle(answer, stored=False)

    def release(self) -> None:
        """Let the held message go unacknowledged: it was itself an answer (an ORL^O34 to our OML^O33), or the
        shell answered it with a message of its own (an RSP^K11 carries its MSA)."""
        if self._held is not None:
            self._held = None
            self._resume()

    def _settle(self, answer: Answer | None, *, stored: bool) -> None:
        held = self._held
        if held is None:
            return
        if answer is None:
            raise LocalProtocolError("an HL7 acknowledgement needs an Answer (outcome and time)")
        self._held = None
        self.acknowledge(held, outcome=answer.outcome, stored=stored, now=answer.at, text=answer.text,
                         error_code=answer.error_code)
        self._resume()

    def _resume(self) -> None:
        if self._dropped:
            self._events.append(mllp.MllpJunk(self._dropped))
            self._dropped = 0
        if self._waiting:
            waiting = bytes(self._waiting)
            self._waiting.clear()
            self._decode(waiting)

    def acknowledge(self, received: Hl7Received, *, outcome: Outcome, stored: bool, now: datetime,
                    text: str = "", error_code: str = "") -> list[str]:
        """Queue the acknowledgement(s) for one message; the MSA-1 codes queued (possibly none, when the sender
        asked for none). The shell answers through :meth:`accept_message` / :meth:`reject_message`."""
        msg = received.message
        err = received.error
        if msg is not None:
            header: Segment | None = msg.header
            seps, charset = msg.separators, msg.charset
            codes = ack_codes(msg.accept_ack_type, msg.application_ack_type, outcome=outcome, stored=stored)
        else:
            assert err is not None
            header, seps, charset = err.header, err.separators, err.charset
            accept = application = ""
            if header is not None:
                accept = header.raw(15).split(seps.component)[0].upper()
                application = header.raw(16).split(seps.component)[0].upper()
            codes = ack_codes(accept, application, outcome=outcome, stored=stored, readable=False)
            text = text or err.reason
            error_code = error_code or err.error_code
        for code in codes:
            self.acks_sent += 1
            self._out += mllp.frame(build_ack(code, header=header, separators=seps, charset=charset,
                                              control_id=f"{self._ack_prefix}{self.acks_sent}", now=now,
                                              text="" if code in ("AA", "CA") else text, error_code=error_code))
        return codes

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def connection_lost(self) -> None:
        """The transport went away: a block cut off by it becomes an :class:`IncompleteBlock` event."""
        partial = self._decoder.pending()
        if self._waiting:
            partial += bytes(self._waiting)
            self._waiting.clear()
        self._held = None
        if partial:
            self._events.append(IncompleteBlock(partial))
