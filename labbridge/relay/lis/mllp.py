"""An MLLP client for one LIS destination: one message outstanding, wait for its ACK (R-C7).

LIS interfaces differ in how long they keep a connection. Many keep it; some close it after every
acknowledgement (hl7apy's MLLP server does), others drop one now and then without answering. So:

* a kept connection the LIS has closed since its last ACK is noticed before sending (end of stream seen) and
  replaced, with no failed try. A LIS that closes right after its ACK is usually faster than the next message
  only by a hair, so the close is seen after the next message went out: that message is sent again at once
  (below), and after ``PER_MESSAGE_AFTER`` such closes in a row the sender takes the LIS for what it is and
  opens a connection per message, closing it after the ACK;
* a message whose connection ends before its ACK is sent again at once on a new connection, up to
  ``REOPENS`` times (the LIS books a control ID once, so a message it did get is not doubled): a dropped
  connection costs that message one resend, not a backoff of the whole destination. Only when the LIS closes
  every new connection without answering is it unreachable;
* an ACK whose MSA-2 is not the control ID just sent (one message outstanding per connection, and a
  connection that timed out is closed, so no late ACK can arrive here) is a LIS fault, refused loudly: logged,
  the connection closed, the message not taken as delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from labbridge.errors import TransientLinkError
from labbridge.logs import get_logger
from labbridge.protocols import mllp
from labbridge.protocols.hl7 import AckInfo, parse_ack

log = get_logger("labbridge.relay")

REOPENS = 2  # a message whose connection ended before its ACK is sent again on a new one, this often
PER_MESSAGE_AFTER = 3  # kept connections closed by the LIS right after an ACK, in a row: one per message from then


class _ClosedBeforeAck(Exception):
    """The connection ended (end of stream, reset) after the message went out and before its ACK."""


class MllpSender:
    def __init__(self, host: str, port: int, *, connect_timeout: float, ack_timeout: float,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = mllp.MllpDecoder()
        self.connections = 0  # opened so far
        self.resent = 0  # messages sent again because their connection ended before the ACK
        self.per_message = False  # the LIS closes after each ACK: a connection per message
        self._closed_after_ack = 0  # kept connections the LIS closed after its ACK, in a row
        self._acked_here = 0  # ACKs received on the current connection

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = self._reader, self._writer
        if reader is not None and writer is not None and not writer.is_closing() and not reader.at_eof():
            return reader, writer
        await self.close()  # none yet, or the LIS closed it since its last ACK
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl_context,
                    server_hostname=(self.server_hostname or self.host) if self.ssl_context else None)
        except TimeoutError:
            raise TransientLinkError(f"no answer from the LIS at {self.host}:{self.port} "
                                     f"within {self.connect_timeout:g} s") from None
        except ssl.SSLError as exc:
            raise TransientLinkError(f"TLS handshake with the LIS at {self.host}:{self.port} failed: "
                                     f"{exc.reason or exc}") from None
        except OSError as exc:
            raise TransientLinkError(f"cannot connect to the LIS at {self.host}:{self.port}: "
                                     f"{exc.strerror or exc}") from None
        self._reader, self._writer = reader, writer
        self._decoder = mllp.MllpDecoder()
        self._acked_here = 0
        self.connections += 1
        return reader, writer

    async def send(self, payload: bytes, control_id: str) -> AckInfo:
        """Send one message and return the LIS's acknowledgement of it (see the module's docstring)."""
        for attempt in range(REOPENS + 1):
            reader, writer = await self._connect()
            try:
                ack = await self._exchange(reader, writer, payload, control_id)
            except _ClosedBeforeAck:
                self._closed_by_lis()
                await self.close()
                if attempt == REOPENS:
                    break
                self.resent += 1
                continue
            except TimeoutError:
                await self.close()
                raise TransientLinkError(f"no acknowledgement from the LIS within {self.ack_timeout:g} s") from None
            except TransientLinkError:
                await self.close()
                raise
            if self._acked_here:
                self._closed_after_ack = 0  # a kept connection carried another message: the LIS keeps them
            self._acked_here += 1
            if self.per_message:
                await self.close()
            return ack
        raise TransientLinkError(f"the LIS closed the connection before acknowledging, {REOPENS + 1} times in a row "
                                 "on new connections: check the LIS's interface (is it accepting messages?)")

    def _closed_by_lis(self) -> None:
        if not self._acked_here or self.per_message:
            return  # a new connection dropped: not the LIS's way of working, a fault (resent, counted)
        self._closed_after_ack += 1
        if self._closed_after_ack >= PER_MESSAGE_AFTER:
            self.per_message = True
            log.info("lis_closes_after_each_ack", host=self.host, port=self.port,
                     note="a new connection for each message from now on")

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes,
                        control_id: str) -> AckInfo:
        try:
            writer.write(mllp.frame(payload))
            await writer.drain()
            async with asyncio.timeout(self.ack_timeout):
                while True:
                    data = await reader.read(65536)
                    if not data:
                        raise _ClosedBeforeAck
                    for event in self._decoder.receive_data(data):
                        if not isinstance(event, mllp.MllpMessage):
                            continue
                        ack = parse_ack(event.payload)
                        if ack is None:
                            continue  # not an acknowledgement: nothing labbridge waits for
                        if ack.control_id != control_id:
                            log.error("lis_ack_mismatch", host=self.host, port=self.port, sent=control_id,
                                      acknowledged=ack.control_id[:40])
                            raise TransientLinkError(
                                f"the LIS acknowledged control ID {ack.control_id[:40]!r}, not {control_id!r} that "
                                "was sent (MSA-2): a fault of the LIS's interface; the message is not taken as "
                                "delivered and goes again")
                        return ack
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _ClosedBeforeAck from exc
        except OSError as exc:
            raise TransientLinkError(f"connection to the LIS failed: {exc.strerror or exc}") from None

    async def close(self) -> None:
        writer = self._writer
        self._reader = self._writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
