"""From a received message to what the store keeps: decode with the driver, then apply the instrument's
policies (unmapped test codes, expected sender). Pure: no I/O, so the same code serves a live link and
an operator's retry, which re-decodes the stored raw bytes with the current driver and config.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field

from labbridge.config import InstrumentConfig, LinkConfig
from labbridge.driver import AstmDriver, DecodeContext
from labbridge.errors import DecodeError
from labbridge.model import HostQuery, Result
from labbridge.runtime.links import records_from_raw
from labbridge.runtime.store import DEAD_UNKNOWN_SENDER, DEAD_UNMAPPED, Held


@dataclass(slots=True)
class Intake:
    results: list[Result] = field(default_factory=list)
    queries: list[HostQuery] = field(default_factory=list)  # host queries, answered once the message is stored
    held: list[Held] = field(default_factory=list)
    error: str | None = None  # the driver could not decode (kept in the store, never logged)
    log_reason: str | None = None  # the same, in words labbridge controls (safe for the logs)


def decode_context(cfg: InstrumentConfig) -> DecodeContext:
    return DecodeContext(instrument=cfg.id, timezone=zoneinfo.ZoneInfo(cfg.timezone), test_map=dict(cfg.test_map),
                         encoding=cfg.link.encoding)


class InstrumentDecoder:
    """One instrument's driver and policies, applied to one message."""

    def __init__(self, driver: AstmDriver, context: DecodeContext, *, unmapped_tests: str = "pass",
                 expected_sender: str = "", link: LinkConfig | None = None) -> None:
        self.driver = driver
        self.context = context
        self.unmapped_tests = unmapped_tests
        self.expected_sender = expected_sender
        self.link = link or LinkConfig()

    @classmethod
    def from_config(cls, cfg: InstrumentConfig, driver: AstmDriver,
                    context: DecodeContext | None = None) -> InstrumentDecoder:
        return cls(driver, context or decode_context(cfg), unmapped_tests=cfg.unmapped_tests,
                   expected_sender=cfg.expected_sender, link=cfg.link)

    def decode_records(self, records: tuple[bytes, ...] | list[bytes]) -> Intake:
        try:
            decoded = self.driver.decode(records, self.context)
        except Exception as exc:  # a driver bug or an undecodable message: kept raw, dead-lettered
            reason = exc.reason if isinstance(exc, DecodeError) else type(exc).__name__
            return Intake(error=f"{type(exc).__name__}: {exc}", log_reason=reason)
        out = Intake(queries=list(decoded.queries))
        expected = self.expected_sender
        instrument = self.context.instrument
        if expected and decoded.sender != expected:
            out.held.append(Held(DEAD_UNKNOWN_SENDER,
                                 f"unknown sender {decoded.sender!r} (instrument {instrument} expects "
                                 f"{expected!r}): check which analyzer is connected, or expected_sender"))
            return out
        if self.unmapped_tests == "dead-letter":
            unmapped = sorted({r.instrument_test_code for r in decoded.results
                               if r.instrument_test_code not in self.context.test_map})
            if unmapped:
                out.held.append(Held(DEAD_UNMAPPED,
                                     f"unmapped test code(s) {', '.join(unmapped)} from instrument {instrument}: "
                                     "add them to its test_map, then retry this dead letter"))
            out.results = [r for r in decoded.results if r.instrument_test_code in self.context.test_map]
        else:
            out.results = list(decoded.results)
        return out

    def decode_raw(self, protocol: str, raw: bytes) -> Intake:
        """Re-decode a stored message from its raw bytes (as received, framing included)."""
        if protocol != "astm":
            return Intake(error=f"cannot re-decode {protocol!r} messages on an ASTM instrument",
                          log_reason="protocol mismatch")
        records = records_from_raw(self.link, raw)
        if records is None:
            return Intake(error=f"the stored raw bytes do not hold one whole message ({self.link.framing} framing)",
                          log_reason="raw bytes incomplete")
        return self.decode_records(records)

