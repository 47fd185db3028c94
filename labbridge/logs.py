"""Structured logging (structlog).

JSON lines when stderr is not a terminal, readable columns when it is. Log events carry instrument IDs,
counts, states and reasons, never sample IDs, patient IDs or names: callers pass only those, and
:func:`_drop_patient_keys` removes the keys that could hold patient data should one slip in.

Levels say what a line means: ``info`` for the normal course of things, ``warning`` for what an operator
should look at (a link down or failed, a refused connection or block), ``error`` for what loses service (the
store failing). Repeated warnings and errors are rate-limited (:class:`RepeatLimiter`): the same event from
the same source is written at most :data:`BURST` times per :data:`WINDOW_S`; the rest are counted, and the
next line of that event after the window (or :func:`flush_repeats`, called by the daemon's health task)
says how many were left out (``repeated``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

from labbridge.redact import redact_event

# Keys that may carry patient-identifying data; they never reach a log line.
PATIENT_KEYS = frozenset({"sample_id", "patient_id", "patient_name", "name", "value", "raw", "records",
                          "payload", "dob", "birth_date"})


def _drop_patient_keys(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in PATIENT_KEYS.intersection(event):
        event[key] = "<redacted>"
    return event


# At most BURST lines of one event from one source per WINDOW_S; the rest counted and reported.
BURST = 5
WINDOW_S = 60.0
# What tells the sources of one event apart (never a patient field; a peer's port is left out).
SOURCE_KEYS = ("instrument", "destination", "listener", "peer_host", "kind", "state")
_RATE_LIMITED = frozenset({"warning", "warn", "error", "exception", "critical", "fatal"})


@dataclass
class _Window:
    started: float
    written: int = 0
    left_out: int = 0


class RepeatLimiter:
    """A structlog processor: warnings and errors of one event from one source, at most ``burst`` per window."""

    def __init__(self, burst: int = BURST, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._windows: dict[tuple[Any, ...], _Window] = {}
        self._lock = threading.Lock()  # the store's checkpointer logs from its own thread
        self.left_out_total = 0

    def _key(self, method: str, event: MutableMapping[str, Any]) -> tuple[Any, ...]:
        return (method, event.get("event"), *(str(event.get(k, "")) for k in SOURCE_KEYS))

    def __call__(self, _logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if method not in _RATE_LIMITED:
            return event
        now = self.clock()
        with self._lock:
            key = self._key(method, event)
            window = self._windows.get(key)
            if window is None or now - window.started >= self.window_s:
                if window is not None and window.left_out:
                    event["repeated"] = window.left_out  # left out since the last line of this event
                self._windows[key] = _Window(started=now, written=1)
                if len(self._windows) > 10_000:  # bounded: forget the oldest windows
                    for old in sorted(self._windows, key=lambda k: self._windows[k].started)[:1_000]:
                        del self._windows[old]
                return event
            if window.written < self.burst:
                window.written += 1
                return event
            window.left_out += 1
            self.left_out_total += 1
        raise structlog.DropEvent

    def expired(self) -> list[tuple[tuple[Any, ...], int]]:
        """Windows past their time that left lines out (their keys and counts), forgotten once returned."""
        now = self.clock()
        with self._lock:
            done = [(k, w.left_out) for k, w in self._windows.items()
                    if now - w.started >= self.window_s and w.left_out]
            for key, _ in done:
                del self._windows[key]
        return done


_limiter = RepeatLimiter()


def flush_repeats() -> None:
    """Write one line per event whose repeats were left out and whose window has ended (``repeated`` = count)."""
    log = structlog.get_logger("labbridge.logs")
    for key, count in _limiter.expired():
        method, event = key[0], key[1]
        sources = {k: v for k, v in zip(SOURCE_KEYS, key[2:], strict=True) if v}
        log.info("repeated_lines_left_out", of_event=event, of_level=method, repeated=count, **sources)


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Set up structlog once for the process."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_patient_keys,
            _limiter,
            structlog.processors.format_exc_info,
            redact_event,  # credentials in URLs (labbridge.redact), after the traceback is text
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
