"""Configuration: one TOML file validated by pydantic models with ``extra="forbid"``.

Every problem is reported with the file, the key path (``instruments[2].transport.port``) and what
was expected; :func:`load_config` raises :class:`~labbridge.errors.ConfigError` with all of them at once.
Relative paths in the file (the store) are taken relative to the file's folder.
"""

from __future__ import annotations

import codecs
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labbridge.errors import ConfigError

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


class InstrumentConfig(_Model):
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    site: str
    driver: str
    name: str = ""
    enabled: bool = True
    transport: Transport
    link: LinkConfig = LinkConfig()
    timezone: str = "Europe/Brussels"
    # Instrument test code -> LIS test code. Codes not listed pass through unchanged.
    test_map: dict[str, str] = Field(default_factory=dict)
    # Connected but silent for longer than this: the link is shown as idle.
    idle_after_s: Seconds = 1800.0

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. 'Europe/Brussels', 'UTC')") from None
        return value


class MllpDestination(_Model):
    """A LIS that takes HL7 v2.5.1 results (ORU^R01 or OUL^R22) over MLLP and answers with an ACK."""

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    kind: Literal["mllp"] = "mllp"
    host: str
    port: Port
    # ORU^R01 (the default; what most LIS take) or OUL^R22 (IHE LAW shape), both HL7 v2.5.1.
    message_type: Literal["ORU^R01", "OUL^R22"] = "ORU^R01"
    tls: TlsConfig | None = None
    connect_timeout_s: Seconds = 10.0
    ack_timeout_s: Seconds = 30.0
    sending_application: str = "LABBRIDGE"
    sending_facility: str = ""
    receiving_application: str = "LIS"
    receiving_facility: str = ""
    # Retry with exponential backoff and full jitter, capped: an overnight outage costs at most
    # backoff_max_s of extra delay once the LIS is back.
    backoff_initial_s: Seconds = 1.0
    backoff_max_s: Seconds = 300.0
    # A result still undelivered after this long goes to the dead letters for a person to look at.
    give_up_after_s: Seconds = 3 * 24 * 3600.0
    # ACK codes that mean "do not simply resend" (HL7 AE: the message has an error).
    dead_letter_codes: list[str] = Field(default_factory=lambda: ["AE", "CE"])


class StoreConfig(_Model):
    path: str = "labbridge.db"


class HttpConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8470


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Model):
    node: Annotated[str, Field(pattern=ID_PATTERN)] = "labbridge"
    store: StoreConfig = StoreConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    sites: list[SiteConfig] = Field(default_factory=list)
    instruments: list[InstrumentConfig] = Field(default_factory=list)
    lis: list[MllpDestination] = Field(default_factory=list)

    def site_name(self, site_id: str) -> str:
        for site in self.sites:
            if site.id == site_id:
                return site.name
        return site_id


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in TRANSPORT_KINDS:
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
    site_ids = {s.id for s in config.sites}
    listeners: dict[tuple[str, int], int] = {}
    serial_ports: dict[str, int] = {}
    for i, inst in enumerate(config.instruments):
        if inst.site not in site_ids:
            known = ", ".join(sorted(site_ids)) or "none defined"
            problems.append((f"instruments[{i}].site", f"a site id from [[sites]] (known: {known}); got {inst.site!r}"))
        t = inst.transport
        if isinstance(t, TcpServerTransport) and t.tls is not None and not (t.tls.cert and t.tls.key):
            problems.append((f"instruments[{i}].transport.tls", "a listening TLS link needs both cert and key"))
        if isinstance(t, TcpServerTransport) and t.port != 0 and inst.enabled:
            key = (t.host, t.port)
            if key in listeners:
                problems.append((f"instruments[{i}].transport.port",
                                 f"a port no other instrument listens on; {t.host}:{t.port} is already "
                                 f"used by instruments[{listeners[key]}]"))
            listeners.setdefault(key, i)
        if isinstance(t, SerialTransport) and inst.enabled:
            if t.port in serial_ports:
                problems.append((f"instruments[{i}].transport.port",
                                 f"a serial port no other instrument uses; {t.port} is already used by "
                                 f"instruments[{serial_ports[t.port]}]"))
            serial_ports.setdefault(t.port, i)
    return problems


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
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
        config = config.model_copy(update={"store": StoreConfig(path=str(store_path))})
    return _resolve_tls_paths(config, path.parent)


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
    lis = [d.model_copy(update={"tls": fix(d.tls)}) for d in config.lis]
    return config.model_copy(update={"instruments": instruments, "lis": lis})
