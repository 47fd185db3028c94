"""Offline decoding of a capture: ``labbridge replay``, the driver test kit and IT's end-to-end check.

The capture is read as it comes from the field by :mod:`labbridge.capture` (log lines, control tokens,
hex dumps, missing ENQ/EOT, damaged frame endings, checksums...; every deviation and repair reported).
What it returns goes through the daemon's own parts: the E1381 receiver (:class:`E1381Link`, in the
instrument's dialect) or the raw-records link, the MLLP decoder and the HL7 parser, then the instrument's
driver and policies (:class:`labbridge.links.intake.InstrumentDecoder`: test, unit and value mapping,
expected sender), with no network and no store. :func:`render` gives, for a LIS destination, the bytes the
relay would send for those results (the relay's own rendering).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import zoneinfo
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from labbridge.capture import Capture, Deviation, Stream, frame_astm, hl7_messages, read_capture
from labbridge.config import Config, Destination, InstrumentConfig, LinkConfig, MllpDestination
from labbridge.driver import AstmDriver, DecodeContext, Driver, Hl7Driver
from labbridge.errors import LabbridgeError
from labbridge.links.dialect import link_profile
from labbridge.links.intake import InstrumentDecoder, Intake, instrument_decoder
from labbridge.model import Decoded, Result
from labbridge.outbox import OutboxItem
from labbridge.protocols import e1381, raw
from labbridge.protocols.hl7_parse import Hl7ParseError, parse_message


@dataclass(frozen=True, slots=True)
class ReplayedMessage:
    index: int
    records: tuple[bytes, ...]  # ASTM records, or HL7 segments
    decoded: Decoded | None  # after the instrument's mapping (results it holds or drops are not here)
    error: str | None
    stream: str = ""  # the capture's direction it came from ("" for a one-direction capture)
    held: tuple[str, ...] = ()  # why the instrument's policies keep results from the LIS (unmapped, sender)
    warnings: tuple[str, ...] = ()  # what to check (the driver's warnings, one test code for a sample's results)


@dataclass(frozen=True, slots=True)
class ReplayProblem:
    """Something in the capture that is not a message: an incomplete transmission, a frame the receiver refused."""

    kind: str
    detail: str
    where: str = ""


@dataclass(slots=True)
class Replay:
    capture: Capture
    items: list[ReplayedMessage | ReplayProblem] = field(default_factory=list)
    deviations: list[Deviation] = field(default_factory=list)  # the capture's and each stream's

    @property
    def messages(self) -> list[ReplayedMessage]:
        return [i for i in self.items if isinstance(i, ReplayedMessage)]

    @property
    def decoded(self) -> list[ReplayedMessage]:
        return [m for m in self.messages if m.decoded is not None]


def driver_link(driver: Driver) -> LinkConfig:
    """The link settings of an instrument that sets nothing but its driver (the driver's link defaults)."""
    keys = set(LinkConfig.model_fields)
    return LinkConfig.model_validate({k: v for k, v in driver.link_defaults.items() if k in keys})


def shared_test_codes(results: Sequence[Result]) -> list[str]:
    """A warning per sample whose several results all carry one test code (the code is not where the driver
    looks: e.g. R-3 component 4 holds a letter and the code is in component 1)."""
    by_sample: dict[str, list[Result]] = {}
    for r in results:
        by_sample.setdefault(r.sample_id, []).append(r)
    out = []
    for group in by_sample.values():
        codes = {r.instrument_test_code for r in group}
        if len(group) > 1 and len(codes) == 1:
            out.append(f"its {len(group)} results for one sample all have test code {next(iter(codes))!r}: the "
                       "analyzer may put the code elsewhere (for the generic ASTM driver, set the instrument's "
                       "test_code_component; see docs/drivers.md)")
    return out


def _message(index: int, records: tuple[bytes, ...], intake: Intake, stream: str,
             driver_warnings: Sequence[str] = ()) -> ReplayedMessage:
    if intake.error is not None:
        return ReplayedMessage(index, records, None, intake.error, stream)
    decoded = Decoded(results=list(intake.results), queries=list(intake.queries))
    held = tuple(h.reason for h in intake.held) + ((intake.hold_reason,) if intake.hold_reason else ())
    warnings = tuple(driver_warnings) + tuple(shared_test_codes([*intake.results, *intake.held_results]))
    return ReplayedMessage(index, records, decoded, None, stream, held, warnings)


FEED_BYTES = 4096  # what the receiver is given at a time
_FRAMING_MISMATCH = {
    "raw": "records without E1381 framing, and the instrument's link.framing is e1381: if the analyzer sends them "
           "so (not only the log), the daemon decodes nothing: set link.framing = \"raw\"",
    "e1381": "E1381 frames, and the instrument's link.framing is raw: the daemon decodes nothing: set "
             "link.framing = \"e1381\"",
}


class _Replayer:
    def __init__(self, decoder: InstrumentDecoder, link: LinkConfig, strict: bool, configured: bool) -> None:
        self.decoder = decoder
        self.link = link
        self.strict = strict
        self.configured = configured  # the link is an instrument's from a config (not the driver's defaults)
        self.index = 0

    def astm(self, stream: Stream, out: Replay) -> None:
        dialect = link_profile(self.link)  # strict_frame_numbers: said by frame_astm, not enforced (see there)
        profile = dataclasses.replace(dialect, strict_frame_numbers=False)
        ready = frame_astm(stream, dialect, repair=not self.strict)
        out.deviations += ready.deviations
        if self.configured and ready.framing != self.link.framing and ready.data:
            out.deviations.append(Deviation("accepted", "framing", _FRAMING_MISMATCH[ready.framing],
                                            f"stream '{stream.label}'" if stream.label else "capture"))
        receiver: e1381.E1381Link | raw.RawLink
        if ready.framing == "raw":
            receiver = raw.RawLink(raw.RawProfile(record_terminator=b"\r"))
        else:
            receiver = e1381.E1381Link(e1381.Role.HOST, profile)
        label = f"stream '{stream.label}'" if stream.label else ""
        # In pieces, as from a socket: a receiver holding a message for its commit keeps at most one frame's
        # worth of what follows (the rest would be discarded as junk).
        for start in range(0, len(ready.data), FEED_BYTES):
            receiver.receive_data(ready.data[start:start + FEED_BYTES], 0.0)
            self._drain(receiver, stream.label, label, out)
        receiver.connection_lost()
        self._drain(receiver, stream.label, label, out)

    def _drain(self, receiver: e1381.E1381Link | raw.RawLink, stream: str, where: str, out: Replay) -> None:
        while (event := receiver.next_event()) is not None:
            if isinstance(event, e1381.MessageReceived):
                self.index += 1
                intake = self.decoder.decode_records(event.records)
                out.items.append(_message(self.index, event.records, intake, stream))
                receiver.accept_message(0.0)
            elif isinstance(event, e1381.FrameRejected) and not event.by_peer:
                out.items.append(ReplayProblem("frame rejected", event.reason, where))
            elif isinstance(event, e1381.IncompleteMessage):
                out.items.append(ReplayProblem("incomplete transmission",
                                               f"{len(event.records)} record(s) that never became a message "
                                               f"({event.reason})", where))
            elif isinstance(event, e1381.JunkDiscarded):
                out.deviations.append(Deviation("ignored", "bytes outside any message",
                                                "records before an H or after an L", where or "capture",
                                                event.count))

    def au(self, stream: Stream, out: Replay) -> None:
        """A Beckman Coulter AU capture (framing = "au"): its texts read by the daemon's own AU receiver."""
        where = f"stream '{stream.label}'" if stream.label else ""
        for item in _au_texts(bytes(stream.data)):
            if isinstance(item, ReplayProblem):
                out.items.append(ReplayProblem(item.kind, item.detail, where))
                continue
            self.index += 1
            out.items.append(_message(self.index, item, self.decoder.decode_records(item), stream.label))

    def hl7(self, stream: Stream, out: Replay) -> None:
        messages, deviations = hl7_messages(stream, repair=not self.strict)
        out.deviations += deviations
        driver = self.decoder.driver
        assert isinstance(driver, Hl7Driver)
        for payload in messages:
            segments = tuple(s for s in payload.split(b"\r") if s)
            try:
                message = parse_message(payload, default_charset=self.link.encoding)
            except Hl7ParseError as exc:
                self.index += 1
                out.items.append(ReplayedMessage(self.index, segments, None, f"not a readable HL7 message: {exc}",
                                                 stream.label))
                continue
            where = f"stream '{stream.label}'" if stream.label else "capture"
            if message.message_type.startswith("ACK") or message.message_type == "ORL^O34":
                # an acknowledgement (the LIS's, or the analyzer's answer to orders), logged with the traffic
                out.deviations.append(Deviation("ignored", "acknowledgements", f"an HL7 {message.message_type}",
                                                where, len(payload)))
                continue
            if message.message_type == "QBP^Q11" and driver.supports_orders:
                out.deviations.append(Deviation("ignored", "host queries", "a QBP^Q11: the daemon answers it from "
                                                "its orders; replay decodes results", where, len(payload)))
                continue
            self.index += 1
            if message.message_type not in driver.message_types:
                out.items.append(ReplayedMessage(self.index, segments, None, f"message type {message.message_type} "
                                                 "is not one this driver decodes", stream.label))
                continue
            out.items.append(_message(self.index, segments, self.decoder.decode_hl7(message), stream.label))


def replay_capture(driver: Driver, capture: bytes, *, instrument: InstrumentConfig | None = None,
                   instrument_id: str = "replay", timezone: str = "UTC", encoding: str = "latin-1",
                   test_map: dict[str, str] | None = None, strict: bool = False) -> Replay:
    """Decode a capture as the daemon would. With ``instrument`` (from a config) its settings and policies
    apply (time zone, link dialect, test/unit/value mapping, expected sender); else the driver's defaults.
    ``strict``: repair nothing (a frame that needs a repair is rejected); every deviation is still listed."""
    if not isinstance(driver, AstmDriver | Hl7Driver):
        raise LabbridgeError(f"driver {driver.name!r} speaks {driver.protocol}, which replay cannot read")
    if instrument is not None:
        decoder = instrument_decoder(instrument, driver)
        link = instrument.link
    else:
        link = driver_link(driver).model_copy(update={"encoding": encoding})
        context = DecodeContext(instrument=instrument_id, timezone=zoneinfo.ZoneInfo(timezone),
                                test_map=test_map or {}, encoding=encoding)
        decoder = InstrumentDecoder(driver, context, link=link)
    read = read_capture(capture)
    out = Replay(read, deviations=list(read.deviations))
    replayer = _Replayer(decoder, link, strict, configured=instrument is not None)
    for stream in read.streams:
        if isinstance(driver, Hl7Driver):
            replayer.hl7(stream, out)
        elif link.framing == "au":
            replayer.au(stream, out)
        else:
            replayer.astm(stream, out)
    return out


def replay(driver: Driver, capture: bytes, *, instrument: str = "replay", timezone: str = "UTC",
           encoding: str = "latin-1", test_map: dict[str, str] | None = None, strict: bool = False,
           ) -> Iterator[ReplayedMessage | ReplayProblem]:
    """The messages and problems of a capture (see :func:`replay_capture` for the deviations too)."""
    yield from replay_capture(driver, capture, instrument_id=instrument, timezone=timezone, encoding=encoding,
                              test_map=test_map, strict=strict).items


# ---- what a LIS destination would receive ----------------------------------------------------------------------

RENDER_FORMATS = ("oru", "oul", "astm", "json")


def destination_format(dest: Destination) -> str:
    """What a destination receives: ``oru`` (HL7 ORU^R01), ``oul`` (OUL^R22), ``astm`` or ``json``."""
    if isinstance(dest, MllpDestination):
        return "oul" if dest.message_type == "OUL^R22" else "oru"
    if dest.kind == "http":
        return "json"
    fmt = getattr(dest, "format", "hl7")
    return "oru" if fmt == "hl7" else str(fmt)


@dataclass(frozen=True, slots=True)
class Rendered:
    payloads: list[bytes]
    duplicates: int  # results already rendered earlier in the capture: the store keeps (and sends) one
    notes: list[str]  # what differs from the live path (a validating instrument's hold)


def render(result: Replay, config: Config, instrument: InstrumentConfig, dest: Destination, *,
           received_at: float | None = None) -> Rendered:
    """The payloads ``dest`` would receive for the decoded messages: one per sample of each message, as the
    store queues them (a result already stored is not queued again; control ID from the results' content),
    rendered by the relay's own code."""
    from labbridge.campaign.stages import holds
    from labbridge.relay.relay import Relay
    from labbridge.store.db import Store
    from labbridge.store.sql import control_id_for, group_key_for, is_backlog

    at = time.time() if received_at is None else received_at
    if isinstance(dest, MllpDestination) and dest.tls is not None:
        dest = dest.model_copy(update={"tls": None})  # TLS carries the bytes; it does not change them
    relay = Relay(dest, Store(":memory:"), asyncio.Event())  # never run: its render() only
    test = holds(instrument.stage) and dest.validating == "send-test"
    notes = []
    if holds(instrument.stage):
        notes.append(f"instrument {instrument.id} is at stage {instrument.stage!r} in the config: "
                     + (f"{dest.id} receives these flagged as test results" if test else
                        f"{dest.id} receives these only after the campaign sign-off"))
    payloads: list[bytes] = []
    seen: set[str] = set()
    duplicates = 0
    for message in result.decoded:
        assert message.decoded is not None
        groups: dict[str, list[Result]] = {}
        for r in message.decoded.results:
            key = r.idempotency_key()
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            # as the relay reads it back from the store (its JSON); message_id stays None: no message is stored
            groups.setdefault(r.sample_id, []).append(Result.from_json(r.to_json()))
        for group in groups.values():
            item = OutboxItem(id=0, destination=dest.id, control_id=control_id_for(group_key_for(group)),
                              instrument=instrument.id, message_id=message.index, attempts=0, created_at=at,
                              results=tuple(group), backlog=is_backlog(group, at, config.backlog.older_than_s),
                              test=test)
            payloads.append(relay.render(item))
    return Rendered(payloads, duplicates, notes)


__all__ = ["RENDER_FORMATS", "Rendered", "Replay", "ReplayProblem", "ReplayedMessage", "destination_format",
           "driver_link", "render", "replay", "replay_capture", "shared_test_codes"]


# ---- the summary -----------------------------------------------------------------------------------------------

SHOWN_PER_KIND = 20  # occurrences listed per kind of deviation; the rest are counted


def summary(result: Replay, *, strict: bool = False) -> list[str]:
    """What the replay did, in lines for a person: messages and results, then each repair, rejection and
    ignored span (grouped by kind, each with where), problems and warnings; with ``strict``, the verdict."""
    messages = result.messages
    decoded = result.decoded
    results = sum(len(m.decoded.results) for m in decoded if m.decoded is not None)
    queries = sum(len(m.decoded.queries) for m in decoded if m.decoded is not None)
    streams = [f"'{s.label}'" for s in result.capture.streams if s.label]
    lines = [f"replay: {len(decoded)} message(s) decoded ({results} result(s), {queries} host query(ies)), "
             f"{len(messages) - len(decoded)} not decoded; capture read as {', '.join(result.capture.form)}"
             + (f"; streams {', '.join(streams)}" if streams else "")]
    for action in ("repaired", "rejected", "ignored", "accepted"):
        found = [d for d in result.deviations if d.action == action]
        if not found:
            continue
        kinds: dict[str, list[Deviation]] = {}
        for d in found:
            kinds.setdefault(d.kind, []).append(d)
        total = sum(d.count for d in found) if action == "ignored" else len(found)
        lines.append(f"{action}: {total}{' bytes' if action == 'ignored' else ''}")
        for kind, group in kinds.items():
            size = sum(d.count for d in group) if action == "ignored" else len(group)
            lines.append(f"  {kind} ({size}{' bytes' if action == 'ignored' else ''}):")
            lines += [f"    {d.where}: {d.detail}" for d in group[:SHOWN_PER_KIND]]
            if len(group) > SHOWN_PER_KIND:
                lines.append(f"    ... and {len(group) - SHOWN_PER_KIND} more")
    problems = [i for i in result.items if isinstance(i, ReplayProblem)]
    if problems:
        lines.append(f"problems: {len(problems)}")
        lines += [f"  {p.kind}{' at ' + p.where if p.where else ''}: {p.detail}" for p in problems]
    for m in messages:
        if m.error is not None:
            lines.append(f"message {m.index}: not decoded: {m.error}")
        lines += [f"message {m.index}: held from the LIS: {reason}" for reason in m.held]
        lines += [f"message {m.index}: warning: {w}" for w in m.warnings]
    if not decoded:
        lines.append("nothing decoded: check the driver (--driver) and the capture's form (docs/drivers.md, replay)")
    if strict:
        deviations = len(result.deviations) + len(problems)
        lines.append("strict: the capture conforms" if not deviations else
                     f"strict: {deviations} deviation(s): the capture does not conform")
    return lines


def conforms(result: Replay) -> bool:
    """Nothing to repair, reject or ignore, and no problem (what ``--strict`` requires)."""
    return not result.deviations and not any(isinstance(i, ReplayProblem) for i in result.items)


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
