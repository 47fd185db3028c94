"""The store's read/write SQL: the functions the writer runs (``fn(conn, ...)``).

Kept apart from :mod:`labbridge.store.db` (the daemon's async facade) so that the writer process
imports only this, the model and SQLite: no asyncio, no logging set-up, no configuration models. Every
function here runs on one connection inside the caller's transaction (the writer's group commit) and
must not commit or roll back itself. The tables are in :mod:`labbridge.store.schema`; the values
exchanged are the outbox's vocabulary (:mod:`labbridge.outbox`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Final

import orjson

from labbridge.model import Result, ResultValues, result_json, result_key
from labbridge.outbox import (
    DEAD_HELD,
    DEAD_UNDECODABLE,
    QC_HOLD_REASON,
    REDECODE_KINDS,
    Held,
    OutboxItem,
    Queued,
    Retention,
    Route,
    StoredMessage,
)
from labbridge.store import audit, history
from labbridge.store.campaign import gate_new_items, regate
from labbridge.store.writer import journal_in_memory


def control_id_for(key: str) -> str:
    """A stable HL7 MSH-10 (at most 20 characters) derived from the content key."""
    return "LB" + key[:18].upper()


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def is_backlog(results: Sequence[Result], received_at: float, threshold_s: float | None) -> bool:
    """Every result was measured more than ``threshold_s`` before it reached us (an analyzer's resent backlog)."""
    return _measured_before([r.measured_at for r in results], received_at, threshold_s)


def _measured_before(measured_at: Sequence[str | None], received_at: float, threshold_s: float | None) -> bool:
    if threshold_s is None or not measured_at:
        return False
    times = [_epoch(at) for at in measured_at]
    return all(t is not None and received_at - t > threshold_s for t in times)


def group_key_for(results: Sequence[Result]) -> str:
    return _group_key([r.idempotency_key() for r in results])


def _group_key(result_keys: list[str]) -> str:
    return hashlib.sha256("".join(sorted(result_keys)).encode()).hexdigest()


# A result as the writer stores and queues it: (sample ID, content key, its JSON without "message_id", kind,
# measured at), made once (stored_result) from each result's values (labbridge.model.ResultValues), which is
# how the writer gets them (Store.commit_message).
StoredResult = tuple[str, str, str, str, str | None]
SAMPLE: Final = 0
KEY: Final = 1
DATA: Final = 2
KIND: Final = 3
MEASURED_AT: Final = 4
Row = tuple[int, StoredResult]  # results.id and the result


def stored_result(result: Result | ResultValues) -> StoredResult:
    """A result's stored form. ``results.data`` is compact JSON (:func:`stored_data`) written by orjson: ~10x
    the standard library's encoder on these dicts. The same JSON as ``json.dumps(result.to_json())``, but
    characters beyond ASCII are written as UTF-8 rather than ``\\u`` escapes, a ``numeric_value`` that is not
    finite (a value of "NaN") as null, and ``message_id`` first: read back, a result is the same."""
    data = result_json(result)
    del data["message_id"]
    return (result.sample_id, result_key(result), orjson.dumps(data).decode("utf-8"), result.kind,
            result.measured_at)


def stored_data(message_id: int, result: StoredResult) -> str:
    """``results.data`` of a stored result: its JSON with the ``message_id`` it was stored under, first."""
    return f'{{"message_id":{message_id},{result[DATA][1:]}'


def _group_by_sample(rows: Sequence[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row[1][SAMPLE], []).append(row)
    return groups



# One multi-row INSERT ... RETURNING per message (SQLite 3.35+) instead of one statement per result: the
# same rows, but one statement to run where there were twenty (each also hands the GIL to the event loop
# and back while SQLite works: the writer thread's main cost under load). Older SQLite: row by row.
_MULTI_ROW_INSERT = sqlite3.sqlite_version_info >= (3, 35, 0)
_ROWS_PER_INSERT = 100  # 600 parameters per statement: under every SQLite's limit (999 before 3.32)
_INSERT_RESULT = "INSERT OR IGNORE INTO results (message_id, instrument, sample, key, received_at, data) VALUES "


@functools.lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_results_sql(rows: int) -> str:
    return _INSERT_RESULT + ",".join(["(?, ?, ?, ?, ?, ?)"] * rows) + " RETURNING id, key"


def _insert_results(conn: sqlite3.Connection, message_id: int, instrument: str, results: Sequence[StoredResult],
                    received_at: float) -> tuple[list[Row], int]:
    """Insert results not yet stored for this instrument; returns the new ones (with ids) and the duplicates.

    A result whose content key is already stored for this instrument (or repeated within ``results``) is
    a duplicate. The returned results are the caller's objects, in its order.
    """
    new: list[Row] = []
    duplicates = 0
    if not _MULTI_ROW_INSERT:
        for result in results:
            cur = conn.execute(_INSERT_RESULT + "(?, ?, ?, ?, ?, ?)", (
                message_id, instrument, result[SAMPLE], result[KEY], received_at, stored_data(message_id, result)))
            rowid = cur.lastrowid
            if cur.rowcount == 1 and rowid is not None:
                new.append((rowid, result))
            else:
                duplicates += 1
        return new, duplicates
    for start in range(0, len(results), _ROWS_PER_INSERT):
        chunk = results[start:start + _ROWS_PER_INSERT]
        params: list[object] = []
        for result in chunk:
            params += (message_id, instrument, result[SAMPLE], result[KEY], received_at,
                       stored_data(message_id, result))
        # RETURNING lists the rows actually inserted (not the ignored ones), in no set order: by key.
        inserted = {key: rowid for rowid, key in conn.execute(_insert_results_sql(len(chunk)), params).fetchall()}
        for result in chunk:
            rowid = inserted.pop(result[KEY], None)  # popped: the same key twice in one message is one new row
            if rowid is None:
                duplicates += 1
                continue
            new.append((rowid, result))
    return new, duplicates


# What _queue_groups tells of each live item it queued pending: outbox id -> (destination, control ID, result ids).
Live = dict[int, tuple[str, str, list[int]]]


def _queue_groups(conn: sqlite3.Connection, destination: str, *, message_id: int, instrument: str,
                  rows: Sequence[Row], received_at: float, backlog_after_s: float | None,
                  hold: Held | None = None, live: Live | None = None) -> list[int]:
    """One outbox item per sample; the same group of results (same key) is never queued twice.

    With ``hold``, the items start in the dead letters with its kind and reason (released by a retry).
    ``live``, if given, gets each item queued pending that is not backlog (see :class:`Live`).
    """
    ids: list[int] = []
    for group in _group_by_sample(rows).values():
        group_key = _group_key([r[KEY] for _, r in group])
        backlog = _measured_before([r[MEASURED_AT] for _, r in group], received_at, backlog_after_s)
        result_ids = [rid for rid, _ in group]
        cur = conn.execute(
            "INSERT OR IGNORE INTO outbox (destination, key, control_id, message_id, instrument,"
            " result_ids, created_at, next_attempt_at, backlog, state, dead_kind, last_error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (destination, group_key, control_id_for(group_key), message_id, instrument, json.dumps(result_ids),
             received_at, received_at, int(backlog), "pending" if hold is None else "dead",
             None if hold is None else hold.kind, None if hold is None else hold.reason))
        if cur.rowcount == 1 and cur.lastrowid is not None:
            if hold is None:
                ids.append(cur.lastrowid)
                if live is not None and not backlog:
                    live[cur.lastrowid] = (destination, control_id_for(group_key), result_ids)
            if backlog:
                marks = ",".join("?" * len(result_ids))
                conn.execute(f"UPDATE results SET backlog = 1 WHERE id IN ({marks})", result_ids)
    return ids


Rows = Sequence[Row]


def _routed(route: Route, rows: Rows) -> tuple[list[Row], list[Row]]:
    """The rows one destination takes: (to queue, QC to queue held). QC is held, sent marked or not
    queued per ``route.qc``; a QC-only destination takes no patient result."""
    if route.results == "all" and not any(r[KIND] == "qc" for _, r in rows):
        return list(rows), []  # the usual case: every row, no second pass
    send: list[Row] = []
    hold: list[Row] = []
    for row in rows:
        if row[1][KIND] == "qc":
            if route.qc != "drop":
                (hold if route.qc == "hold" else send).append(row)
        elif route.results != "qc":
            send.append(row)
    return send, hold


def _queue_routed(conn: sqlite3.Connection, route: Route, *, message_id: int, instrument: str, rows: Rows,
                  received_at: float, backlog_after_s: float | None, held_rows: Rows = (), hold_reason: str = "",
                  live: Live | None = None) -> list[int]:
    """Queue a message's rows for one destination as its route says; ``held_rows`` (held by the instrument's
    mapping) start held whatever the route (QC among them still only where the route takes QC). Returns the
    ids of the items queued pending."""
    send, hold_qc = _routed(route, rows)
    ids = _queue_groups(conn, route.destination, message_id=message_id, instrument=instrument, rows=send,
                        received_at=received_at, backlog_after_s=backlog_after_s, live=live)
    if hold_qc:
        _queue_groups(conn, route.destination, message_id=message_id, instrument=instrument, rows=hold_qc,
                      received_at=received_at, backlog_after_s=backlog_after_s,
                      hold=Held(DEAD_HELD, QC_HOLD_REASON.format(destination=route.destination)))
    if held_rows:
        mapped_send, mapped_qc = _routed(route, held_rows)
        _queue_groups(conn, route.destination, message_id=message_id, instrument=instrument,
                      rows=[*mapped_send, *mapped_qc], received_at=received_at, backlog_after_s=backlog_after_s,
                      hold=Held(DEAD_HELD, hold_reason or "held by configuration"))
    return ids


def _insert_dead(conn: sqlite3.Connection, destination: str, *, message_id: int, instrument: str, entry: Held,
                 at: float) -> None:
    key = f"{entry.kind}:{message_id}"
    conn.execute(
        "INSERT OR IGNORE INTO outbox (destination, key, control_id, message_id, instrument, result_ids, state,"
        " created_at, next_attempt_at, last_error, dead_kind) VALUES (?, ?, ?, ?, ?, '[]', 'dead', ?, ?, ?, ?)",
        (destination, key, control_id_for(hashlib.sha256(key.encode()).hexdigest()), message_id, instrument,
         at, at, entry.reason, entry.kind))


def _audit(conn: sqlite3.Connection, *, at: float, actor: str, action: str, target: str, reason: str,
           detail: dict[str, Any]) -> None:
    audit.record(conn, at=at, actor=actor, action=action, target=target, reason=reason, detail=detail)


@journal_in_memory
def commit_message(conn: sqlite3.Connection, *, instrument: str, protocol: str, raw: bytes, received_at: float,
                    results: Sequence[tuple[Any, ...]], destinations: Sequence[str | Route], error: str | None,
                    sender_id: tuple[str, str] | None, dead: Sequence[Held], backlog_after_s: float | None,
                    held_results: Sequence[tuple[Any, ...]], hold_reason: str) -> StoredMessage:
    """Store one message and its results, queue them (see Store.commit_message). Each result comes as its
    values (:func:`labbridge.model.result_values`)."""
    if sender_id is not None:
        row = conn.execute("SELECT message_id FROM received_ids WHERE instrument = ? AND control_id = ?"
                           " AND digest = ?", (instrument, *sender_id)).fetchone()
        if row is not None:
            return StoredMessage(int(row[0]), 0, len(results), (), duplicate=True)
    status = "undecodable" if error is not None else "decoded"
    cur = conn.execute(
        "INSERT INTO messages (instrument, protocol, received_at, raw, status, error) "
        "VALUES (?, ?, ?, ?, ?, ?)", (instrument, protocol, received_at, raw, status, error))
    message_id = cur.lastrowid
    assert message_id is not None
    make = ResultValues._make
    stored = [stored_result(make(v)) for v in results]
    stored_held = [stored_result(make(v)) for v in held_results]
    new, duplicates = _insert_results(conn, message_id, instrument, stored, received_at)
    new_held: Sequence[Row] = ()
    if stored_held:
        new_held, held_duplicates = _insert_results(conn, message_id, instrument, stored_held, received_at)
        duplicates += held_duplicates
    conn.execute("UPDATE messages SET result_count = ?, duplicate_count = ? WHERE id = ?",
                 (len(new) + len(new_held), duplicates, message_id))
    if sender_id is not None and error is None:
        conn.execute("INSERT INTO received_ids (instrument, control_id, digest, message_id)"
                     " VALUES (?, ?, ?, ?)", (instrument, *sender_id, message_id))
    outbox_ids: list[int] = []
    live: Live = {}
    for destination in destinations:
        route = Route.of(destination)
        outbox_ids += _queue_routed(conn, route, message_id=message_id, instrument=instrument, rows=new,
                                    received_at=received_at, backlog_after_s=backlog_after_s, held_rows=new_held,
                                    hold_reason=hold_reason, live=live)
        for entry in dead:
            _insert_dead(conn, route.destination, message_id=message_id, instrument=instrument, entry=entry,
                         at=received_at)
    # The validation gate: held unless the instrument is live (labbridge.store.campaign).
    outbox_ids, test = gate_new_items(conn, instrument, outbox_ids, received_at, message=True)
    queued: tuple[Queued, ...] = ()
    if live and outbox_ids:
        # Told back so the relay can send them from the caller's results, without reading them back: each
        # result by its position in `results` (row ids follow that order, as an item read back lists them).
        position = {id(result): i for i, result in enumerate(stored)}
        row_position = {rid: position[id(result)] for rid, result in new}
        queued = tuple(Queued(item, dest, control, tuple(row_position[rid] for rid in sorted(rids)), test)
                       for item in outbox_ids if item in live
                       for dest, control, rids in (live[item],))
    return StoredMessage(message_id, len(new), duplicates, tuple(outbox_ids), queued=queued)


@journal_in_memory
def mark_delivered(conn: sqlite3.Connection, item_id: int, at: float) -> None:
    mark_delivered_many(conn, [(item_id, at)])


def finish_checkpoint(conn: sqlite3.Connection) -> int:
    """The writer's checkpoint after a background one (labbridge.store.db): only what was committed since is
    left to copy; once it is, the next write transaction starts the WAL from its beginning. Returns the
    frames in the WAL (-1 if another checkpoint was running)."""
    busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return -1 if busy else int(frames)


@journal_in_memory
def mark_delivered_many(conn: sqlite3.Connection, marks: Sequence[tuple[int, float]]) -> None:
    """:func:`mark_delivered` for several items, in one statement run per item (the relay's batch)."""
    conn.executemany("UPDATE outbox SET state = 'delivered', delivered_at = ?, attempts = attempts + 1,"
                     " last_error = NULL WHERE id = ?", [(at, item_id) for item_id, at in marks])


@journal_in_memory
def record_incomplete(conn: sqlite3.Connection, instrument: str, raw: bytes, reason: str, received_at: float) -> None:
    conn.execute("INSERT INTO incomplete (instrument, received_at, raw, reason) VALUES (?, ?, ?, ?)",
                 (instrument, received_at, raw, reason))


@journal_in_memory
def schedule_retry(conn: sqlite3.Connection, item_id: int, next_attempt_at: float | None, error: str) -> None:
    """Count a failed attempt; ``next_attempt_at`` None keeps the item's place in line (due order)."""
    conn.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = COALESCE(?, next_attempt_at),"
                 " last_error = ? WHERE id = ? AND state = 'pending'", (next_attempt_at, error, item_id))


@journal_in_memory
def dead_letter(conn: sqlite3.Connection, item_id: int, reason: str, kind: str) -> None:
    conn.execute("UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?, dead_kind = ?"
                 " WHERE id = ?", (reason, kind, item_id))


def set_size_limit(conn: sqlite3.Connection, max_bytes: int | None) -> int:
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    pages = 4294967294 if max_bytes is None else max(1, max_bytes // page_size)
    return int(conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()[0])


def retry_dead(conn: sqlite3.Connection, item_ids: Sequence[int] | None, *, actor: str, reason: str,
               now: float) -> list[dict[str, Any]]:
    if item_ids is None:
        rows = conn.execute("SELECT id, state, dead_kind, last_error FROM outbox WHERE state = 'dead'"
                            " ORDER BY id").fetchall()
    else:
        rows = []
        for item_id in item_ids:
            row = conn.execute("SELECT id, state, dead_kind, last_error FROM outbox WHERE id = ?",
                               (item_id,)).fetchone()
            rows.append(row if row is not None else (item_id, None, None, None))
    out: list[dict[str, Any]] = []
    for item_id, state, kind, last_error in rows:
        if state is None:
            out.append({"id": item_id, "outcome": "not-found"})
        elif state != "dead":
            out.append({"id": item_id, "outcome": f"not-dead ({state})"})
        elif kind in REDECODE_KINDS:
            out.append({"id": item_id, "outcome": "needs-redecode", "dead_kind": kind})
        else:
            conn.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                         " dead_kind = NULL, last_error = NULL WHERE id = ?", (now, item_id))
            regate(conn, item_id)  # released by the mapping, still held by the validation gate
            _audit(conn, at=now, actor=actor, action="retry", target=f"outbox:{item_id}", reason=reason,
                   detail={"previous_error": last_error, "dead_kind": kind, "outcome": "queued"})
            out.append({"id": item_id, "outcome": "queued"})
    return out


def apply_redecode(conn: sqlite3.Connection, item_id: int, *, results: Sequence[Result], held: Sequence[Held],
                    actor: str, reason: str, now: float, backlog_after_s: float | None,
                    held_results: Sequence[Result], hold_reason: str, route: Route | None = None) -> dict[str, Any]:
    row = conn.execute("SELECT destination, message_id, instrument, state, dead_kind, last_error, created_at"
                       " FROM outbox WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        return {"id": item_id, "outcome": "not-found"}
    destination, message_id, instrument, state, kind, last_error, created_at = row
    if state != "dead" or kind not in REDECODE_KINDS:
        return {"id": item_id, "outcome": f"not-a-redecode-dead-letter ({state}, {kind})"}
    def not_yet_queued(batch: Sequence[Result]) -> list[Row]:
        stored = [stored_result(result) for result in batch]
        _insert_results(conn, message_id, instrument, stored, created_at)
        rows: list[Row] = []
        for result in stored:
            rid, data = conn.execute("SELECT id, data FROM results WHERE instrument = ? AND sample = ? AND key = ?",
                                     (instrument, result[SAMPLE], result[KEY])).fetchone()
            already = conn.execute(
                "SELECT 1 FROM outbox o, json_each(o.result_ids) j WHERE o.destination = ?"
                " AND o.instrument = ? AND j.value = ? LIMIT 1", (destination, instrument, rid)).fetchone()
            if already is None:  # queued as stored (an earlier message's copy of it, say)
                rows.append((rid, stored_result(Result.from_json(json.loads(data)))))
        return rows

    if route is None or route.destination != destination:
        route = Route(destination)
    queued = _queue_routed(conn, route, message_id=message_id, instrument=instrument, rows=not_yet_queued(results),
                           received_at=created_at, backlog_after_s=backlog_after_s,
                           held_rows=not_yet_queued(held_results) if held_results else (),
                           hold_reason=hold_reason or "held")
    gate_new_items(conn, instrument, queued, now, message=False)  # queued, but held if not live (read back)
    detail: dict[str, Any] = {"previous_error": last_error, "dead_kind": kind, "results": len(results),
                              "queued_items": queued}
    if held:
        conn.execute("UPDATE outbox SET dead_kind = ?, last_error = ?, attempts = attempts + 1"
                     " WHERE id = ?", (held[0].kind, "; ".join(h.reason for h in held), item_id))
        detail["outcome"] = "still-dead"
        detail["reason_now"] = "; ".join(h.reason for h in held)
    else:
        conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
        if kind == DEAD_UNDECODABLE:
            conn.execute("UPDATE messages SET status = 'decoded', error = NULL WHERE id = ?", (message_id,))
        detail["outcome"] = "redecoded"
    _audit(conn, at=now, actor=actor, action="retry", target=f"outbox:{item_id}", reason=reason,
           detail=detail)
    return {"id": item_id, **detail}


def purge(conn: sqlite3.Connection, item_ids: Sequence[int] | None, *, state: str | None, older_than_s: float | None,
           actor: str, reason: str, now: float) -> dict[str, Any]:
    sql = "SELECT id, state FROM outbox WHERE state IN ('dead', 'delivered')"
    args: list[Any] = []
    if item_ids is not None:
        sql += f" AND id IN ({','.join('?' * len(item_ids))})"
        args += list(item_ids)
    if state is not None:
        sql += " AND state = ?"
        args.append(state)
    if older_than_s is not None:
        sql += " AND created_at < ?"
        args.append(now - older_than_s)
    found = conn.execute(sql, args).fetchall()
    ids = [r[0] for r in found]
    skipped = sorted(set(item_ids or ()) - set(ids))
    for chunk in range(0, len(ids), 500):
        part = ids[chunk:chunk + 500]
        conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(part))})", part)
    detail = {"purged": len(ids), "ids": ids[:1000], "skipped": skipped, "state": state,
              "older_than_s": older_than_s}
    target = "outbox:" + (",".join(map(str, item_ids)) if item_ids is not None else f"state={state}")
    _audit(conn, at=now, actor=actor, action="purge", target=target, reason=reason, detail=detail)
    return detail


def prune(conn: sqlite3.Connection, retention: Retention, now: float) -> dict[str, int]:
    out: dict[str, int] = {}
    cutoff = now - retention.delivered_s
    out["delivered_items"] = conn.execute(
        "DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < ?", (cutoff,)).rowcount
    out["results"] = conn.execute(
        "DELETE FROM results WHERE received_at < ? AND message_id NOT IN"
        " (SELECT message_id FROM outbox WHERE state IN ('pending', 'dead', 'held', 'discarded'))", (cutoff,)).rowcount
    raw_cutoff = now - retention.raw_messages_s
    keep = ("id NOT IN (SELECT message_id FROM outbox) AND id NOT IN (SELECT message_id FROM results)")
    out["messages"] = conn.execute(
        f"DELETE FROM messages WHERE received_at < ? AND {keep}", (raw_cutoff,)).rowcount
    # Still referenced by stored (delivered) results: keep the row, drop the raw bytes.
    out["raw_cleared"] = conn.execute(
        "UPDATE messages SET raw = X'' WHERE received_at < ? AND length(raw) > 0 AND id NOT IN"
        " (SELECT message_id FROM outbox WHERE state IN ('pending', 'dead', 'held', 'discarded'))",
        (raw_cutoff,)).rowcount
    out["incomplete"] = conn.execute(
        "DELETE FROM incomplete WHERE received_at < ?", (now - retention.incomplete_s,)).rowcount
    out.update(history.prune(conn, now - retention.history_s))
    return out


def due_items(conn: sqlite3.Connection, destination: str, now: float, *, include_backlog: bool, limit: int,
               exclude: Collection[int]) -> tuple[list[OutboxItem], float | None]:
    only_live = "" if include_backlog else " AND backlog = 0"
    rows = conn.execute(
        "SELECT id, control_id, instrument, message_id, attempts, created_at, result_ids, backlog, test"
        " FROM outbox WHERE destination = ? AND state = 'pending' AND next_attempt_at <= ?" + only_live +
        " ORDER BY backlog, next_attempt_at, id LIMIT ?", (destination, now, limit + len(exclude))).fetchall()
    rows = [row for row in rows if row[0] not in exclude][:limit]
    if not rows:
        nxt = conn.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE destination = ?"
                           " AND state = 'pending'" + only_live, (destination,)).fetchone()[0]
        return [], None if nxt is None else float(nxt)
    id_lists = [json.loads(row[6]) for row in rows]
    wanted = [rid for ids in id_lists for rid in ids]
    data: dict[int, Result] = {}
    for start in range(0, len(wanted), 500):  # stay under SQLite's host-parameter limit
        chunk = wanted[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for rid, text in conn.execute(f"SELECT id, data FROM results WHERE id IN ({marks})", chunk):
            data[rid] = Result.from_json(json.loads(text))
    items = [OutboxItem(row[0], destination, row[1], row[2], row[3], row[4], row[5],
                        tuple(data[rid] for rid in sorted(ids) if rid in data), bool(row[7]), bool(row[8]))
             for row, ids in zip(rows, id_lists, strict=True)]
    return items, None


def due_items_above(conn: sqlite3.Connection, destination: str, now: float, *, include_backlog: bool, limit: int,
                    exclude: Collection[int]) -> tuple[list[OutboxItem], float | None, int]:
    """:func:`due_items`, and the highest outbox id at the time of the read: every item queued since has a
    higher id (the writer is the only connection that writes, and nothing runs between the two reads)."""
    high = conn.execute("SELECT MAX(id) FROM outbox").fetchone()[0]
    items, next_at = due_items(conn, destination, now, include_backlog=include_backlog, limit=limit, exclude=exclude)
    return items, next_at, int(high or 0)


OUTBOX_COLUMNS = ("id", "destination", "control_id", "instrument", "message_id", "state", "attempts",
                  "created_at", "next_attempt_at", "last_error", "delivered_at", "dead_kind", "backlog")


# ---- link health (read periodically by the daemon's health task, on the read connection) -------------

def instrument_outbox_facts(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Per instrument: pending items and results and the oldest pending one's time; dead letters by kind
    (operator holds, kind ``held``, excluded: they wait by design)."""
    out: dict[str, dict[str, Any]] = {}
    for instrument, items, results, oldest in conn.execute(
            "SELECT instrument, COUNT(*), SUM(json_array_length(result_ids)), MIN(created_at) FROM outbox"
            " WHERE state = 'pending' GROUP BY instrument"):
        out.setdefault(instrument, {}).update(pending_items=items, pending_results=results or 0,
                                              oldest_pending_at=oldest)
    for instrument, kind, n in conn.execute(
            "SELECT instrument, COALESCE(dead_kind, 'lis-rejected'), COUNT(*) FROM outbox WHERE state = 'dead'"
            " AND COALESCE(dead_kind, '') != 'held' GROUP BY instrument, dead_kind ORDER BY instrument, dead_kind"):
        out.setdefault(instrument, {}).setdefault("dead", []).append((kind, n))
    return out


def last_deliveries(conn: sqlite3.Connection, since: float) -> dict[str, float]:
    """Per instrument, its latest item delivered at or after ``since`` (the outbox_state index's range)."""
    return dict(conn.execute(
        "SELECT instrument, MAX(delivered_at) FROM outbox WHERE state = 'delivered' AND delivered_at >= ?"
        " GROUP BY instrument", (since,)))


def last_messages(conn: sqlite3.Connection, instruments: Sequence[str]) -> dict[str, float]:
    """Per instrument, its latest stored message's time (one index lookup each)."""
    out: dict[str, float] = {}
    for instrument in instruments:
        row = conn.execute("SELECT MAX(received_at) FROM messages WHERE instrument = ?", (instrument,)).fetchone()
        if row is not None and row[0] is not None:
            out[instrument] = float(row[0])
    return out


def message_hour_gaps(conn: sqlite3.Connection, instrument: str,
                      since: float) -> tuple[float | None, list[tuple[int, float]]]:
    """The first message of ``instrument`` since ``since``, and per UTC hour (epoch seconds // 3600) the
    longest gap between two consecutive messages that ended in it (one covering-index scan)."""
    first = conn.execute("SELECT MIN(received_at) FROM messages WHERE instrument = ? AND received_at >= ?",
                         (instrument, since)).fetchone()[0]
    rows = conn.execute(
        "SELECT CAST(received_at / 3600 AS INTEGER) AS hour, MAX(gap) FROM ("
        " SELECT received_at, received_at - LAG(received_at) OVER (ORDER BY received_at) AS gap"
        " FROM messages WHERE instrument = ? AND received_at >= ?)"
        " WHERE gap IS NOT NULL GROUP BY hour ORDER BY hour", (instrument, since)).fetchall()
    return (None if first is None else float(first)), [(int(h), float(g)) for h, g in rows]
