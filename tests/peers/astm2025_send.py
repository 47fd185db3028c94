"""An independent ASTM peer: PyPI ``astm-2025`` (a python-astm fork) sends one message to a host.

Run as ``python -m tests.peers.astm2025_send HOST PORT SAMPLE``; prints ``sent`` when the emitter finished.
The compatibility shim for Python 3.11 lives here, never in labbridge.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Generator
from typing import Any


def _shim() -> None:
    """astm-2025 still carries Python 2 idioms; patch what Python 3.11 lacks before importing it."""
    import collections
    import collections.abc

    for name in ("Iterable", "Mapping", "MutableMapping", "Sequence", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    import astm.asynclib

    def buffer(data: bytes, offset: int = 0, size: int | None = None) -> bytes:
        # Python 2's buffer(): the chunked writer sends slices of its outgoing data with it.
        return bytes(data[offset:None if size is None else offset + size])

    astm.asynclib.buffer = buffer  # type: ignore[attr-defined]

    # Its encoder tests "is it Iterable?" before "is it text?", which was fine for Python 2's str but makes
    # a Python 3 str recurse forever: give it an Iterable that excludes str.
    import astm.codec

    class _NotText(type):
        def __instancecheck__(cls, obj: object) -> bool:
            return isinstance(obj, collections.abc.Iterable) and not isinstance(obj, str)

    class IterableNotText(metaclass=_NotText):
        pass

    astm.codec.Iterable = IterableNotText  # type: ignore[attr-defined]


def main() -> None:
    host, port, sample = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    _shim()
    from astm.client import Client

    finished = []

    def emitter() -> Generator[Any, bool, None]:
        assert (yield ["H", "\\^&", None, None, ["astm-2025", "1.0"], None, None, None, None, None, "P", "1"])
        assert (yield ["P", "1", "PAT-PEER"])
        assert (yield ["O", "1", sample, None, [None, None, None, "GLU"], "R"])
        assert (yield ["R", "1", [None, None, None, "GLU"], "5.6", "mmol/L", None, "N", None, "F"])
        assert (yield ["R", "2", [None, None, None, "NA"], "141", "mmol/L", None, "N", None, "F"])
        yield ["L", "1", "N"]
        finished.append(True)

    def handle_error(self: Client) -> None:
        traceback.print_exc()  # asynclib would close the channel silently
        self.close()

    Client.handle_error = handle_error
    client = Client(emitter, host=host, port=port, timeout=10)
    client.run(timeout=0.2, count=200)
    print("sent" if finished else "not sent", flush=True)


if __name__ == "__main__":
    main()
