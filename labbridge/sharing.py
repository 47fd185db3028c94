"""Several analyzers on one listener: which instrument a connection, or a message, comes from.

When several tcp-server instruments share one host and port, labbridge tells them apart in this order
(issue 6; ``labbridge check-config`` refuses a configuration where this cannot work):

1. the peer's address: instruments whose ``peer`` list holds it; if none does, the instruments with
   no ``peer`` list (they accept any address);
2. the sender name in the message: ASTM H-5 (first component), HL7 MSH-3 or MSH-4 (first component),
   against each remaining instrument's ``sender`` list; if none names it, the one without a list;
3. the configuration: the listener's ``listener_default`` instrument.

If that leaves no instrument, the message is stored and dead-lettered as ``unknown-sender``, never
attributed to a guess. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from labbridge.config import InstrumentConfig, peer_allowed
from labbridge.errors import RemoteProtocolError
from labbridge.protocols.e1394 import parse_records
from labbridge.protocols.hl7_parse import Hl7Message


def _contains(cfg: InstrumentConfig, address: str) -> bool:
    return bool(cfg.peer) and peer_allowed(cfg.peer, address)


class SenderRouter:
    """The instruments of one shared listener, and the rules that pick one of them."""

    def __init__(self, members: Sequence[InstrumentConfig], address: str) -> None:
        self.members = list(members)
        self.address = address  # host:port, for reasons a person reads
        self.default = next((m for m in self.members if m.listener_default), None)

    def by_peer(self, peer_address: str) -> list[InstrumentConfig]:
        """Step 1: the instruments this address may be (empty: none, unless the default)."""
        named = [m for m in self.members if m.peer and _contains(m, peer_address)]
        return named or [m for m in self.members if not m.peer]

    def at_connect(self, peer_address: str) -> InstrumentConfig | None:
        """The instrument a new connection belongs to, when its address alone decides; else None."""
        candidates = self.by_peer(peer_address)
        if len(candidates) == 1:
            return candidates[0]
        if not candidates and self.default is not None:
            return self.default
        return None

    def by_sender(self, candidates: Sequence[InstrumentConfig], names: Sequence[str]) -> InstrumentConfig | None:
        """Steps 2 and 3 for one message: its sender names (H-5, or MSH-3 and MSH-4)."""
        wanted = {n for n in names if n}
        named = [m for m in candidates if wanted & set(m.sender)]
        if len(named) == 1:
            return named[0]
        if not named:
            anonymous = [m for m in candidates if not m.sender and not m.listener_default]
            if len(anonymous) == 1:
                return anonymous[0]
        return self.default


def astm_sender_names(records: Sequence[bytes], encoding: str = "latin-1") -> list[str]:
    """ASTM E1394 H-5 (sender name or ID), first component; empty when there is no readable H record."""
    try:
        parsed = parse_records(list(records[:1]), encoding)
    except (RemoteProtocolError, ValueError, IndexError):
        return []
    if not parsed or parsed[0].type != "H":
        return []
    name = parsed[0].component(5, 1).strip()
    return [name] if name else []


def hl7_sender_names(message: Hl7Message) -> list[str]:
    """HL7 MSH-3 (sending application) and MSH-4 (sending facility), first components."""
    return [v for v in (message.value(message.header, 3).strip(), message.value(message.header, 4).strip()) if v]
