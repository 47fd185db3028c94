"""The labbridge error tree: one root, a few branches with typed attributes.

A misbehaving peer can only cause :class:`RemoteProtocolError` inside a protocol core; any other
exception escaping a core is a bug.
"""

from __future__ import annotations

from typing import Literal


class LabbridgeError(Exception):
    """Root of every error labbridge raises on purpose."""


class ConfigError(LabbridgeError):
    """A configuration file is unreadable or invalid.

    ``problems`` holds one ``(key_path, expected)`` pair per problem, e.g.
    ``("instruments[2].transport.port", "Input should be less than or equal to 65535")``.
    """

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}: {key}: {what}" if key else f"{path}: {what}" for key, what in problems]
        super().__init__("\n".join(lines))


class DriverError(LabbridgeError):
    """Base for driver problems."""


class DriverNotFoundError(DriverError, LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"no driver named {name!r}; known drivers: {', '.join(sorted(known)) or 'none'}")


class DriverLoadError(DriverError):
    def __init__(self, name: str, cause: str) -> None:
        self.name = name
        self.cause = cause
        super().__init__(f"driver {name!r} failed to load: {cause}")


class DecodeError(DriverError, ValueError):
    """A driver could not turn a message into canonical results."""

    def __init__(self, reason: str, *, record_index: int | None = None) -> None:
        self.reason = reason
        self.record_index = record_index
        where = f" (record {record_index})" if record_index is not None else ""
        super().__init__(f"{reason}{where}")


class ProtocolError(LabbridgeError):
    """Base for protocol errors."""


class LocalProtocolError(ProtocolError):
    """labbridge itself misused a protocol core (a bug in the caller)."""


class RemoteProtocolError(ProtocolError, ValueError):
    """The peer sent something the protocol does not allow."""


class LinkError(LabbridgeError):
    """Base for transport/link failures."""


class TransientLinkError(LinkError, ConnectionError):
    """A failure worth retrying (peer gone, connection refused, timeout)."""


class PermanentLinkError(LinkError):
    """A failure that needs a person (no such device, address not available, bad settings)."""


StoreErrorKind = Literal["full", "io", "corrupt", "busy", "unavailable", "other"]

# What a technician does about each kind of store failure (StoreError.hint).
_STORE_HINTS: dict[StoreErrorKind, str] = {
    "full": "free space on the store's disk or raise store.max_size_mb",
    "io": "check the disk and the store file's permissions",
    "corrupt": "the store file is damaged: stop labbridge, keep a copy of the file and restore it from a backup",
    "busy": "another program holds the store file locked: stop it",
    "unavailable": "the store's writer stopped: labbridge starts another; if this repeats, see the log",
    "other": "see the log",
}


class StoreError(LabbridgeError):
    """The store could not do what was asked; a commit that fails this way acknowledged nothing.

    ``kind`` is why, decided where the store raises it from SQLite's error code or the system's errno
    (never from message text): ``full`` (SQLITE_FULL: the disk, or the ``store.max_size_mb`` cap; ENOSPC),
    ``io`` (disk I/O, cannot open, read-only), ``corrupt`` (damaged file, not a database), ``busy``
    (locked by another program), ``unavailable`` (the writer stopped, or the store is closed), ``other``.
    :attr:`hint` is what a technician should do about it.
    """

    def __init__(self, message: str, *, kind: StoreErrorKind = "other") -> None:
        self.kind: StoreErrorKind = kind
        super().__init__(message)

    @property
    def hint(self) -> str:
        return _STORE_HINTS[self.kind]


class RelayError(LabbridgeError):
    """Delivery to a LIS destination failed."""


class LisRejectedError(RelayError):
    """The LIS answered with a negative acknowledgement."""

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"LIS answered {code}: {text}" if text else f"LIS answered {code}")
