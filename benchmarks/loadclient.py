"""An ASTM E1381 load client: N analyzers over TCP against any ASTM receiver (labbridge or a peer).

Each connection plays the instrument: ENQ, waits for ACK, sends one frame at a time and waits for each
frame's ACK (NAK: the same frame again, up to 6 attempts as LIS1-A says), then EOT, and at once the next
message: as fast as the protocol allows (or one message every ``--interval`` seconds). Back to back, the
EOT and the next ENQ go in one write, so one read on the receiver holds the end of a message and the start
of the next; ``--chop N`` also writes every frame in pieces of N bytes (a frame split over reads). The
client is an ``asyncio.Protocol``: each reply byte drives the next write at once, with no future, timeout
or task per frame, so that it costs far less than the receivers it measures. Messages are E1394
(the 20-test chemistry panel or the 25-result CBC of benchmarks/common.py), generated before the clock
starts, each with its own sample ID, so a LIS on the other side can correlate them.

    .venv/bin/python -m benchmarks.loadclient --target 127.0.0.1:4001 --connections 10 --messages 100
    .venv/bin/python -m benchmarks.loadclient --targets-json ready.json ...   (labbridge's --ready-file)

With one target every connection dials it; with several, connection i dials target i mod len(targets).
Prints a JSON summary (``--out FILE`` keeps it, with each sample's send times). Time stamps are
``time.monotonic()`` (CLOCK_MONOTONIC: the same clock in every process on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from benchmarks.common import message_factory, raise_nofile
from labbridge import aio
from labbridge.protocols import e1381

ENQ, ACK, NAK, EOT = b"\x05", b"\x06", b"\x15", b"\x04"
REPLY_TIMEOUT_S = 15.0  # LIS1-A: the sender waits 15 s for a reply
MAX_ATTEMPTS = 6


@dataclass
class Prepared:
    sample: str
    results: int
    frames: list[bytes]


@dataclass
class LinkStats:
    target: str
    acked: int = 0  # messages whose last frame the receiver ACKed
    results_acked: int = 0
    naks: int = 0
    error: str | None = None
    # sample -> (monotonic time the last frame was written, time its ACK came back)
    times: dict[str, tuple[float, float]] = field(default_factory=dict)


def prepare(panel: str, instrument: str, count: int, seed: int) -> list[Prepared]:
    factory = message_factory(panel, instrument, sample_prefix=f"{instrument}-", seed=seed)
    out = []
    for _ in range(count):
        msg = factory.next()
        sample = msg.results[0][1]
        out.append(Prepared(sample, len(msg.results), e1381.build_frames(msg.records)))
    return out


class _Analyzer(asyncio.Protocol):
    """One analyzer's side of E1381 as a protocol: each reply byte drives the next write at once.

    No future, timeout context or task per frame (the client must cost far less than the receiver it
    measures): the LIS1-A reply timeout is one watchdog per connection that checks for progress.
    """

    def __init__(self, messages: list[Prepared], stats: LinkStats, interval: float, done: asyncio.Future[None],
                 chop: int = 0) -> None:
        self.messages = messages
        self.chop = chop  # >0: write each frame in pieces of this many bytes (each its own send())
        self.stats = stats
        self.interval = interval
        self.done = done
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.index = 0  # message being sent
        self.frame = -1  # -1: waiting for the reply to ENQ; else the frame awaiting its reply
        self.attempts = 0
        self.began = 0.0
        self.sent_at = 0.0
        self.progress = 0  # replies seen (the watchdog compares it between checks)
        self.awaiting = False  # a reply is due (not between messages with --interval)
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def start(self) -> None:
        self.watchdog = self.loop.call_later(REPLY_TIMEOUT_S, self._check, self.progress)
        self._enq()

    def _check(self, seen: int) -> None:
        """Every REPLY_TIMEOUT_S: fail if a reply was awaited the whole time and none came."""
        if self.done.done():
            return
        if self.progress == seen and self.awaiting:
            self._fail(TimeoutError(f"no reply within {REPLY_TIMEOUT_S:.0f} s"))
            return
        self.watchdog = self.loop.call_later(REPLY_TIMEOUT_S, self._check, self.progress)

    def _enq(self) -> None:
        if self.index >= len(self.messages):
            self._finish()
            return
        assert self.transport is not None
        self.began = time.monotonic()
        self.frame = -1
        self.awaiting = True
        self.transport.write(ENQ)

    def data_received(self, data: bytes) -> None:
        for byte in data:
            if byte in _REPLIES:
                self.progress += 1
                self._reply(byte)

    def _reply(self, byte: int) -> None:
        assert self.transport is not None
        msg = self.messages[self.index]
        if self.frame == -1:  # the reply to ENQ
            if byte == ACK[0]:
                self.frame, self.attempts = 0, 1
                self._send(msg.frames[0])
                if len(msg.frames) == 1:
                    self.sent_at = time.monotonic()
            elif byte in (NAK[0], ENQ[0]):  # busy, or contention: ask again soon (bench: no 10 s wait)
                self.attempts += 1
                if self.attempts >= MAX_ATTEMPTS:
                    self._fail(ConnectionError("receiver never accepted ENQ"))
                else:
                    self.loop.call_later(0.05, self._enq_again)
            return
        if byte == NAK[0]:
            self.stats.naks += 1
            self.attempts += 1
            if self.attempts > MAX_ATTEMPTS:
                self._fail(ConnectionError("frame refused 6 times"))
                return
            self._send(msg.frames[self.frame])
            return
        if byte == ENQ[0]:
            return
        # ACK, or EOT (a receiver interrupt is an ACK too)
        self.frame += 1
        if self.frame < len(msg.frames):
            self.attempts = 1
            self._send(msg.frames[self.frame])
            if self.frame == len(msg.frames) - 1:
                self.sent_at = time.monotonic()
            return
        self.stats.times[msg.sample] = (self.sent_at, time.monotonic())
        self.stats.acked += 1
        self.stats.results_acked += msg.results
        self.index += 1
        if self.interval:
            self.awaiting = False
            self.transport.write(EOT)
            self.loop.call_at(self.loop.time() + max(0.0, self.began + self.interval - time.monotonic()), self._enq)
        elif self.index < len(self.messages):
            # EOT and the next ENQ in one write: the receiver must split them (one read holds both)
            self.began = time.monotonic()
            self.frame = -1
            self.transport.write(EOT + ENQ)
        else:
            self.transport.write(EOT)
            self._finish()

    def _send(self, frame: bytes) -> None:
        assert self.transport is not None
        if not self.chop:
            self.transport.write(frame)
            return
        for i in range(0, len(frame), self.chop):
            self.transport.write(frame[i:i + self.chop])

    def _enq_again(self) -> None:
        if not self.done.done():
            assert self.transport is not None
            self.transport.write(ENQ)

    def _fail(self, exc: BaseException) -> None:
        if self.stats.error is None:
            self.stats.error = f"{type(exc).__name__}: {exc}"
        self._finish()

    def _finish(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._fail(exc or ConnectionError("connection closed by the receiver"))


_REPLIES = frozenset(ACK + NAK + EOT + ENQ)


async def run_link(host: str, port: int, messages: list[Prepared], *, interval: float = 0.0,
                   start: asyncio.Event | None = None, chop: int = 0) -> LinkStats:
    stats = LinkStats(f"{host}:{port}")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    try:
        transport, protocol = await loop.create_connection(
            lambda: _Analyzer(messages, stats, interval, done, chop), host, port)
    except OSError as exc:
        stats.error = f"connect: {exc}"
        return stats
    try:
        if start is not None:
            await start.wait()
        protocol.transport = transport  # some loops (uvloop) call connection_made only after returning
        protocol.start()
        await done
    finally:
        transport.close()
    return stats


async def run_load(targets: list[tuple[str, int]], *, connections: int, messages: int, panel: str = "chem20",
                   interval: float = 0.0, seed: int = 1, connect_limit: int = 200, chop: int = 0) -> dict[str, Any]:
    """Open every connection, then start them all at once; return a summary with per-sample times."""
    plans = [prepare(panel, f"an{i}", messages, seed + i) for i in range(connections)]
    start = asyncio.Event()
    gate = asyncio.Semaphore(connect_limit)

    async def one(i: int) -> LinkStats:
        host, port = targets[i % len(targets)]
        async with gate:
            task = asyncio.ensure_future(run_link(host, port, plans[i], interval=interval, start=start, chop=chop))
            await asyncio.sleep(0)
        return await task

    tasks = [asyncio.ensure_future(one(i)) for i in range(connections)]
    await asyncio.sleep(0.05 + connections * 0.001)  # let the connections open before the clock starts
    t0 = time.monotonic()
    start.set()
    links = await asyncio.gather(*tasks)
    t1 = time.monotonic()
    acked = sum(s.acked for s in links)
    results = sum(s.results_acked for s in links)
    ack_latency = sorted(b - a for s in links for a, b in s.times.values())
    return {
        "connections": connections, "messages_per_connection": messages, "panel": panel,
        "started_at": t0, "finished_at": t1, "elapsed_s": t1 - t0,
        "messages_acked": acked, "results_acked": results, "naks": sum(s.naks for s in links),
        "messages_per_s": acked / (t1 - t0) if t1 > t0 else 0.0,
        "results_per_s": results / (t1 - t0) if t1 > t0 else 0.0,
        "last_frame_ack_p50_ms": 1000 * statistics.median(ack_latency) if ack_latency else None,
        "last_frame_ack_p99_ms": 1000 * percentile(ack_latency, 0.99) if ack_latency else None,
        "errors": [s.error for s in links if s.error],
        "samples": {sample: [a, b] for s in links for sample, (a, b) in s.times.items()},
        "results_per_sample": {p.sample: p.results for plan in plans for p in plan},
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def _target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", type=_target, default=[], metavar="HOST:PORT")
    parser.add_argument("--targets-json", type=Path, help="labbridge's --ready-file: every instrument's listener")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--messages", type=int, default=100, help="messages per connection")
    parser.add_argument("--panel", choices=["chem20", "cbc25"], default="chem20")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between messages (0: back to back)")
    parser.add_argument("--chop", type=int, default=0,
                        help="write each frame in pieces of this many bytes (frames split over reads)")
    parser.add_argument("--out", type=Path, help="write the full summary (with per-sample times) here")
    args = parser.parse_args(argv)
    targets = list(args.target)
    if args.targets_json:
        ready = json.loads(args.targets_json.read_text(encoding="utf-8"))
        targets += [(v["host"], v["port"]) for v in ready["instruments"].values() if v]
    if not targets:
        parser.error("give --target HOST:PORT or --targets-json FILE")
    raise_nofile(args.connections * 2 + 256)
    summary = aio.run(run_load(targets, connections=args.connections, messages=args.messages,
                                   panel=args.panel, interval=args.interval, chop=args.chop))
    if args.out:
        args.out.write_text(json.dumps(summary), encoding="utf-8")
    brief = {k: v for k, v in summary.items() if k not in ("samples", "results_per_sample")}
    json.dump(brief, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
