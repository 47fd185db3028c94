"""Configuration: one TOML file validated by pydantic models with ``extra="forbid"``.

Every problem is reported with the file, the key path (``instruments[2].transport.port``) and what
was expected; :func:`load_config` raises :class:`~labbridge.errors.ConfigError` with all of them at once.
Relative paths in the file (the store) are taken relative to the file's folder.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import difflib
import functools
import ipaddress
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from labbridge.campaign.stages import GateMode, Stage
from labbridge.errors import ConfigError
from labbridge.health import traffic
from labbridge.outbox import Route
from labbridge.redact import redact

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)


class SiteConfig(_Model):
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    """The site's id, named by its instruments' `site`."""
    name: str
    """The site's name as people say it (shown on the dashboard and in reports)."""


class TlsConfig(_Model):
    """TLS on a TCP link. Paths are relative to the config file's folder.

    Server side (labbridge listens): ``cert`` and ``key`` are required; with ``ca``, the analyzer must
    present a certificate signed by it (mutual TLS). Client side (labbridge dials an analyzer or a LIS):
    ``ca`` verifies the peer (the system's trust store when absent); ``cert``/``key`` present a client
    certificate when the peer asks for one; ``server_hostname`` is the name checked in the peer's
    certificate (default: the host dialed).
    """

    cert: str | None = None
    """This side's certificate (PEM): required when labbridge listens; a client certificate when it dials."""
    key: str | None = None
    """The private key of `cert` (PEM); keep it readable by labbridge's user only."""
    ca: str | None = None
    """The CA (PEM) that signs the peer's certificate: required of an analyzer when listening (mutual TLS); verifies
    the peer when dialing (absent: the system's trust store).
    """
    server_hostname: str | None = None
    """The name checked in the peer's certificate when dialing (absent: the host dialed)."""
    check_hostname: bool = True
    """Check the peer's certificate names the host (when dialing); turn off only for a peer known by address."""


# ---- what may connect (issue 18; docs/security.md "What may connect, fairness and limits") ----
def _check_networks(value: list[str]) -> list[str]:
    """Each item an IP address or network (``ipaddress``), e.g. "10.1.2.3" or "10.1.2.0/24"."""
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"an IP address or network (e.g. '10.1.2.3', '10.1.2.0/24'); got {item!r}") from None
    return value


def peer_allowed(allow_peers: list[str], address: str) -> bool:
    """Whether a peer at ``address`` may connect to a listener with this ``allow_peers`` (empty: anyone).
    An IPv4 peer seen through an IPv6 socket (``::ffff:10.1.2.3``) is matched as its IPv4 address."""
    if not allow_peers:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(item, strict=False) for item in allow_peers)


AllowPeers = Annotated[list[str], Field(default_factory=list)]
MaxConnections = Annotated[int, Field(ge=1, le=4096)]
# ---- end of what may connect ----


class TcpServerTransport(_Model):
    """labbridge listens; the analyzer dials in."""

    kind: Literal["tcp-server"]
    """labbridge listens; the analyzer connects to it."""
    host: str = "127.0.0.1"
    """The address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)."""
    port: Port
    """The TCP port the analyzer connects to (0: any free port, for tests)."""
    second_connection: Literal["reject", "replace"] = "reject"
    """What to do when a second connection arrives while one is open: refuse the newcomer (the safe default: a stray
    connection cannot cut off a working analyzer) or replace the old one (for analyzers that reconnect without
    closing). With "reject", an open connection that has received nothing for longer than the link's receive timeout
    (link.receive_timeout_s, or raw_idle_timeout_s) is replaced all the same: an idle connection never locks the
    analyzer out.
    """
    tls: TlsConfig | None = None
    """TLS on this link (absent: plain TCP)."""
    allow_peers: AllowPeers
    """Addresses or networks that may connect ("10.1.2.3", "10.1.2.0/24",
    IPv6 too); empty: any address. Others are closed at once, counted (peers_refused), logged with their address and
    shown.
    """
    max_connections: MaxConnections = 16
    """Connections open at once on this listener (all instruments of a shared listener together); more are closed at
    once and counted (over_limit).
    """
    idle_timeout_s: Seconds | None = None
    """A connection that receives nothing for this long, with no transfer under way, is closed (idle_closed). None (the
    default): kept open, as analyzers that hold one connection for days expect.
    """

    @field_validator("allow_peers")
    @classmethod
    def _allow_peers(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class TcpClientTransport(_Model):
    """labbridge dials the analyzer, and redials with capped exponential backoff and jitter."""

    kind: Literal["tcp-client"]
    """labbridge dials the analyzer (and redials with backoff)."""
    host: str
    """The analyzer's address."""
    port: Annotated[int, Field(ge=1, le=65535)]
    """The analyzer's TCP port."""
    connect_timeout_s: Seconds = 10.0
    """A connection attempt that takes longer fails (and is retried with backoff)."""
    reconnect_initial_s: Seconds = 1.0
    """The first wait before redialing; doubled at each failure, with jitter."""
    reconnect_max_s: Seconds = 60.0
    """The longest wait between redials."""
    tls: TlsConfig | None = None
    """TLS on this link (absent: plain TCP)."""


class SerialTransport(_Model):
    """An RS-232 port through pyserial: a device path (/dev/ttyS0, /dev/ttyUSB0, COM3) or a pyserial URL
    (socket://host:port, rfc2217://host:port, loop://). Reopened with capped backoff and jitter."""

    kind: Literal["serial"]
    """An RS-232 serial port."""
    port: Annotated[str, Field(min_length=1)]
    """The device (/dev/ttyUSB0, /dev/ttyS0, COM3) or a pyserial URL (socket://, rfc2217://, loop://)."""
    baudrate: Annotated[int, Field(gt=0, le=4_000_000)] = 9600
    """Bits per second, as set on the analyzer."""
    bytesize: Literal[5, 6, 7, 8] = 8
    """Data bits, as set on the analyzer."""
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    """None, even, odd, mark, space"""
    stopbits: float = 1
    """1, 1.5 or 2"""
    xonxoff: bool = False
    """Software flow control"""
    rtscts: bool = False
    """Hardware flow control"""
    reopen_initial_s: Seconds = 1.0
    """The first wait before reopening a port that failed or went away; doubled at each failure, with jitter."""
    reopen_max_s: Seconds = 60.0
    """The longest wait between reopening attempts."""

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, value: float) -> float:
        if value not in (1, 1.5, 2):
            raise ValueError("1, 1.5 or 2 stop bits")
        return value


Transport = Annotated[TcpServerTransport | TcpClientTransport | SerialTransport, Field(discriminator="kind")]
TRANSPORT_KINDS = frozenset({"tcp-server", "tcp-client", "serial"})


class LinkConfig(_Model):
    framing: Literal["e1381", "raw", "mllp", "au"] = "e1381"
    """E1381: ASTM LIS1-A framing; raw: ASTM records on a byte stream, no low-level framing (ASTM drivers); mllp: HL7
    v2 over MLLP (HL7 drivers); au: Beckman Coulter AU "online" texts (the beckman-au driver).
    """
    encoding: str = "latin-1"
    """ASTM: the character set of the records. HL7: the fallback when MSH-18 is empty or ASCII."""
    allow_missing_cr: bool = False
    """MLLP: accept a block ended by FS without the CR after it (some senders omit it)."""
    strict_frame_numbers: bool = True
    """ASTM LIS1-A: the first frame of a transfer is numbered 1. Some analyzers start at 0."""
    # Dialects (flags on the link profile; defaults are the standard).
    frame_numbers: bool = True
    """False: frames carry no frame number digit (Snibe MAGLUMI)"""
    checksums: bool = True
    """False: frames carry no checksum (Snibe MAGLUMI)"""
    record_terminator: Literal["cr", "lf", "crlf"] = "cr"
    """What ends a record inside a frame or on a raw link: CR (the standard), LF or CRLF."""
    lenient_whitespace: bool = False
    """Newlines before STX and extra CRs after frames are expected"""
    enq_eot_keepalive: bool = False
    """ENQ then EOT with no frame is the analyzer's keep-alive"""
    # LIS1-A timers (framing = "e1381"). The defaults are the standard's; change them only for an analyzer
    # that needs it (or in tests).
    reply_timeout_s: Seconds = 15.0
    """We send: wait this long for the reply to our ENQ or frame"""
    receive_timeout_s: Seconds = 30.0
    """We receive: a transfer silent this long is ended (incomplete)"""
    busy_wait_s: Seconds = 10.0
    """After a busy NAK to our ENQ, or a failed transfer, before our next ENQ"""
    contention_wait_s: Seconds = 20.0
    """After yielding to the analyzer's ENQ, before our own ENQ again"""
    interrupt_wait_s: Seconds = 15.0
    """After honouring a receiver interrupt, before our next ENQ"""
    honor_interrupt: bool = False
    """True: the analyzer's EOT in place of ACK stops our transfer"""
    raw_idle_timeout_s: Seconds = 30.0
    """Framing = "raw": a message not finished (no L record) this long after its last byte is incomplete."""
    # ---- limits (docs/security.md "What may connect, fairness and limits") ----
    # Over a limit the sender gets the protocol's refusal (E1381: NAK before the final ACK; HL7: AR with the
    # reason), what came is kept (incomplete transmissions / refused messages), counted and shown.
    max_frame_bytes: Annotated[int, Field(ge=256, le=16 * 1024 * 1024)] = 64 * 1024
    """One E1381 frame, one raw record"""
    max_message_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 4 * 1024 * 1024
    """One message"""
    max_records_per_message: Annotated[int, Field(ge=2, le=1_000_000)] = 10_000
    """ASTM records, HL7 segments"""
    max_bytes_per_s: Annotated[float, Field(gt=0)] = 1024.0 * 1024.0
    """Sustained bytes per second read from one connection (one second of burst); over it, reading is slowed (TCP flow
    control pushes back on the sender) and counted (throttled). Fairness between links.
    """
    # ---- framing = "au" (Beckman Coulter AU online link; labbridge.protocols.au_online) ----------------
    # They must match the AU's [PARAMETER] [ONLINE] [PROTOCOL] menu. receive_timeout_s above applies too:
    # a block, or a blocked text, silent this long is abandoned (kept as an incomplete transmission).
    au_bcc: bool = True
    """Each block ends with a block check character (BCC) after ETX/ETB"""
    au_acknowledge: bool = True
    """Class B: every block is answered ACK/NAK; false: class A (no answers)"""
    # ---- end of framing = "au" -------------------------------------------------------------------------

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown character set {value!r} (e.g. 'latin-1', 'cp1252', 'utf-8')") from None
        return value


class TestMapping(_Model):
    """How one instrument test code is mapped (keys of ``[instruments.tests]`` are instrument codes)."""

    code: str = ""
    """The LIS test code (same as a test_map entry; empty: test_map, else as sent)"""
    units: dict[str, str] = Field(default_factory=dict)
    """Instrument unit -> LIS unit, for this test"""
    values: dict[str, str] = Field(default_factory=dict)
    """Qualitative value -> LIS word, for this test"""
    action: Literal["send", "drop", "hold"] | None = None
    """None: drop_tests/hold_tests decide, else send"""


class TrafficWindow(_Model):
    """A window of the week, in the instrument's local time, in which it sends at least every ``every_s``."""

    days: str = "mon-sun"
    """For example "mon-fri", "sat,sun", "mon,wed-fri"."""
    hours: str = "00:00-24:00"
    """For example "07:00-19:00"; "22:00-06:00" crosses midnight (the night of the days named)"""
    every_s: Seconds
    """In this window, a message at least every this many seconds."""

    @field_validator("days")
    @classmethod
    def _days(cls, value: str) -> str:
        traffic.parse_days(value)
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        traffic.parse_hours(value)
        return value


def _traffic_kind(value: Any) -> str:
    return "every-windows" if isinstance(value, list | tuple) else "every-seconds"


# expect_message_every: seconds, or windows of the week (one error message per form, not both).
ExpectedTraffic = Annotated[
    Annotated[Seconds, Tag("every-seconds")] | Annotated[list[TrafficWindow], Tag("every-windows")],
    Discriminator(_traffic_kind),
]
TRAFFIC_TAGS = frozenset({"every-seconds", "every-windows"})


class InstrumentConfig(_Model):
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    """The instrument's id (logs, dashboard, API, store), unique in the node."""
    site: str
    """The id of its site (from [[sites]])."""
    driver: str
    """The driver that translates its messages (`labbridge drivers` lists those installed)."""
    name: str = ""
    """Its name as the lab says it (shown beside the id)."""
    enabled: bool = True
    """False: configured but not connected (its link is shown as planned)."""
    transport: Transport
    """How it is reached: `tcp-server`, `tcp-client` or `serial`."""
    link: LinkConfig = LinkConfig()
    """Its link protocol: framing, character set, dialect flags, timers, limits."""
    timezone: str = ""
    """Its clock's time zone (IANA name). Absent: the node's `timezone` (check-config lists who relies on it)."""
    timezone_from_node: bool = Field(default=False, exclude=True)
    """Set by Config, not by hand"""
    test_map: dict[str, str] = Field(default_factory=dict)
    """Instrument test code -> LIS test code. Codes not listed pass through unchanged, unless unmapped_tests = "dead-
    letter": then such results are held in the dead letters (naming the code) until the mapping is added and the
    dead letter retried.
    """
    unmapped_tests: Literal["pass", "dead-letter"] = "pass"
    """`pass`: a code without a mapping goes as sent; `dead-letter`: its results wait in the dead letters until the
    mapping is added.
    """
    unit_map: dict[str, str] = Field(default_factory=dict)
    """The instrument's unit -> the LIS's unit, for every test (after test_map; the mapping is applied to every
    driver's output in one place, labbridge.mapping).
    """
    value_map: dict[str, str] = Field(default_factory=dict)
    """Qualitative values ("POS", "+", "Reactive") to the LIS's words, matched ignoring case and blanks."""
    drop_tests: list[str] = Field(default_factory=list)
    """Instrument test codes whose results are dropped (never stored as results; the raw message is kept): instrument-
    internal codes.
    """
    hold_tests: list[str] = Field(default_factory=list)
    """Instrument test codes whose results are stored and shown but held from the LIS until an operator releases them
    (`outbox retry`).
    """
    tests: dict[str, TestMapping] = Field(default_factory=dict)
    """Per instrument test code: its LIS code, units and values (override the maps above), action."""
    expected_sender: str = ""
    """The sender name the analyzer puts in its header (ASTM H-5). If set, a message from another sender is not
    relayed: it goes to the dead letters as "unknown sender". Empty: any sender.
    """
    peer: list[str] = Field(default_factory=list)
    """Its addresses (IP addresses or networks, e.g. "10.1.2.3" or "10.1.2.0/24"), to tell it apart on a shared tcp-
    server listener: a message is attributed by the peer's address first, then by sender name (`sender`), then to
    the listener's default (`listener_default`).
    """
    sender: list[str] = Field(default_factory=list)
    """Its sender names (ASTM H-5, HL7 MSH-3 or MSH-4), to tell it apart on a shared listener."""
    listener_default: bool = False
    """On a shared listener: the instrument a message nothing else attributes goes to (one per listener)."""
    idle_after_s: Seconds = 1800.0
    """Connected but silent for longer than this: the link is shown as idle (when its traffic is neither configured in
    expect_message_every nor learned from the store yet).
    """
    stage: Stage = "live"
    """Its stage in the reconnection campaign when the store has none yet (then the store keeps it; see
    labbridge.campaign.stages). Until live, its results are stored but held from the LIS.
    """
    expect_message_every: ExpectedTraffic | None = None
    """Its expected traffic: a message at least every N seconds, or windows of the week (local time), e.g. [{days =
    "mon-fri", hours = "07:00-19:00", every_s = 300}]; outside every window nothing is expected. Absent: learned per
    hour of the week from the store's history ([health] learn_days).
    """
    undecoded_after_s: Seconds = 120.0
    """Bytes keep arriving but none forms a frame or message for this long (wrong baud rate or parity, missing
    framing): the link is shown degraded.
    """
    test_code_component: Annotated[int, Field(ge=1, le=16)] | None = None
    """The component of R-3 (universal
    test ID, ``^^^code``) that holds the test code, counted from 1. LIS2-A2 says the 4th; many analyzers put the
    code in the 1st and a letter or nothing in the 4th. Absent: the driver's own setting, else per message the
    component that varies across its results (`labbridge replay` warns when a sample's results all share one code).
    Drivers with a profile (profile.toml test_code) say where the code is themselves and ignore this.
    """
    test_name_component: Annotated[int, Field(ge=1, le=16)] | None = None
    """The component of R-3 that holds the analyzer's name for the test (sent to the LIS as OBX-3's text), counted from
    1. Absent: the 2nd (LIS2-A2's test name); a component holding the code is never the name.
    """

    @field_validator("peer")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return _check_networks(value)

    def lis_test_map(self) -> dict[str, str]:
        """Instrument test code -> LIS code: test_map, then each [tests] entry with a code."""
        out = dict(self.test_map)
        out.update({code: t.code for code, t in self.tests.items() if t.code})
        return out

    @model_validator(mode="before")
    @classmethod
    def _own_or_machine_zone(cls, data: Any) -> Any:
        """An instrument validated on its own (outside a Config, which gives it the node's) takes this machine's."""
        if isinstance(data, dict) and not data.get("timezone"):
            return {**data, "timezone": machine_timezone(), "timezone_from_node": True}
        return data

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return _known_zone(value)


class _Destination(_Model):
    """What every LIS destination shares: the outbox semantics."""

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    """The destination's id (outbox, dead letters, metrics)."""
    backoff_initial_s: Seconds = 1.0
    """Retry with exponential backoff and full jitter, capped: an overnight outage costs at most backoff_max_s of extra
    delay once the LIS is back.
    """
    backoff_max_s: Seconds = 300.0
    """The longest wait between two tries of one result (the cap of the exponential backoff)."""
    give_up_after_s: Seconds = 3 * 24 * 3600.0
    """A result still undelivered after this long goes to the dead letters for a person to look at."""
    backlog_per_minute: Annotated[float, Field(gt=0)] = 60.0
    """Backlog items (old results an analyzer resends) are sent at most this often; live ones first."""
    sending_application: str = "LABBRIDGE"
    """Used by the HL7 rendering (MLLP, and file drops in HL7 format)."""
    sending_facility: str = ""
    """MSH-4 of the HL7 messages labbridge sends."""
    receiving_application: str = "LIS"
    """MSH-5 of the HL7 messages labbridge sends."""
    receiving_facility: str = ""
    """MSH-6 of the HL7 messages labbridge sends."""
    validating: GateMode = "hold"
    """Results of an instrument not yet live (validating): held until sign-off, or sent at once flagged as test results
    (HL7 MSH-11 "T", JSON "test": true) that the LIS keeps out of patient records.
    """

    qc: Literal["hold", "send-marked", "drop"] = "hold"
    """QC results
    (a control sample, as the driver recognises it): "hold" (stored, shown as held, sent only when an operator
    releases them: `labbridge outbox retry`), "send-marked" (sent, marked as QC: HL7 SPM-11 "Q", ASTM O-12 "Q", JSON
    "kind": "qc"), "drop" (stored and shown, never sent here). Default "hold": a LIS that does not read the QC mark
    would file a control as a patient's result.
    """
    results: Literal["all", "qc"] = "all"
    """Which results this destination takes: "all" (patient results, and QC as `qc` says) or "qc" (QC only: a QC
    system's feed; `qc` then defaults to "send-marked").
    """
    coding_system: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,20}$")] = "L"
    """HL7 OBX-3.3: the coding system of the LIS test codes (table 0396: "L" local, "LN" LOINC, "99xxx")."""
    missing_patient_fields: Literal["null", "empty"] = "null"
    """HL7: a required PID field (PID-3 patient ID, PID-5 name) the analyzer did not send: "null" sends "" (HL7's
    explicit null: strictly valid v2.5.1, what labbridge always sent), "empty" leaves it empty (not strictly valid:
    PID-3/PID-5 are required; for a LIS that updates patients from results and reads "" as "delete the stored
    name").
    """
    pid_without_patient: Literal["omit", "send"] = "omit"
    """HL7: when the analyzer sent no patient at all (no ID, no name, nothing): "omit" sends no PID (the patient group
    is optional in ORU^R01 and OUL^R22), "send" a PID with its required fields as above.
    """

    @model_validator(mode="before")
    @classmethod
    def _qc_feed_sends_qc(cls, data: Any) -> Any:
        """A QC-only destination (``results = "qc"``) sends its QC marked unless told otherwise."""
        if isinstance(data, dict) and data.get("results") == "qc" and "qc" not in data:
            return {**data, "qc": "send-marked"}
        return data

    @model_validator(mode="after")
    def _qc_feed_takes_qc(self) -> _Destination:
        if self.results == "qc" and self.qc == "drop":
            raise ValueError('results = "qc" takes only QC results and qc = "drop" sends none: nothing would '
                             'ever go to this destination (use qc = "send-marked" or "hold")')
        return self

    def route(self) -> Route:
        """Which results this destination takes, for the store (decided when results are stored)."""
        return Route(self.id, qc=self.qc, results=self.results)
    # ---- end of issue 20 --------------------------------------------------------------------------------


class MllpDestination(_Destination):
    """A LIS that takes HL7 v2.5.1 results (ORU^R01 or OUL^R22) over MLLP and answers with an ACK."""

    kind: Literal["mllp"] = "mllp"
    """A LIS that takes HL7 over MLLP (the default kind)."""
    host: str
    """The LIS's address."""
    port: Port
    """The LIS's MLLP port."""
    message_type: Literal["ORU^R01", "OUL^R22"] = "ORU^R01"
    """ORU^R01 (the default; what most LIS take) or OUL^R22 (IHE LAW shape), both HL7 v2.5.1."""
    tls: TlsConfig | None = None
    """TLS to the LIS (absent: plain TCP)."""
    connect_timeout_s: Seconds = 10.0
    """A connection attempt that takes longer fails (the result is retried with backoff)."""
    ack_timeout_s: Seconds = 30.0
    """A message not acknowledged within this is sent again (the LIS recognises it by its control ID)."""
    connections: Annotated[int, Field(ge=1, le=16)] = 1
    """MLLP connections open to this LIS at once, each with one message waiting for its ACK. 1 is HL7's original mode;
    more drain a backlog faster if the LIS takes several connections on its port. A sample's results always go over
    the same connection, in order.
    """
    dead_letter_codes: list[str] = Field(default_factory=lambda: ["AE", "AR", "CE", "CR"])
    """ACK codes that go to the dead letters with the LIS's reason instead of being resent: AE/CE (the message has an
    error: fix it) and AR/CR (the LIS rejects it). A LIS that answers AR for a passing condition (busy, its database
    down) can be given ["AE", "CE"]: AR is then retried with backoff.
    """


class FileDestination(_Destination):
    """A folder the LIS picks files up from: one file per message, named by its control ID, written atomically."""

    kind: Literal["file"]
    """A folder the LIS picks files up from."""
    directory: str
    """The folder (relative to the config file's folder); each file is written whole, then renamed."""
    format: Literal["hl7", "astm", "json"] = "hl7"
    """`hl7` (ORU^R01), `astm` (E1394 records) or `json` (canonical JSON)."""


class HttpDestination(_Destination):
    """An HTTP(S) endpoint that takes canonical JSON by POST (2xx delivered, 4xx refused, 5xx retried)."""

    kind: Literal["http"]
    """An HTTP(S) endpoint that takes JSON by POST."""
    url: Annotated[str, Field(pattern=r"^https?://")]
    """The endpoint (http:// or https://); credentials in it are never shown or logged."""
    timeout_s: Seconds = 30.0
    """A POST not answered within this is retried with backoff."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (e.g. an API key the LIS asks for)."""
    verify_tls: bool = True
    """Verify the endpoint's certificate (https); turning it off is a risky setting check-config warns about."""


def _destination_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "mllp"))
    return str(getattr(value, "kind", "mllp"))


Destination = Annotated[
    Annotated[MllpDestination, Tag("mllp")] | Annotated[FileDestination, Tag("file")]
    | Annotated[HttpDestination, Tag("http")],
    Discriminator(_destination_kind),
]
DESTINATION_KINDS = frozenset({"mllp", "file", "http"})


class LisOrdersConfig(_Model):
    """An MLLP listener where the LIS sends orders (HL7 OML^O21, OML^O33, ORM^O01).

    Each order goes to the instrument or site named in MSH-5 (receiving application) when it names one,
    else to ``instrument`` (or ``site``: any instrument of that site) given here. The LIS gets AA once
    the orders are stored, AE with the reason when they cannot be used (unknown instrument or test).
    """

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    """The listener's id."""
    host: str = "127.0.0.1"
    """The address to listen on."""
    port: Port
    """The MLLP port the LIS sends orders to."""
    instrument: str = ""
    """The instrument an order goes to when MSH-5 names none."""
    site: str = ""
    """Else, the site (any of its instruments that does the test)."""
    encoding: str = "utf-8"
    """The character set when MSH-18 is empty."""
    tls: TlsConfig | None = None
    """TLS on this listener (absent: plain TCP)."""
    allow_peers: AllowPeers
    """The LIS's addresses or networks; empty: any address.
    Others are closed at once, counted, logged, shown.
    """
    max_connections: MaxConnections = 8
    """Open at once; more are closed at once"""
    idle_timeout_s: Seconds | None = None
    """A connection silent this long is closed; None: kept"""
    max_message_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 4 * 1024 * 1024
    """A bigger HL7 message is refused (AR with the reason) and kept for inspection."""
    max_bytes_per_s: Annotated[float, Field(gt=0)] = 1024.0 * 1024.0
    """Sustained bytes per second read from one connection; over it, reading is slowed."""

    @field_validator("allow_peers")
    @classmethod
    def _allow_peers(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class StoreConfig(_Model):
    path: str = "labbridge.db"
    """The SQLite file (relative to the config file's folder); its folder must not be world-writable."""
    max_size_mb: Annotated[float, Field(gt=0)] | None = None
    """A cap on the database file: past it, commits fail as on a full disk (analyzers are not acknowledged and retry)
    instead of filling a disk other software needs. None: no cap.
    """
    group: str | None = None
    """The store's files are 0600; with a group name here, 0640 and owned by that
    group (a backup agent's, say). Its folder must not be writable by everyone.
    """


class RetentionConfig(_Model):
    """How long the store keeps what no longer waits for anyone. Pending and dead items are never pruned."""

    raw_messages_days: Annotated[float, Field(gt=0)] = 90.0
    """Raw messages as received (kept for re-decoding and inspection)."""
    delivered_days: Annotated[float, Field(gt=0)] = 90.0
    """Delivered outbox items and their results"""
    incomplete_days: Annotated[float, Field(gt=0)] = 30.0
    """Transmissions that never became a message"""
    history_days: Annotated[float, Field(gt=0)] = 90.0
    """Link state changes and daily figures per instrument"""
    prune_interval_s: Seconds = 3600.0
    """How often the store is pruned."""


class HistoryConfig(_Model):
    sample_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """How often every instrument's shown state and counters are sampled into the store's link history
    (labbridge.health.history); explicit state changes are caught at once, idle/degraded when sampled.
    """


class BacklogConfig(_Model):
    older_than_s: Seconds = 2 * 3600.0
    """A result measured longer than this before it reached labbridge is backlog (an analyzer resending what it kept
    during an outage): labelled, and paced per destination (backlog_per_minute).
    """


class HttpConfig(_Model):
    enabled: bool = True
    """Serve the HTTP API, the dashboard and /metrics."""
    host: str = "127.0.0.1"
    """The address to listen on (beyond loopback, authentication is required)."""
    port: Port = 8470
    """The TCP port of the API and dashboard."""
    auth: Literal["auto", "required", "off"] = "auto"
    """Who may use
    the API and dashboard. auto: required whenever `host` is not a loopback address, off on loopback (local tools
    and tests); required: always; off: nobody is asked (refused beyond loopback).
    """
    allowed_hosts: list[str] = Field(default_factory=list)
    """Host names (or addresses) besides the listening host, localhost, 127.0.0.1 and ::1 that a request's Host and
    Origin may name, e.g. the name a lab PC's browser uses (DNS-rebinding protection).
    """
    tls_cert: str | None = None
    """TLS for the API (paths relative to the config file's folder): certificate chain and key, both or neither;
    client_ca: require a client certificate signed by this CA (in addition to a login or token).
    """
    tls_key: str | None = None
    """The private key of `tls_cert` (PEM)."""
    client_ca: str | None = None
    """Require client certificates signed by this CA (PEM) for the API."""
    session_idle_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 8 * 3600.0
    """A dashboard session ends after this long without a request (log in again)."""

    @property
    def loopback(self) -> bool:
        """Whether the API listens on a loopback address only."""
        return is_loopback(self.host)

    @property
    def auth_required(self) -> bool:
        return self.auth == "required" or (self.auth == "auto" and not self.loopback)

    @model_validator(mode="after")
    def _safe(self) -> HttpConfig:
        if self.enabled and self.auth == "off" and not self.loopback:
            raise ValueError(f'[http] auth = "off" with the API listening on {self.host!r} (beyond loopback) would let '
                             'anyone on the network act on it: use auth = "auto" or "required"')
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("[http] tls_cert and tls_key go together (both, or neither)")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("[http] client_ca needs tls_cert and tls_key (client certificates are a TLS feature)")
        return self


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); a name or wildcard is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
# ---- end security ----------------------------------------------------------------------------------------


# ---- dashboard (issue 17, part 1) ----
class DashboardConfig(_Model):
    """What the dashboard's pages show (labbridge.web.instrument_page)."""

    show_patient_identifiers: bool = False
    """Recent messages on an instrument's page show patients' identifiers (patient ids; sample ids of patient samples)
    only when this is true; by default they are masked (a wall screen is seen by passers-by).
    """
# ---- end dashboard ----


class HealthConfig(_Model):
    """How link health is judged from the store (labbridge.health): read off the links' path, periodically."""

    check_interval_s: Seconds = 5.0
    """Each link's shown state is judged (and a change logged) this often"""
    refresh_interval_s: Seconds = 30.0
    """LIS backlog, dead letters, last message and delivery per instrument"""
    learn_interval_s: Seconds = 3600.0
    """Expected traffic learned again from the messages"""
    learn_days: Annotated[int, Field(ge=7, le=365)] = 28
    """Of history (at most the messages retention keeps)"""
    lis_backlog_after_s: Seconds = 600.0
    """An instrument's results waiting this long for the LIS: degraded"""


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """The least level written: debug, info, warning or error."""


# ---- [mqtt]: health published to a broker for the fleet view (labbridge.fleet, docs/mqtt.md) ----------------

class MqttConfig(_Model):
    """Publish this node's health to an MQTT broker (labbridge.fleet.publisher; topics in docs/mqtt.md).

    Absent: nothing is published and aiomqtt is never imported. The data path never waits for the broker."""

    url: Annotated[str, Field(pattern=r"^mqtts?://[^/:@\s]+(:[0-9]{1,5})?/?$",
                              description="mqtt://host:1883, or mqtts://host:8883 for TLS")]
    node: Annotated[str, Field(pattern=r"^$|" + ID_PATTERN,
                               description="the node's name in the topics (empty: the config's `node`)")] = ""
    username: str = ""
    """The broker's user name (absent: anonymous)."""
    password: str = ""
    """Prefer password_file: the config file is often readable by more people"""
    password_file: str = Field(default="", description="a file whose first line is the password")
    tls: TlsConfig | None = Field(default=None, description="CA and client certificate for mqtts:// (paths "
                                                            "relative to the config file)")
    keepalive_s: Annotated[int, Field(ge=5, le=3600, description="MQTT keep-alive; the broker declares the node "
                                                                 "offline (its last will) 1.5 keep-alives after "
                                                                 "it last heard from it")] = 30
    refresh_s: Annotated[float, Field(ge=1, le=3600, description="every instrument's health is republished this "
                                                                 "often, changed or not")] = 60.0
    queue_limit: Annotated[int, Field(ge=10, le=1_000_000, description="events kept while the broker is away "
                                                                       "(the oldest are dropped and counted)")] = 1000
    dashboard_url: str = Field(default="", description="this node's dashboard as the fleet view should link it "
                                                       "(empty: the HTTP surface's own address)")

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password and self.password_file:
            raise ValueError("set password or password_file, not both")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.url.startswith("mqtts://")

# ---- end [mqtt] -------------------------------------------------------------------------------------------------


# ---- signed bundles between zones (issue 18: labbridge.bundles, `labbridge bundle verify|extract -c`) ----
class BundlesConfig(_Model):
    """Public keys (PEM files, paths relative to the config file's folder) whose signed bundles this node
    accepts: ``labbridge bundle verify|extract -c CONFIG`` trusts them (with any ``--trusted`` given)."""

    trusted_keys: list[str] = Field(default_factory=list)
    """Public key files (PEM, `labbridge bundle keygen`) a bundle must be signed with to be accepted here."""
# ---- end of signed bundles ----


class Config(_Model):
    node: Annotated[str, Field(pattern=ID_PATTERN)] = "labbridge"
    """This node's name (one per clean zone): in logs, MQTT topics and the dashboard's title."""
    timezone: str = ""
    """The site's time zone (IANA name, e.g. "Europe/Brussels"), for instruments without their own. Absent: this
    machine's zone; nothing falls back to one city's zone unsaid (check-config reports where it came from).
    """
    timezone_from_machine: bool = Field(default=False, exclude=True)
    """Set by the validator, not by hand"""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """Auto: uvloop where installed (several times less CPU per frame), else asyncio's loop (labbridge.aio)"""
    store: StoreConfig = StoreConfig()
    """The SQLite store: every message is committed to it before the analyzer's final ACK."""
    http: HttpConfig = HttpConfig()
    """The HTTP API, the dashboard and /metrics."""
    log: LogConfig = LogConfig()
    """Logging (JSON lines on stderr when it is not a terminal)."""
    retention: RetentionConfig = RetentionConfig()
    """How long the store keeps what no longer waits for anyone."""
    history: HistoryConfig = HistoryConfig()
    """Sampling of every link's state and counters into the store's link history."""
    backlog: BacklogConfig = BacklogConfig()
    """What counts as backlog: old results an analyzer resends after an outage."""
    health: HealthConfig = HealthConfig()
    """How link health is judged."""
    sites: list[SiteConfig] = Field(default_factory=list)
    """The sites this node serves (their instruments name them by id)."""
    instruments: list[InstrumentConfig] = Field(default_factory=list)
    """The analyzers: one table each, with its driver, transport and link."""
    lis: list[Destination] = Field(default_factory=list)
    """The LIS destinations results are relayed to (MLLP, a folder of files, or HTTP)."""
    lis_orders: list[LisOrdersConfig] = Field(default_factory=list)
    """MLLP listeners where the LIS sends orders for the analyzers."""
    mqtt: MqttConfig | None = None
    """Health published to an MQTT broker for the fleet view (docs/mqtt.md); absent: nothing is published."""
    dashboard: DashboardConfig = DashboardConfig()
    """What the dashboard shows (patient identifiers are masked unless allowed)."""
    bundles: BundlesConfig = BundlesConfig()
    """Signed bundles between zones: the public keys a bundle must be signed with (docs/security.md)."""

    @model_validator(mode="before")
    @classmethod
    def _time_zones(cls, data: Any) -> Any:
        """The node's zone (the config's, else this machine's) given to every instrument without its own."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if not data.get("timezone"):
            data["timezone"], data["timezone_from_machine"] = machine_timezone(), True
        instruments = data.get("instruments")
        if isinstance(instruments, list):
            data["instruments"] = [{**i, "timezone": data["timezone"], "timezone_from_node": True}
                                   if isinstance(i, dict) and not i.get("timezone") else i for i in instruments]
        return data

    @field_validator("timezone")
    @classmethod
    def _known_node_zone(cls, value: str) -> str:
        return _known_zone(value)

    def site_name(self, site_id: str) -> str:
        for site in self.sites:
            if site.id == site_id:
                return site.name
        return site_id


def _known_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (e.g. 'Europe/Brussels', 'UTC')") from None
    return value


@functools.lru_cache(maxsize=1)
def machine_timezone() -> str:
    """This machine's zone as an IANA name (/etc/timezone, or where /etc/localtime points), else "UTC"."""
    names: list[str] = []
    with contextlib.suppress(OSError):
        names.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    with contextlib.suppress(OSError, ValueError):
        parts = Path("/etc/localtime").resolve().parts
        names.append("/".join(parts[parts.index("zoneinfo") + 1:]))
    for name in names:
        with contextlib.suppress(ValueError):
            if name:
                return _known_zone(name)
    return "UTC"


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in TRANSPORT_KINDS or part in DESTINATION_KINDS or part in TRAFFIC_TAGS:
            continue  # the discriminator tag pydantic adds to the location of a tagged union
        else:
            out += f".{part}" if out else part
    return out


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean `x`?)`` for the nearest of ``choices`` to a mistyped ``word``, else ``""``."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation can hold (through Annotated, unions, lists and dict values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        args = args[:1]
    return [m for arg in args for m in models_in(arg)]


def keys_at(loc: tuple[int | str, ...]) -> set[str]:
    """The keys the config allows in the table at ``loc`` (a pydantic error location), for suggestions."""
    models: list[type[BaseModel]] = [Config]
    key_of_dict = False
    for part in loc:
        if isinstance(part, int) or key_of_dict:
            key_of_dict = False
            continue
        if part in TRANSPORT_KINDS or part in DESTINATION_KINDS:  # the tag of a tagged union: that member
            tagged = [m for m in models if "kind" in m.model_fields
                      and part in get_args(m.model_fields["kind"].annotation)]
            models = tagged or models
            continue
        if part in TRAFFIC_TAGS:
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if not fields:
            return set()
        key_of_dict = any(get_origin(f.annotation) is dict for f in fields)
        models = [m for f in fields for m in models_in(f.annotation)]
    return {name for m in models for name, f in m.model_fields.items() if not f.exclude}


def _expected(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        loc = tuple(error["loc"])
        return "unknown key (not allowed here)" + did_you_mean(str(loc[-1]), keys_at(loc[:-1]))
    if error["type"] == "missing":
        return "required key is missing"
    if error["type"] in ("int_type", "float_type") and isinstance(error.get("input"), str):
        return f"a number, not text: write it without quotes (got {error['input']!r})"
    if error["type"] == "bool_type" and isinstance(error.get("input"), str | int):
        return f"true or false, without quotes (got {error['input']!r})"
    if "input" in error and not isinstance(error["input"], dict | list):
        return redact(f"{msg} (got {error['input']!r})")  # a URL's password is never echoed
    return msg


def _cross_check(config: Config) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []

    def unique(items: list[Any], section: str) -> None:
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.id in seen:
                problems.append((f"{section}[{i}].id",
                                 f"duplicate id {item.id!r} (already used by {section}[{seen[item.id]}])"))
            seen.setdefault(item.id, i)

    unique(config.sites, "sites")
    unique(config.instruments, "instruments")
    unique(config.lis, "lis")
    unique(config.lis_orders, "lis_orders")
    for i, listener in enumerate(config.lis_orders):
        if listener.instrument and listener.instrument not in {inst.id for inst in config.instruments}:
            problems.append((f"lis_orders[{i}].instrument",
                             f"an instrument id from [[instruments]]; got {listener.instrument!r}"))
        if listener.site and listener.site not in {site.id for site in config.sites}:
            problems.append((f"lis_orders[{i}].site", f"a site id from [[sites]]; got {listener.site!r}"))
        if listener.tls is not None and not (listener.tls.cert and listener.tls.key):
            problems.append((f"lis_orders[{i}].tls", "a listening TLS link needs both cert and key"))
    site_ids = {s.id for s in config.sites}
    listeners: dict[tuple[str, int], list[int]] = {}
    serial_ports: dict[str, int] = {}
    for i, inst in enumerate(config.instruments):
        if inst.site not in site_ids:
            known = ", ".join(sorted(site_ids)) or "none defined"
            problems.append((f"instruments[{i}].site", f"a site id from [[sites]] (known: {known}); got {inst.site!r}"
                             + did_you_mean(inst.site, site_ids)))
        t = inst.transport
        if isinstance(t, TcpServerTransport) and t.tls is not None and not (t.tls.cert and t.tls.key):
            problems.append((f"instruments[{i}].transport.tls", "a listening TLS link needs both cert and key"))
        if isinstance(t, TcpServerTransport) and t.port != 0 and inst.enabled:
            listeners.setdefault((t.host, t.port), []).append(i)
        problems += _mapping_problems(inst, f"instruments[{i}]")
        if isinstance(t, SerialTransport) and inst.enabled:
            if t.port in serial_ports:
                problems.append((f"instruments[{i}].transport.port",
                                 f"a serial port no other instrument uses; {t.port} is already used by "
                                 f"instruments[{serial_ports[t.port]}]"))
            serial_ports.setdefault(t.port, i)
    for (host, port), members in listeners.items():
        if len(members) > 1:
            problems += shared_listener_problems(config.instruments, members, f"{host}:{port}")
    return problems


def _mapping_problems(inst: InstrumentConfig, where: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for code, rule in inst.tests.items():
        if rule.code and code in inst.test_map and inst.test_map[code] != rule.code:
            problems.append((f"{where}.tests.{code}.code",
                             f"one LIS code per instrument code; test_map maps {code!r} to {inst.test_map[code]!r}"))
    both = sorted(set(inst.drop_tests) & set(inst.hold_tests))
    if both:
        problems.append((f"{where}.hold_tests", f"a code is dropped or held, not both: {', '.join(both)} "
                                                "also in drop_tests"))
    return problems


def _networks(cfg: InstrumentConfig) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(p, strict=False) for p in cfg.peer]


def _overlap(a: InstrumentConfig, b: InstrumentConfig) -> bool:
    """Could one message fit both? Peers overlap (both any, or networks meet) and senders overlap."""
    if bool(a.peer) != bool(b.peer):
        return False  # an address one of them names is matched before the other is considered
    if a.peer and not any(x.overlaps(y) for x in _networks(a) for y in _networks(b)
                          if x.version == y.version):
        return False
    if bool(a.sender) != bool(b.sender):
        return False  # a named sender is matched before one without a name
    return not a.sender or bool(set(a.sender) & set(b.sender))


def shared_listener_problems(instruments: list[InstrumentConfig], members: list[int],
                             address: str) -> list[tuple[str, str]]:
    """Instruments on one listener must agree on the link and be told apart (see :mod:`labbridge.sharing`)."""
    problems: list[tuple[str, str]] = []
    first = instruments[members[0]]
    assert isinstance(first.transport, TcpServerTransport)
    defaults = [i for i in members if instruments[i].listener_default]
    for i in members[1:]:
        inst = instruments[i]
        t = inst.transport
        assert isinstance(t, TcpServerTransport)
        if inst.link != first.link or t != first.transport:
            problems.append((f"instruments[{i}].link",
                             f"the same transport and link settings as instruments[{members[0]}], which shares "
                             f"{address} with it (bytes are read before the sender is known)"))
    problems.extend((f"instruments[{i}].listener_default",
                     f"one default per listener; instruments[{defaults[0]}] is already the default on {address}")
                    for i in defaults[1:])
    for n, i in enumerate(members):
        a = instruments[i]
        if not a.peer and not a.sender and not a.listener_default:
            problems.append((f"instruments[{i}].sender",
                             f"instruments sharing {address} must be told apart: set peer (its IP address), "
                             "sender (its name in ASTM H-5 or HL7 MSH-3/MSH-4), or make it the listener_default"))
            continue
        for j in members[n + 1:]:
            b = instruments[j]
            if (a.peer or a.sender) and (b.peer or b.sender) and _overlap(a, b):
                problems.append((f"instruments[{j}].sender",
                                 f"instruments[{i}] and instruments[{j}] share {address} and cannot be told apart: "
                                 "their peer addresses and sender names overlap; give each its own"))
    return problems


# A driver's ``[instruments.link]`` defaults by driver name (``labbridge.driver.driver_link_defaults``).
LinkDefaults = Callable[[str], Mapping[str, str | int | float | bool]]


def with_link_defaults(config: Config, defaults_for: LinkDefaults, source: str = "<config>") -> Config:
    """``config`` with each instrument's ``link`` on top of its driver's link defaults.

    A key the instrument sets explicitly wins; a key it leaves out takes the driver's value (e.g. a
    MAGLUMI instrument gets ``frame_numbers = false`` and ``checksums = false``, an HL7 driver
    ``framing = "mllp"``). ``defaults_for`` gives a driver's defaults, empty for an unknown driver or one
    that fails to load (that is reported where the driver is used). Parsing a config loads no driver:
    whoever loads the drivers applies this (the daemon, ``check-config``, the CLI's offline actions), so
    they all see the same settings. Instruments sharing a listener are checked again on the merged links.
    """
    instruments: list[InstrumentConfig] = []
    problems: list[tuple[str, str]] = []
    for i, inst in enumerate(config.instruments):
        defaults = defaults_for(inst.driver)
        if not defaults:
            instruments.append(inst)
            continue
        try:
            link = LinkConfig.model_validate({**defaults, **inst.link.model_dump(exclude_unset=True)})
        except ValidationError as exc:
            problems += [(_key_path(("instruments", i, "link", *e["loc"])), _expected(e)) for e in exc.errors()]
            continue
        instruments.append(inst.model_copy(update={"link": link}))
    merged = config.model_copy(update={"instruments": instruments})
    problems = problems or _cross_check(merged)
    if problems:
        raise ConfigError(source, problems)
    return merged


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate and cross-check a config; drivers' link defaults are not applied (see :func:`with_link_defaults`)."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = [(_key_path(e["loc"]), _expected(e)) for e in errors]
        raise ConfigError(source, problems + _salvaged_cross_check(data, errors)) from None
    problems = _cross_check(config)
    if problems:
        raise ConfigError(source, problems)
    return config


LIST_SECTIONS = ("sites", "instruments", "lis", "lis_orders")
_ITEM_REF = re.compile(r"\b(sites|instruments|lis_orders|lis)\[(\d+)\]")


def _without(data: Any, loc: tuple[int | str, ...]) -> bool:
    """Remove the value at an error's ``loc`` from nested ``data`` in place (so its default applies)."""
    path = [p for p in loc if p not in TRANSPORT_KINDS and p not in DESTINATION_KINDS and p not in TRAFFIC_TAGS]
    for part in path[:-1]:
        at_key = isinstance(data, dict) and part in data
        at_index = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (at_key or at_index):
            return False
        data = data[part]
    if isinstance(data, dict) and path and path[-1] in data:
        del data[path[-1]]
        return True
    return False


def _salvaged_cross_check(data: dict[str, Any], errors: Iterable[Any]) -> list[tuple[str, str]]:
    """The cross-checks (duplicate ids, shared listeners, references) on what is valid of an invalid config,
    so that one ``check-config`` run reports every problem. Each wrong value is set aside (its default
    applies), an item missing a required key is set aside whole, and the problems found on the rest are
    named by the items' places in the file."""
    kept: dict[str, Any] = copy.deepcopy(data)
    bad: dict[str, set[int]] = {section: set() for section in LIST_SECTIONS}
    for _ in range(4):  # a value set aside can only reveal errors further down: a few rounds are enough
        still: list[Any] = []
        for error in errors:
            loc = tuple(error["loc"])
            item = len(loc) > 1 and loc[0] in bad and isinstance(loc[1], int)
            if error["type"] == "missing" or not _without(kept, loc):
                if item:
                    bad[str(loc[0])].add(int(loc[1]))
                elif loc:
                    kept.pop(str(loc[0]), None)
        places: dict[str, list[int]] = {}
        trial = dict(kept)
        for section in LIST_SECTIONS:
            items = trial.get(section)
            if isinstance(items, list):
                places[section] = [i for i in range(len(items)) if i not in bad[section]]
                trial[section] = [items[i] for i in places[section]]
        try:
            config = Config.model_validate(trial)
            break
        except ValidationError as exc:
            for error in exc.errors():  # name the places in ``kept`` (before items were set aside)
                where = list(error["loc"])
                if len(where) > 1 and where[0] in places and isinstance(where[1], int):
                    where[1] = places[str(where[0])][where[1]]
                still.append({**error, "loc": tuple(where)})
            errors = still
    else:
        return []

    def place(match: re.Match[str]) -> str:
        section, index = match.group(1), int(match.group(2))
        return f"{section}[{places[section][index]}]" if section in places else match.group(0)

    problems = _raw_duplicates(data) if any(bad.values()) else []
    for key, what in _cross_check(config):
        if any(bad.values()) and what.startswith("duplicate id"):
            continue  # found on the file as written, items set aside included
        if bad["sites"] and key.endswith(".site"):
            continue  # it may name a site whose own entry has an error
        if bad["instruments"] and key.endswith(".instrument"):
            continue
        problems.append((_ITEM_REF.sub(place, key), _ITEM_REF.sub(place, what)))
    return problems


def _raw_duplicates(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Duplicate ids in the list sections as written, whether or not their items are otherwise valid."""
    problems: list[tuple[str, str]] = []
    for section in LIST_SECTIONS:
        items = data.get(section)
        seen: dict[str, int] = {}
        for i, item in enumerate(items if isinstance(items, list) else []):
            ident = item.get("id") if isinstance(item, dict) else None
            if isinstance(ident, str) and ident in seen:
                problems.append((f"{section}[{i}].id",
                                 f"duplicate id {ident!r} (already used by {section}[{seen[ident]}])"))
            elif isinstance(ident, str):
                seen[ident] = i
    return problems


def in_file_order(problems: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Problems sorted as their keys come in a config file: top-level keys, then each list's items in order."""
    def order(problem: tuple[str, str]) -> tuple[int, int, str]:
        match = _ITEM_REF.match(problem[0])
        if match is None:
            return (0, 0, problem[0])
        return (1 + LIST_SECTIONS.index(match.group(1)), int(match.group(2)), problem[0])

    return sorted(problems, key=order)


def load_config(path: str | Path) -> Config:
    """Read, validate and cross-check a config file; relative store paths follow the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), [("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [("", f"cannot read the file: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [("", f"not valid TOML: {exc}")]) from None
    config = parse_config(data, str(path))
    store_path = Path(config.store.path)
    if not store_path.is_absolute():
        store_path = (path.parent / store_path).resolve()
        config = config.model_copy(update={"store": config.store.model_copy(update={"path": str(store_path)})})
    lis = [d.model_copy(update={"directory": str((path.parent / d.directory).resolve())})
           if isinstance(d, FileDestination) and not Path(d.directory).is_absolute() else d for d in config.lis]
    if lis != config.lis:
        config = config.model_copy(update={"lis": lis})
    config = _resolve_mqtt_paths(config, path.parent)  # [mqtt]
    config = _resolve_tls_paths(config, path.parent)
    keys = [str((path.parent / k).resolve()) for k in config.bundles.trusted_keys]  # signed bundles (issue 18)
    return config.model_copy(update={"bundles": config.bundles.model_copy(update={"trusted_keys": keys})})


def _resolve_tls_paths(config: Config, base: Path) -> Config:
    def fix(tls: TlsConfig | None) -> TlsConfig | None:
        if tls is None:
            return None
        update = {k: str((base / v).resolve()) for k in ("cert", "key", "ca")
                  if (v := getattr(tls, k)) is not None and not Path(v).is_absolute()}
        return tls.model_copy(update=update) if update else tls

    instruments = [
        i.model_copy(update={"transport": i.transport.model_copy(update={"tls": fix(i.transport.tls)})})
        if isinstance(i.transport, TcpServerTransport | TcpClientTransport) else i
        for i in config.instruments
    ]
    lis = [d.model_copy(update={"tls": fix(d.tls)}) if isinstance(d, MllpDestination) else d for d in config.lis]
    lis_orders = [listener.model_copy(update={"tls": fix(listener.tls)}) for listener in config.lis_orders]
    http_tls = {k: str((base / v).resolve()) for k in ("tls_cert", "tls_key", "client_ca")  # [http] (security)
                if (v := getattr(config.http, k)) is not None and not Path(v).is_absolute()}
    return config.model_copy(update={"instruments": instruments, "lis": lis, "lis_orders": lis_orders,
                                     "http": config.http.model_copy(update=http_tls)})


def _resolve_mqtt_paths(config: Config, base: Path) -> Config:
    """[mqtt]'s password file and TLS files, relative to the config file's folder."""
    mqtt = config.mqtt
    if mqtt is None:
        return config
    update: dict[str, Any] = {}
    if mqtt.password_file and not Path(mqtt.password_file).is_absolute():
        update["password_file"] = str((base / mqtt.password_file).resolve())
    if mqtt.tls is not None:
        update["tls"] = mqtt.tls.model_copy(update={k: str((base / v).resolve()) for k in ("cert", "key", "ca")
                                                    if (v := getattr(mqtt.tls, k)) and not Path(v).is_absolute()})
    return config.model_copy(update={"mqtt": mqtt.model_copy(update=update)}) if update else config
