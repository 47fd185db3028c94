"""A hostile peer: floods one port with ENQs or junk as fast as it can, and reads (and discards) what it gets back.

Run as ``python -m tests.peers.flood HOST PORT enq|junk|mixed``; prints ``flooding`` once connected, then
writes until it is killed or the connection ends. A separate process, so the flood competes with the daemon
for the machine, not for the test's event loop.
"""

from __future__ import annotations

import socket
import sys
import threading


def _discard(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def main(argv: list[str]) -> None:
    host, port, kind = argv[0], int(argv[1]), argv[2]
    chunk = {"enq": b"\x05" * 65536, "junk": bytes(range(6, 256)) * 256,
             "mixed": (b"\x05" * 512 + b"\x02" + bytes(range(32, 127)) * 8) * 64}[kind]
    sock = socket.create_connection((host, port))
    threading.Thread(target=_discard, args=(sock,), daemon=True).start()
    print("flooding", flush=True)
    try:
        while True:
            sock.sendall(chunk)
    except OSError:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
