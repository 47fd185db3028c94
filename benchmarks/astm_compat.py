"""A small shim to run python-astm (PyPI ``astm-2025``, a fork of Alexander Shorin's python-astm) on 3.11.

python-astm's receive path lives in ``astm.server.RequestHandler``, an asyncore-style channel bound to a
socket. To measure its codec and frame path alone (checksum, joining of ETB-chunked frames, decoding),
this shim drives that same handler without a socket: each frame is handed over exactly as its
``found_terminator`` would (``_last_recv_data`` then ``on_message``), and a dispatcher collects the
decoded records. Nothing of python-astm's code is copied or changed.

On 3.11 the fork imports as it is (it carries its own asyncore copy, ``astm.asynclib``); the only 3.11
adjustment is the one below: the package adds a handler to the *root* logger at import, and logs a
warning per checksum failure, so the shim leaves the root logger as it found it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

_root_handlers = list(logging.getLogger().handlers)
import astm  # noqa: E402  (import after saving the root logger's handlers)
import astm.codec  # noqa: E402
import astm.server  # noqa: E402

logging.getLogger().handlers[:] = _root_handlers

VERSION = astm.__version__


class _Collect(astm.server.BaseRecordsDispatcher):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.records: list[Any] = []

    def _default_handler(self, record: Any) -> None:
        self.records.append(record)

    def on_unknown(self, record: Any) -> None:
        self.records.append(record)


class FramePath:
    """python-astm's receiver for one transfer: ENQ, frames (checksum, join, decode), EOT."""

    def __init__(self) -> None:
        self.dispatcher = _Collect()
        self.handler = astm.server.RequestHandler(None, self.dispatcher)

    def receive(self, frames: Sequence[bytes]) -> list[Any]:
        self.dispatcher.records = []
        h = self.handler
        if h.on_enq() != b"\x06":
            raise RuntimeError("python-astm refused ENQ")
        for frame in frames:
            h._last_recv_data = frame
            if h.on_message() != b"\x06":
                raise RuntimeError("python-astm NAKed a frame")
        h.on_eot()
        return self.dispatcher.records


def decode_message_records(records: Sequence[bytes]) -> list[Any]:
    """python-astm's codec on one message's records (``astm.codec.decode`` of a frame body)."""
    return astm.codec.decode(b"1" + b"\r".join(records) + b"\r")  # type: ignore[no-any-return]
