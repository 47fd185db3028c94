"""Fuzz properties of reading a config file (TOML -> :func:`labbridge.config.load_config`): whatever the file
holds (a damaged example, any bytes, any table of known keys with any values), the result is a config or a
:class:`ConfigError` naming the problems, never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from labbridge.config import Config, load_config, parse_config
from labbridge.errors import ConfigError
from tests.fuzz.drive import fuzz_settings

FUZZ = fuzz_settings(120)
EXAMPLE = (Path(__file__).resolve().parents[2] / "config" / "example.toml").read_bytes()

KEYS = ["node", "timezone", "event_loop", "store", "path", "max_size_mb", "http", "enabled", "host", "port", "log",
        "level", "sites", "id", "name", "instruments", "site", "driver", "transport", "kind", "tcp-server",
        "tcp-client", "serial", "tls", "cert", "key", "ca", "link", "framing", "encoding", "lis", "url",
        "directory", "format", "test_map", "unit_map", "value_map", "tests", "peer", "sender", "expected_sender",
        "expect_message_every", "days", "hours", "every_s", "lis_orders", "retention", "health", "backlog",
        "baudrate", "parity", "stopbits", "record_terminator", "connections", "validating", "message_type"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["Europe/Brussels", "../../etc/passwd", "127.0.0.1",
                                                           "e1381", "mllp", "astm-generic", "0.0.0.0", ""]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=30)


def _load(data: bytes) -> Config | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labbridge.toml"
        path.write_bytes(data)
        try:
            return load_config(path)
        except ConfigError as exc:
            problems = exc.problems
    assert problems and all(isinstance(k, str) and what for k, what in problems)
    return None


@st.composite
def damaged_example(draw: st.DrawFn) -> bytes:
    """The example config with slices cut, replaced or repeated and bytes inserted."""
    data = bytearray(EXAMPLE)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        end = min(len(data), at + draw(st.integers(0, 80)))
        replacement = draw(st.one_of(st.binary(max_size=12), st.sampled_from(
            [b"", b"=", b"[[instruments]]\n", b"\"", b"'''", b"\\u0000", b"-1", b"1e999", b"inf", b"[", b"]",
             b"\xff", b"port = 70000\n", b"host = ", b"{", b"}"])))
        if draw(st.booleans()):
            data[at:end] = replacement
        else:
            data[at:at] = bytes(data[at:end])
    return bytes(data)


@FUZZ
@given(data=st.one_of(damaged_example(), st.binary(max_size=200)))
def test_any_file_is_a_config_or_a_config_error(data: bytes) -> None:
    _load(data)


@FUZZ
@given(table=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8))
def test_any_table_of_known_keys_is_a_config_or_a_config_error(table: dict[str, Any]) -> None:
    try:
        parse_config(table)
    except ConfigError as exc:
        assert_problems_named(exc)


def assert_problems_named(exc: ConfigError) -> None:
    assert exc.problems
    assert all(isinstance(key, str) and what for key, what in exc.problems)
