"""systemd's watchdog (labbridge.runtime.systemd): pinged while the daemon is healthy, withheld when its store
writer is gone, so that systemd restarts the service; nothing sent outside systemd."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from labbridge.runtime import systemd
from tests.conftest import run


def received(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(256).decode())
        except BlockingIOError:
            return out


@pytest.mark.parametrize(("healthy", "pings"), [(True, True), (False, False)])
def test_the_watchdog_is_pinged_only_while_healthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   healthy: bool, pings: bool) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "100000")  # pinged every 50 ms
        monkeypatch.delenv("WATCHDOG_PID", raising=False)

        async def body() -> None:
            task = asyncio.create_task(systemd.keep_watchdog(lambda: healthy))
            await asyncio.sleep(0.3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        run(body())
        said = received(sock)
    assert ("WATCHDOG=1" in said) is pings
    assert set(said) <= {"WATCHDOG=1"}


def test_outside_systemd_nothing_is_sent_and_no_watchdog_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.watchdog_interval_s() is None
    run(asyncio.wait_for(systemd.keep_watchdog(lambda: True), 1))  # returns at once
