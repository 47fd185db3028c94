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
    assert [e for e in events if isinstance(e, mllp.MllpOversize)] == [mllp.MllpOversize(100, b"a" * 150, 250)]
    assert [e.payload for e in events if isinstance(e, mllp.MllpMessage)] == [b"MSH|ok"]


def test_an_oversize_block_keeps_only_its_start_whatever_its_length_and_is_reported_once_it_ends() -> None:
    decoder = mllp.MllpDecoder(max_message=10_000)
    events = decoder.receive_data(b"\x0bMSH|head\r" + b"z" * 20_000)
    assert events == []  # reported when the block ends, with its size
    for _ in range(50):
        assert decoder.receive_data(b"z" * 10_000) == []
    [event] = decoder.receive_data(b"z\x1c\r")
    assert isinstance(event, mllp.MllpOversize)
    assert event.head == (b"MSH|head\r" + b"z" * 20_000)[:mllp.HEAD_KEPT] and event.size == 520_010
    assert decoder.receive_data(b"\x0bMSH|cut") == []
    assert decoder.pending() == b"MSH|cut"


def test_several_messages_in_one_read_and_one_message_over_many_reads() -> None:
    decoder = mllp.MllpDecoder()
    events = decoder.receive_data(mllp.frame(b"MSH|1") + mllp.frame(b"MSH|2") + mllp.frame(b"MSH|3"))
    assert [e.payload for e in events if isinstance(e, mllp.MllpMessage)] == [b"MSH|1", b"MSH|2", b"MSH|3"]
    got = []
    for byte in mllp.frame(b"MSH|slow\rPID|1"):
        got += decoder.receive_data(bytes([byte]))
    assert got == [mllp.MllpMessage(b"MSH|slow\rPID|1")]


def test_block_without_final_cr_is_dropped_and_reported_unless_allowed() -> None:
    strict = mllp.MllpDecoder()
    events = strict.receive_data(b"\x0bMSH|a\x1c" + mllp.frame(b"MSH|b"))
    assert events == [mllp.MllpBadEnd(5), mllp.MllpMessage(b"MSH|b")]
    lenient = mllp.MllpDecoder(allow_missing_cr=True)
    # Delivered at FS at once (a sender that omits the CR waits for the ACK without sending more) ...
    assert lenient.receive_data(b"\x0bMSH|a\x1c") == [mllp.MllpMessage(b"MSH|a")]
    # ... and a CR that does come later is not counted as junk.
    assert lenient.receive_data(b"\r" + mllp.frame(b"MSH|b")) == [mllp.MllpMessage(b"MSH|b")]


def test_unfinished_block_is_handed_back_when_the_connection_ends() -> None:
    decoder = mllp.MllpDecoder()
    assert decoder.receive_data(b"junk\x0bMSH|cut") == [mllp.MllpJunk(4)]
    assert decoder.pending() == b"MSH|cut"
    assert decoder.pending() == b""
    assert decoder.receive_data(mllp.frame(b"MSH|next")) == [mllp.MllpMessage(b"MSH|next")]


@given(st.lists(payload, min_size=1, max_size=5), st.lists(st.integers(min_value=1, max_value=40), min_size=1))
def test_lenient_decoder_under_any_chunking_loses_and_doubles_nothing(payloads: list[bytes], sizes: list[int]) -> None:
    stream = b"".join(mllp.frame(p) for p in payloads)
    decoder = mllp.MllpDecoder(allow_missing_cr=True)
    got: list[bytes] = []
    pos = i = 0
    while pos < len(stream):
        size = sizes[i % len(sizes)]
        i += 1
        for event in decoder.receive_data(stream[pos:pos + size]):
            assert not isinstance(event, mllp.MllpJunk | mllp.MllpBadEnd)
            if isinstance(event, mllp.MllpMessage):
                got.append(event.payload)
        pos += size
    assert got == payloads
