"""The ceiling: a bare asyncio ASTM/TCP server that only ACKs (ENQ and every frame), stores nothing.

No checksum check, no decoding, no durability: what Python's asyncio on this machine can do per message
with the E1381 exchange itself. Handles frames split over reads and several frames in one read.

    .venv/bin/python -m benchmarks.bare_server --port 0 --ready FILE
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import cast

from benchmarks.common import raise_nofile, receiver_arguments
from labbridge import aio

ACK = b"\x06"


class AckOnly(asyncio.Protocol):
    """One ACK per ENQ and per frame end (LF closes ``STX FN text ETX C1 C2 CR LF``; neither ENQ nor LF
    occurs in frame text), counted with C-speed scans, so a frame split over reads is ACKed once."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        acks = data.count(b"\x05") + data.count(b"\n")
        if acks and self.transport is not None:
            self.transport.write(ACK * acks)


async def serve(host: str, port: int, ready: Path | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(AckOnly, host, port, backlog=4096)
    bound = server.sockets[0].getsockname()
    if ready is not None:
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": bound[0], "port": bound[1]}), encoding="utf-8")
        tmp.replace(ready)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    args = receiver_arguments(__doc__)
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        aio.run(serve(args.host, args.port, args.ready))


if __name__ == "__main__":
    main()
