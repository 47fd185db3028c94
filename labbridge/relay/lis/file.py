"""A file-drop destination: one file per message in a folder the LIS reads, written atomically.

A file appears whole or not at all: it is written under a hidden temporary name, flushed and fsynced,
renamed to its final name (the item's stable control ID), and the folder is fsynced so the rename itself
survives a crash. Writing the same item again (a redelivery after a crash) replaces the file with the
same bytes: the file name is the idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from pathlib import Path

from labbridge.errors import TransientLinkError


def write_atomically(directory: Path, name: str, payload: bytes) -> Path:
    final = directory / name
    tmp = directory / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, final)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


class FileDropSender:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    async def deliver(self, name: str, payload: bytes) -> Path:
        """Write one file; a failure that may pass (full disk, share gone) is a TransientLinkError."""
        if not self.directory.is_dir():
            # Never created here: a missing folder is often an unmounted share, and files written
            # under the mount point would never reach the LIS.
            raise TransientLinkError(f"folder {self.directory} does not exist (is the share mounted?)")
        try:
            return await asyncio.to_thread(write_atomically, self.directory, name, payload)
        except OSError as exc:
            hint = {errno.ENOSPC: "the disk is full", errno.EACCES: "labbridge may not write there",
                    errno.EROFS: "the folder is read-only"}.get(exc.errno or 0, exc.strerror or str(exc))
            raise TransientLinkError(f"cannot write to {self.directory}: {hint}") from None
