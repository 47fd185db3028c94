"""Structured logging (structlog).

JSON lines when stderr is not a terminal, readable columns when it is. Log events carry instrument IDs,
counts, states and reasons, never sample IDs, patient IDs or names: callers pass only those, and
:func:`_drop_patient_keys` removes the keys that could hold patient data should one slip in.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
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
