"""The store's tables (schema 1) and the numbered steps that bring an older store up to date.

Tables: ``messages`` (raw bytes as received, per instrument), ``results`` (canonical JSON, unique per
instrument, sample and content key), ``outbox`` (one row per LIS destination and group of results, with its
stable control ID and delivery state; dead letters are outbox rows in state ``dead`` with a ``dead_kind``
and a reason), ``incomplete`` (transmissions that never became a message), ``received_ids`` (HL7 MSH-10
per analyzer), ``orders`` (the embedded order source, :mod:`labbridge.store.orders`), ``audit``
(every operator action: who, when, what, why).

Schema versions live in ``PRAGMA user_version``. Schema 1 is ``SCHEMA``; an older store is brought up to
date by numbered migration steps (``MIGRATIONS``), each idempotent and applied in its own transaction,
so a store written by an earlier labbridge keeps working.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from labbridge.errors import StoreError
from labbridge.logs import get_logger
from labbridge.store.audit import migrate_audit_chain
from labbridge.store.campaign import migrate_campaign
from labbridge.store.failure import kind_of
from labbridge.store.history import migrate_link_history, migrate_security_counters
from labbridge.store.users import migrate_users

log = get_logger("labbridge.store")

# Schema 1, as the first labbridge wrote it; later versions are MIGRATIONS applied on top.
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    instrument TEXT NOT NULL,
    protocol TEXT NOT NULL,
    received_at REAL NOT NULL,
    raw BLOB NOT NULL,
    status TEXT NOT NULL,            -- decoded | undecodable
    error TEXT,
    result_count INTEGER NOT NULL DEFAULT 0,
    duplicate_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_instrument ON messages(instrument, received_at);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    instrument TEXT NOT NULL,
    key TEXT NOT NULL,
    received_at REAL NOT NULL,
    data TEXT NOT NULL,               -- canonical JSON (labbridge.model.Result)
    UNIQUE (instrument, key)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    key TEXT NOT NULL,
    control_id TEXT NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    instrument TEXT NOT NULL,
    result_ids TEXT NOT NULL,         -- JSON list of results.id
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | delivered | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    UNIQUE (destination, key)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(destination, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS incomplete (
    id INTEGER PRIMARY KEY,
    instrument TEXT NOT NULL,
    received_at REAL NOT NULL,
    raw BLOB NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS received_ids (   -- HL7 MSH-10 per analyzer, to recognise a resent message
    instrument TEXT NOT NULL,
    control_id TEXT NOT NULL,
    digest TEXT NOT NULL,             -- content without MSH-7: a reused MSH-10 with new content is new
    message_id INTEGER NOT NULL REFERENCES messages(id),
    PRIMARY KEY (instrument, control_id, digest)
);
"""


_ORDERS_SQL = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    sample_id TEXT NOT NULL,
    tests TEXT NOT NULL,              -- JSON list of LIS test codes
    instrument TEXT NOT NULL DEFAULT '',  -- '' = any instrument of the site
    site TEXT NOT NULL DEFAULT '',
    priority TEXT NOT NULL DEFAULT 'routine',
    patient_id TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | sent | accepted | cancelled
    source TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    sent_at REAL,
    sent_to TEXT,
    accepted_at REAL,
    cancelled_at REAL
);
CREATE INDEX IF NOT EXISTS orders_sample ON orders(sample_id, state);
CREATE INDEX IF NOT EXISTS orders_instrument ON orders(instrument, state, id);
CREATE INDEX IF NOT EXISTS orders_site ON orders(site, state, id);
"""


def _migrate_orders(conn: sqlite3.Connection) -> None:
    """The embedded order source (labbridge.store.orders)."""
    for statement in _ORDERS_SQL.split(";"):
        if statement.strip():
            conn.execute(statement)

def _add_column(conn: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    """ALTER TABLE ADD COLUMN unless it is there (steps stay idempotent whatever order branches merge in)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    if column not in have:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _migrate_outbox_operations(conn: sqlite3.Connection) -> None:
    """Dead-letter kinds, backlog flag, the audit trail."""
    # dead_kind: lis-rejected | undelivered | undecodable | unmapped | unknown-sender | held (NULL while alive)
    _add_column(conn, "outbox", "dead_kind", "TEXT")
    _add_column(conn, "outbox", "backlog", "INTEGER NOT NULL DEFAULT 0")
    _add_column(conn, "results", "backlog", "INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, delivered_at)")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_message ON outbox(message_id)")
    conn.execute("CREATE INDEX IF NOT EXISTS results_message ON results(message_id)")
    conn.execute("""CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,            -- retry | purge
        target TEXT NOT NULL,            -- e.g. "outbox:12" or "outbox:state=dead"
        reason TEXT NOT NULL,
        detail TEXT                      -- JSON: what the action did
    )""")


def _migrate_order_notes(conn: sqlite3.Connection) -> None:
    """Why an analyzer refused an order (HL7 ORL^O34 "unable to accept"), shown with the order."""
    _add_column(conn, "orders", "note", "TEXT NOT NULL DEFAULT ''")


def _migrate_results_by_sample(conn: sqlite3.Connection) -> None:
    """``results`` unique per (instrument, sample, content key) instead of (instrument, content key).

    The same rows are unique either way (a content key hashes the sample ID in), but the old index ordered
    the entries by a hash: the ~20 results of one message landed on ~20 random pages of it, which every
    commit rewrote to the WAL (27 of a message's 35 pages). Ordered by sample first, a message's results
    share one or two pages. SQLite cannot change a table's UNIQUE constraint in place: the table is
    rebuilt (ids, contents and order kept); a store with the ``sample`` column already is left alone.
    Once, on the first start after the upgrade, before any link opens: ~20 s per million results stored
    (measured: 500,000 results, 255 MB, in 9.6 s).
    """
    if "sample" in {row[1] for row in conn.execute("PRAGMA table_info(results)")}:
        return
    conn.execute("""CREATE TABLE results_by_sample (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        instrument TEXT NOT NULL,
        sample TEXT NOT NULL,             -- the result's sample_id
        key TEXT NOT NULL,
        received_at REAL NOT NULL,
        data TEXT NOT NULL,               -- canonical JSON (labbridge.model.Result)
        backlog INTEGER NOT NULL DEFAULT 0,
        UNIQUE (instrument, sample, key)
    )""")
    conn.execute("INSERT INTO results_by_sample (id, message_id, instrument, sample, key, received_at, data, backlog)"
                 " SELECT id, message_id, instrument, COALESCE(json_extract(data, '$.sample_id'), ''), key,"
                 " received_at, data, backlog FROM results ORDER BY id")
    conn.execute("DROP TABLE results")
    conn.execute("ALTER TABLE results_by_sample RENAME TO results")
    conn.execute("CREATE INDEX results_message ON results(message_id)")


# Step n brings a store from user_version n-1 to n. Version 1 is SCHEMA itself.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    2: _migrate_orders,
    3: _migrate_outbox_operations,
    4: _migrate_order_notes,
    5: _migrate_results_by_sample,
    6: migrate_link_history,  # labbridge.store.history
    7: migrate_campaign,  # labbridge.store.campaign
    8: migrate_audit_chain,  # labbridge.store.audit
    9: migrate_users,  # labbridge.store.users
    10: migrate_security_counters,  # labbridge.store.history
}
SCHEMA_VERSION = max(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring a store to SCHEMA_VERSION: create schema 1 if empty, then apply each step in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"store {path} has schema version {version}, newer than this labbridge "
                         f"({SCHEMA_VERSION}): upgrade labbridge")
    if version == 0:
        conn.executescript(SCHEMA)
        conn.execute("PRAGMA user_version=1")
        version = 1
    while version < SCHEMA_VERSION:
        step = version + 1
        doc = (MIGRATIONS[step].__doc__ or "").strip()
        log.info("store_migrating", from_version=version, to_version=step, what=doc.splitlines()[0] if doc else "")
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[step](conn)
            conn.execute(f"PRAGMA user_version={step}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"store {path}: migration to schema {step} failed: {exc}", kind=kind_of(exc)) from exc
        log.info("store_migrated", from_version=version, to_version=step)
        version = step
