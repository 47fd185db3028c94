"""Orders: the work the LIS wants done on samples, and the pluggable source labbridge reads them from.

An order names a sample, the tests (LIS codes), a priority and the patient, and where it may run: one
instrument, or any instrument of a site (``instrument`` empty, ``site`` set). labbridge uses orders in
two ways, whatever the analyzer's protocol:

* **host query**: an analyzer asks what to run on the samples it has just seen; the answer lists the
  orders for them (:func:`answer_query`), or says there are none;
* **order push** (download): orders addressed to one instrument are sent to it when its link is up
  (:func:`push_lines`). Orders for "any instrument of a site" are never pushed (every analyzer of the
  site would run them); they are answered to the analyzer that asks for the sample.

States: ``pending`` (not yet delivered), ``sent`` (the analyzer acknowledged the message that carried
it: for ASTM, the link-level ACK of the last frame), ``accepted`` (the analyzer confirmed it at
application level, e.g. an HL7 ORL^O34), ``cancelled``. An analyzer that cannot accept an order (HL7
ORL^O34 ``UA``) puts it back to ``pending`` with its reason in ``note``. An order is recorded as sent only after the
analyzer acknowledged it; until then it stays pending and is sent again.

:class:`OrderSource` is the interface; the embedded default keeps orders in the SQLite store
(:class:`labbridge.store.orders.SqliteOrderSource`). It is fed by the CLI and the HTTP API
today, and by the LIS side later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from labbridge.model import PRIORITIES, HostQuery, OrderLine, OrderPriority

if TYPE_CHECKING:
    from labbridge.config import Config

OrderState = Literal["pending", "sent", "accepted", "cancelled"]
ORDER_STATES: tuple[OrderState, ...] = ("pending", "sent", "accepted", "cancelled")
# Orders that still stand: answered to a query for their sample.
LIVE_STATES: tuple[OrderState, ...] = ("pending", "sent", "accepted")

MAX_TESTS_PER_ORDER = 200
MAX_FIELD_CHARS = 64  # sample IDs, patient IDs, test codes: ASTM and HL7 fields are short


@dataclass(frozen=True, slots=True)
class NewOrder:
    """An order to add. Either ``instrument`` or ``site`` (any instrument of that site) is set."""

    sample_id: str
    test_codes: tuple[str, ...]
    instrument: str = ""
    site: str = ""
    priority: OrderPriority = "routine"
    patient_id: str = ""
    source: str = "api"

    def problems(self) -> list[str]:
        """What is wrong with this order, in words for the person or system that sent it."""
        out: list[str] = []
        if not self.sample_id.strip():
            out.append("sample_id: required")
        if not self.instrument and not self.site:
            out.append("instrument or site: one is required (site = any instrument of that site)")
        if not self.test_codes:
            out.append("test_codes: at least one test code is required")
        if len(self.test_codes) > MAX_TESTS_PER_ORDER:
            out.append(f"test_codes: at most {MAX_TESTS_PER_ORDER}")
        if any(not c.strip() for c in self.test_codes):
            out.append("test_codes: empty test code")
        if self.priority not in PRIORITIES:
            out.append(f"priority: one of {', '.join(PRIORITIES)}")
        for name, value in (("sample_id", self.sample_id), ("patient_id", self.patient_id),
                            ("instrument", self.instrument), ("site", self.site),
                            *(("test_codes", c) for c in self.test_codes)):
            if len(value) > MAX_FIELD_CHARS:
                out.append(f"{name}: at most {MAX_FIELD_CHARS} characters")
            if any(ord(ch) < 32 for ch in value):
                out.append(f"{name}: control characters are not allowed")
        return out


def order_problems(config: Config, order: NewOrder) -> list[str]:
    """What makes an order unusable in this configuration (bad fields, unknown instrument or site)."""
    problems = order.problems()
    inst = next((i for i in config.instruments if i.id == order.instrument), None)
    if order.instrument and inst is None:
        problems.append(f"instrument: no instrument {order.instrument!r} in this configuration")
    if inst is not None and order.site and order.site != inst.site:
        problems.append(f"site: instrument {inst.id!r} is at site {inst.site!r}, not {order.site!r}")
    if order.site and order.site not in {s.id for s in config.sites}:
        problems.append(f"site: no site {order.site!r} in this configuration")
    return problems


def complete_order(config: Config, order: NewOrder) -> NewOrder:
    """Fill in the site of an order addressed to an instrument."""
    inst = next((i for i in config.instruments if i.id == order.instrument), None)
    if inst is not None and not order.site:
        return dataclasses.replace(order, site=inst.site)
    return order


@dataclass(frozen=True, slots=True)
class Order:
    """An order as the source keeps it. ``instrument`` is "" for an order for any instrument of ``site``."""

    id: int
    sample_id: str
    test_codes: tuple[str, ...]
    instrument: str
    site: str
    priority: OrderPriority
    patient_id: str
    state: OrderState
    source: str
    created_at: float
    sent_at: float | None = None
    sent_to: str | None = None
    accepted_at: float | None = None
    cancelled_at: float | None = None
    # Why the analyzer last refused it (HL7 ORL^O34 "unable to accept"); "" otherwise. A refused order is
    # back to pending, answered to queries but not pushed again on its own.
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["test_codes"] = list(self.test_codes)
        return data


@runtime_checkable
class OrderSource(Protocol):
    """Where labbridge finds orders. Protocol-neutral: ASTM and HL7 runners use the same calls.

    ``instrument``/``site`` arguments select the orders addressed to that instrument plus the orders
    for any instrument of its site. Every method may raise :class:`labbridge.errors.StoreError` (or
    another ``LabbridgeError``) when the source cannot be reached; callers treat that as "no answer
    now", never as "no orders".
    """

    async def add_order(self, order: NewOrder, *, now: float) -> Order:
        """Record a new order (state ``pending``) and return it with its ID."""
        ...

    async def orders_for_samples(self, *, instrument: str, site: str, sample_ids: Sequence[str]) -> list[Order]:
        """Live orders (not cancelled) for these samples that this instrument may run."""
        ...

    async def orders_for_instrument(self, *, instrument: str, site: str, states: Sequence[OrderState],
                                    limit: int = 100) -> list[Order]:
        """Orders in ``states`` that this instrument may run, oldest first (a query for ``ALL``)."""
        ...

    async def orders_to_push(self, *, instrument: str, limit: int = 50) -> list[Order]:
        """Pending orders addressed to exactly this instrument, oldest first (stat ones first)."""
        ...

    async def mark_sent(self, order_ids: Sequence[int], *, instrument: str, now: float) -> None:
        """The analyzer acknowledged the message carrying these orders (pending -> sent)."""
        ...

    async def mark_accepted(self, order_ids: Sequence[int], *, instrument: str, now: float) -> None:
        """The analyzer accepted these orders at application level (pending/sent -> accepted)."""
        ...

    async def mark_refused(self, order_ids: Sequence[int], *, instrument: str, reason: str, now: float) -> None:
        """The analyzer could not accept these orders: back to pending (sent/accepted -> pending) with
        ``reason`` kept in ``note``; they are not pushed again until someone re-adds them."""
        ...

    async def cancel(self, order_id: int, *, now: float) -> Order | None:
        """Cancel an order; returns it (None if there is no such order). Cancelling twice is harmless."""
        ...

    async def get(self, order_id: int) -> Order | None:
        ...

    async def list_orders(self, *, instrument: str | None = None, site: str | None = None,
                          sample_id: str | None = None, state: OrderState | None = None,
                          limit: int = 200) -> list[Order]:
        """Newest first, for people (CLI, API)."""
        ...


# ---- pure helpers: orders -> order lines -------------------------------------------------------


def _highest(priorities: Iterable[OrderPriority]) -> OrderPriority:
    return max(priorities, key=PRIORITIES.index, default="routine")


def _merge(sample_id: str, orders: Sequence[Order], tests: Sequence[str] | None) -> OrderLine | None:
    """One ``ordered`` line for a sample: the union of its orders' tests (restricted to ``tests``)."""
    codes: list[str] = []
    ids: list[int] = []
    used: list[Order] = []
    for order in orders:
        wanted = [c for c in order.test_codes if tests is None or c in tests]
        if not wanted:
            continue
        used.append(order)
        ids.append(order.id)
        codes.extend(c for c in wanted if c not in codes)
    if not codes:
        return None
    patient = next((o.patient_id for o in used if o.patient_id), "")
    return OrderLine(sample_id=sample_id, test_codes=tuple(codes), status="ordered",
                     priority=_highest(o.priority for o in used), patient_id=patient, order_ids=tuple(ids))


def _by_sample(orders: Sequence[Order]) -> dict[str, list[Order]]:
    out: dict[str, list[Order]] = {}
    for order in orders:
        out.setdefault(order.sample_id, []).append(order)
    return out


def answer_query(query: HostQuery, orders: Sequence[Order]) -> list[OrderLine]:
    """The answer to a host query, one or two lines per sample, in the order the analyzer asked.

    * the sample has live orders for the asked tests -> an ``ordered`` line with those tests;
    * tests the analyzer asked for by name that have no order -> a ``no_order`` line with them
      (ASTM O-26 ``Y``); if it has orders but none for the asked tests, that is the only line;
    * no live order at all for the sample -> an ``unknown_sample`` line (ASTM O-26 ``Z``).

    A query for all samples lists every sample with orders (no ``unknown_sample`` lines).
    """
    live = [o for o in orders if o.state in LIVE_STATES]
    grouped = _by_sample(live)
    asked = list(query.test_codes)
    tests = asked or None
    lines: list[OrderLine] = []
    samples = list(grouped) if query.all_samples else list(dict.fromkeys(query.sample_ids))
    for sample in samples:
        mine = grouped.get(sample, [])
        if not mine:
            lines.append(OrderLine(sample_id=sample, test_codes=tuple(asked), status="unknown_sample"))
            continue
        line = _merge(sample, mine, tests)
        if line is not None:
            lines.append(line)
        missing = tuple(c for c in asked if line is None or c not in line.test_codes)
        if missing:
            patient = line.patient_id if line else next((o.patient_id for o in mine if o.patient_id), "")
            lines.append(OrderLine(sample_id=sample, test_codes=missing, status="no_order", patient_id=patient))
    return lines


def push_lines(orders: Sequence[Order]) -> list[OrderLine]:
    """Pending orders to push, one ``ordered`` line per sample (stat samples first)."""
    lines = [line for sample, mine in _by_sample([o for o in orders if o.state == "pending"]).items()
             if (line := _merge(sample, mine, None)) is not None]
    lines.sort(key=lambda line: -PRIORITIES.index(line.priority))
    return lines
