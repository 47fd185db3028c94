"""The audit trail, tamper-evident: every operator action appended to table ``audit`` with a hash chain.

Each entry keeps its canonical content (``sealed``: JSON of its id, time, actor, action, target, reason and
detail, keys sorted) and ``hash`` = SHA-256 of the previous entry's hash, a newline and ``sealed``; the
first entry's previous hash is :data:`GENESIS`. :func:`record` appends one, inside the caller's
transaction (the action and its audit row commit together). :func:`verify` walks the chain and names the
first entry that does not hold: a column edited (and which, against what was sealed), ``sealed`` or
``hash`` rewritten, an entry removed, inserted or moved (its previous hash no longer that of the entry
before it). A chain recomputed from scratch by someone with write access to the file is not detected by
the chain alone: an inspector notes the head (``labbridge audit verify`` prints it) and checks it later
with ``--head ID:HASH``, which every later chain must still contain. Migration 8 seals the entries
written before the chain existed, as they were found.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
FIELDS = ("id", "at", "actor", "action", "target", "reason", "detail")


def migrate_audit_chain(conn: sqlite3.Connection) -> None:
    """The audit trail's hash chain (labbridge.store.audit); the entries already there are sealed as found."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
    for column in ("prev_hash", "hash", "sealed"):
        if column not in have:
            conn.execute(f"ALTER TABLE audit ADD COLUMN {column} TEXT")
    prev = GENESIS
    for row in conn.execute(f"SELECT {', '.join(FIELDS)}, hash FROM audit ORDER BY id").fetchall():
        if row[-1] is not None:
            prev = row[-1]
            continue
        sealed = _canonical(dict(zip(FIELDS, row[:-1], strict=True)))
        digest = _digest(prev, sealed)
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ?, sealed = ? WHERE id = ?",
                     (prev, digest, sealed, row[0]))
        prev = digest


def _canonical(entry: Mapping[str, Any]) -> str:
    return json.dumps({k: entry[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(prev: str, sealed: str) -> str:
    return hashlib.sha256(f"{prev}\n{sealed}".encode()).hexdigest()


def record(conn: sqlite3.Connection, *, at: float, actor: str, action: str, target: str, reason: str,
           detail: Mapping[str, Any] | None) -> int:
    """Append one entry to the chain, in the caller's transaction; returns its id."""
    last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    entry_id = 1 if last is None else int(last[0]) + 1
    prev = GENESIS if last is None else str(last[1] or GENESIS)
    detail_text = None if detail is None else json.dumps(detail, separators=(",", ":"))
    sealed = _canonical({"id": entry_id, "at": at, "actor": actor, "action": action, "target": target,
                         "reason": reason, "detail": detail_text})
    conn.execute("INSERT INTO audit (id, at, actor, action, target, reason, detail, prev_hash, hash, sealed)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (entry_id, at, actor, action, target, reason, detail_text, prev, _digest(prev, sealed), sealed))
    return entry_id


@dataclass(frozen=True)
class Break:
    """The first entry of the chain that does not hold: its id and what differs."""

    id: int
    problem: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "problem": self.problem}


@dataclass(frozen=True)
class Verdict:
    entries: int
    head_id: int | None
    head_hash: str | None
    broken: Break | None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.broken is None, "entries": self.entries, "head": self.head(),
                "broken": None if self.broken is None else self.broken.to_json()}

    def head(self) -> str | None:
        return None if self.head_id is None else f"{self.head_id}:{self.head_hash}"


def _rows(conn: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    yield from conn.execute(f"SELECT {', '.join(FIELDS)}, prev_hash, hash, sealed FROM audit ORDER BY id")


def _entry_problem(row: tuple[Any, ...], prev_id: int | None, prev_hash: str) -> str | None:
    entry = dict(zip(FIELDS, row[:7], strict=True))
    link, digest, sealed = row[7:]
    if sealed is None or digest is None:
        return "not sealed: the entry was written outside labbridge"
    try:
        was = json.loads(sealed)
    except ValueError:
        return "its sealed content is not JSON: rewritten"
    if not isinstance(was, dict) or set(was) != set(FIELDS):
        return "its sealed content is not an audit entry: rewritten"
    changed = [f"{k} is {entry[k]!r}, sealed as {was[k]!r}" for k in FIELDS if entry[k] != was[k]]
    if changed:
        return "edited: " + "; ".join(changed)
    if _digest(str(link), sealed) != digest:
        return "its hash does not match its sealed content: the seal was rewritten"
    if link != prev_hash:
        before = "the start of the trail" if prev_id is None else f"entry {prev_id}"
        return (f"its previous-entry hash is not that of {before}: an entry was removed, inserted or "
                "rewritten before it")
    return None


def verify(conn: sqlite3.Connection, head: str | None = None) -> Verdict:
    """Walk the whole chain; with ``head`` (``ID:HASH`` noted earlier), that entry must still be there, unchanged."""
    prev_id: int | None = None
    prev_hash = GENESIS
    count = 0
    seen_head = False
    broken: Break | None = None
    for row in _rows(conn):
        count += 1
        problem = _entry_problem(row, prev_id, prev_hash)
        if problem is not None and broken is None:
            broken = Break(int(row[0]), problem)
        if head is not None and head == f"{row[0]}:{row[8]}":
            seen_head = True
        prev_id, prev_hash = int(row[0]), str(row[8])
    if broken is None and head is not None and not seen_head:
        wanted = head.split(":", 1)[0]
        broken = Break(int(wanted) if wanted.isdigit() else 0,
                       f"the head noted earlier ({head}) is not in the trail: entries were removed or rewritten")
    return Verdict(count, prev_id, prev_hash if prev_id is not None else None, broken)


def export(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every entry, oldest first, with its chain fields (for an inspector: JSON lines or CSV)."""
    return [{**dict(zip(FIELDS, row[:7], strict=True)), "prev_hash": row[7], "hash": row[8]} for row in _rows(conn)]
