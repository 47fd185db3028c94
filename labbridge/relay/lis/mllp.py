"""An MLLP client for one LIS destination: one message outstanding, wait for its ACK (R-C7)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from labbridge.errors import TransientLinkError
from labbridge.protocols import mllp
from labbridge.protocols.hl7 import AckInfo, parse_ack


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

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            try:
                async with asyncio.timeout(self.connect_timeout):
                    self._reader, self._writer = await asyncio.open_connection(
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
            self._decoder = mllp.MllpDecoder()
        return self._reader, self._writer

    async def send(self, payload: bytes, control_id: str) -> AckInfo:
        """Send one message and return the LIS's acknowledgement of it."""
        reader, writer = await self._connect()
        try:
            writer.write(mllp.frame(payload))
            await writer.drain()
            async with asyncio.timeout(self.ack_timeout):
                while True:
                    data = await reader.read(65536)
                    if not data:
                        raise TransientLinkError("the LIS closed the connection before acknowledging")
                    for event in self._decoder.receive_data(data):
                        if isinstance(event, mllp.MllpMessage):
                            ack = parse_ack(event.payload)
                            # An ACK for an earlier message (one that timed out) is stale: skip it.
                            if ack is not None and ack.control_id == control_id:
                                return ack
        except TimeoutError:
            await self.close()
            raise TransientLinkError(f"no acknowledgement from the LIS within {self.ack_timeout:g} s") from None
        except (OSError, TransientLinkError) as exc:
            await self.close()
            if isinstance(exc, TransientLinkError):
                raise
            raise TransientLinkError(f"connection to the LIS failed: {exc.strerror or exc}") from None

    async def close(self) -> None:
        writer = self._writer
        self._reader = self._writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
