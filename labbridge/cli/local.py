"""Who runs a command that acts on the store file itself, for the audit trail."""

from __future__ import annotations

import getpass
import os


def local_actor() -> str:
    """``local:<unix user>``: the OS account running the command (whoever can write the file could act anyway;
    the trail names who did, not a name they typed)."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"local:uid-{os.getuid()}"
