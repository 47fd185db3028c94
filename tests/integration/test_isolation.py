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
    """Intermediate frames are acknowledged from ``data_received`` (LinkSession's fast path): the session's task
    runs only for what must wait (a complete message to commit). An error raised on that path ends that
    connection only (logged, the analyzer retransmits on its next connection), while the other link goes on."""
    from labbridge.links.astm import AstmRole
    from labbridge.links.session import LinkSession
    from labbridge.protocols import e1381

    chunks: dict[str, int] = {}
    tasks: dict[str, int] = {}
    failing = {"an-1": 1}  # the first frame an-1 gets accepted raises on the fast path
    on_event, data_received, run_task = AstmRole.on_event, LinkSession.data_received, LinkSession._run

    def counting_on_event(self: AstmRole, event: e1381.Event) -> bool:
        if failing.get(self.health.id) and isinstance(event, e1381.FrameAccepted):
            failing[self.health.id] -= 1
            raise RuntimeError("a bug on the fast path")
        return on_event(self, event)

    def counting_data(self: LinkSession[e1381.Event], data: bytes) -> None:
        chunks[self.health.id] = chunks.get(self.health.id, 0) + 1
        data_received(self, data)

    async def counting_run(self: LinkSession[e1381.Event]) -> None:
        tasks[self.health.id] = tasks.get(self.health.id, 0) + 1
        await run_task(self)

    monkeypatch.setattr(AstmRole, "on_event", counting_on_event)
    monkeypatch.setattr(LinkSession, "data_received", counting_data)
    monkeypatch.setattr(LinkSession, "_run", counting_run)

    async def body() -> None:
        async with running_lab(tmp_path, instruments=2) as lab:
            good = lab.analyzer("an-0", messages=3, tests=8)
            hit = lab.analyzer("an-1", messages=2, tests=8)
            stop = asyncio.Event()
            await asyncio.wait_for(asyncio.gather(good.run(stop), hit.run(stop)), 60)
            assert len(good.acked) == 3 * 8 and len(hit.acked) == 2 * 8
            await eventually(lambda: set(good.acked) | set(hit.acked) <= lab.lis.delivered, what="all results")
            assert lab.lis.duplicates == 0
            # A message of 8 results is ~10 frames, each its own chunk; the task ran about once per message.
            assert chunks["an-0"] >= 3 * 10
            assert tasks["an-0"] <= chunks["an-0"] / 3
            assert failing["an-1"] == 0
            assert lab.daemon.runners["an-1"].health.counters.connections >= 2  # the fault cost a connection
            assert lab.daemon.runners["an-0"].health.counters.connections == 1

    run(body(), timeout=90)
