"""Offline decoding of a capture: the driver test kit's ``labbridge replay``.

A capture is what an analyzer sent, as bytes. For an ASTM driver: either an E1381-framed stream (ENQ,
frames with checksums, EOT; what a serial or TCP trace shows) or bare records, one per line (CR, LF or
CRLF). Framed captures go through the same E1381 receiver the daemon runs (checksums and frame numbers
are checked). For an HL7 driver: an MLLP stream (VT ... FS CR blocks) or bare messages, segments one per
line, each message starting with MSH; they go through the daemon's MLLP framer and HL7 parser. Every
whole message is decoded by the driver, with no network and no store.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass

from labbridge.driver import AstmDriver, DecodeContext, Driver, Hl7Driver
from labbridge.errors import DecodeError, LabbridgeError
from labbridge.model import Decoded
from labbridge.protocols import e1381, mllp
from labbridge.protocols.hl7_parse import Hl7ParseError, parse_message

_FRAMING_BYTES = (e1381.ENQ, e1381.STX)


@dataclass(frozen=True, slots=True)
class ReplayedMessage:
    index: int
    records: tuple[bytes, ...]  # ASTM records, or HL7 segments
    decoded: Decoded | None
    error: str | None


@dataclass(frozen=True, slots=True)
class ReplayProblem:
    """Something in the capture that is not a message: a rejected frame, an incomplete transmission."""

    kind: str
    detail: str


def split_messages(capture: bytes, profile: e1381.LinkProfile | None = None,
                   ) -> Iterator[tuple[bytes, ...] | ReplayProblem]:
    """Whole messages (records without terminators) from a capture, and what went wrong on the way.

    ``profile``: the link dialect of a framed capture (default: the standard, any first frame number).
    """
    if any(b in capture for b in _FRAMING_BYTES):
        link = e1381.E1381Link(e1381.Role.HOST, profile or e1381.LinkProfile(strict_frame_numbers=False))
        link.receive_data(capture, 0.0)
        while True:
            event = link.next_event()
            if event is None:
                break
            if isinstance(event, e1381.MessageReceived):
                yield event.records
                link.accept_message(0.0)
            elif isinstance(event, e1381.FrameRejected) and not event.by_peer:
                yield ReplayProblem("frame rejected", event.reason)
            elif isinstance(event, e1381.IncompleteMessage):
                yield ReplayProblem("incomplete transmission", event.reason)
        link.connection_lost()
        for event in link.events():
            if isinstance(event, e1381.IncompleteMessage):
                yield ReplayProblem("incomplete transmission", f"capture ends before the L record ({event.reason})")
        return
    records: list[bytes] = []
    for line in capture.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        record = line.strip()
        if not record:
            continue
        if record[:1] in (b"H", b"h") and records:
            yield ReplayProblem("incomplete transmission", "a new H record before the L record")
            records = []
        records.append(record)
        if record[:1] in (b"L", b"l"):
            yield tuple(records)
            records = []
    if records:
        yield ReplayProblem("incomplete transmission", "capture ends before the L record")


def split_hl7_messages(capture: bytes) -> Iterator[bytes | ReplayProblem]:
    """Whole HL7 messages (segments CR-separated) from an MLLP stream or from bare segments."""
    if mllp.SB in capture:
        decoder = mllp.MllpDecoder(allow_missing_cr=True)
        for event in decoder.receive_data(capture):
            if isinstance(event, mllp.MllpMessage):
                yield event.payload
            elif isinstance(event, mllp.MllpOversize):
                yield ReplayProblem("oversize block", f"an MLLP block larger than {event.limit} bytes")
        if decoder.pending():
            yield ReplayProblem("incomplete transmission", "capture ends inside an MLLP block")
        return
    segments: list[bytes] = []
    for line in capture.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        segment = line.strip()
        if not segment:
            continue
        if segment.startswith(b"MSH") and segments:
            yield b"\r".join(segments) + b"\r"
            segments = []
        segments.append(segment)
    if segments:
        yield b"\r".join(segments) + b"\r"


def _replay_hl7(driver: Hl7Driver, capture: bytes, context: DecodeContext,
                encoding: str) -> Iterator[ReplayedMessage | ReplayProblem]:
    index = 0
    for item in split_hl7_messages(capture):
        if isinstance(item, ReplayProblem):
            yield item
            continue
        index += 1
        segments = tuple(s for s in item.split(b"\r") if s)
        try:
            message = parse_message(item, default_charset=encoding)
        except Hl7ParseError as exc:
            yield ReplayedMessage(index, segments, None, f"not a readable HL7 message: {exc}")
            continue
        if message.message_type not in driver.message_types:
            yield ReplayedMessage(index, segments, None,
                                  f"message type {message.message_type} is not one this driver decodes")
            continue
        try:
            yield ReplayedMessage(index, segments, driver.decode(message, context), None)
        except DecodeError as exc:
            yield ReplayedMessage(index, segments, None, str(exc))
        except Exception as exc:  # a driver bug is reported like any decode failure, with its type
            yield ReplayedMessage(index, segments, None, f"{type(exc).__name__}: {exc}")


def _driver_link_profile(driver: Driver) -> e1381.LinkProfile:
    """The E1381 dialect of the driver's link defaults (e.g. MAGLUMI: no frame numbers, no checksums)."""
    from labbridge.config import LinkConfig
    from labbridge.links.dialect import link_profile

    keys = set(LinkConfig.model_fields) - {"framing", "encoding"}
    link = LinkConfig.model_validate({"strict_frame_numbers": False,
                                      **{k: v for k, v in driver.link_defaults.items() if k in keys}})
    return link_profile(link)


def replay(driver: Driver, capture: bytes, *, instrument: str = "replay", timezone: str = "UTC",
           encoding: str = "latin-1", test_map: dict[str, str] | None = None,
           ) -> Iterator[ReplayedMessage | ReplayProblem]:
    context = DecodeContext(instrument=instrument, timezone=zoneinfo.ZoneInfo(timezone),
                            test_map=test_map or {}, encoding=encoding)
    if isinstance(driver, Hl7Driver):
        yield from _replay_hl7(driver, capture, context, encoding)
        return
    if not isinstance(driver, AstmDriver):
        raise LabbridgeError(f"driver {driver.name!r} speaks {driver.protocol}, which replay cannot read")
    index = 0
    messages = (_au_texts(capture) if driver.link_defaults.get("framing") == "au"
                else split_messages(capture, _driver_link_profile(driver)))
    for item in messages:
        if isinstance(item, ReplayProblem):
            yield item
            continue
        index += 1
        try:
            yield ReplayedMessage(index, item, driver.decode(item, context), None)
        except DecodeError as exc:
            yield ReplayedMessage(index, item, None, str(exc))
        except Exception as exc:  # a driver bug is reported like any decode failure, with its type
            yield ReplayedMessage(index, item, None, f"{type(exc).__name__}: {exc}")


# ---- Beckman Coulter AU online texts (framing = "au") ---------------------------------------------------------


def _au_texts(capture: bytes) -> Iterator[tuple[bytes, ...] | ReplayProblem]:
    """The texts of an AU capture, read by the daemon's own AU receiver; refused blocks and unfinished texts
    are reported. Blocks carry a BCC (the AU's default) unless every end code is followed directly by the next
    block's STX or the end of the capture (an AU set without BCC)."""
    from labbridge.protocols import au_online

    ends = [i for i, byte in enumerate(capture) if byte in (au_online.ETX, au_online.ETB)]
    bcc = any(i + 1 < len(capture) and capture[i + 1] != au_online.STX for i in ends)
    for item in au_online.split_texts(capture, au_online.AuProfile(bcc=bcc)):
        if isinstance(item, e1381.FrameRejected):
            yield ReplayProblem("frame rejected", item.reason)
        elif isinstance(item, e1381.IncompleteMessage):
            yield ReplayProblem("incomplete transmission", item.reason)
        else:
            yield item
