"""HL7 analyzers over MLLP to the LIS, over real loopback sockets, with independent peers (python-hl7)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import hl7
import hl7.mllp
import pytest
from hl7apy.parser import parse_message as hl7apy_parse
from labbridge_simulators.hl7_analyzer import Hl7AnalyzerSim, Hl7MessageFactory
from labbridge_simulators.lis import SimulatedLis

from labbridge.config import parse_config
from labbridge.protocols import mllp
from labbridge.runtime.daemon import Daemon
from tests.conftest import run

from .helpers import eventually

T = TypeVar("T")


def sync(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async test body on a fresh loop with the suite's hard time limit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return run(fn(*args, **kwargs))

    return wrapper

ORU_231 = ("MSH|^~\\&|Mindray|BS-480|||20261123101500||ORU^R01|{id}|P|2.3.1||||0||UNICODE|||\r"
           "PID|1||PAT7^^^^MR||Müller^Zoé\r"
           "OBR|1|{sample}|7|^|N||20261123101000\r"
           "OBX|1|NM|GLU|Glucose|5.4|mmol/L|3.9-6.1|N|||F||5.4|20261123101200\r")


def hl7_instrument(ident: str, transport: dict[str, Any] | None = None, **link: Any) -> dict[str, Any]:
    return {"id": ident, "site": "arlon", "driver": "hl7-generic",
            "transport": transport or {"kind": "tcp-server", "host": "127.0.0.1", "port": 0},
            "link": {"framing": "mllp", "encoding": "utf-8", **link}}


def config(tmp_path: Path, instruments: list[dict[str, Any]], lis: list[dict[str, Any]]) -> dict[str, Any]:
    return {"node": "test", "store": {"path": str(tmp_path / "labbridge.db")},
            "http": {"enabled": False}, "sites": [{"id": "arlon", "name": "Arlon"}],
            "instruments": instruments,
            "lis": [{"host": "127.0.0.1", "ack_timeout_s": 2.0, "connect_timeout_s": 2.0,
                     "backoff_initial_s": 0.05, "backoff_max_s": 0.3, **d} for d in lis]}


@contextlib.asynccontextmanager
async def running(cfg: dict[str, Any]) -> AsyncIterator[Daemon]:
    daemon = Daemon(parse_config(cfg))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        started = asyncio.create_task(daemon.started.wait())
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        yield daemon
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def lis_and_daemon(tmp_path: Path,
                         instruments: list[dict[str, Any]]) -> AsyncIterator[tuple[Daemon, SimulatedLis]]:
    lis = SimulatedLis()
    await lis.start()
    try:
        async with running(config(tmp_path, instruments, [{"id": "lis", "port": lis.port}])) as daemon:
            yield daemon, lis
    finally:
        await lis.stop()


def address(daemon: Daemon, ident: str) -> tuple[str, int]:
    bound = daemon.runners[ident].bound
    assert bound is not None
    return bound


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes,
                   decoder: mllp.MllpDecoder, count: int = 1) -> list[hl7.Message]:
    writer.write(mllp.frame(payload))
    await writer.drain()
    acks: list[hl7.Message] = []
    async with asyncio.timeout(10):
        while len(acks) < count:
            data = await reader.read(65536)
            assert data, "labbridge closed the connection"
            acks += [hl7.parse(e.payload.decode("utf-8")) for e in decoder.receive_data(data)
                     if isinstance(e, mllp.MllpMessage)]
    return acks


def msa(ack: hl7.Message) -> tuple[str, str, str]:
    seg = ack.segment("MSA")
    return str(seg[1]), str(seg[2]), ack.unescape(str(seg[3])) if len(seg) > 3 else ""


@sync
async def test_law_and_mindray_analyzers_reach_the_lis_once_each(tmp_path: Path) -> None:
    async with lis_and_daemon(tmp_path, [hl7_instrument("law-1"), hl7_instrument("mindray-1")]) as (daemon, lis):
        sims = [Hl7AnalyzerSim(name, address(daemon, name),
                               Hl7MessageFactory(name, dialect=dialect, sample_prefix=f"{name}-", panel_size=6, seed=2),
                               interval=(0.0, 0.01), max_messages=12, resend_every=3, junk_every=4)
                for name, dialect in (("law-1", "law"), ("mindray-1", "mindray"))]
        await asyncio.wait_for(asyncio.gather(*(s.run(asyncio.Event()) for s in sims)), 30)
        acked = {i for s in sims for i in s.acked}
        assert len(acked) == 2 * 12 * 6
        await eventually(lambda: acked <= lis.delivered, what="all results at the LIS")
        assert lis.duplicates == 0
        for sim, name in zip(sims, ("law-1", "mindray-1"), strict=True):
            counters = daemon.runners[name].health.counters
            assert counters.duplicate_messages == 4  # every 3rd of 12 sent twice: acknowledged, not stored
            assert counters.junk_bytes > 0
            assert set(sim.stats.ack_codes) == {"AA"}
        counts = await daemon.store.counts()
        assert counts["messages"] == 24 and counts["results"] == len(acked)


@sync
async def test_malformed_messages_get_ae_or_ar_with_a_reason_are_kept_and_the_connection_goes_on(
        tmp_path: Path) -> None:
    async with lis_and_daemon(tmp_path, [hl7_instrument("mindray-1")]) as (daemon, lis):
        reader, writer = await asyncio.open_connection(*address(daemon, "mindray-1"))
        decoder = mllp.MllpDecoder()
        cases = [
            (b"PID|1||P1\rOBX|1|NM|GLU||5\r", "AE", "MSH"),
            (b"MSH|^^\\&|A||B||20261123||ORU^R01|1|P|2.5.1\r", "AE", "encoding characters"),
            (b"MSH|^~\\&|Mindray|BS||", "AR", "MSH-9"),
            (b"MSH|^~\\&|A||B||20261123||QBP^Q11^QBP_Q11|Q1|P|2.5.1\rQPD|XYZ^Other query^L|Q1|S1\r",
             "AE", "not supported"),  # a LAW QBP^Q11 (WOS) is answered: tests/integration/test_hl7_orders.py
            (ORU_231.format(id="D1", sample="S1").replace("OBX|1|NM|GLU|", "OBX|1|NM||").encode(), "AE", "OBX-3"),
        ]
        for payload, code, words in cases:
            [ack] = await exchange(reader, writer, payload, decoder)
            got_code, _, text = msa(ack)
            assert got_code == code and words in text, (payload, msa(ack))
        [ack] = await exchange(reader, writer, ORU_231.format(id="OK1", sample="S2").encode(), decoder)
        assert msa(ack)[:2] == ("AA", "OK1")
        writer.write(b"\x0bMSH|^~\\&|cut off")
        await writer.drain()
        writer.close()
        await eventually(lambda: daemon.runners["mindray-1"].health.counters.incomplete_transmissions == 1)
        counts = await daemon.store.counts()
        assert counts["undecodable"] == len(cases) and counts["messages"] == len(cases) + 1
        assert counts["incomplete"] == 1
        await eventually(lambda: ("mindray-1", "S2", "GLU", "5.4") in lis.delivered)


@sync
async def test_a_message_over_the_size_limit_gets_ar_with_the_reason_and_its_start_is_kept(tmp_path: Path) -> None:
    """Over MLLP's bound a message cannot be taken, but its sender is told so (AR naming its MSH-10 and the
    reason) and its start is kept for inspection, instead of no answer and nothing kept."""
    async with lis_and_daemon(tmp_path, [hl7_instrument("mindray-1")]) as (daemon, _lis):
        reader, writer = await asyncio.open_connection(*address(daemon, "mindray-1"))
        decoder = mllp.MllpDecoder()
        huge = ORU_231.format(id="BIG1", sample="S1").encode() + b"NTE|1||" + b"x" * (4 * 1024 * 1024) + b"\r"
        [ack] = await exchange(reader, writer, huge, decoder)
        code, control_id, text = msa(ack)
        assert (code, control_id) == ("AR", "BIG1") and "larger than the limit" in text
        [ack] = await exchange(reader, writer, ORU_231.format(id="OK1", sample="S2").encode(), decoder)
        assert msa(ack)[:2] == ("AA", "OK1")  # the connection goes on
        writer.close()
        counts = await daemon.store.counts()
        assert counts["undecodable"] == 1 and counts["messages"] == 2
        assert daemon.runners["mindray-1"].health.counters.decode_errors == 1


@sync
async def test_store_failure_answers_ar_and_never_aa(tmp_path: Path) -> None:
    async with lis_and_daemon(tmp_path, [hl7_instrument("mindray-1")]) as (daemon, _lis):
        reader, writer = await asyncio.open_connection(*address(daemon, "mindray-1"))
        decoder = mllp.MllpDecoder()
        payload = ORU_231.format(id="F1", sample="S9").encode()
        daemon.store.fail_commits = True
        [ack] = await exchange(reader, writer, payload, decoder)
        assert msa(ack)[0] == "AR" and "store" in msa(ack)[2]
        enhanced = payload.replace(b"||||0||UNICODE", b"|||AL|AL||UNICODE")
        [ack] = await exchange(reader, writer, enhanced, decoder)
        assert msa(ack)[0] == "CR"  # commit reject, and no application ACK after it
        daemon.store.fail_commits = False
        acks = await exchange(reader, writer, enhanced, decoder, count=2)
        assert [msa(a)[0] for a in acks] == ["CA", "AA"]
        writer.close()
        assert (await daemon.store.counts())["results"] == 1


@sync
async def test_python_hl7_mllp_send_cli_sends_to_labbridge(tmp_path: Path) -> None:
    async with lis_and_daemon(tmp_path, [hl7_instrument("mindray-1")]) as (daemon, lis):
        message = tmp_path / "oru.hl7"
        # mllp_send reads a stream of MLLP blocks (SB message EB CR) and sends them one by one.
        message.write_bytes(b"".join(b"\x0b" + ORU_231.format(id=f"CLI{n}", sample=f"S7{n}").encode("utf-8")
                                     + b"\x1c\r" for n in (1, 2)))
        host, port = address(daemon, "mindray-1")
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "mllp_send"), "-p", str(port), "-f", str(message), host,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        acks = out.decode().replace("\n", "\r")
        assert "MSA|AA|CLI1" in acks and "MSA|AA|CLI2" in acks
        await eventually(lambda: {("mindray-1", "S71", "GLU", "5.4"), ("mindray-1", "S72", "GLU", "5.4")}
                         <= lis.delivered)


@sync
async def test_python_hl7_asyncio_client_original_and_enhanced_mode(tmp_path: Path) -> None:
    async with lis_and_daemon(tmp_path, [hl7_instrument("law-1")]) as (daemon, lis):
        reader, writer = await hl7.mllp.open_hl7_connection(*address(daemon, "law-1"), encoding="utf-8")
        try:
            writer.writemessage(hl7.parse(ORU_231.format(id="A1", sample="S1")))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), 10)
            assert msa(ack)[:2] == ("AA", "A1")
            law = Hl7MessageFactory("law-1", dialect="law", sample_prefix="L", panel_size=2, seed=1).next()
            text = law.payload.decode("utf-8").replace("|||ER|AL||", "|||AL|AL||")
            writer.writemessage(hl7.parse(text))
            await writer.drain()
            commit = await asyncio.wait_for(reader.readmessage(), 10)
            application = await asyncio.wait_for(reader.readmessage(), 10)
            assert [msa(commit)[0], msa(application)[0]] == ["CA", "AA"]
            assert str(application.segment("MSH")[9]) == "ACK^R22^ACK"
            assert hl7apy_parse(str(application), validation_level=1, find_groups=True).validate() is True
        finally:
            writer.close()
        await eventually(lambda: set(law.results) <= lis.delivered)


@sync
async def test_python_hl7_asyncio_server_is_the_lis_for_oru_r01_and_oul_r22(tmp_path: Path) -> None:
    received: dict[str, list[str]] = {"ORU^R01": [], "OUL^R22": []}

    def handler(kind: str) -> Any:
        async def on_client(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    message = await reader.readmessage()
                    received[kind].append(str(message))
                    writer.writemessage(message.create_ack("AA"))
                    await writer.drain()
        return on_client

    servers = [await hl7.mllp.start_hl7_server(handler(kind), "127.0.0.1", 0, encoding="utf-8") for kind in received]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    try:
        cfg = config(tmp_path, [hl7_instrument("law-1")],
                     [{"id": "lis-oru", "port": ports[0]},
                      {"id": "lis-oul", "port": ports[1], "message_type": "OUL^R22"}])
        async with running(cfg) as daemon:
            sim = Hl7AnalyzerSim("law-1", address(daemon, "law-1"),
                                 Hl7MessageFactory("law-1", dialect="law", sample_prefix="L", panel_size=3, seed=1),
                                 interval=(0.0, 0.0), max_messages=3)
            await asyncio.wait_for(sim.run(asyncio.Event()), 20)
            await eventually(lambda: all(len(v) == 3 for v in received.values()), what="3 messages at each LIS")
            await eventually(lambda: all(r.health.delivered == 3 for r in daemon.relays))
    finally:
        for server in servers:
            server.close()
    for kind, messages in received.items():
        for text in messages:
            parsed = hl7.parse(text)
            assert str(parsed.segment("MSH")[9]).startswith(kind)
            assert len(parsed.segments("OBX")) == 3
            assert hl7apy_parse(text, validation_level=1, find_groups=True).validate() is True


@sync
async def test_labbridge_dials_an_hl7_analyzer(tmp_path: Path) -> None:
    stop = asyncio.Event()
    bound: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    sim = Hl7AnalyzerSim("mindray-1", ("127.0.0.1", 0),
                         Hl7MessageFactory("mindray-1", dialect="mindray", sample_prefix="D", panel_size=4, seed=5),
                         interval=(0.0, 0.0), max_messages=5)
    serving = asyncio.create_task(sim.serve(stop, bound=bound))
    host, port = await bound
    try:
        transport = {"kind": "tcp-client", "host": host, "port": port, "reconnect_initial_s": 0.05}
        lis = SimulatedLis()
        await lis.start()
        try:
            async with running(config(tmp_path, [hl7_instrument("mindray-1", transport)],
                                      [{"id": "lis", "port": lis.port}])):
                await eventually(lambda: len(sim.acked) == 20, what="20 results acknowledged")
                await eventually(lambda: set(sim.acked) <= lis.delivered)
        finally:
            await lis.stop()
    finally:
        stop.set()
        await asyncio.wait_for(serving, 10)


# ---- TLS --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed by the TLS tests (apt-get install openssl)"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@sync
async def test_tls_both_ways_analyzer_to_labbridge_and_labbridge_to_the_lis(
        tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    received: list[str] = []

    async def lis_client(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                message = await reader.readmessage()
                received.append(str(message))
                writer.writemessage(message.create_ack("AA"))
                await writer.drain()

    lis = await hl7.mllp.start_hl7_server(lis_client, "127.0.0.1", 0, encoding="utf-8", ssl=server_ctx)
    try:
        tls = {"cert": str(cert), "key": str(key)}
        transport = {"kind": "tcp-server", "host": "127.0.0.1", "port": 0, "tls": tls}
        cfg = config(tmp_path, [hl7_instrument("mindray-1", transport)],
                     [{"id": "lis", "port": lis.sockets[0].getsockname()[1],
                       "tls": {"ca": str(cert), "server_hostname": "localhost"}}])
        async with running(cfg) as daemon:
            host, port = address(daemon, "mindray-1")
            # A plain-text sender gets no acknowledgement from a TLS port.
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(mllp.frame(ORU_231.format(id="P1", sample="PLAIN").encode()))
            await writer.drain()
            async with asyncio.timeout(10):
                assert await reader.read(65536) == b""
            writer.close()
            reader2, writer2 = await hl7.mllp.open_hl7_connection(host, port, encoding="utf-8", ssl=client_ctx,
                                                                  server_hostname="localhost")
            writer2.writemessage(hl7.parse(ORU_231.format(id="T1", sample="TLS1")))
            await writer2.drain()
            ack = await asyncio.wait_for(reader2.readmessage(), 10)
            assert msa(ack)[:2] == ("AA", "T1")
            writer2.close()
            await eventually(lambda: len(received) == 1, what="the result at the TLS LIS")
            assert "TLS1" in received[0]
            assert "PLAIN" not in str(await daemon.store.counts())
    finally:
        lis.close()


@sync
async def test_tls_with_a_missing_certificate_fails_the_link_with_a_reason(tmp_path: Path) -> None:
    transport = {"kind": "tcp-server", "host": "127.0.0.1", "port": 0,
                 "tls": {"cert": str(tmp_path / "nope.pem"), "key": str(tmp_path / "nope.key")}}
    async with running(config(tmp_path, [hl7_instrument("mindray-1", transport)], [])) as daemon:
        health = daemon.runners["mindray-1"].health
        await eventually(lambda: health.state == "failed")
        assert "nope.pem" in health.reason


@sync
async def test_hl7_driver_on_an_astm_link_is_refused_with_the_fix(tmp_path: Path) -> None:
    inst = hl7_instrument("mindray-1")
    inst["link"]["framing"] = "e1381"
    async with running(config(tmp_path, [inst], [])) as daemon:
        health = daemon.runners["mindray-1"].health
        assert health.state == "failed" and 'framing = "mllp"' in health.reason
