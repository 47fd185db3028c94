"""Bad input on one link (junk floods, half frames then silence or a hang-up) never stops that link for longer
than the protocol's own recovery, and never affects another link."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import run
from tests.integration.helpers import eventually, running_lab


def test_junk_floods_and_half_frames_on_one_link_leave_the_other_untouched(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=2) as lab:
            clean = lab.analyzer("an-0", messages=8)
            stop = asyncio.Event()
            clean_task = asyncio.create_task(clean.run(stop))
            bound = lab.daemon.runners["an-1"].bound
            assert bound is not None
            # A junk flood (2 MB, no ENQ), then a transfer with junk frames, then half a frame and a hang-up.
            _, writer = await asyncio.open_connection(*bound)
            for _ in range(32):
                writer.write(bytes(range(6, 256)) * 256)
                await writer.drain()
            writer.write(b"\x05" + b"\x02" + b"\xff" * 70_000 + b"\x03" + b"\x0200\r\n" * 50)
            writer.write(b"\x02" + b"1H|\\^&|||half")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(clean_task, 30)
            assert len(clean.acked) == 8 * 5
            # The abused link recovers at once for a well-behaved analyzer.
            started = time.monotonic()
            recovered = lab.analyzer("an-1", messages=2)
            await asyncio.wait_for(recovered.run(stop), 30)
            assert time.monotonic() - started < 10
            await eventually(lambda: set(clean.acked) | set(recovered.acked) <= lab.lis.delivered,
                             what="both links' results at the LIS")
            bad = lab.daemon.runners["an-1"].health.counters
            good = lab.daemon.runners["an-0"].health.counters
            assert bad.junk_bytes > 2_000_000 and bad.frames_rejected > 0
            assert good.junk_bytes == 0 and good.frames_rejected == 0 and good.incomplete_transmissions == 0
            assert lab.lis.duplicates == 0

    run(body())


def test_tcp_links_acknowledge_frames_on_the_fast_path_and_a_fault_there_stays_on_its_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On TCP, intermediate frames are taken from the transport's callback (AstmSession._take) and the
    results arrive whole; an error raised there ends that connection like an error in its task (logged,
    the analyzer retransmits on its next connection), while the other link goes on."""
    from labbridge.links.astm import AstmSession

    taken: dict[str, int] = {}
    failing = {"an-1": 1}  # the first chunk an-1 sends on the fast path raises
    original = AstmSession._take

    def counting(self: AstmSession, data: bytes) -> None:
        taken[self.health.id] = taken.get(self.health.id, 0) + 1
        if failing.get(self.health.id):
            failing[self.health.id] -= 1
            original(self, data)
            raise RuntimeError("a bug in the fast path")
        original(self, data)

    async def body() -> None:
        async with running_lab(tmp_path, instruments=2) as lab:
            # Wrapped around the fast path the way the session installs it (a bound method at run()).
            monkeypatch.setattr(AstmSession, "_take", counting)
            good = lab.analyzer("an-0", messages=3, tests=8)
            hit = lab.analyzer("an-1", messages=2, tests=8)
            stop = asyncio.Event()
            await asyncio.wait_for(asyncio.gather(good.run(stop), hit.run(stop)), 60)
            assert len(good.acked) == 3 * 8 and len(hit.acked) == 2 * 8
            await eventually(lambda: set(good.acked) | set(hit.acked) <= lab.lis.delivered, what="all results")
            assert lab.lis.duplicates == 0
            # Frames went through the fast path: a message of 8 results is ~10 frames, few task wake-ups.
            assert taken["an-0"] >= 3 * 8
            assert lab.daemon.runners["an-1"].health.counters.connections >= 2  # the fault cost a connection

    run(body(), timeout=90)
