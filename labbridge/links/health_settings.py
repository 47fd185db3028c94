"""An instrument's health settings from its configuration (the judging itself is in labbridge.health)."""

from __future__ import annotations

from typing import Any

from labbridge.config import InstrumentConfig
from labbridge.health.traffic import ConfiguredTraffic, Window, parse_days, parse_hours


def configured_traffic(cfg: InstrumentConfig) -> ConfiguredTraffic | None:
    """``expect_message_every`` as the judge reads it (None: learned from the store)."""
    every = cfg.expect_message_every
    if every is None:
        return None
    if isinstance(every, float | int):
        return ConfiguredTraffic.every(float(every))
    windows = []
    for w in every:
        start, end = parse_hours(w.hours)
        label = w.days if w.hours == "00:00-24:00" else f"{w.days} {w.hours}"
        windows.append(Window(parse_days(w.days), start, end, w.every_s, label))
    return ConfiguredTraffic(tuple(windows))


def health_settings(cfg: InstrumentConfig) -> dict[str, Any]:
    """Keyword arguments of :class:`~labbridge.health.instrument.InstrumentHealth` from ``cfg``."""
    return {"timezone": cfg.timezone, "framing": cfg.link.framing, "expected": configured_traffic(cfg),
            "undecoded_after_s": cfg.undecoded_after_s,
            # the dialect, to diagnose bytes that never frame (issue 20, part 6)
            "frame_numbers": cfg.link.frame_numbers, "checksums": cfg.link.checksums,
            "record_terminator": cfg.link.record_terminator}
