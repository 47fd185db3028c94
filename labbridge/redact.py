"""Credentials never leave labbridge: a password (or a lone token) in a URL's user-info is replaced by ``***``
wherever a URL is shown: the API (/api/outbox), logs, errors kept in the store, ``check-config``.

``https://lab:s3cret@lis.example/results`` is shown as ``https://lab:***@lis.example/results``, and
``https://TOKEN@lis.example/`` as ``https://***@lis.example/``. The configured URL itself is used, unchanged,
only to connect.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

# scheme://user-info@ where user-info is "user:password" or a lone "token" (no '/', '@' or blank inside).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/@\s]+)@")


def _hide(match: re.Match[str]) -> str:
    user, sep, _secret = match["info"].partition(":")
    return f"{match['scheme']}{user}:***@" if sep else f"{match['scheme']}***@"


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    return _USERINFO.sub(_hide, text) if "@" in text else text


def redact_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: credentials in URLs in any string value of a log event are replaced by ``***``."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value:
            event[key] = redact(value)
    return event
