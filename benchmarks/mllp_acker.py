"""A minimal, fast simulated LIS for the benchmarks: MLLP in, AA out, books kept for the figures.

Why not simulators/labbridge_simulators/lis.py: that LIS parses every message with python-hl7's
``hl7.parse``, which manages about 100-300 ORU^R01 of 20 results per second on this class of machine
(see the parse figures), so it, not labbridge, would bound the end-to-end figures. This one reads MSH-10,
OBR-3 (the sample ID) and counts OBX segments with splits, and answers a plain ACK (MSA|AA|MSH-10).

For each control ID it keeps the sample, the number of results and the monotonic time of its first ACK
(and how often it came), and writes them as JSON to ``--out`` when it stops (SIGTERM). While running it
rewrites ``--progress`` (messages, distinct control IDs, results) every 100 ms.

    .venv/bin/python -m benchmarks.mllp_acker --port 0 --ready FILE --progress FILE --out FILE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, cast

from labbridge import aio

SB, EB = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE = 1 << 20


class Books:
    def __init__(self) -> None:
        self.by_control: dict[str, list[Any]] = {}  # control ID -> [sample, results, first ack time, receipts]
        self.messages = 0
        self.results = 0

    def book(self, payload: bytes) -> bytes:
        text = payload.decode("utf-8", errors="replace")
        segments = text.split("\r")
        msh = segments[0].split("|")
        control = msh[9] if len(msh) > 9 else ""
        sample = ""
        obx = 0
        for seg in segments[1:]:
            if seg.startswith("OBX"):
                obx += 1
            elif seg.startswith("OBR") and not sample:
                sample = seg.split("|")[2]
        self.messages += 1
        entry = self.by_control.get(control)
        if entry is None:
            self.by_control[control] = [sample, obx, 0.0, 1]
            self.results += obx
        else:
            entry[3] += 1
        stamp = time.strftime("%Y%m%d%H%M%S")
        return (f"MSH|^~\\&|LIS||LABBRIDGE||{stamp}||ACK|A{control}|P|2.5.1\rMSA|AA|{control}\r").encode()

    def acked(self, payload_control: str) -> None:
        entry = self.by_control.get(payload_control)
        if entry is not None and not entry[2]:
            entry[2] = time.monotonic()


class Acker(asyncio.Protocol):
    def __init__(self, books: Books) -> None:
        self.books = books
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            start = self.buf.find(SB)
            if start < 0:
                self.buf.clear()
                return
            end = self.buf.find(EB, start)
            if end < 0:
                if len(self.buf) - start > MAX_MESSAGE:
                    self.buf.clear()
                elif start:
                    del self.buf[:start]
                return
            payload = bytes(self.buf[start + 1:end])
            del self.buf[:end + 2]
            ack = self.books.book(payload)
            assert self.transport is not None
            self.transport.write(SB + ack + EB)
            control = ack.split(b"MSA|AA|", 1)[1].rstrip(b"\r").decode()
            self.books.acked(control)


async def serve(host: str, port: int, ready: Path | None, progress: Path | None, out: Path | None) -> None:
    loop = asyncio.get_running_loop()
    books = Books()
    server = await loop.create_server(lambda: Acker(books), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()
    if ready is not None:
        _write(ready, {"pid": os.getpid(), "host": bound[0], "port": bound[1]})
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        while not stop.is_set():
            if progress is not None:
                _write(progress, {"messages": books.messages, "distinct": len(books.by_control),
                                  "results": books.results, "at": time.monotonic()})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    if out is not None:
        _write(out, {"messages": books.messages, "results": books.results, "by_control": books.by_control})


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--progress", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        aio.run(serve(args.host, args.port, args.ready, args.progress, args.out))


if __name__ == "__main__":
    main()
