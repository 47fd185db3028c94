"""Reading the fleet from a broker: one snapshot of the retained topics, or following them (read-only).

The fleet view subscribes to ``labbridge/+/...`` (docs/mqtt.md) and publishes nothing; it opens no store.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from labbridge.backoff import backoff_delay
from labbridge.fleet import topics
from labbridge.fleet.broker import Broker
from labbridge.fleet.view import FleetView

SETTLE_S = 0.5  # a snapshot ends this long after the last retained message...
SNAPSHOT_MAX_S = 5.0  # ...or after this long at most
KEEPALIVE_S = 30


class BrokerUnreachable(Exception):
    """The broker did not take the fleet view's connection."""


def _bytes(payload: object) -> bytes:
    """A message's payload as bytes (aiomqtt gives bytes from the wire; None for an empty one)."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


def _identifier() -> str:
    return f"labbridge-fleet-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"


async def snapshot(broker: Broker, *, settle_s: float = SETTLE_S, max_s: float = SNAPSHOT_MAX_S) -> FleetView:
    """The fleet as the broker holds it now (its retained messages). Raises BrokerUnreachable."""
    import aiomqtt

    view = FleetView()
    try:
        async with broker.client(identifier=_identifier(), keepalive=KEEPALIVE_S) as client:
            for topic in (*topics.SUBSCRIPTIONS, topics.BRIDGE_STATES):
                await client.subscribe(topic, qos=topics.QOS)
            deadline = time.monotonic() + max_s
            messages = aiter(client.messages)
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = await asyncio.wait_for(anext(messages), min(settle_s, left))
                except TimeoutError:
                    break
                view.apply(str(message.topic), _bytes(message.payload), retained=bool(message.retain),
                           now=time.time())
    except aiomqtt.MqttError as exc:
        raise BrokerUnreachable(f"{broker.url}: {exc}") from None
    return view


async def follow(broker: Broker, view: FleetView, *, on_state: Callable[[str, str], None] | None = None) -> None:
    """Keep ``view`` up to date from the broker until cancelled, reconnecting with capped backoff and jitter.

    ``on_state(state, reason)``: the view's own link to the broker (``up``, ``down``)."""
    import aiomqtt

    attempt = 0
    while True:
        try:
            async with broker.client(identifier=_identifier(), keepalive=KEEPALIVE_S) as client:
                attempt = 0
                for topic in (*topics.SUBSCRIPTIONS, topics.BRIDGE_STATES):
                    await client.subscribe(topic, qos=topics.QOS)
                if on_state:
                    on_state("up", f"reading {broker.url}")
                async for message in client.messages:
                    view.apply(str(message.topic), _bytes(message.payload), retained=bool(message.retain),
                               now=time.time())
        except aiomqtt.MqttError as exc:
            if on_state:
                on_state("down", f"{broker.url}: {exc}; retrying")
        delay = backoff_delay(attempt, 1.0, 30.0)
        attempt += 1
        await asyncio.sleep(delay)
