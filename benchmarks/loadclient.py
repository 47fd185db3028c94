"""An ASTM E1381 load client: N analyzers over TCP against any ASTM receiver (labbridge or a peer).

Each connection plays the instrument: ENQ, waits for ACK, sends one frame at a time and waits for each
frame's ACK (NAK: the same frame again, up to 6 attempts as LIS1-A says), then EOT, and at once the next
message: as fast as the protocol allows (or one message every ``--interval`` seconds). Messages are E1394
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
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import message_factory, raise_nofile
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


async def _reply(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        while True:
            b = await reader.readexactly(1)
            if b in (ACK, NAK, EOT, ENQ):
                return b


async def run_link(host: str, port: int, messages: list[Prepared], *, interval: float = 0.0,
                   start: asyncio.Event | None = None) -> LinkStats:
    stats = LinkStats(f"{host}:{port}")
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        stats.error = f"connect: {exc}"
        return stats
    try:
        if start is not None:
            await start.wait()
        for msg in messages:
            began = time.monotonic()
            for _ in range(MAX_ATTEMPTS):
                writer.write(ENQ)
                reply = await _reply(reader)
                if reply == ACK:
                    break
                await asyncio.sleep(0.05)  # busy (NAK) or contention: ask again soon (bench: no 10 s wait)
            else:
                raise ConnectionError("receiver never accepted ENQ")
            last = len(msg.frames) - 1
            sent_at = 0.0
            for i, frame in enumerate(msg.frames):
                for _ in range(MAX_ATTEMPTS):
                    writer.write(frame)
                    if i == last:
                        sent_at = time.monotonic()
                    reply = await _reply(reader)
                    if reply in (ACK, EOT):
                        break
                    stats.naks += 1
                else:
                    raise ConnectionError("frame refused 6 times")
            stats.times[msg.sample] = (sent_at, time.monotonic())
            stats.acked += 1
            stats.results_acked += msg.results
            writer.write(EOT)
            if interval:
                await asyncio.sleep(max(0.0, began + interval - time.monotonic()))
        await writer.drain()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        stats.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return stats


async def run_load(targets: list[tuple[str, int]], *, connections: int, messages: int, panel: str = "chem20",
                   interval: float = 0.0, seed: int = 1, connect_limit: int = 200) -> dict[str, Any]:
    """Open every connection, then start them all at once; return a summary with per-sample times."""
    plans = [prepare(panel, f"an{i}", messages, seed + i) for i in range(connections)]
    start = asyncio.Event()
    gate = asyncio.Semaphore(connect_limit)

    async def one(i: int) -> LinkStats:
        host, port = targets[i % len(targets)]
        async with gate:
            task = asyncio.ensure_future(run_link(host, port, plans[i], interval=interval, start=start))
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
    parser.add_argument("--out", type=Path, help="write the full summary (with per-sample times) here")
    args = parser.parse_args(argv)
    targets = list(args.target)
    if args.targets_json:
        ready = json.loads(args.targets_json.read_text(encoding="utf-8"))
        targets += [(v["host"], v["port"]) for v in ready["instruments"].values() if v]
    if not targets:
        parser.error("give --target HOST:PORT or --targets-json FILE")
    raise_nofile(args.connections * 2 + 256)
    summary = asyncio.run(run_load(targets, connections=args.connections, messages=args.messages,
                                   panel=args.panel, interval=args.interval))
    if args.out:
        args.out.write_text(json.dumps(summary), encoding="utf-8")
    brief = {k: v for k, v in summary.items() if k not in ("samples", "results_per_sample")}
    json.dump(brief, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
