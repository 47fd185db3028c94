"""systemd's service notifications (``Type=notify``, ``WatchdogSec=``), without a library.

``sd_notify`` is one datagram on the unix socket systemd names in ``$NOTIFY_SOCKET`` (an abstract socket
when it starts with ``@``); outside systemd the variable is absent and every call does nothing. The daemon
says ``READY=1`` once its links and surfaces are up, ``STOPPING=1`` when it begins to stop, and, when
systemd asks for a watchdog (``$WATCHDOG_USEC``), ``WATCHDOG=1`` at half that interval from a task on the
event loop: a loop that blocks, or a store whose writer has stopped, misses the ping and systemd restarts
the service (``Restart=on-failure`` in deploy/labbridge.service).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

from labbridge.logs import get_logger

log = get_logger("labbridge.systemd")


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; ``False`` when not run by systemd or it failed."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("systemd_notify_failed", error=f"{type(exc).__name__}: {exc}")
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd asked this process for, or ``None``."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def keep_watchdog(healthy: Callable[[], bool]) -> None:
    """Ping systemd's watchdog while ``healthy()``; return at once when no watchdog is asked for."""
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        if healthy():
            notify("WATCHDOG=1")
        else:
            log.error("watchdog_withheld", reason="the store writer is not running")
        await asyncio.sleep(interval)


def stopping() -> None:
    with contextlib.suppress(Exception):
        notify("STOPPING=1")
