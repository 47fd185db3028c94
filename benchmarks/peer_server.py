"""A peer receiver: python-astm's own ASTM/TCP server (PyPI ``astm-2025``), run as its authors ship it.

``astm.server.Server`` with its ``RequestHandler`` (asyncore-style loop of the package's own
``astm.asynclib``): ENQ, each frame checksummed, joined and decoded to records, ACK, EOT. Like the older
Python ASTM servers the issue compares with, it keeps nothing: no store, no fsync, no LIS. The records
are only counted (python-astm's default handlers log a warning per record). The listen backlog is raised
from python-astm's 5 so that 100 analyzers can connect at once. One Python 3 adjustment, nothing else
changed: its writer slices replies with Python 2's ``buffer()``, given here (as in tests/peers/).

    .venv/bin/python -m benchmarks.peer_server --port 0 --ready FILE
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any

from benchmarks import astm_compat  # imports python-astm leaving the root logger as it was
from benchmarks.common import raise_nofile, receiver_arguments

astm_server = astm_compat.astm.server


def _buffer(data: bytes, offset: int = 0, size: int | None = None) -> bytes:
    return bytes(data[offset:None if size is None else offset + size])


astm_compat.astm.asynclib.buffer = _buffer  # Python 2's buffer(), which its AsyncChat.push uses


class CountingDispatcher(astm_server.BaseRecordsDispatcher):  # type: ignore[misc,name-defined]
    records = 0

    def _default_handler(self, record: Any) -> None:
        CountingDispatcher.records += 1


def main() -> None:
    args = receiver_arguments(__doc__)
    raise_nofile()
    server = astm_server.Server(host=args.host, port=args.port, dispatcher=CountingDispatcher)
    server.socket.listen(4096)
    host, port = server.socket.getsockname()[:2]
    if args.ready is not None:
        tmp = args.ready.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port,
                                   "peer": f"python-astm {astm_compat.VERSION}"}), encoding="utf-8")
        tmp.replace(args.ready)

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(timeout=0.2)


if __name__ == "__main__":
    main()
