"""Which :class:`~labbridge.errors.StoreError` kind a failure is, from SQLite's error code or the errno.

Imported by the writer process too: SQLite and the error tree only.
"""

from __future__ import annotations

import errno
import sqlite3

from labbridge.errors import StoreError, StoreErrorKind

# SQLite primary result codes (https://www.sqlite.org/rescode.html) -> kind. Extended codes carry their
# primary code in the low byte (SQLITE_IOERR_WRITE = SQLITE_IOERR | 3<<8).
_SQLITE_KINDS: dict[int, StoreErrorKind] = {
    sqlite3.SQLITE_FULL: "full",  # the disk, or max_page_count (store.max_size_mb)
    sqlite3.SQLITE_IOERR: "io",
    sqlite3.SQLITE_CANTOPEN: "io",
    sqlite3.SQLITE_READONLY: "io",
    sqlite3.SQLITE_PERM: "io",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "corrupt",
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "busy",
}
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def kind_of(exc: BaseException) -> StoreErrorKind:
    """The kind of a failure met while using the store file."""
    if isinstance(exc, StoreError):
        return exc.kind
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # absent on errors the sqlite3 module raises itself
        return "other" if code is None else _SQLITE_KINDS.get(code & 0xFF, "other")
    if isinstance(exc, OSError):
        return "full" if exc.errno in _FULL_ERRNOS else "io"
    return "other"


def store_error(exc: BaseException, doing: str) -> StoreError:
    """``exc`` as a StoreError of its kind; ``doing`` starts the message (e.g. "commit failed")."""
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"{doing}: {exc}", kind=kind_of(exc))
