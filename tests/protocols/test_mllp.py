from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from labbridge.protocols import mllp

payload = st.binary(min_size=1, max_size=200).map(lambda b: bytes(c for c in b if c not in (0x0B, 0x1C)) or b"x")
junk = st.binary(max_size=10).map(lambda b: bytes(c for c in b if c != 0x0B))


@given(st.lists(st.tuples(junk, payload), min_size=1, max_size=6), st.integers(min_value=1, max_value=50))
def test_any_chunking_and_junk_between_blocks_loses_and_doubles_nothing(
        blocks: list[tuple[bytes, bytes]], chunk: int) -> None:
    stream = b"".join(j + mllp.frame(p) for j, p in blocks)
    decoder = mllp.MllpDecoder()
    got: list[bytes] = []
    junk_count = 0
    for i in range(0, len(stream), chunk):
        for event in decoder.receive_data(stream[i:i + chunk]):
            if isinstance(event, mllp.MllpMessage):
                got.append(event.payload)
            elif isinstance(event, mllp.MllpJunk):
                junk_count += event.count
    assert got == [p for _, p in blocks]
    assert junk_count == sum(len(j) for j, _ in blocks)


def test_oversize_block_is_dropped_and_reported_and_the_next_one_gets_through() -> None:
    decoder = mllp.MllpDecoder(max_message=100)
    events = decoder.receive_data(b"\x0b" + b"a" * 150)
    events += decoder.receive_data(b"a" * 100 + b"\x1c\r" + mllp.frame(b"MSH|ok"))
    assert any(isinstance(e, mllp.MllpOversize) for e in events)
    assert [e.payload for e in events if isinstance(e, mllp.MllpMessage)] == [b"MSH|ok"]
