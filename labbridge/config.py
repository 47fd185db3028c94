"""Configuration: one TOML file validated by pydantic models with ``extra="forbid"``.

Every problem is reported with the file, the key path (``instruments[2].transport.port``) and what
was expected; :func:`load_config` raises :class:`~labbridge.errors.ConfigError` with all of them at once.
Relative paths in the file (the store) are taken relative to the file's folder.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import ipaddress
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

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

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(_Model):
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    name: str


class TlsConfig(_Model):
    """TLS on a TCP link. Paths are relative to the config file's folder.

    Server side (labbridge listens): ``cert`` and ``key`` are required; with ``ca``, the analyzer must
    present a certificate signed by it (mutual TLS). Client side (labbridge dials an analyzer or a LIS):
    ``ca`` verifies the peer (the system's trust store when absent); ``cert``/``key`` present a client
    certificate when the peer asks for one; ``server_hostname`` is the name checked in the peer's
    certificate (default: the host dialed).
    """

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    server_hostname: str | None = None
    check_hostname: bool = True


class TcpServerTransport(_Model):
    """labbridge listens; the analyzer dials in."""

    kind: Literal["tcp-server"]
    host: str = "127.0.0.1"
    port: Port
    # What to do when a second connection arrives while one is open: refuse the newcomer (the
    # safe default: a stray connection cannot cut off a working analyzer) or replace the old one
    # (for analyzers that reconnect without closing).
    second_connection: Literal["reject", "replace"] = "reject"
    tls: TlsConfig | None = None


class TcpClientTransport(_Model):
    """labbridge dials the analyzer, and redials with capped exponential backoff and jitter."""

    kind: Literal["tcp-client"]
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    connect_timeout_s: Seconds = 10.0
    reconnect_initial_s: Seconds = 1.0
    reconnect_max_s: Seconds = 60.0
    tls: TlsConfig | None = None


class SerialTransport(_Model):
    """An RS-232 port through pyserial: a device path (/dev/ttyS0, /dev/ttyUSB0, COM3) or a pyserial URL
    (socket://host:port, rfc2217://host:port, loop://). Reopened with capped backoff and jitter."""

    kind: Literal["serial"]
    port: Annotated[str, Field(min_length=1)]
    baudrate: Annotated[int, Field(gt=0, le=4_000_000)] = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"  # none, even, odd, mark, space
    stopbits: float = 1  # 1, 1.5 or 2
    xonxoff: bool = False  # software flow control
    rtscts: bool = False  # hardware flow control
    reopen_initial_s: Seconds = 1.0
    reopen_max_s: Seconds = 60.0

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, value: float) -> float:
        if value not in (1, 1.5, 2):
            raise ValueError("1, 1.5 or 2 stop bits")
        return value


Transport = Annotated[TcpServerTransport | TcpClientTransport | SerialTransport, Field(discriminator="kind")]
TRANSPORT_KINDS = frozenset({"tcp-server", "tcp-client", "serial"})


class LinkConfig(_Model):
    # e1381: ASTM LIS1-A framing; raw: ASTM records on a byte stream, no low-level framing (ASTM drivers);
    # mllp: HL7 v2 over MLLP (HL7 drivers).
    framing: Literal["e1381", "raw", "mllp"] = "e1381"
    # ASTM: the character set of the records. HL7: the fallback when MSH-18 is empty or ASCII.
    encoding: str = "latin-1"
    # MLLP: accept a block ended by FS without the CR after it (some senders omit it).
    allow_missing_cr: bool = False
    # ASTM LIS1-A: the first frame of a transfer is numbered 1. Some analyzers start at 0.
    strict_frame_numbers: bool = True
    # Dialects (flags on the link profile; defaults are the standard).
    frame_numbers: bool = True  # false: frames carry no frame number digit (Snibe MAGLUMI)
    checksums: bool = True  # false: frames carry no checksum (Snibe MAGLUMI)
    record_terminator: Literal["cr", "lf", "crlf"] = "cr"
    lenient_whitespace: bool = False  # newlines before STX and extra CRs after frames are expected
    enq_eot_keepalive: bool = False  # ENQ then EOT with no frame is the analyzer's keep-alive
    # LIS1-A timers (framing = "e1381"). The defaults are the standard's; change them only for an analyzer
    # that needs it (or in tests).
    reply_timeout_s: Seconds = 15.0  # we send: wait this long for the reply to our ENQ or frame
    receive_timeout_s: Seconds = 30.0  # we receive: a transfer silent this long is ended (incomplete)
    busy_wait_s: Seconds = 10.0  # after a busy NAK to our ENQ, or a failed transfer, before our next ENQ
    contention_wait_s: Seconds = 20.0  # after yielding to the analyzer's ENQ, before our own ENQ again
    interrupt_wait_s: Seconds = 15.0  # after honouring a receiver interrupt, before our next ENQ
    honor_interrupt: bool = False  # true: the analyzer's EOT in place of ACK stops our transfer
    # framing = "raw": a message not finished (no L record) this long after its last byte is incomplete.
    raw_idle_timeout_s: Seconds = 30.0

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

    code: str = ""  # the LIS test code (same as a test_map entry; empty: test_map, else as sent)
    units: dict[str, str] = Field(default_factory=dict)  # instrument unit -> LIS unit, for this test
    values: dict[str, str] = Field(default_factory=dict)  # qualitative value -> LIS word, for this test
    action: Literal["send", "drop", "hold"] | None = None  # None: drop_tests/hold_tests decide, else send


class TrafficWindow(_Model):
    """A window of the week, in the instrument's local time, in which it sends at least every ``every_s``."""

    days: str = "mon-sun"  # "mon-fri", "sat,sun", "mon,wed-fri"
    hours: str = "00:00-24:00"  # "07:00-19:00"; "22:00-06:00" crosses midnight (the night of the days named)
    every_s: Seconds

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
    site: str
    driver: str
    name: str = ""
    enabled: bool = True
    transport: Transport
    link: LinkConfig = LinkConfig()
    # Its clock's time zone (IANA name). Absent: the node's `timezone` (check-config lists who relies on it).
    timezone: str = ""
    timezone_from_node: bool = Field(default=False, exclude=True)  # set by Config, not by hand
    # Instrument test code -> LIS test code. Codes not listed pass through unchanged, unless
    # unmapped_tests = "dead-letter": then such results are held in the dead letters (naming the code)
    # until the mapping is added and the dead letter retried.
    test_map: dict[str, str] = Field(default_factory=dict)
    unmapped_tests: Literal["pass", "dead-letter"] = "pass"
    # Result mapping, applied to every driver's output in one place (labbridge.mapping), after
    # test_map. unit_map: the instrument's unit -> the LIS's unit. value_map: qualitative values
    # ("POS", "+", "Reactive") -> the LIS's words (matched ignoring case and surrounding blanks).
    unit_map: dict[str, str] = Field(default_factory=dict)
    value_map: dict[str, str] = Field(default_factory=dict)
    # Instrument test codes whose results are dropped (never stored as results; the raw message is
    # kept), or held (stored and shown, not sent until an operator releases them: `outbox retry`).
    drop_tests: list[str] = Field(default_factory=list)
    hold_tests: list[str] = Field(default_factory=list)
    # Per instrument test code: its LIS code, units and values (override the maps above), action.
    tests: dict[str, TestMapping] = Field(default_factory=dict)
    # The sender name the analyzer puts in its header (ASTM H-5). If set, a message from another
    # sender is not relayed: it goes to the dead letters as "unknown sender". Empty: any sender.
    expected_sender: str = ""
    # Identification when several instruments share one tcp-server listener (same host and port):
    # first the peer's address (IP addresses or networks, e.g. "10.1.2.3" or "10.1.2.0/24"), then the
    # sender name in the message (ASTM H-5 first component, HL7 MSH-3 or MSH-4), then the listener's
    # default instrument (listener_default = true; at most one per listener).
    peer: list[str] = Field(default_factory=list)
    sender: list[str] = Field(default_factory=list)
    listener_default: bool = False
    # Connected but silent for longer than this: the link is shown as idle (when its traffic is neither
    # configured in expect_message_every nor learned from the store yet).
    idle_after_s: Seconds = 1800.0
    # Its stage in the reconnection campaign when the store has none yet (then the store keeps it; see
    # labbridge.campaign.stages). Until live, its results are stored but held from the LIS.
    stage: Stage = "live"
    # Its expected traffic: a message at least every N seconds, or windows of the week (local time), e.g.
    # [{days = "mon-fri", hours = "07:00-19:00", every_s = 300}]; outside every window nothing is expected.
    # Absent: learned per hour of the week from the store's history ([health] learn_days).
    expect_message_every: ExpectedTraffic | None = None
    # Bytes keep arriving but none forms a frame or message for this long (wrong baud rate or parity,
    # missing framing): the link is shown degraded.
    undecoded_after_s: Seconds = 120.0

    @field_validator("peer")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"an IP address or network (e.g. '10.1.2.3', '10.1.2.0/24'); got {item!r}") from None
        return value

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
    # Retry with exponential backoff and full jitter, capped: an overnight outage costs at most
    # backoff_max_s of extra delay once the LIS is back.
    backoff_initial_s: Seconds = 1.0
    backoff_max_s: Seconds = 300.0
    # A result still undelivered after this long goes to the dead letters for a person to look at.
    give_up_after_s: Seconds = 3 * 24 * 3600.0
    # Backlog items (old results an analyzer resends) are sent at most this often; live ones first.
    backlog_per_minute: Annotated[float, Field(gt=0)] = 60.0
    # Used by the HL7 rendering (MLLP, and file drops in HL7 format).
    sending_application: str = "LABBRIDGE"
    sending_facility: str = ""
    receiving_application: str = "LIS"
    receiving_facility: str = ""
    # Results of an instrument not yet live (validating): held until sign-off, or sent at once flagged
    # as test results (HL7 MSH-11 "T", JSON "test": true) that the LIS keeps out of patient records.
    validating: GateMode = "hold"


class MllpDestination(_Destination):
    """A LIS that takes HL7 v2.5.1 results (ORU^R01 or OUL^R22) over MLLP and answers with an ACK."""

    kind: Literal["mllp"] = "mllp"
    host: str
    port: Port
    # ORU^R01 (the default; what most LIS take) or OUL^R22 (IHE LAW shape), both HL7 v2.5.1.
    message_type: Literal["ORU^R01", "OUL^R22"] = "ORU^R01"
    tls: TlsConfig | None = None
    connect_timeout_s: Seconds = 10.0
    ack_timeout_s: Seconds = 30.0
    # MLLP connections open to this LIS at once, each with one message waiting for its ACK. 1 is HL7's
    # original mode; more drain a backlog faster if the LIS takes several connections on its port. A
    # sample's results always go over the same connection, in order.
    connections: Annotated[int, Field(ge=1, le=16)] = 1
    # ACK codes that go to the dead letters with the LIS's reason instead of being resent: AE/CE (the message
    # has an error: fix it) and AR/CR (the LIS rejects it). A LIS that answers AR for a passing condition
    # (busy, its database down) can be given ["AE", "CE"]: AR is then retried with backoff.
    dead_letter_codes: list[str] = Field(default_factory=lambda: ["AE", "AR", "CE", "CR"])


class FileDestination(_Destination):
    """A folder the LIS picks files up from: one file per message, named by its control ID, written atomically."""

    kind: Literal["file"]
    directory: str
    format: Literal["hl7", "astm", "json"] = "hl7"


class HttpDestination(_Destination):
    """An HTTP(S) endpoint that takes canonical JSON by POST (2xx delivered, 4xx refused, 5xx retried)."""

    kind: Literal["http"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout_s: Seconds = 30.0
    headers: dict[str, str] = Field(default_factory=dict)
    verify_tls: bool = True


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
    host: str = "127.0.0.1"
    port: Port
    instrument: str = ""
    site: str = ""
    # The character set when MSH-18 is empty.
    encoding: str = "utf-8"
    tls: TlsConfig | None = None


class StoreConfig(_Model):
    path: str = "labbridge.db"
    # A cap on the database file: past it, commits fail as on a full disk (analyzers are not
    # acknowledged and retry) instead of filling a disk other software needs. None: no cap.
    max_size_mb: Annotated[float, Field(gt=0)] | None = None


class RetentionConfig(_Model):
    """How long the store keeps what no longer waits for anyone. Pending and dead items are never pruned."""

    raw_messages_days: Annotated[float, Field(gt=0)] = 90.0
    delivered_days: Annotated[float, Field(gt=0)] = 90.0  # delivered outbox items and their results
    incomplete_days: Annotated[float, Field(gt=0)] = 30.0  # transmissions that never became a message
    history_days: Annotated[float, Field(gt=0)] = 90.0  # link state changes and daily figures per instrument
    prune_interval_s: Seconds = 3600.0


class HistoryConfig(_Model):
    # How often every instrument's shown state and counters are sampled into the store's link history
    # (labbridge.health.history); explicit state changes are caught at once, idle/degraded when sampled.
    sample_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0


class BacklogConfig(_Model):
    # A result measured longer than this before it reached labbridge is backlog (an analyzer resending
    # what it kept during an outage): labelled, and paced per destination (backlog_per_minute).
    older_than_s: Seconds = 2 * 3600.0


class HttpConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8470


class HealthConfig(_Model):
    """How link health is judged from the store (labbridge.health): read off the links' path, periodically."""

    check_interval_s: Seconds = 5.0  # each link's shown state is judged (and a change logged) this often
    refresh_interval_s: Seconds = 30.0  # LIS backlog, dead letters, last message and delivery per instrument
    learn_interval_s: Seconds = 3600.0  # expected traffic learned again from the messages
    learn_days: Annotated[int, Field(ge=7, le=365)] = 28  # of history (at most the messages retention keeps)
    lis_backlog_after_s: Seconds = 600.0  # an instrument's results waiting this long for the LIS: degraded


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"


# ---- signed bundles between zones (issue 18: labbridge.bundles, `labbridge bundle verify|extract -c`) ----
class BundlesConfig(_Model):
    """Public keys (PEM files, paths relative to the config file's folder) whose signed bundles this node
    accepts: ``labbridge bundle verify|extract -c CONFIG`` trusts them (with any ``--trusted`` given)."""

    trusted_keys: list[str] = Field(default_factory=list)
# ---- end of signed bundles ----


class Config(_Model):
    node: Annotated[str, Field(pattern=ID_PATTERN)] = "labbridge"
    # The site's time zone (IANA name, e.g. "Europe/Brussels"), for instruments without their own. Absent:
    # this machine's zone; nothing falls back to one city's zone unsaid (check-config reports where it came from).
    timezone: str = ""
    timezone_from_machine: bool = Field(default=False, exclude=True)  # set by the validator, not by hand
    # auto: uvloop where installed (several times less CPU per frame), else asyncio's loop (labbridge.aio)
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    store: StoreConfig = StoreConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    retention: RetentionConfig = RetentionConfig()
    history: HistoryConfig = HistoryConfig()
    backlog: BacklogConfig = BacklogConfig()
    health: HealthConfig = HealthConfig()
    sites: list[SiteConfig] = Field(default_factory=list)
    instruments: list[InstrumentConfig] = Field(default_factory=list)
    lis: list[Destination] = Field(default_factory=list)
    lis_orders: list[LisOrdersConfig] = Field(default_factory=list)
    bundles: BundlesConfig = BundlesConfig()  # signed bundles between zones (issue 18)

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


def _expected(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown key (not allowed here)"
    if error["type"] == "missing":
        return "required key is missing"
    if "input" in error and not isinstance(error["input"], dict | list):
        return f"{msg} (got {error['input']!r})"
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
            problems.append((f"instruments[{i}].site", f"a site id from [[sites]] (known: {known}); got {inst.site!r}"))
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
        raise ConfigError(source, [(_key_path(e["loc"]), _expected(e)) for e in exc.errors()]) from None
    problems = _cross_check(config)
    if problems:
        raise ConfigError(source, problems)
    return config


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
    return config.model_copy(update={"instruments": instruments, "lis": lis, "lis_orders": lis_orders})
