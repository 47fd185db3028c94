"""The driver contract and the registry.

A driver translates one analyzer family's dialect into the canonical model (labbridge.model). It is
pure: no I/O, no sleeping, no link state. Built-in drivers and third-party ones register the same way,
through the ``labbridge.drivers`` entry-point group (one line in the plugin's pyproject); a small
built-in table keeps the built-ins available even when entry-point metadata is missing. Drivers are
imported lazily, on first use; one that fails to load is reported by name and breaks no other.
"""

from __future__ import annotations

import functools
import importlib
import zoneinfo
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from importlib.metadata import entry_points
from typing import ClassVar, Literal

from labbridge.errors import DriverLoadError, DriverNotFoundError
from labbridge.model import Decoded, HostQuery, OrderLine
from labbridge.protocols.hl7_parse import Hl7Message

ENTRY_POINT_GROUP = "labbridge.drivers"

# name -> "module:Class"; entry points with the same name take precedence.
BUILTIN_DRIVERS: dict[str, str] = {
    "astm-generic": "labbridge_driver_astm:GenericAstmDriver",
    "sysmex-xn": "labbridge_driver_sysmex_xn:SysmexXnDriver",
    "roche-cobas": "labbridge_driver_roche_cobas:RocheCobasDriver",
    "abbott-architect": "labbridge_driver_abbott_architect:AbbottArchitectDriver",
    "horiba-yumizen": "labbridge_driver_horiba_yumizen:HoribaYumizenDriver",
    "cepheid-genexpert": "labbridge_driver_cepheid_genexpert:CepheidGenexpertDriver",
    "hl7-generic": "labbridge_driver_hl7:GenericHl7Driver",
    "ihe-law": "labbridge_driver_ihe_law:IheLawDriver",
    "mindray-bc-bs": "labbridge_driver_mindray:MindrayDriver",
    "snibe-maglumi": "labbridge_driver_snibe_maglumi:SnibeMaglumiDriver",
    "ortho-vitros": "labbridge_driver_ortho_vitros:OrthoVitrosDriver",
    "siemens-advia": "labbridge_driver_siemens_advia:SiemensAdviaDriver",
    "beckman-dxh": "labbridge_driver_beckman_dxh:BeckmanDxhDriver",
    "sysmex-un": "labbridge_driver_sysmex_un:SysmexUnDriver",
    "sysmex-xp": "labbridge_driver_sysmex_xp:SysmexXpDriver",
    "abbott-afinion2": "labbridge_driver_abbott_afinion:AbbottAfinion2Driver",
    "siemens-dca-vantage": "labbridge_driver_siemens_dca:SiemensDcaVantageDriver",
    "roche-cobas-c111": "labbridge_driver_roche_cobas_c111:RocheCobasC111Driver",
    "cepheid-genexpert-hl7": "labbridge_driver_cepheid_genexpert_hl7:CepheidGenexpertHl7Driver",
    "beckman-au": "labbridge_driver_beckman_au:BeckmanAuDriver",
}


@functools.lru_cache(maxsize=4096)
def _astm_timestamp(digits: str, zone: zoneinfo.ZoneInfo) -> str | None:
    """``YYYYMMDD[HHMM[SS]]`` -> ISO 8601 in ``zone``; cached, since every result of a message repeats it."""
    if len(digits) not in (8, 12, 14) or not digits.isascii() or not digits.isdigit():
        return None
    hour = int(digits[8:10]) if len(digits) >= 12 else 0
    minute = int(digits[10:12]) if len(digits) >= 12 else 0
    second = int(digits[12:14]) if len(digits) == 14 else 0
    try:
        return datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), hour, minute, second,
                        tzinfo=zone).isoformat()
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _hl7_timestamp(value: str, zone: zoneinfo.ZoneInfo) -> str | None:
    """HL7 TS/DTM ``YYYYMMDD[HHMM[SS[.S+]]][+/-ZZZZ]`` -> ISO 8601; the offset given wins over ``zone``."""
    digits, offset = value, ""
    for sign in "+-":
        if sign in value[8:]:
            cut = value.index(sign, 8)
            digits, offset = value[:cut], value[cut:]
    digits = digits.split(".", 1)[0]
    if len(digits) not in (8, 10, 12, 14) or not digits.isascii() or not digits.isdigit():
        return None
    tz: tzinfo = zone
    if offset:
        if len(offset) != 5 or not offset[1:].isdigit():
            return None
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        tz = timezone(timedelta(minutes=-minutes if offset[0] == "-" else minutes))
    try:
        return datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]),
                        int(digits[8:10] or 0), int(digits[10:12] or 0), int(digits[12:14] or 0),
                        tzinfo=tz).isoformat()
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def _inverse_map(items: tuple[tuple[str, str], ...]) -> dict[str, str]:
    inverse: dict[str, str] = {}
    for instrument_code, lis_code in items:
        inverse.setdefault(lis_code, instrument_code)
    return inverse


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What a driver may know about the instrument a message came from."""

    instrument: str
    timezone: zoneinfo.ZoneInfo = field(default_factory=lambda: zoneinfo.ZoneInfo("UTC"))
    test_map: Mapping[str, str] = field(default_factory=dict)
    encoding: str = "latin-1"

    # How labbridge names itself as the sender of the messages it sends (ASTM H-5).
    host_name: str = "labbridge"
    # ---- issue 20, part 5: the instrument's test_code_component (drivers that read R-3 use it) ----
    # The component of ASTM R-3 (universal test ID) holding the test code, counted from 1; None: the driver's.
    test_code_component: int | None = None
    # The component of R-3 holding the test's name, counted from 1; None: the 2nd (LIS2-A2).
    test_name_component: int | None = None

    def map_test(self, instrument_code: str) -> str:
        return self.test_map.get(instrument_code, instrument_code)

    def instrument_test(self, lis_code: str) -> str:
        """LIS code -> the instrument's code, through the inverse of the test map (unmapped: as is).

        When two instrument codes map to one LIS code, the first in the map is used.
        """
        inverse = _inverse_map(tuple(self.test_map.items()))
        return inverse.get(lis_code, lis_code)

    def timestamp(self, astm_datetime: str) -> str | None:
        """ASTM ``YYYYMMDD[HHMM[SS]]`` in the instrument's zone -> ISO 8601 with offset."""
        return _astm_timestamp(astm_datetime.strip(), self.timezone)

    def hl7_timestamp(self, value: str) -> str | None:
        """HL7 TS/DTM -> ISO 8601; without an offset in the value, the instrument's zone applies."""
        value = value.strip()
        return _hl7_timestamp(value, self.timezone) if value else None


class Driver(ABC):
    """Base of every driver."""

    name: ClassVar[str]
    vendor: ClassVar[str] = "generic"
    models: ClassVar[tuple[str, ...]] = ()
    protocol: ClassVar[Literal["astm", "hl7"]]
    version: ClassVar[str] = "1.0"
    #: The family's default ``[instruments.link]`` settings (LinkConfig keys: framing, encoding, dialect
    #: flags such as ``frame_numbers = False``). An instrument using the driver starts from these; what its
    #: own ``[instruments.link]`` sets wins (applied by ``labbridge.config.with_link_defaults``).
    link_defaults: ClassVar[Mapping[str, str | int | float | bool]] = {}


class AstmDriver(Driver):
    """A driver for analyzers that send ASTM E1394 records."""

    protocol: ClassVar[Literal["astm", "hl7"]] = "astm"

    @abstractmethod
    def decode(self, records: Sequence[bytes], context: DecodeContext) -> Decoded:
        """Turn the records of one message (H..L, terminators removed) into canonical items.

        Raise :class:`labbridge.errors.DecodeError` for a message that cannot be understood; any other
        exception is treated the same way (the message goes to the dead letters, the link goes on).

        Host queries (ASTM Q records) come back in ``Decoded.queries`` as :class:`HostQuery` items, one
        per Q record, with test codes mapped to LIS codes (``context.map_test``) and ``all_samples``
        set for a query for ``ALL`` specimens. A message may hold results and queries together.
        """

    # ---- host side: answers to queries and orders (optional; see supports_orders) ---------------

    #: True when the driver implements :meth:`encode_query_reply` and :meth:`encode_orders`. The
    #: runtime stores the queries of a driver without it and answers nothing.
    supports_orders: ClassVar[bool] = False

    def encode_query_reply(self, query: HostQuery, lines: Sequence[OrderLine], context: DecodeContext, *,
                           at: datetime) -> list[bytes]:
        """The records (H..L, without terminators) of the host's answer to ``query``.

        ``lines`` is the answer (:func:`labbridge.orders.answer_query`): tests to run (``ordered``), tests
        without an order (``no_order``), samples the host knows nothing of (``unknown_sample``); test
        codes are LIS codes, to map with ``context.instrument_test``. ``at`` is the message time in the
        instrument's zone. For ASTM (LIS2-A2 §11, PROTOCOLS.md R-B11): H with labbridge as sender, then
        per sample P and O with O-26 ``Q``, ``Y`` or ``Z``, then L with L-3 ``N``, or ``I`` when there
        is no order for any of the samples asked for. Pure: no I/O, no clock.
        """
        raise NotImplementedError(f"driver {self.name!r} does not answer host queries")

    def encode_orders(self, lines: Sequence[OrderLine], context: DecodeContext, *, at: datetime) -> list[bytes]:
        """The records (H..L) of a message that downloads orders to the analyzer unasked.

        For ASTM: H, then per sample P and O with O-26 ``O`` and action code ``N``, then L (L-3 ``N``).
        Pure, like :meth:`encode_query_reply`.
        """
        raise NotImplementedError(f"driver {self.name!r} does not download orders")


class Hl7Driver(Driver):
    """A driver for analyzers that send HL7 v2 messages (over MLLP)."""

    protocol: ClassVar[Literal["astm", "hl7"]] = "hl7"
    link_defaults: ClassVar[Mapping[str, str | int | float | bool]] = {"framing": "mllp"}
    # MSH-9.1^MSH-9.2 values this driver decodes; others are answered AR (unsupported message type).
    message_types: ClassVar[frozenset[str]] = frozenset({"ORU^R01", "OUL^R22"})
    #: True when the analyzer family speaks IHE LAW orders: the session then answers LAB-27 QBP^Q11 and
    #: pushes LAB-28 OML^O33 (built by labbridge.protocols.hl7_orders; test codes mapped through the
    #: inverse test_map). Without it a QBP^Q11 is refused AR (unsupported message type).
    supports_orders: ClassVar[bool] = False

    @abstractmethod
    def decode(self, message: Hl7Message, context: DecodeContext) -> Decoded:
        """Turn one parsed HL7 message (escapes still in the raw fields; read values with
        ``message.value``) into canonical items. Raise :class:`labbridge.errors.DecodeError` for a
        message that cannot be understood (the analyzer gets AE with the reason)."""


@dataclass(frozen=True, slots=True)
class DriverInfo:
    name: str
    target: str
    source: str  # "built-in" or the distribution that provides the entry point


def available_drivers() -> dict[str, DriverInfo]:
    found = {name: DriverInfo(name, target, "built-in") for name, target in BUILTIN_DRIVERS.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        source = "built-in" if dist == "labbridge" else dist
        found[ep.name] = DriverInfo(ep.name, ep.value, source)
    return found


_cache: dict[str, type[Driver]] = {}


def load_driver_class(name: str) -> type[Driver]:
    if name in _cache:
        return _cache[name]
    drivers = available_drivers()
    info = drivers.get(name)
    if info is None:
        raise DriverNotFoundError(name, list(drivers))
    module_name, _, attr = info.target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # a broken plugin is reported by name, never breaks the others
        raise DriverLoadError(name, f"{type(exc).__name__}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Driver)):
        raise DriverLoadError(name, f"{info.target} is not a labbridge Driver subclass")
    _cache[name] = obj
    return obj


def driver_link_defaults(name: str) -> Mapping[str, str | int | float | bool]:
    """The link defaults of driver ``name``; empty when it is unknown or fails to load (that is reported
    where the driver is used: check-config, the daemon's instrument status)."""
    try:
        return load_driver_class(name).link_defaults
    except (DriverNotFoundError, DriverLoadError):
        return {}


def load_driver(name: str) -> Driver:
    return load_driver_class(name)()
