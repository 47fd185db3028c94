"""RS-232 through pyserial, bridged to asyncio by one reader thread per port.

Why a thread and not ``loop.add_reader`` on the serial fd: pyserial URLs (``socket://``, ``rfc2217://``,
``loop://``) have no file descriptor to watch, and pyserial's own read path (timeouts, RFC 2217 option
negotiation) is blocking by design; one small thread per port keeps every pyserial transport usable and
the event loop never blocked. A site has at most a few dozen serial ports, so a thread each is cheap.

The port is an asyncio transport (:class:`SerialTransport`), so the link session above it is the same as
over TCP. The reader thread reads whatever has arrived (at least one byte, with a short timeout so that it
notices a close) and hands it to the loop with ``call_soon_threadsafe``; a writer thread writes in order.
A read error (the USB adapter unplugged, the pseudo-terminal's other end closed) ends the connection like a
closed socket; the instrument runner reopens the port with capped backoff and jitter. Opening errors are
classified: no such device, permission denied, busy, or bad settings need a person (``PermanentLinkError``
with a reason a technician can act on); anything else is worth retrying (``TransientLinkError``).
Throughput is bounded by the line (115 200 baud is 11.5 kB/s), which bounds what the thread can queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import queue
import threading
from collections.abc import Callable
from typing import Any

import serial

from labbridge.config import SerialTransport as SerialSettings
from labbridge.errors import PermanentLinkError, TransientLinkError

READ_TIMEOUT_S = 0.2  # how often the reader thread checks that it should stop
READ_MAX = 4096

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD, "M": serial.PARITY_MARK,
           "S": serial.PARITY_SPACE}


def describe(t: SerialSettings) -> str:
    """``/dev/ttyS0 9600 8N1`` (+ flow control), for the dashboard and reasons."""
    flow = " xon/xoff" if t.xonxoff else ""
    flow += " rts/cts" if t.rtscts else ""
    stop = f"{t.stopbits:g}"
    return f"serial {t.port} {t.baudrate} {t.bytesize}{t.parity}{stop}{flow}"


def _open_blocking(t: SerialSettings) -> Any:
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


class SerialTransport(asyncio.Transport):
    """An open serial port as an asyncio transport: its protocol (a link session) is driven exactly as over TCP.

    A reader thread hands what it reads to ``protocol.data_received`` on the loop; a writer thread writes
    what ``write`` queued, in order. The end of the stream (a read or write error, the device gone, or
    :meth:`close`) stops both threads, closes the port off the loop, and then calls
    ``protocol.connection_lost`` once.
    """

    def __init__(self, port: Any, protocol: asyncio.Protocol, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._port = port
        self._protocol = protocol
        self._loop = loop
        self._stop = threading.Event()
        self._writes: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._closing = False
        self._reader = threading.Thread(target=self._read_loop, name=f"serial-reader {port.name}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"serial-writer {port.name}", daemon=True)

    def _start(self) -> None:
        self._protocol.connection_made(self)
        self._reader.start()
        self._writer.start()

    # ---- threads -------------------------------------------------------------------------------

    def _from_thread(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody listens any more
            self._loop.call_soon_threadsafe(callback, *args)

    def _read_loop(self) -> None:
        port = self._port
        error: Exception | None = None
        try:
            while not self._stop.is_set():
                data = port.read(min(max(1, port.in_waiting), READ_MAX))
                if data and not self._stop.is_set():
                    self._from_thread(self._data, bytes(data))
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            error = None if self._stop.is_set() else TransientLinkError(f"read from {port.name} failed: {exc}")
        self._from_thread(self._ended, error)

    def _write_loop(self) -> None:
        while (data := self._writes.get()) is not None:
            try:
                self._port.write(data)
            except (serial.SerialException, OSError) as exc:
                self._from_thread(self._ended, TransientLinkError(f"write to {self._port.name} failed: {exc}"))
                return

    # ---- on the loop -----------------------------------------------------------------------------

    def _data(self, data: bytes) -> None:
        if not self._closing:
            self._protocol.data_received(data)

    def _ended(self, exc: Exception | None) -> None:
        if not self._closing:
            self._shutdown(exc)

    def _shutdown(self, exc: Exception | None) -> None:
        self._closing = True
        self._stop.set()
        self._writes.put(None)

        def stop_threads() -> None:
            self._writer.join(READ_TIMEOUT_S * 5)
            self._reader.join(READ_TIMEOUT_S * 5)
            with contextlib.suppress(Exception):
                self._port.close()

        done = self._loop.run_in_executor(None, stop_threads)
        done.add_done_callback(lambda _: self._protocol.connection_lost(exc))

    # ---- asyncio.Transport -------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data and not self._closing:
            self._writes.put(bytes(data))

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._shutdown(None)  # what was queued is written first: the writer thread ends at the marker

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._port if name == "serial" else default


async def open_serial(t: SerialSettings, protocol_factory: Callable[[], asyncio.Protocol],
                      ) -> tuple[SerialTransport, asyncio.Protocol]:
    """Open the port of ``t`` (a config's serial settings) and connect a new protocol to it, as
    ``loop.create_connection`` does for TCP. Raises :class:`PermanentLinkError` or :class:`TransientLinkError`."""
    port = await asyncio.to_thread(_open_blocking, t)
    protocol = protocol_factory()
    transport = SerialTransport(port, protocol, asyncio.get_running_loop())
    transport._start()
    return transport, protocol
