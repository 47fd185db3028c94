"""The store alone under writes that never pause: each commit's latency, when the slow ones come, and the WAL.

    .venv/bin/python -m benchmarks.commit_tail                       # 16 committers, 3 s
    .venv/bin/python -m benchmarks.commit_tail --committers 10 --seconds 5

The real store (its writer process, its background checkpoints), on disk in a temporary folder; each
committer commits chem20 messages (20 results, the raw message) one after the other, as a link's sink
does, so the writer never waits for work. Printed: commit latency p50/p90/p99/max, the slow commits
(over --slow-ms) grouped by when they came (a group: all committers stalled together), the WAL file's
size (its high-water mark, in 4 KiB frames) and how many times the WAL started again from its beginning
(its header's salt changes; sampled every 10 ms, so a count, not every restart). Runs on an older
checkout too (as a file, with PYTHONPATH on that tree), to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import tempfile
import time
from pathlib import Path

from benchmarks.common import message_factory
from labbridge import aio
from labbridge.driver import AstmDriver, DecodeContext, load_driver
from labbridge.store.db import Store

FRAME_BYTES = 4096 + 24  # a WAL frame: its header and one page


def wal_salt(wal: Path) -> int | None:
    """Salt-1 of a WAL file's header: SQLite changes it each time the WAL starts again from its beginning."""
    try:
        with wal.open("rb") as f:
            header = f.read(32)
    except OSError:
        return None
    return struct.unpack(">I", header[16:20])[0] if len(header) == 32 else None


async def _run(folder: Path, committers: int, seconds: float, slow_s: float) -> dict[str, object]:
    driver = load_driver("astm-generic")
    assert isinstance(driver, AstmDriver)
    ctx = DecodeContext(instrument="bench")
    factories = [message_factory("chem20", sample_prefix=f"C{i}-") for i in range(committers)]
    wal = folder / "store.db-wal"
    latencies: list[tuple[float, float]] = []  # (seconds, started at)
    salts: set[int] = set()
    high = 0
    async with Store(folder / "store.db") as store:
        t0 = time.monotonic()
        stop = t0 + seconds

        async def commit_forever(i: int) -> None:
            while time.monotonic() < stop:
                message = factories[i].next()
                results = driver.decode(message.records, ctx).results
                started = time.monotonic()
                await store.commit_message(instrument="bench", protocol="astm", raw=b"\r".join(message.records),
                                           received_at=time.time(), results=results, destinations=["lis"])
                latencies.append((time.monotonic() - started, started - t0))

        async def watch() -> None:
            nonlocal high
            while time.monotonic() < stop:
                if (salt := wal_salt(wal)) is not None:
                    salts.add(salt)
                high = max(high, wal.stat().st_size // FRAME_BYTES if wal.exists() else 0)
                await asyncio.sleep(0.01)

        await asyncio.gather(watch(), *(commit_forever(i) for i in range(committers)))
    ordered = sorted(s for s, _ in latencies)
    n = len(ordered)
    slow = sorted(at for s, at in latencies if s > slow_s)
    groups: list[list[float]] = []
    for at in slow:
        if groups and at - groups[-1][-1] < 0.05:
            groups[-1].append(at)
        else:
            groups.append([at])
    return {"commits": n, "commits/s": n / seconds, "p50_ms": 1000 * statistics.median(ordered),
            "p90_ms": 1000 * ordered[int(0.90 * n)], "p99_ms": 1000 * ordered[int(0.99 * n)],
            "max_ms": 1000 * ordered[-1], "slow": len(slow), "slow_groups": [(round(g[0], 2), len(g)) for g in groups],
            "wal_high_frames": high, "wal_restarts_seen": max(0, len(salts) - 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--committers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--slow-ms", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lb-commit-tail-") as tmp:
        out = aio.run(_run(Path(tmp), args.committers, args.seconds, args.slow_ms / 1000))
    print(f"== the store alone, {args.committers} committers that never pause, {args.seconds:g} s")
    print(f"  commits {out['commits']} ({out['commits/s']:.0f}/s); latency p50 {out['p50_ms']:.2f}, "
          f"p90 {out['p90_ms']:.2f}, p99 {out['p99_ms']:.2f}, max {out['max_ms']:.2f} ms")
    print(f"  slow (> {args.slow_ms:g} ms): {out['slow']}; when (s from the start, how many together): "
          f"{out['slow_groups']}")
    print(f"  WAL high-water {out['wal_high_frames']} frames; started again {out['wal_restarts_seen']} times (seen)")


if __name__ == "__main__":
    main()
