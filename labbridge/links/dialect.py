"""Building an instrument's sans-I/O receiving link from its ``[instruments.link]`` settings.

One place, used by the live session (links/instrument.py) and by re-decoding a stored message from
its raw bytes (links/intake.py), so both read the bytes with the same dialect.
"""

from __future__ import annotations

from labbridge.config import LinkConfig
from labbridge.protocols import au_online, e1381, raw

TERMINATORS = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}

AstmLink = e1381.E1381Link | raw.RawLink | au_online.AuLink


def link_profile(link: LinkConfig) -> e1381.LinkProfile:
    """The sans-I/O link profile (dialect flags) for an instrument's ``[link]`` settings."""
    return e1381.LinkProfile(strict_frame_numbers=link.strict_frame_numbers, frame_numbers=link.frame_numbers,
                             checksums=link.checksums, record_terminator=TERMINATORS[link.record_terminator],
                             lenient_whitespace=link.lenient_whitespace, enq_eot_keepalive=link.enq_eot_keepalive,
                             reply_timeout=link.reply_timeout_s, receive_timeout=link.receive_timeout_s,
                             busy_wait=link.busy_wait_s, contention_wait_host=link.contention_wait_s,
                             interrupt_wait=link.interrupt_wait_s, honor_interrupt=link.honor_interrupt,
                             max_frame_bytes=link.max_frame_bytes, max_message_bytes=link.max_message_bytes,
                             max_records=link.max_records_per_message)


def host_link(link: LinkConfig) -> AstmLink:
    """The receiving end labbridge runs for a record-based instrument: E1381 (host role), raw records, or the
    Beckman Coulter AU online link (its texts are the records)."""
    if link.framing == "au":
        return au_online.AuLink(au_online.AuProfile(bcc=link.au_bcc, acknowledge=link.au_acknowledge,
                                                    receive_timeout=link.receive_timeout_s))
    if link.framing == "raw":
        return raw.RawLink(raw.RawProfile(record_terminator=TERMINATORS[link.record_terminator],
                                          idle_timeout=link.raw_idle_timeout_s, max_record_bytes=link.max_frame_bytes,
                                          max_message_bytes=link.max_message_bytes,
                                          max_records=link.max_records_per_message))
    return e1381.E1381Link(e1381.Role.HOST, link_profile(link))


def records_from_raw(link: LinkConfig, raw_bytes: bytes) -> tuple[bytes, ...] | None:
    """The records of one stored message (its bytes as received), read with the instrument's dialect."""
    receiver = host_link(link)
    lead = bytes([e1381.ENQ]) if isinstance(receiver, e1381.E1381Link) else b""
    receiver.receive_data(lead + raw_bytes, 0.0)
    if not isinstance(receiver, e1381.E1381Link):
        receiver.connection_lost()
    while (event := receiver.next_event()) is not None:
        if isinstance(event, e1381.MessageReceived):
            return event.records
    return None
