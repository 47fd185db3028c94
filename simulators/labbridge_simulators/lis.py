"""A simulated LIS: an MLLP listener that acknowledges HL7 results and records what it received.

It parses with python-hl7 (an implementation independent of labbridge's) and answers with python-hl7's
``create_ack``. It can be told to be down, slow, or to answer AE/AR, and it keeps books a real LIS
would: a message whose MSH-10 it has already accepted is acknowledged again but booked once.

It also places orders: :func:`order_message` builds an OML^O21 (v2.5.1), OML^O33 (LAW shape, SPM) or
ORM^O01 (v2.3.1) for one sample, and :meth:`SimulatedLis.send_orders` sends it to labbridge's
``[[lis_orders]]`` listener with python-hl7's asyncio MLLP client and returns the ACK (recorded in
``order_acks``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import hl7
import hl7.mllp

from labbridge.protocols import mllp

# drop-ack: accept and book the message, then close the connection before answering (a LIS that dies
# mid-ACK): the sender must resend it, and the LIS must not book it twice.
Mode = Literal["AA", "AE", "AR", "silent", "drop-ack"]
ResultIdentity = tuple[str, str, str, str]  # instrument, sample, instrument test code, value


@dataclass
class Booked:
    control_id: str
    message_type: str
    results: list[ResultIdentity] = field(default_factory=list)
    connection: int = 0  # which of the LIS's connections it came in on (1 = the first accepted)
    processing_id: str = "P"  # MSH-11: P production; T (test results of an analyzer being validated)


def read_results(message: hl7.Message) -> tuple[str, str, list[ResultIdentity]]:
    msh = message.segment("MSH")
    control_id = str(msh[10])
    message_type = str(msh[9])
    out: list[ResultIdentity] = []
    sample = ""
    for segment in message:
        name = str(segment[0])
        if name == "SPM":  # OUL^R22: the specimen ID is SPM-2
            sample = message.unescape(str(segment[2][0][0]).split("&")[0]) if len(segment) > 2 else ""
        elif name == "OBR" and not sample:
            sample = message.unescape(str(segment[3])) if len(segment) > 3 else ""
        elif name == "OBX":
            code_field = segment[3]
            instrument_code = str(code_field[0][3]) if len(code_field[0]) > 3 else str(code_field[0][0])
            # OBX-18 repeats: labbridge's instrument ID first, then the analyzer's own ID when it sent one.
            instrument = str(segment[18]).split(message.separators[2])[0] if len(segment) > 18 else ""
            value = message.unescape(str(segment[5]))
            out.append((instrument, sample, message.unescape(instrument_code), value))
    return control_id, message_type, out


OrderKind = Literal["OML^O21", "OML^O33", "ORM^O01"]
_ORDER_IDS = itertools.count(1)


def order_message(kind: OrderKind, *, sample: str, tests: Sequence[str], control_id: str, to: str = "LABBRIDGE",
                  priority: str = "R", patient: str = "") -> str:
    """One LIS order message for one sample (``to`` goes in MSH-5: an instrument or site id, or anything)."""
    ts = datetime.now().strftime("%Y%m%d%H%M%S")
    version = "2.3.1" if kind == "ORM^O01" else "2.5.1"
    structure = {"OML^O21": "^OML_O21", "OML^O33": "^OML_O33", "ORM^O01": ""}[kind]
    segments = [f"MSH|^~\\&|SIMLIS|HOSP|{to}|LAB|{ts}||{kind}{structure}|{control_id}|P|{version}"]
    if patient:
        segments.append(f"PID|1||{patient}^^^HOSP^PI||Doe^Jane")
    if kind == "OML^O33":
        segments.append(f"SPM|1|{sample}&SIMLIS||SER^Serum^HL70487")
    for test in tests:
        placer = f"P{next(_ORDER_IDS)}"
        if kind == "ORM^O01":
            segments += [f"ORC|NW|{placer}", f"OBR|1|{sample}||{test}|||{ts}" + "|" * 20 + f"^^^^^{priority}"]
        else:
            segments += [f"ORC|NW|{placer}", f"TQ1|1||||||||{priority}", f"OBR|1|{sample}||{test}^^L"]
    return "\r".join(segments) + "\r"


class SimulatedLis:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, mode: Mode = "AA", delay: float = 0.0,
                 error_text: str = "simulated rejection") -> None:
        self.host = host
        self.port = port
        self.mode: Mode = mode
        self.delay = delay
        self.error_text = error_text
        self.booked: dict[str, Booked] = {}  # accepted, by control ID
        self.messages_received = 0
        self.redeliveries = 0  # an already accepted control ID received again
        self.rejected = 0
        self.parse_errors = 0
        self.acks_dropped = 0
        self.connections_accepted = 0
        self.in_flight = 0  # messages received and not answered yet, over all connections
        self.most_in_flight = 0
        self.order_acks: list[hl7.Message] = []  # labbridge's answers to the orders this LIS sent
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    # ---- control -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def go_down(self) -> None:
        """Stop listening and drop every open connection (a LIS outage)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def come_back(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.go_down()

    # ---- books ---------------------------------------------------------------------------------

    def result_bookings(self) -> dict[ResultIdentity, set[str]]:
        """Each result identity with the control IDs under which it was accepted."""
        seen: dict[ResultIdentity, set[str]] = defaultdict(set)
        for booked in self.booked.values():
            if booked.processing_id != "P":  # a test message: kept out of the patient's record
                continue
            for identity in booked.results:
                seen[identity].add(booked.control_id)
        return seen

    @property
    def delivered(self) -> set[ResultIdentity]:
        return set(self.result_bookings())

    @property
    def test_results(self) -> set[ResultIdentity]:
        """Results received in test messages (MSH-11 ``T``), which a LIS keeps out of patient records."""
        return {identity for booked in self.booked.values() if booked.processing_id != "P"
                for identity in booked.results}

    @property
    def duplicates(self) -> int:
        """Results the LIS would have booked twice: accepted under more than one control ID."""
        return sum(1 for ids in self.result_bookings().values() if len(ids) > 1)

    # ---- protocol ------------------------------------------------------------------------------

    async def send_orders(self, host: str, port: int, message: str, *, ack_timeout_s: float = 10.0) -> hl7.Message:
        """Send one order message to labbridge and wait for its ACK (python-hl7's asyncio MLLP client)."""
        reader, writer = await hl7.mllp.open_hl7_connection(host, port, encoding="utf-8")
        try:
            writer.writemessage(hl7.parse(message))
            await writer.drain()
            async with asyncio.timeout(ack_timeout_s):
                ack: hl7.Message = await reader.readmessage()
            self.order_acks.append(ack)
            return ack
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections_accepted += 1
        connection = self.connections_accepted
        decoder = mllp.MllpDecoder()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for event in decoder.receive_data(data):
                    if isinstance(event, mllp.MllpMessage):
                        dropping = self.mode == "drop-ack"
                        self.in_flight += 1
                        self.most_in_flight = max(self.most_in_flight, self.in_flight)
                        try:
                            reply = await self._handle(event.payload, connection)
                        finally:
                            self.in_flight -= 1
                        if dropping:
                            self.acks_dropped += 1
                            return
                        if reply is not None:
                            writer.write(mllp.frame(reply))
                            await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, payload: bytes, connection: int) -> bytes | None:
        self.messages_received += 1
        try:
            message = hl7.parse(payload.decode("utf-8"))
            control_id, message_type, results = read_results(message)
        except Exception:
            self.parse_errors += 1
            return None
        if self.delay:
            await asyncio.sleep(self.delay)
        mode = self.mode
        if mode == "silent":
            return None
        if mode in ("AA", "drop-ack"):
            if control_id in self.booked:
                self.redeliveries += 1
            else:
                processing = str(message.segment("MSH")[11]) or "P"
                self.booked[control_id] = Booked(control_id, message_type, results, connection, processing)
            ack = message.create_ack("AA")
        else:
            self.rejected += 1
            ack = message.create_ack(mode)
            # MSA-3 (text message) carries the reason, as a LIS would.
            text = str(ack).rstrip("\r") + "|" + self.error_text + "\r"
            return text.encode("utf-8")
        return str(ack).encode("utf-8")


async def _main(args: argparse.Namespace) -> None:
    lis = SimulatedLis(args.host, args.port, mode=args.mode, delay=args.delay)
    await lis.start()
    print(f"simulated LIS listening on {lis.host}:{lis.port} (answers {lis.mode})", flush=True)
    try:
        while True:
            await asyncio.sleep(5)
            print(f"received {lis.messages_received} messages, booked {len(lis.booked)}, "
                  f"{len(lis.delivered)} results", flush=True)
    finally:
        await lis.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="labbridge simulate lis", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2575)
    parser.add_argument("--mode", choices=["AA", "AE", "AR", "silent", "drop-ack"], default="AA")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each ACK")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
