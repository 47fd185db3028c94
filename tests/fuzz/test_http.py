"""Fuzz the HTTP API's inputs on a running daemon (real aiohttp server on loopback, real store): any path
parameter, query string and body (JSON of any shape, or any bytes under any content type) on every route is
answered with a status below 500 and, for the JSON API, a body that is JSON; the daemon answers its health
check afterwards."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.drive import fuzz_settings
from tests.integration.helpers import running_lab

FUZZ = fuzz_settings(150)

ROUTES = [("GET", "/api/health"), ("GET", "/api/instruments"), ("GET", "/api/instruments/{id}"),
          ("GET", "/api/instruments/{id}/history"), ("GET", "/api/sites"), ("GET", "/api/outbox"),
          ("GET", "/api/orders"), ("POST", "/api/orders"), ("GET", "/api/orders/{id}"),
          ("POST", "/api/orders/{id}/cancel"), ("GET", "/api/outbox/items"), ("POST", "/api/outbox/retry"),
          ("POST", "/api/outbox/purge"), ("GET", "/api/audit"), ("POST", "/api/config/reload"),
          ("GET", "/api/campaign"), ("GET", "/api/campaign/report"), ("GET", "/api/campaign/history"),
          ("POST", "/api/instruments/{id}/stage"), ("POST", "/api/instruments/{id}/sign-off"),
          ("POST", "/api/instruments/{id}/rollback"), ("POST", "/api/instruments/{id}/references"),
          ("GET", "/api/instruments/{id}/validation"), ("GET", "/metrics"), ("GET", "/campaign")]
FIELDS = ["ids", "all_dead", "by", "reason", "confirm", "state", "older_than_s", "sample_id", "test_codes",
          "instrument", "site", "priority", "patient_id", "source", "stage", "held", "override", "references",
          "limit", "days", "format", "destination", "value", "test", "unit", 'x"y', "\\"]
BIG = [1e308, 10**400, -(10**30), 1 << 63, -(1 << 63) - 1]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 80), 1 << 80),
                    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(BIG), st.text(max_size=16),
                    st.sampled_from(["an-0", "dead", "pending", "release", "validating", "live", "stat", "GLU", ""]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=6)), max_leaves=20)
IDS = st.one_of(st.sampled_from(["an-0", "an-1", "1", "0", "-1", "99999999999999999999", "..", "%00"]),
                st.text(min_size=1, max_size=12))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A running daemon with its HTTP API, in a thread of its own (hypothesis drives it synchronously)."""
    folder: Path = tmp_path_factory.mktemp("fuzz-http")
    ready = threading.Event()
    address: list[tuple[str, int]] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with running_lab(folder, instruments=2, http=True) as lab:
            assert lab.daemon.http_address is not None
            address.append(lab.daemon.http_address)
            ready.set()
            await stop.wait()

    def thread() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:
            failure.append(exc)
        finally:
            ready.set()

    runner = threading.Thread(target=thread, daemon=True)
    runner.start()
    assert ready.wait(60)
    assert not failure, failure
    yield address[0]
    loop.call_soon_threadsafe(stop.set)
    runner.join(60)
    assert not failure, failure


def _request(where: tuple[str, int], method: str, path: str, body: bytes | None = None,
             content_type: str | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(*where, timeout=30)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


@FUZZ
@given(route=st.sampled_from(ROUTES), ident=IDS,
       query=st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.text(max_size=12), st.sampled_from(
           ["-1", "0", "1e9", "99999999999999999999999", "dead", "html", "markdown", "json"])), max_size=4),
       body=st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)),
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                     "application/x-www-form-urlencoded", None]))
def test_any_request_is_answered_without_a_server_error(base: tuple[str, int], route: tuple[str, str], ident: str,
                                                         query: dict[str, str], body: bytes,
                                                         content_type: str | None) -> None:
    method, template = route
    path = template.replace("{id}", quote(ident, safe=""))
    if query:
        path += "?" + urlencode(query)
    status, kind, payload = _request(base, method, path, body if method == "POST" else None, content_type)
    assert status < 500, (method, path, body, status, payload[:300])
    if kind.startswith("application/json"):
        json.loads(payload)


def test_the_daemon_still_answers_after_the_fuzzing(base: tuple[str, int]) -> None:
    status, _, payload = _request(base, "GET", "/api/health")
    assert status == 200
    assert json.loads(payload)


def test_an_id_beyond_what_the_store_can_hold_is_refused(base: tuple[str, int]) -> None:
    """Found by this fuzzing: an order id past SQLite's 64-bit integers was a 500 (OverflowError); it is a 400
    naming the parameter, as every API input out of its bounds (labbridge.web.params)."""
    for method, path in (("GET", "/api/orders/99999999999999999999"),
                         ("POST", "/api/orders/-99999999999999999999/cancel")):
        status, _, payload = _request(base, method, path, b"{}", "application/json")
        assert status == 400
        answer = json.loads(payload)
        assert answer["parameter"] == "id" and "id must be" in answer["error"]


def test_an_unknown_field_with_a_quote_is_named_in_valid_json(base: tuple[str, int]) -> None:
    """Found by this fuzzing: the campaign's "unknown field(s)" answer was JSON built by hand, broken by a quote."""
    status, _, payload = _request(base, "POST", "/api/instruments/an-0/stage", b'{"x\\"y": 1, "by": "anna"}',
                                  "application/json")
    assert status == 400
    assert json.loads(payload) == {"error": 'unknown field(s): x"y'}
