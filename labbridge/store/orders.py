"""The embedded order source: orders kept in the SQLite store (table ``orders``, schema 2).

Writes go through the store's writer process (durable when the call returns); reads use its read
connection. Another process (``labbridge orders add --store FILE``) may write the same file while the
daemon runs: SQLite's WAL mode lets it, and the daemon's runners poll for new orders.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from labbridge.model import OrderPriority
from labbridge.orders import LIVE_STATES, NewOrder, Order, OrderState
from labbridge.store import audit

if TYPE_CHECKING:  # the writer process imports this module for its functions: no store facade there
    from labbridge.store.db import Store

_COLUMNS = ("id, sample_id, tests, instrument, site, priority, patient_id, state, source, created_at, sent_at,"
            " sent_to, accepted_at, cancelled_at, note")


def _order(row: Sequence[Any]) -> Order:
    return Order(id=row[0], sample_id=row[1], test_codes=tuple(json.loads(row[2])), instrument=row[3],
                 site=row[4], priority=cast(OrderPriority, row[5]), patient_id=row[6],
                 state=cast(OrderState, row[7]), source=row[8], created_at=row[9], sent_at=row[10],
                 sent_to=row[11], accepted_at=row[12], cancelled_at=row[13], note=row[14] or "")


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


# Orders this instrument may run: addressed to it, or to any instrument of its site.
_FOR_INSTRUMENT = "(instrument = ? OR (instrument = '' AND site = ? AND site != ''))"
# Stat first, then ASAP, then routine; oldest first within a priority.
_PUSH_ORDER = "CASE priority WHEN 'stat' THEN 0 WHEN 'asap' THEN 1 ELSE 2 END, id"


# Writes: run in the store's writer process (module-level functions, pickled by reference).

def _add_order(conn: sqlite3.Connection, order: NewOrder, now: float, actor: str | None = None) -> Order:
    cur = conn.execute(
        "INSERT INTO orders (sample_id, tests, instrument, site, priority, patient_id, source, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (order.sample_id, json.dumps(list(order.test_codes)), order.instrument, order.site,
         order.priority, order.patient_id, order.source, now))
    row = conn.execute(f"SELECT {_COLUMNS} FROM orders WHERE id = ?", (cur.lastrowid,)).fetchone()
    added = _order(row)
    if actor is not None:  # a person's order (the API, the CLI): audited; no sample or patient id in the trail
        audit.record(conn, at=now, actor=actor, action="order-add", target=f"order:{added.id}", reason="",
                     detail={"instrument": added.instrument, "site": added.site, "priority": added.priority,
                             "tests": len(added.test_codes), "source": added.source})
    return added


def _add_orders_from_message(conn: sqlite3.Connection, orders: Sequence[NewOrder], *, origin: str, raw: bytes,
                             sender_id: tuple[str, str] | None, now: float,
                             error: str | None) -> tuple[list[Order], bool]:
    if sender_id is not None and error is None:
        row = conn.execute("SELECT message_id FROM received_ids WHERE instrument = ? AND control_id = ?"
                           " AND digest = ?", (origin, *sender_id)).fetchone()
        if row is not None:
            return [], True
    cur = conn.execute(
        "INSERT INTO messages (instrument, protocol, received_at, raw, status, error, result_count)"
        " VALUES (?, 'hl7', ?, ?, ?, ?, 0)", (origin, now, raw, "refused" if error else "orders", error))
    message_id = cur.lastrowid
    if error is not None:
        return [], False
    if sender_id is not None:
        conn.execute("INSERT INTO received_ids (instrument, control_id, digest, message_id)"
                     " VALUES (?, ?, ?, ?)", (origin, *sender_id, message_id))
    out: list[Order] = []
    for order in orders:
        cur = conn.execute(
            "INSERT INTO orders (sample_id, tests, instrument, site, priority, patient_id, source,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (order.sample_id, json.dumps(list(order.test_codes)), order.instrument, order.site,
             order.priority, order.patient_id, order.source, now))
        out.append(_order(conn.execute(f"SELECT {_COLUMNS} FROM orders WHERE id = ?",
                                       (cur.lastrowid,)).fetchone()))
    return out, False


def _mark_sent(conn: sqlite3.Connection, ids: list[int], instrument: str, now: float) -> None:
    # Only pending orders move: a cancelled order stays cancelled; a resent one keeps its first time.
    conn.execute(f"UPDATE orders SET state = 'sent', sent_at = ?, sent_to = ? WHERE id IN ({_marks(ids)})"
                 " AND state = 'pending'", (now, instrument, *ids))


def _mark_accepted(conn: sqlite3.Connection, ids: list[int], instrument: str, now: float) -> None:
    conn.execute(f"UPDATE orders SET state = 'accepted', accepted_at = ?, sent_to = ?, note = '',"
                 f" sent_at = COALESCE(sent_at, ?) WHERE id IN ({_marks(ids)})"
                 " AND state IN ('pending', 'sent')", (now, instrument, now, *ids))


def _mark_refused(conn: sqlite3.Connection, ids: list[int], instrument: str, reason: str, now: float) -> None:
    conn.execute(f"UPDATE orders SET state = 'pending', note = ?, sent_to = ? WHERE id IN ({_marks(ids)})"
                 " AND state IN ('pending', 'sent', 'accepted')",
                 (reason[:500] or "refused by the analyzer", instrument, *ids))


def _cancel(conn: sqlite3.Connection, order_id: int, now: float, actor: str | None = None) -> Order | None:
    before = conn.execute("SELECT state FROM orders WHERE id = ?", (order_id,)).fetchone()
    conn.execute("UPDATE orders SET state = 'cancelled', cancelled_at = ? WHERE id = ?"
                 " AND state != 'cancelled'", (now, order_id))
    row = conn.execute(f"SELECT {_COLUMNS} FROM orders WHERE id = ?", (order_id,)).fetchone()
    if row is not None and actor is not None:
        audit.record(conn, at=now, actor=actor, action="order-cancel", target=f"order:{order_id}", reason="",
                     detail={"from": before[0], "instrument": row[3], "site": row[4]})
    return _order(row) if row else None


class SqliteOrderSource:
    """:class:`labbridge.orders.OrderSource` on the labbridge store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def add_order(self, order: NewOrder, *, now: float, actor: str | None = None) -> Order:
        """Add an order; with ``actor`` (a person's order), audited in the same transaction."""
        return await self.store.write(_add_order, order, now, actor)

    async def add_orders_from_message(self, orders: Sequence[NewOrder], *, origin: str, raw: bytes,
                                      sender_id: tuple[str, str] | None, now: float,
                                      error: str | None = None) -> tuple[list[Order], bool]:
        """Keep a message that carried orders (raw, in ``messages`` under ``origin``) and add its orders, in
        one transaction: both are on disk when this returns, or neither is.

        ``sender_id`` is the sender's MSH-10 and a content digest: a message already stored under both
        adds nothing and returns ``([], True)`` (a resend after a lost ACK). With ``error`` the message is
        kept for inspection (status ``refused``) and no order is added.
        """
        return await self.store.write(_add_orders_from_message, orders, origin=origin, raw=raw, sender_id=sender_id,
                                      now=now, error=error)

    async def orders_for_samples(self, *, instrument: str, site: str, sample_ids: Sequence[str]) -> list[Order]:
        samples = list(dict.fromkeys(sample_ids))
        if not samples:
            return []

        def work(conn: sqlite3.Connection) -> list[Order]:
            out: list[Order] = []
            for start in range(0, len(samples), 500):  # SQLite's bound on host parameters
                chunk = samples[start:start + 500]
                out.extend(_order(r) for r in conn.execute(
                    f"SELECT {_COLUMNS} FROM orders WHERE sample_id IN ({_marks(chunk)})"
                    f" AND state IN ({_marks(LIVE_STATES)}) AND {_FOR_INSTRUMENT} ORDER BY id",
                    (*chunk, *LIVE_STATES, instrument, site)))
            return out

        return await self.store.read(work)

    async def orders_for_instrument(self, *, instrument: str, site: str, states: Sequence[OrderState],
                                    limit: int = 100) -> list[Order]:
        def work(conn: sqlite3.Connection) -> list[Order]:
            return [_order(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM orders WHERE state IN ({_marks(states)}) AND {_FOR_INSTRUMENT}"
                f" ORDER BY {_PUSH_ORDER} LIMIT ?", (*states, instrument, site, limit))]

        return await self.store.read(work)

    async def orders_to_push(self, *, instrument: str, limit: int = 50) -> list[Order]:
        def work(conn: sqlite3.Connection) -> list[Order]:
            return [_order(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM orders WHERE instrument = ? AND state = 'pending' AND note = ''"
                f" ORDER BY {_PUSH_ORDER} LIMIT ?", (instrument, limit))]

        return await self.store.read(work)

    async def mark_sent(self, order_ids: Sequence[int], *, instrument: str, now: float) -> None:
        ids = list(order_ids)
        if not ids:
            return

        await self.store.write(_mark_sent, ids, instrument, now)

    async def mark_accepted(self, order_ids: Sequence[int], *, instrument: str, now: float) -> None:
        ids = list(order_ids)
        if not ids:
            return

        await self.store.write(_mark_accepted, ids, instrument, now)

    async def mark_refused(self, order_ids: Sequence[int], *, instrument: str, reason: str, now: float) -> None:
        ids = list(order_ids)
        if not ids:
            return

        await self.store.write(_mark_refused, ids, instrument, reason, now)

    async def cancel(self, order_id: int, *, now: float, actor: str | None = None) -> Order | None:
        """Cancel an order (None: no such order); with ``actor``, audited in the same transaction."""
        return await self.store.write(_cancel, order_id, now, actor)

    async def get(self, order_id: int) -> Order | None:
        def work(conn: sqlite3.Connection) -> Order | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM orders WHERE id = ?", (order_id,)).fetchone()
            return _order(row) if row else None

        return await self.store.read(work)

    async def list_orders(self, *, instrument: str | None = None, site: str | None = None,
                          sample_id: str | None = None, state: OrderState | None = None,
                          limit: int = 200) -> list[Order]:
        def work(conn: sqlite3.Connection) -> list[Order]:
            where: list[str] = []
            args: list[Any] = []
            for column, value in (("instrument", instrument), ("site", site), ("sample_id", sample_id),
                                  ("state", state)):
                if value is not None:
                    where.append(f"{column} = ?")
                    args.append(value)
            sql = f"SELECT {_COLUMNS} FROM orders"
            if where:
                sql += " WHERE " + " AND ".join(where)
            return [_order(r) for r in conn.execute(f"{sql} ORDER BY id DESC LIMIT ?", (*args, limit))]

        return await self.store.read(work)
