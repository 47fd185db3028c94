"""The store's files hold patient data: who may read them, whatever the umask.

* The database and every file SQLite keeps beside it (``-wal``, ``-shm``, ``-journal``) are 0600 (owner only),
  or 0640 with ``[store] group`` (that group may read, e.g. a backup agent's), set when the store is opened:
  the database is created with that mode before SQLite opens it (SQLite gives its ``-wal`` and ``-shm`` files
  the database's mode), and files found with a wider mode (an older labbridge, a copy) are tightened.
* The store's folder is checked first: a folder anyone may write to (``o+w``) is refused with a one-line
  error, since anyone could replace or pre-create the files there.
* :func:`private_file` writes any export that may carry patient data (a campaign report) the same way.
"""

from __future__ import annotations

import contextlib
import grp
import os
import stat
from pathlib import Path

from labbridge.errors import StoreError

SIDE_FILES = ("-wal", "-shm", "-journal")
PRIVATE_MODE = 0o600
GROUP_MODE = 0o640


def store_mode(group: str | None) -> int:
    return GROUP_MODE if group else PRIVATE_MODE


def _gid(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise StoreError(f"[store] group {group!r} is not a group on this machine (see /etc/group)",
                         kind="other") from None


def check_folder(folder: Path) -> None:
    """Refuse a store folder that anyone may write to (one line: the folder, its mode, what to do)."""
    mode = folder.stat().st_mode
    if mode & stat.S_IWOTH:
        raise StoreError(f"store folder {folder} is writable by everyone (mode {stat.S_IMODE(mode):04o}): "
                         f"run `chmod o-w {folder}` or set [store] path to a private folder", kind="other")


def secure(path: str | Path, group: str | None = None, *, keep_group_read: bool = False) -> None:
    """Create the database file with the store's mode if it is missing; give it and its side files that mode
    (and ``group``), whatever the umask. Called before SQLite opens the store and again once it has.
    ``keep_group_read``: the caller does not know the configured group (the CLI on a bare store file), so a
    group-read bit the daemon gave is kept; every other wider bit is still removed."""
    path = Path(path)
    mode = store_mode(group)
    gid = _gid(group) if group else -1
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        try:
            os.fchmod(fd, mode)  # the umask narrowed or widened nothing: exactly this mode
        finally:
            os.close(fd)
    for file in (path, *(Path(f"{path}{suffix}") for suffix in SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            if gid >= 0:
                os.chown(file, -1, gid)
            current = stat.S_IMODE(file.stat().st_mode)
            wanted = mode | (current & stat.S_IRGRP if keep_group_read else 0)
            if current != wanted:
                os.chmod(file, wanted)


def private_file(path: str | Path, text: str) -> None:
    """Write ``text`` to a file only its owner may read (an export that may carry patient data)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    os.fchmod(fd, PRIVATE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
