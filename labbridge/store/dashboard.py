"""The dashboard's read-only queries (labbridge.web.instrument_page, labbridge.web.events), on the read
connection (``Store.read``): an instrument's recent messages with their results, its dead letters, and the
messages and results each instrument stored since a given time (today's figures on the cards).

Nothing here writes; each query is bounded (``limit``) and uses the ``messages(instrument, received_at)``
index or the outbox's primary key.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from labbridge.store.sql import OUTBOX_COLUMNS

MAX_ROWS = 500


def recent_messages(conn: sqlite3.Connection, instrument: str, limit: int) -> list[dict[str, Any]]:
    """The instrument's newest stored messages (newest first), each with its results as stored
    (``labbridge.model.Result`` JSON). Raw bytes are not returned."""
    limit = max(1, min(limit, MAX_ROWS))
    rows = conn.execute("SELECT id, protocol, received_at, status, error, result_count, duplicate_count"
                        " FROM messages WHERE instrument = ? ORDER BY received_at DESC, id DESC LIMIT ?",
                        (instrument, limit)).fetchall()
    cols = ("id", "protocol", "received_at", "status", "error", "result_count", "duplicate_count")
    out = [dict(zip(cols, row, strict=True)) for row in rows]
    if not out:
        return out
    ids = [m["id"] for m in out]
    marks = ",".join("?" * len(ids))
    results: dict[int, list[dict[str, Any]]] = {}
    for message_id, data in conn.execute(f"SELECT message_id, data FROM results WHERE message_id IN ({marks})"
                                         " ORDER BY id", ids):
        results.setdefault(message_id, []).append(json.loads(data))
    for message in out:
        message["results"] = results.get(message["id"], [])
    return out


def dead_letters(conn: sqlite3.Connection, instrument: str, limit: int) -> list[dict[str, Any]]:
    """The instrument's dead letters (outbox items in state ``dead``), newest first, as ``/api/outbox/items``
    gives them."""
    limit = max(1, min(limit, MAX_ROWS))
    rows = conn.execute(f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM outbox WHERE instrument = ? AND state = 'dead'"
                        " ORDER BY id DESC LIMIT ?", (instrument, limit)).fetchall()
    out = [dict(zip(OUTBOX_COLUMNS, row, strict=True)) for row in rows]
    for row in out:
        row["backlog"] = bool(row["backlog"])
    return out


def stored_since(conn: sqlite3.Connection, since: float) -> dict[str, dict[str, int]]:
    """Per instrument: messages and results stored at or after ``since`` (``{"messages", "results"}``)."""
    return {instrument: {"messages": int(messages), "results": int(results or 0)}
            for instrument, messages, results in conn.execute(
                "SELECT instrument, COUNT(*), SUM(result_count) FROM messages WHERE received_at >= ?"
                " GROUP BY instrument", (since,))}
