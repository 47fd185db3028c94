"""Checked API inputs: every value a handler reads from a query string, a path or a JSON body goes through
here, and a bad one is a 400 with ``{"error": "<name> must be ...", "parameter": "<name>"}``, never a 500, a
silent clamp or a query that reads the whole store.

* limits: integers from 1 to :data:`MAX_LIMIT` (1000), a default when absent;
* ids (a path's ``{id}``, a body's ``ids``): positive integers within SQLite's 64-bit range, at most
  :data:`MAX_IDS` in one request;
* numbers of seconds (``older_than_s``): finite and not negative (NaN, Infinity, -1 are refused);
* choices (``state``): one of the values named in the error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

MAX_LIMIT = 1000
MAX_IDS = 1000
INT64_MAX = 2**63 - 1  # SQLite's INTEGER
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")  # ASCII digits only (int() also takes other scripts' digits)


def bad(name: str, expected: str) -> web.HTTPBadRequest:
    """The 400 for one parameter (raise it)."""
    return web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be {expected}", "parameter": name}),
                              content_type="application/json")


def _integer(raw: str, name: str, expected: str) -> int:
    if not _INTEGER.fullmatch(raw.strip()):
        raise bad(name, expected)
    return int(raw)


def limit(query: Mapping[str, str], name: str = "limit", *, default: int = 200, cap: int = MAX_LIMIT) -> int:
    """A page size from the query string: 1..``cap``, ``default`` when absent."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    expected = f"an integer from 1 to {cap}"
    value = _integer(raw, name, expected)
    if not 1 <= value <= cap:
        raise bad(name, expected)
    return value


def bounded_int(query: Mapping[str, str], name: str, *, default: int, low: int, high: int) -> int:
    """An integer from the query string within ``low``..``high``, ``default`` when absent."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    expected = f"an integer from {low} to {high}"
    value = _integer(raw, name, expected)
    if not low <= value <= high:
        raise bad(name, expected)
    return value


def path_id(request: web.Request, name: str = "id") -> int:
    """A record's id from the path: a positive 64-bit integer."""
    expected = f"a positive integer (at most {INT64_MAX})"
    value = _integer(request.match_info[name], name, expected)
    if not 1 <= value <= INT64_MAX:
        raise bad(name, expected)
    return value


def ids(body: Mapping[str, Any], name: str = "ids") -> list[int] | None:
    """A list of record ids from a JSON body (None when absent): 1..MAX_IDS positive 64-bit integers."""
    value = body.get(name)
    if value is None:
        return None
    expected = f"a list of 1 to {MAX_IDS} positive integers (each at most {INT64_MAX})"
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_IDS or not all(
            isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= INT64_MAX for i in value):
        raise bad(name, expected)
    return value


def seconds(body: Mapping[str, Any], name: str) -> float | None:
    """A duration from a JSON body (None when absent): a finite number of seconds, not negative."""
    value = body.get(name)
    if value is None:
        return None
    expected = "a number of seconds, finite and not negative"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(name, expected)
    try:
        number = float(value)
    except OverflowError:
        raise bad(name, expected) from None
    if not math.isfinite(number) or number < 0:
        raise bad(name, expected)
    return number


def choice(value: Any, name: str, options: Sequence[str], *, optional: bool = True) -> str | None:
    """One of ``options`` (None when absent and ``optional``)."""
    if value is None or value == "":
        if optional:
            return None
        raise bad(name, f"one of {', '.join(options)}")
    if not isinstance(value, str) or value not in options:
        raise bad(name, f"one of {', '.join(options)}")
    return value


def text(body: Mapping[str, Any], name: str, *, max_length: int = 1000) -> str:
    """A string from a JSON body ("" when absent), at most ``max_length`` characters."""
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > max_length:
        raise bad(name, f"a string of at most {max_length} characters")
    return value
