"""Per-instrument result mapping: what the lab's LIS calls what the analyzer sent.

Applied in one place (:class:`labbridge.links.intake.InstrumentDecoder`) to the output of every driver,
ASTM and HL7 alike, on a live link and when an operator re-decodes a stored message. Pure: no I/O.

For each result, by its instrument test code:

1. the action: ``[tests.CODE] action``, else ``drop_tests`` / ``hold_tests``, else send;
2. a dropped result goes no further (the raw message is still stored);
3. with ``unmapped_tests = "dead-letter"``, a code with no LIS code is held back as ``unmapped``
   (naming the code), never silently sent or lost;
4. the LIS test code (``[tests.CODE] code``, else ``test_map``, else what the driver gave);
5. the unit (``[tests.CODE] units``, else ``unit_map``) and the qualitative value
   (``[tests.CODE] values``, else ``value_map``; matched ignoring case and surrounding blanks);
6. a held result is stored with its outbox item in the dead letters (kind ``held``) until released.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from labbridge.config import InstrumentConfig, TestMapping
from labbridge.model import Result


def _fold(table: Mapping[str, str]) -> dict[str, str]:
    return {key.strip().casefold(): value for key, value in table.items()}


@dataclass(slots=True)
class Mapped:
    """What the mapping made of one message's results."""

    results: list[Result] = field(default_factory=list)  # to send
    held: list[Result] = field(default_factory=list)  # stored, not sent until released
    dropped: int = 0
    unmapped: list[str] = field(default_factory=list)  # instrument codes with no LIS code (sorted, unique)


class ResultMapper:
    def __init__(self, *, test_map: Mapping[str, str] | None = None, unit_map: Mapping[str, str] | None = None,
                 value_map: Mapping[str, str] | None = None, drop_tests: Iterable[str] = (),
                 hold_tests: Iterable[str] = (), tests: Mapping[str, TestMapping] | None = None,
                 unmapped_tests: str = "pass") -> None:
        tests = dict(tests or {})
        self.test_map = dict(test_map or {})
        self.test_map.update({code: t.code for code, t in tests.items() if t.code})
        self.unit_map = dict(unit_map or {})
        self.value_map = _fold(value_map or {})
        self.actions: dict[str, str] = dict.fromkeys(drop_tests, "drop")
        self.actions.update(dict.fromkeys(hold_tests, "hold"))
        self.actions.update({code: t.action for code, t in tests.items() if t.action is not None})
        self.test_units = {code: dict(t.units) for code, t in tests.items() if t.units}
        self.test_values = {code: _fold(t.values) for code, t in tests.items() if t.values}
        self.unmapped_tests = unmapped_tests
        # Nothing configured that changes a code, unit or value: results pass as they are (no lookups per result).
        self._identity = not (self.test_map or self.unit_map or self.value_map or self.test_units or self.test_values)
        # ... and nothing dropped, held or refused as unmapped: the message's results go as they are, in one step.
        self._passes_all = self._identity and not self.actions and unmapped_tests != "dead-letter"

    @classmethod
    def from_config(cls, cfg: InstrumentConfig) -> ResultMapper:
        return cls(test_map=cfg.test_map, unit_map=cfg.unit_map, value_map=cfg.value_map,
                   drop_tests=cfg.drop_tests, hold_tests=cfg.hold_tests, tests=cfg.tests,
                   unmapped_tests=cfg.unmapped_tests)

    def map_one(self, result: Result) -> Result:
        """The LIS form of one result (code, unit, qualitative value); actions are not applied here."""
        code = result.instrument_test_code
        units = self.test_units.get(code, {}).get(result.units, self.unit_map.get(result.units, result.units))
        folded = result.value.strip().casefold()
        value = self.test_values.get(code, {}).get(folded, self.value_map.get(folded, result.value))
        test_code = self.test_map.get(code, result.test_code)
        if (units, value, test_code) == (result.units, result.value, result.test_code):
            return result
        return dataclasses.replace(result, test_code=test_code, units=units, value=value)

    def apply(self, results: Iterable[Result]) -> Mapped:
        if self._passes_all:
            return Mapped(results=list(results))
        out = Mapped()
        unmapped: set[str] = set()
        for result in results:
            code = result.instrument_test_code
            action = self.actions.get(code, "send")
            if action == "drop":
                out.dropped += 1
                continue
            if self.unmapped_tests == "dead-letter" and code not in self.test_map:
                unmapped.add(code)
                continue
            mapped = result if self._identity else self.map_one(result)
            (out.held if action == "hold" else out.results).append(mapped)
        out.unmapped = sorted(unmapped)
        return out
