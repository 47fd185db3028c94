"""Retiring a link's connections when a reload removes or changes it: each finishes its transfer first.

The runner (or listener) refuses new connections first (its ``retiring`` flag); then every open
connection is asked to close once no transfer is under way (:meth:`LinkSession.close_when_idle`: the
message in hand is committed and acknowledged, an E1381 transfer runs to its EOT). Connections still
busy after the timeout are aborted: what they had not finished was never acknowledged, so the analyzer
sends it again to the new link (nothing acknowledged is lost either way).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from labbridge.links.session import LinkSession

# After an abort, the time left for the session to hand its last events over (its commit in flight included).
ABORT_GRACE_S = 5.0


async def finish_and_close(sessions: Iterable[LinkSession[Any]], grace_s: float) -> int:
    """Close each of ``sessions`` once its transfer is finished, within ``grace_s`` seconds; returns how many
    had to be aborted because they were still busy then."""
    open_ = [s for s in sessions if not s.closed.done()]
    for session in open_:
        session.close_when_idle()
    if not open_:
        return 0
    _, busy = await asyncio.wait([s.closed for s in open_], timeout=grace_s)
    late = [s for s in open_ if s.closed in busy]
    for session in late:
        session.abort()
    if late:
        await asyncio.wait([s.closed for s in late], timeout=ABORT_GRACE_S)
    return len(late)
