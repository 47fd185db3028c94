"""RS-232 through pyserial, bridged to asyncio by one reader thread per port.

Why a thread and not ``loop.add_reader`` on the serial fd: pyserial URLs (``socket://``, ``rfc2217://``,
``loop://``) have no file descriptor to watch, and pyserial's own read path (timeouts, RFC 2217 option
negotiation) is blocking by design; one small thread per port keeps every pyserial transport usable and
the event loop never blocked. A site has at most a few dozen serial ports, so a thread each is cheap.

The reader thread reads whatever has arrived (at least one byte, with a short timeout so that it notices
a close) and hands it to the loop with ``call_soon_threadsafe``; writes run in ``asyncio.to_thread``.
A read error (the USB adapter unplugged, the pseudo-terminal's other end closed) ends the stream like a
closed socket; the instrument runner reopens the port with capped backoff and jitter. Opening errors are
classified: no such device, permission denied, busy, or bad settings need a person (``PermanentLinkError``
with a reason a technician can act on); anything else is worth retrying (``TransientLinkError``).
Throughput is bounded by the line (115 200 baud is 11.5 kB/s), which bounds what the thread can queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
from typing import Any

import serial

from labbridge.config import SerialTransport
from labbridge.errors import PermanentLinkError, TransientLinkError

READ_TIMEOUT_S = 0.2  # how often the reader thread checks that it should stop
READ_MAX = 4096

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD, "M": serial.PARITY_MARK,
           "S": serial.PARITY_SPACE}


def describe(t: SerialTransport) -> str:
    """``/dev/ttyS0 9600 8N1`` (+ flow control), for the dashboard and reasons."""
    flow = " xon/xoff" if t.xonxoff else ""
    flow += " rts/cts" if t.rtscts else ""
    stop = f"{t.stopbits:g}"
    return f"serial {t.port} {t.baudrate} {t.bytesize}{t.parity}{stop}{flow}"


def _open_blocking(t: SerialTransport) -> Any:
    try:
        return serial.serial_for_url(t.port, baudrate=t.baudrate, bytesize=t.bytesize, parity=_PARITY[t.parity],
                                     stopbits=t.stopbits, xonxoff=t.xonxoff, rtscts=t.rtscts,
                                     timeout=READ_TIMEOUT_S, write_timeout=None)
    except ValueError as exc:  # settings pyserial refuses (or an unknown URL scheme)
        raise PermanentLinkError(f"cannot open {t.port}: {exc}; check the serial settings in the config") from exc
    except (serial.SerialException, OSError) as exc:
        code = getattr(exc, "errno", None)
        if code == errno.ENOENT:
            raise PermanentLinkError(f"no serial device {t.port}: check that the cable or USB-serial adapter is "
                                     "plugged in and that the port name in the config is right") from exc
        if code == errno.EACCES:
            raise PermanentLinkError(f"permission denied on {t.port}: add the user labbridge runs as to the "
                                     "'dialout' group (or fix the device's permissions)") from exc
        if code == errno.EBUSY:
            raise PermanentLinkError(f"{t.port} is in use by another program: stop it or pick another "
                                     "port") from exc
        raise TransientLinkError(f"cannot open {t.port}: {exc}") from exc


class SerialConnection:
    """An open serial port: ``reader`` is an asyncio.StreamReader; ``write``/``drain`` like a StreamWriter."""

    def __init__(self, port: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._port = port
        self._loop = loop
        self.reader = asyncio.StreamReader()
        self._stop = threading.Event()
        self._pending = bytearray()
        self._write_lock = asyncio.Lock()
        self._thread = threading.Thread(target=self._read_loop, name=f"serial-reader {port.name}", daemon=True)

    @classmethod
    async def open(cls, t: SerialTransport) -> SerialConnection:
        port = await asyncio.to_thread(_open_blocking, t)
        conn = cls(port, asyncio.get_running_loop())
        conn._thread.start()
        return conn

    def _deliver(self, data: bytes) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody listens any more
            self._loop.call_soon_threadsafe(self.reader.feed_data, data)

    def _read_loop(self) -> None:
        port = self._port
        try:
            while not self._stop.is_set():
                data = port.read(min(max(1, port.in_waiting), READ_MAX))
                if data:
                    self._deliver(bytes(data))
        except (serial.SerialException, OSError, TypeError, AttributeError):
            pass  # the device went away (or was closed under us): end of stream
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.reader.feed_eof)

    def write(self, data: bytes) -> None:
        self._pending += data

    async def drain(self) -> None:
        async with self._write_lock:
            if not self._pending:
                return
            data = bytes(self._pending)
            self._pending.clear()
            try:
                await asyncio.to_thread(self._port.write, data)
            except serial.SerialException as exc:
                raise TransientLinkError(f"write to {self._port.name} failed: {exc}") from exc

    async def close(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, READ_TIMEOUT_S * 5)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._port.close)
