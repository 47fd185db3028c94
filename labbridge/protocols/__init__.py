"""Sans-I/O protocol cores: bytes and ``now`` in, events and bytes out.

Nothing in this package may import asyncio, socket, serial, time or threading
(tests/protocols/test_sans_io.py checks it).
"""
