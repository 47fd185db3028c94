"""Who may use the HTTP API and dashboard: users (name, role, Argon2id password hash) and API tokens (name,
role, SHA-256 of the token: the token itself is shown once and never stored), tables ``users`` and
``api_tokens`` (migration 9).

The functions taking a ``sqlite3.Connection`` run in the store's writer (changes) or on its read
connection (look-ups); every change is appended to the audit trail (:mod:`labbridge.store.audit`) in the
same transaction. A token is 32 random bytes (``secrets``): a fast hash is enough to store it, as for any
high-entropy secret; a password is a person's choice and gets Argon2id (argon2-cffi's defaults, RFC 9106).
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from labbridge.store import audit

Role = Literal["viewer", "technician", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "technician", "admin")  # each may do what the ones before it may
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")  # no ':' (actors "token:x", "local:x")
TOKEN_PREFIX = "lbt_"  # noqa: S105 - the prefix that marks a labbridge token, not a secret
MIN_PASSWORD = 12

if TYPE_CHECKING:
    from argon2 import PasswordHasher


@functools.cache
def _hasher() -> PasswordHasher:
    """Argon2id with argon2-cffi's defaults; imported on first use (not by the store's writer process)."""
    from argon2 import PasswordHasher

    return PasswordHasher()


def migrate_users(conn: sqlite3.Connection) -> None:
    """Users and API tokens for the HTTP API (labbridge.store.users)."""
    conn.execute("""CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,              -- viewer | technician | admin
        password_hash TEXT NOT NULL,     -- Argon2id, PHC string
        created_at REAL NOT NULL,
        changed_at REAL NOT NULL
    )""")
    conn.execute("""CREATE TABLE IF NOT EXISTS api_tokens (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE, -- SHA-256 hex of the token
        created_at REAL NOT NULL,
        revoked_at REAL
    )""")


def role_at_least(role: str, needed: Role) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def name_problem(name: str) -> str | None:
    if not NAME_PATTERN.match(name):
        return f"{name!r}: a name of 1-64 letters, digits, '.', '_', '@' or '-' (no spaces or ':')"
    return None


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"a password of at least {MIN_PASSWORD} characters"
    return None


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def password_matches(stored_hash: str, password: str) -> bool:
    """Argon2 verification (tens of milliseconds by design: call it off the event loop)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _hasher().verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Account:
    """Who a credential belongs to: a user or a token, with its role."""

    name: str
    role: str
    kind: Literal["user", "token"]

    @property
    def actor(self) -> str:
        """As the audit trail names it: ``alice`` for a user, ``token:ci-export`` for a token."""
        return self.name if self.kind == "user" else f"token:{self.name}"


# ---- changes (the writer; each audited) ------------------------------------------------------------


def add_user(conn: sqlite3.Connection, name: str, role: str, password_hash: str, *, actor: str, now: float) -> None:
    if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None:
        raise ValueError(f"user {name!r} exists already (labbridge users passwd, or remove it first)")
    conn.execute("INSERT INTO users (name, role, password_hash, created_at, changed_at) VALUES (?, ?, ?, ?, ?)",
                 (name, role, password_hash, now, now))
    audit.record(conn, at=now, actor=actor, action="user-add", target=f"user:{name}", reason="",
                 detail={"role": role})


def set_password(conn: sqlite3.Connection, name: str, password_hash: str, *, actor: str, now: float) -> None:
    if conn.execute("UPDATE users SET password_hash = ?, changed_at = ? WHERE name = ?",
                    (password_hash, now, name)).rowcount == 0:
        raise ValueError(f"no user {name!r}")
    audit.record(conn, at=now, actor=actor, action="user-passwd", target=f"user:{name}", reason="", detail=None)


def remove_user(conn: sqlite3.Connection, name: str, *, actor: str, now: float) -> None:
    if conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
        raise ValueError(f"no user {name!r}")
    audit.record(conn, at=now, actor=actor, action="user-remove", target=f"user:{name}", reason="", detail=None)


def add_token(conn: sqlite3.Connection, name: str, role: str, hashed: str, *, actor: str, now: float) -> None:
    if conn.execute("SELECT 1 FROM api_tokens WHERE name = ?", (name,)).fetchone() is not None:
        raise ValueError(f"token {name!r} exists already (names stay taken once revoked, for the audit trail)")
    conn.execute("INSERT INTO api_tokens (name, role, token_hash, created_at) VALUES (?, ?, ?, ?)",
                 (name, role, hashed, now))
    audit.record(conn, at=now, actor=actor, action="token-create", target=f"token:{name}", reason="",
                 detail={"role": role})


def revoke_token(conn: sqlite3.Connection, name: str, *, actor: str, now: float) -> None:
    if conn.execute("UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                    (now, name)).rowcount == 0:
        raise ValueError(f"no token {name!r} in use")
    audit.record(conn, at=now, actor=actor, action="token-revoke", target=f"token:{name}", reason="", detail=None)


# ---- look-ups (read connection) --------------------------------------------------------------------


def user_row(conn: sqlite3.Connection, name: str) -> tuple[str, str] | None:
    """(role, password hash) of a user, or None."""
    row = conn.execute("SELECT role, password_hash FROM users WHERE name = ?", (name,)).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def token_account(conn: sqlite3.Connection, token: str) -> Account | None:
    """The token's account if it is one in use (not revoked)."""
    row = conn.execute("SELECT name, role FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL",
                       (token_hash(token),)).fetchone()
    return None if row is None else Account(str(row[0]), str(row[1]), "token")


def list_users(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [{"name": n, "role": r, "created_at": c, "changed_at": ch} for n, r, c, ch in
            conn.execute("SELECT name, role, created_at, changed_at FROM users ORDER BY name")]


def list_tokens(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [{"name": n, "role": r, "created_at": c, "revoked_at": rv} for n, r, c, rv in
            conn.execute("SELECT name, role, created_at, revoked_at FROM api_tokens ORDER BY name")]
