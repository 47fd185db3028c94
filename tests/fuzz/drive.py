"""Driving a sans-I/O link core with outside bytes as its shell would, for the fuzz properties.

:func:`drive` feeds the bytes in the given chunks at a fixed time, answers every held message at once (as a
shell whose commit succeeds), then closes the connection; it returns what came out: the events (with runs of
junk counts merged, since how junk is counted per read is not part of a protocol), the bytes the link sent,
and the largest internal buffer seen. Whatever the chunking, a link must give the same result.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from labbridge.protocols import e1381, mllp
from labbridge.protocols.hl7_ack import Hl7Received
from labbridge.protocols.link import Answer, Link, Outcome

ANSWER = Answer(Outcome.ACCEPTED, datetime(2026, 12, 3, 9, 0, tzinfo=UTC))
HELD = (e1381.MessageReceived, Hl7Received)
JUNK = (e1381.JunkDiscarded, mllp.MllpJunk)


@dataclass
class Driven:
    events: list[Any]
    sent: bytes
    max_buffer: int


def _buffered(link: object) -> int:
    """Bytes a core holds in its buffers (each core's own attributes; bounded whatever the input)."""
    total = 0
    for name in ("_inbuf", "_raw", "_waiting", "_buf"):
        value = getattr(link, name, None)
        if isinstance(value, bytes | bytearray):
            total += len(value)
    decoder = getattr(link, "_decoder", None)
    if decoder is not None:
        total += _buffered(decoder)
    return total


def _merged(events: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for event in events:
        if isinstance(event, JUNK) and out and type(out[-1]) is type(event):
            out[-1] = type(event)(out[-1].count + event.count)
        else:
            out.append(event)
    return out


def drive(make: Callable[[], Link[Any]], chunks: Sequence[bytes], now: float = 0.0) -> Driven:
    link = make()
    events: list[Any] = []
    sent = bytearray()
    biggest = 0

    def drain() -> None:
        while (event := link.next_event()) is not None:
            events.append(event)
            if isinstance(event, HELD):
                link.accept_message(now, ANSWER)
        sent.extend(link.data_to_send())

    drain()  # what the link has to say at once (a queued message's ENQ)
    for chunk in chunks:
        link.receive_data(chunk, now)
        biggest = max(biggest, _buffered(link))
        drain()
    link.connection_lost()
    drain()
    return Driven(_merged(events), bytes(sent), biggest)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted)."""
    if not data:
        return []
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def stream(tokens: Sequence[bytes], frames: st.SearchStrategy[bytes] | None = None) -> st.SearchStrategy[bytes]:
    """Bytes made of a protocol's tokens, well-formed pieces (``frames``) and random bytes, in any order."""
    parts: list[st.SearchStrategy[bytes]] = [st.sampled_from(list(tokens)), st.binary(max_size=24)]
    if frames is not None:
        parts.append(frames)
    return st.lists(st.one_of(*parts), max_size=24).map(b"".join)


cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for a fuzz property: ``examples`` in the suite (quick), ``FUZZ_EXAMPLES`` to run longer."""
    return settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", examples)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
