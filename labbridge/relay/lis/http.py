"""An HTTP(S) destination: each outbox item is POSTed as canonical JSON (aiohttp client).

2xx: delivered. 4xx: the LIS refuses this item (dead letter with the body's reason), except 408 and
429 which mean "later". 5xx, timeouts and connection failures: retried with backoff. Every request
carries the item's stable control ID as ``Idempotency-Key``, so a resend after a lost answer can be
recognised by the receiver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from labbridge.errors import TransientLinkError
from labbridge.redact import redact

RETRY_LATER = frozenset({408, 425, 429})
MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    reason: str


def _reason(body: str) -> str:
    text = body.strip()
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("reason", "error", "message", "detail"):
            if isinstance(data.get(key), str):
                text = data[key]
                break
    return text[:MAX_REASON]


class HttpSender:
    def __init__(self, url: str, *, timeout: float, headers: dict[str, str] | None = None,
                 verify_tls: bool = True) -> None:
        self.url = url
        self.shown = redact(url)  # in errors (kept in the store, shown by the API) and logs: no password
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.verify_tls = verify_tls
        self._session: aiohttp.ClientSession | None = None

    async def post(self, body: bytes, idempotency_key: str) -> HttpAnswer:
        """POST one item. Returns 2xx and refusing 4xx answers; raises TransientLinkError for the rest."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {**self.headers, "Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        try:
            async with self._session.post(self.url, data=body, headers=headers,
                                          ssl=self.verify_tls) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except TimeoutError:
            raise TransientLinkError(f"no answer from {self.shown} within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise TransientLinkError(f"cannot POST to {self.shown}: {type(exc).__name__}: {redact(str(exc))}") from None
        if 200 <= status < 300 or (400 <= status < 500 and status not in RETRY_LATER):
            return HttpAnswer(status, _reason(text))
        raise TransientLinkError(f"{self.shown} answered HTTP {status}: {_reason(text)[:200]}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
