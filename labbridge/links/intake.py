"""From a received message to what the store keeps: decode with the driver, then apply the instrument's
policies (expected sender, then the result mapping of :mod:`labbridge.mapping`: test codes, units,
qualitative values, drop, hold, unmapped codes), the same for ASTM and HL7 drivers. Pure: no I/O, so
the same code serves a live link and
an operator's retry, which re-decodes the stored raw bytes with the current driver and config.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field, replace

from labbridge.config import InstrumentConfig, LinkConfig
from labbridge.driver import AstmDriver, DecodeContext, Hl7Driver, load_driver
from labbridge.errors import DecodeError, DriverError
from labbridge.links.dialect import records_from_raw
from labbridge.mapping import ResultMapper
from labbridge.model import Decoded, HostQuery, Result
from labbridge.outbox import DEAD_UNKNOWN_SENDER, DEAD_UNMAPPED, Held
from labbridge.protocols.hl7_parse import Hl7Message, parse_message


@dataclass(slots=True)
class Intake:
    results: list[Result] = field(default_factory=list)
    queries: list[HostQuery] = field(default_factory=list)  # host queries, answered once the message is stored
    held: list[Held] = field(default_factory=list)
    held_results: list[Result] = field(default_factory=list)  # stored, kept from the LIS until released
    hold_reason: str = ""
    dropped: int = 0  # results the mapping drops (instrument-internal codes)
    # On a shared listener: the instrument the message was attributed to (None: the session's own).
    instrument: str | None = None
    error: str | None = None  # the driver could not decode (kept in the store, never logged)
    log_reason: str | None = None  # the same, in words labbridge controls (safe for the logs)


def decode_context(cfg: InstrumentConfig) -> DecodeContext:
    return DecodeContext(instrument=cfg.id, timezone=zoneinfo.ZoneInfo(cfg.timezone), test_map=cfg.lis_test_map(),
                         encoding=cfg.link.encoding, test_code_component=cfg.test_code_component,
                         test_name_component=cfg.test_name_component)


class InstrumentDecoder:
    """One instrument's driver and policies, applied to one message."""

    def __init__(self, driver: AstmDriver | Hl7Driver, context: DecodeContext, *, unmapped_tests: str = "pass",
                 expected_sender: str = "", link: LinkConfig | None = None,
                 mapper: ResultMapper | None = None) -> None:
        self.driver = driver
        self.context = context
        self.unmapped_tests = unmapped_tests
        self.expected_sender = expected_sender
        self.link = link or LinkConfig()
        self.mapper = mapper or ResultMapper(test_map=context.test_map, unmapped_tests=unmapped_tests)

    @classmethod
    def from_config(cls, cfg: InstrumentConfig, driver: AstmDriver | Hl7Driver,
                    context: DecodeContext | None = None) -> InstrumentDecoder:
        return cls(driver, context or decode_context(cfg), unmapped_tests=cfg.unmapped_tests,
                   expected_sender=cfg.expected_sender, link=cfg.link, mapper=ResultMapper.from_config(cfg))

    def decode_records(self, records: tuple[bytes, ...] | list[bytes]) -> Intake:
        if not isinstance(self.driver, AstmDriver):
            return Intake(error=f"driver {self.driver.name} decodes HL7, not ASTM records",
                          log_reason="protocol mismatch")
        try:
            decoded = self.driver.decode(records, self.context)
        except Exception as exc:  # a driver bug or an undecodable message: kept raw, dead-lettered
            reason = exc.reason if isinstance(exc, DecodeError) else type(exc).__name__
            return Intake(error=f"{type(exc).__name__}: {exc}", log_reason=reason)
        return self.apply(decoded)

    def decode_hl7(self, message: Hl7Message) -> Intake:
        if not isinstance(self.driver, Hl7Driver):
            return Intake(error=f"driver {self.driver.name} decodes ASTM, not HL7", log_reason="protocol mismatch")
        try:
            decoded = self.driver.decode(message, self.context)
        except Exception as exc:  # a driver bug or an undecodable message: kept raw, dead-lettered
            reason = exc.reason if isinstance(exc, DecodeError) else f"internal error ({type(exc).__name__})"
            return Intake(error=f"{type(exc).__name__}: {exc}", log_reason=reason)
        return self.apply(decoded)

    def apply(self, decoded: Decoded) -> Intake:
        """The instrument's policies on what its driver decoded: expected sender, then the mapping."""
        out = Intake(queries=list(decoded.queries))
        expected = self.expected_sender
        instrument = self.context.instrument
        if expected and decoded.sender != expected:
            out.held.append(Held(DEAD_UNKNOWN_SENDER,
                                 f"unknown sender {decoded.sender!r} (instrument {instrument} expects "
                                 f"{expected!r}): check which analyzer is connected, or expected_sender"))
            return out
        mapped = self.mapper.apply(decoded.results)
        if mapped.unmapped:
            out.held.append(Held(DEAD_UNMAPPED,
                                 f"unmapped test code(s) {', '.join(mapped.unmapped)} from instrument {instrument}: "
                                 "add them to its test_map, then retry this dead letter"))
        out.results = mapped.results
        out.held_results = mapped.held
        out.dropped = mapped.dropped
        if mapped.held:
            codes = ", ".join(sorted({r.instrument_test_code for r in mapped.held}))
            out.hold_reason = (f"held by configuration (test code(s) {codes} of instrument {instrument}): "
                               "release with `labbridge outbox retry`")
        return out

    def decode_raw(self, protocol: str, raw: bytes) -> Intake:
        """Re-decode a stored message from its raw bytes (as received, framing included)."""
        if protocol == "hl7":
            try:
                message = parse_message(raw, default_charset=self.link.encoding)
            except Exception as exc:
                return Intake(error=f"the stored raw bytes are not one HL7 message: {exc}",
                              log_reason="raw bytes not HL7")
            return self.decode_hl7(message)
        if protocol != "astm":
            return Intake(error=f"cannot re-decode {protocol!r} messages", log_reason="protocol mismatch")
        records = records_from_raw(self.link, raw)
        if records is None:
            return Intake(error=f"the stored raw bytes do not hold one whole message ({self.link.framing} framing)",
                          log_reason="raw bytes incomplete")
        return self.decode_records(records)


def load_instrument_driver(cfg: InstrumentConfig) -> tuple[AstmDriver | Hl7Driver | None, str | None]:
    """The instrument's driver, or why it cannot be used: it does not load, or it speaks another protocol
    than the link's framing carries. The daemon and the offline operator client load drivers this way."""
    try:
        driver = load_driver(cfg.driver)
    except DriverError as exc:
        return None, str(exc)
    framing = cfg.link.framing
    if isinstance(driver, AstmDriver) and (framing == "au" or driver.link_defaults.get("framing") == "au"):
        # The Beckman Coulter AU online link: its texts only mean something to a driver made for them.
        if framing == "au" and driver.link_defaults.get("framing") == "au":
            return driver, None
        if framing == "au":
            return None, (f"driver {cfg.driver!r} reads ASTM records, not Beckman Coulter AU online texts: "
                          'use driver = "beckman-au" on this link, or set [instruments.link] framing = "e1381"')
        return None, (f"driver {cfg.driver!r} reads Beckman Coulter AU online texts but the link's framing is "
                      f'{framing!r}: set [instruments.link] framing = "au"')
    if isinstance(driver, AstmDriver):
        if framing in ("e1381", "raw"):
            return driver, None
        return None, (f"driver {cfg.driver!r} speaks ASTM but the link's framing is {framing!r}: "
                      'set [instruments.link] framing = "e1381"')
    if isinstance(driver, Hl7Driver):
        if framing == "mllp":
            return driver, None
        return None, (f"driver {cfg.driver!r} speaks HL7 but the link's framing is {framing!r}: "
                      'set [instruments.link] framing = "mllp"')
    return None, f"driver {cfg.driver!r} is neither an ASTM nor an HL7 driver"


def instrument_decoder(cfg: InstrumentConfig, driver: AstmDriver | Hl7Driver, *,
                       host_name: str = "labbridge") -> InstrumentDecoder:
    """The decoder a message from this instrument goes through, live or re-decoded from the store."""
    return InstrumentDecoder.from_config(cfg, driver, replace(decode_context(cfg), host_name=host_name))
