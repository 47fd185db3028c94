"""The campaign's tables and SQL: stages, their history, reference values, and the validation gate.

Run by the writer (``fn(conn, ...)`` inside its group's transaction, never committing itself) or on the
read connection (the ``*_rows`` reads). The rules are :mod:`labbridge.campaign.stages` and
:mod:`labbridge.campaign.validation` (pure); this module only applies them, each change with its history
row and its ``audit`` row in the same transaction as the change.

The gate lives in the store so that it is decided in the transaction that stores the message: a result is
``held`` (outbox state, never read by a relay) exactly when its instrument was not live at that commit,
and a sign-off that releases the held items and makes the instrument live is one transaction too, so no
message can slip between the two, and a crash leaves either the whole change or none of it.

Outbox states added here: ``held`` (the validation gate holds it; released in id order, i.e. as stored, by a
sign-off ``--release``) and ``discarded`` (a sign-off ``--discard``: kept, never sent). Per destination, the
gate may instead send them at once flagged as test results (``campaign_destinations.validating =
'send-test'``, outbox ``test = 1``: HL7 MSH-11 ``T``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from labbridge.campaign.stages import (
    AUTOMATIC,
    DAEMON_ACTOR,
    LIVE,
    ROLLED_BACK,
    CampaignNotFound,
    CampaignRefused,
    Stage,
    holds,
    rollback_problem,
    set_problem,
    sign_off_problem,
)
from labbridge.campaign.validation import Reference, compare
from labbridge.model import Result
from labbridge.outbox import QC_HOLD_REASON
from labbridge.store import audit

HELD = "held"
DISCARDED = "discarded"


def migrate_campaign(conn: sqlite3.Connection) -> None:
    """The reconnection campaign: stages, their history, reference values, the validation gate's outbox states."""
    conn.execute("""CREATE TABLE IF NOT EXISTS campaign_stages (
        instrument TEXT PRIMARY KEY,
        stage TEXT NOT NULL,             -- labbridge.campaign.stages.STAGES
        since REAL NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL
    )""")
    conn.execute("""CREATE TABLE IF NOT EXISTS campaign_history (   -- append-only
        id INTEGER PRIMARY KEY,
        instrument TEXT NOT NULL,
        at REAL NOT NULL,
        from_stage TEXT,                 -- NULL: the first stage recorded (from the config)
        stage TEXT NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL
    )""")
    conn.execute("CREATE INDEX IF NOT EXISTS campaign_history_instrument ON campaign_history(instrument, id)")
    conn.execute("""CREATE TABLE IF NOT EXISTS campaign_destinations (   -- written by the daemon at start
        destination TEXT PRIMARY KEY,
        validating TEXT NOT NULL         -- hold | send-test
    )""")
    conn.execute("""CREATE TABLE IF NOT EXISTS validation_references (
        instrument TEXT NOT NULL,
        sample TEXT NOT NULL,
        test TEXT NOT NULL,
        expected TEXT NOT NULL,
        tolerance TEXT NOT NULL,
        unit TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT '',
        imported_at REAL NOT NULL,
        actor TEXT NOT NULL,
        PRIMARY KEY (instrument, sample, test)
    )""")
    have = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    if "test" not in have:  # sent flagged as a test result (the gate's send-test mode)
        conn.execute("ALTER TABLE outbox ADD COLUMN test INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_instrument_state ON outbox(instrument, state, id)")


def _audit(conn: sqlite3.Connection, *, at: float, actor: str, action: str, instrument: str, reason: str,
           detail: Mapping[str, Any]) -> None:
    audit.record(conn, at=at, actor=actor, action=action, target=f"instrument:{instrument}", reason=reason,
                 detail=detail)


def _stage(conn: sqlite3.Connection, instrument: str) -> str | None:
    row = conn.execute("SELECT stage FROM campaign_stages WHERE instrument = ?", (instrument,)).fetchone()
    return None if row is None else str(row[0])


def _move(conn: sqlite3.Connection, instrument: str, current: str | None, stage: str, *, at: float, actor: str,
          reason: str) -> None:
    conn.execute("INSERT INTO campaign_stages (instrument, stage, since, actor, reason) VALUES (?, ?, ?, ?, ?)"
                 " ON CONFLICT (instrument) DO UPDATE SET stage = excluded.stage, since = excluded.since,"
                 " actor = excluded.actor, reason = excluded.reason", (instrument, stage, at, actor, reason))
    conn.execute("INSERT INTO campaign_history (instrument, at, from_stage, stage, actor, reason)"
                 " VALUES (?, ?, ?, ?, ?, ?)", (instrument, at, current, stage, actor, reason))


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _gate(conn: sqlite3.Connection, item_ids: Sequence[int]) -> list[int]:
    """Hold these pending items (or flag them as test results, per destination); returns those left to send."""
    if not item_ids:
        return []
    modes = dict(conn.execute("SELECT destination, validating FROM campaign_destinations").fetchall())
    rows = conn.execute(f"SELECT id, destination FROM outbox WHERE id IN ({_marks(len(item_ids))})"
                        " AND state = 'pending'", list(item_ids)).fetchall()
    send = [rid for rid, dest in rows if modes.get(dest) == "send-test"]
    hold = [rid for rid, dest in rows if modes.get(dest) != "send-test"]
    if hold:
        conn.execute(f"UPDATE outbox SET state = 'held' WHERE id IN ({_marks(len(hold))})", hold)
    if send:
        conn.execute(f"UPDATE outbox SET test = 1 WHERE id IN ({_marks(len(send))})", send)
    return send


def gate_new_items(conn: sqlite3.Connection, instrument: str, item_ids: Sequence[int], at: float, *,
                   message: bool) -> tuple[list[int], bool]:
    """Called by the commit of a message (``message``) or a re-decode, in its transaction: the items it queued
    that may go now, and whether they go flagged as test results (the instrument is not live: a destination
    in ``send-test`` mode). An instrument with no stage recorded is live (configs from before the campaign).

    A stored message also advances an instrument not yet at ``first-message`` (its first message)."""
    stage = _stage(conn, instrument)
    if not holds(stage):
        return list(item_ids), False
    assert stage is not None
    if message and stage in AUTOMATIC["first-message"]:
        _move(conn, instrument, stage, "first-message", at=at, actor=DAEMON_ACTOR, reason="first message stored")
    return _gate(conn, item_ids), True


def init_stages(conn: sqlite3.Connection, stages: Mapping[str, str], gate_modes: Mapping[str, str],
                now: float) -> None:
    """At the daemon's start: each instrument with no stage yet takes its config's; the destinations' gate modes."""
    for instrument, stage in stages.items():
        if _stage(conn, instrument) is None:
            _move(conn, instrument, None, stage, at=now, actor="config", reason="initial stage from the configuration")
    conn.execute("DELETE FROM campaign_destinations")
    conn.executemany("INSERT INTO campaign_destinations (destination, validating) VALUES (?, ?)",
                     list(gate_modes.items()))


def advance(conn: sqlite3.Connection, instrument: str, stage: Stage, reason: str, at: float) -> bool:
    """A stage the daemon observed (``link-up``), only forward from the stages it may advance from."""
    current = _stage(conn, instrument)
    if current is None or current not in AUTOMATIC.get(stage, ()):
        return False
    _move(conn, instrument, current, stage, at=at, actor=DAEMON_ACTOR, reason=reason)
    return True


def _known(conn: sqlite3.Connection, instrument: str) -> str:
    current = _stage(conn, instrument)
    if current is None:
        raise CampaignNotFound(f"no instrument {instrument!r} in the campaign (is it in the config?)")
    return current


def set_stage(conn: sqlite3.Connection, instrument: str, stage: str, *, actor: str, reason: str,
              now: float) -> dict[str, Any]:
    current = _known(conn, instrument)
    problem = set_problem(current, stage)
    if problem:
        raise CampaignRefused(f"{instrument}: {problem}")
    _move(conn, instrument, current, stage, at=now, actor=actor, reason=reason)
    detail = {"from": current, "stage": stage}
    _audit(conn, at=now, actor=actor, action="stage", instrument=instrument, reason=reason, detail=detail)
    return {"instrument": instrument, **detail}


def _results(conn: sqlite3.Connection, instrument: str) -> list[Result]:
    return [Result.from_json(json.loads(text)) for (text,) in
            conn.execute("SELECT data FROM results WHERE instrument = ? ORDER BY id", (instrument,))]


def _references(conn: sqlite3.Connection, instrument: str) -> list[Reference]:
    return [Reference(*row) for row in conn.execute(
        "SELECT sample, test, expected, tolerance, unit, note FROM validation_references WHERE instrument = ?"
        " ORDER BY sample, test", (instrument,))]


def comparison(conn: sqlite3.Connection, instrument: str) -> dict[str, Any]:
    """The references side by side with the instrument's results (read or write connection)."""
    return {"instrument": instrument, **compare(_references(conn, instrument), _results(conn, instrument))}


def sign_off(conn: sqlite3.Connection, instrument: str, *, release: bool, override: bool, actor: str, reason: str,
             now: float) -> dict[str, Any]:
    """Validating -> live, and the held results released (in the order stored) or discarded, at once.

    Needs every reference within tolerance, else ``override`` with a reason (the comparison is kept in
    the audit row)."""
    current = _known(conn, instrument)
    problem = sign_off_problem(current)
    if problem:
        raise CampaignRefused(f"{instrument}: {problem}")
    compared = comparison(conn, instrument)
    if not compared["ok"] and not (override and reason.strip()):
        what = (f"{compared['outside']} outside tolerance, {compared['missing']} missing"
                if compared["references"] else "no reference values imported")
        raise CampaignRefused(f"{instrument}: cannot sign off: {what} of {compared['references']} reference(s);"
                              " sign off with --override and a reason if the lab accepts it")
    held = [rid for (rid,) in conn.execute("SELECT id FROM outbox WHERE instrument = ? AND state = 'held'"
                                           " ORDER BY id", (instrument,))]
    if release:
        # One next_attempt_at for all: the relays' due order (next_attempt_at, id) is then the order stored.
        conn.execute("UPDATE outbox SET state = 'pending', next_attempt_at = ? WHERE instrument = ?"
                     " AND state = 'held'", (now, instrument))
    else:
        conn.execute("UPDATE outbox SET state = 'discarded', last_error = ? WHERE instrument = ?"
                     " AND state = 'held'", (f"discarded at sign-off by {actor}", instrument))
    why = reason or ("signed off: every reference within tolerance")
    _move(conn, instrument, current, LIVE, at=now, actor=actor, reason=why)
    detail = {"from": current, "stage": LIVE, "held": "released" if release else "discarded", "items": len(held),
              "override": override and not compared["ok"],
              "compared": {k: compared[k] for k in ("references", "within", "outside", "missing")}}
    _audit(conn, at=now, actor=actor, action="sign-off", instrument=instrument, reason=why, detail=detail)
    return {"instrument": instrument, **detail}


def rollback(conn: sqlite3.Connection, instrument: str, *, actor: str, reason: str, now: float) -> dict[str, Any]:
    """Out of service: its results are held again, including those stored but not yet sent."""
    current = _known(conn, instrument)
    problem = rollback_problem(current)
    if problem:
        raise CampaignRefused(f"{instrument}: {problem}")
    pending = [rid for (rid,) in conn.execute("SELECT id FROM outbox WHERE instrument = ? AND state = 'pending'"
                                              " AND test = 0", (instrument,))]
    still = _gate(conn, pending)
    _move(conn, instrument, current, ROLLED_BACK, at=now, actor=actor, reason=reason)
    detail = {"from": current, "stage": ROLLED_BACK, "held_again": len(pending) - len(still)}
    _audit(conn, at=now, actor=actor, action="rollback", instrument=instrument, reason=reason, detail=detail)
    return {"instrument": instrument, **detail}


def import_references(conn: sqlite3.Connection, instrument: str, refs: Sequence[Reference], *, actor: str,
                      reason: str, now: float) -> dict[str, Any]:
    """Replace the instrument's reference values with these (an import is the whole set)."""
    _known(conn, instrument)
    conn.execute("DELETE FROM validation_references WHERE instrument = ?", (instrument,))
    conn.executemany("INSERT INTO validation_references (instrument, sample, test, expected, tolerance, unit, note,"
                     " imported_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [(instrument, r.sample, r.test, r.expected, r.tolerance, r.unit, r.note, now, actor)
                      for r in refs])
    detail = {"references": len(refs)}
    _audit(conn, at=now, actor=actor, action="references", instrument=instrument, reason=reason, detail=detail)
    return {"instrument": instrument, **detail}


QC_HELD_LIKE = QC_HOLD_REASON.split("{", 1)[0] + "%"  # the reason every QC hold starts with


def campaign_rows(conn: sqlite3.Connection) -> dict[str, Any]:
    """Every instrument's stage with its result books, for views: results held, delivered (to the LIS as patient
    results), pending, discarded, dead, sent_as_test (delivered flagged as test results)."""
    out: dict[str, Any] = {}
    for instrument, stage, since, actor, reason in conn.execute(
            "SELECT instrument, stage, since, actor, reason FROM campaign_stages"):
        out[instrument] = {"stage": stage, "stage_since": since, "stage_by": actor, "stage_reason": reason,
                           "held": 0, "delivered": 0, "pending": 0, "discarded": 0, "dead": 0, "sent_as_test": 0,
                           "qc_held": 0,
                           "live_since": None, "references": 0}
    # Results, not items: each item names its results (result_ids is a JSON list).
    for instrument, state, test, n in conn.execute(
            "SELECT instrument, state, test, SUM(json_array_length(result_ids)) FROM outbox"
            " GROUP BY instrument, state, test"):
        if instrument in out:
            books = out[instrument]
            key = "sent_as_test" if test and state == "delivered" else state
            books[key] = books.get(key, 0) + int(n or 0)
    # QC results a destination holds (its qc = "hold", labbridge.outbox.QC_HOLD_REASON) are kept by design, as
    # a control is never taken for a patient's result: counted apart from the dead letters a person must act on.
    for instrument, n in conn.execute(
            "SELECT instrument, SUM(json_array_length(result_ids)) FROM outbox WHERE state = 'dead'"
            " AND dead_kind = 'held' AND last_error LIKE ? GROUP BY instrument", (QC_HELD_LIKE,)):
        if instrument in out:
            out[instrument]["dead"] -= int(n or 0)
            out[instrument]["qc_held"] = int(n or 0)
    for instrument, state, n in conn.execute(
            "SELECT instrument, state, SUM(json_array_length(result_ids)) FROM outbox WHERE backlog = 1"
            " GROUP BY instrument, state"):
        if instrument in out:
            out[instrument][f"backlog_{state}"] = int(n or 0)
    for instrument, at in conn.execute("SELECT instrument, MAX(at) FROM campaign_history WHERE stage = 'live'"
                                       " GROUP BY instrument"):
        if instrument in out:
            out[instrument]["live_since"] = at
    for instrument, n in conn.execute("SELECT instrument, COUNT(*) FROM validation_references GROUP BY instrument"):
        if instrument in out:
            out[instrument]["references"] = n
    return out


def history_rows(conn: sqlite3.Connection, instrument: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    sql = "SELECT instrument, at, from_stage, stage, actor, reason FROM campaign_history"
    args: tuple[Any, ...] = ()
    if instrument is not None:
        sql += " WHERE instrument = ?"
        args = (instrument,)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    return [dict(zip(("instrument", "at", "from", "stage", "by", "reason"), row, strict=True)) for row in rows]


def regate(conn: sqlite3.Connection, item_id: int) -> None:
    """An item put back in line by an operator (a ``held`` dead letter retried) goes through the gate again."""
    row = conn.execute("SELECT instrument FROM outbox WHERE id = ?", (item_id,)).fetchone()
    if row is not None and holds(_stage(conn, str(row[0]))):
        _gate(conn, [item_id])


def stage_rows(conn: sqlite3.Connection) -> dict[str, str]:
    """Each instrument's stage (a light read, for the daemon's link-up watch)."""
    return {str(i): str(s) for i, s in conn.execute("SELECT instrument, stage FROM campaign_stages")}
