"""SSL contexts for TCP links and LIS destinations, from the config's ``tls`` tables.

Modern defaults from :func:`ssl.create_default_context` (TLS 1.2 or newer, certificate and host name
checks on). A context that cannot be built (missing file, key not matching the certificate) raises
:class:`~labbridge.errors.PermanentLinkError` with the file and the cause: it needs a person, not a retry.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from labbridge.config import TlsConfig
from labbridge.errors import PermanentLinkError


def _load(action: str, fn: Callable[..., object], *args: str | None) -> None:
    try:
        fn(*args)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(a for a in args if a)
        raise PermanentLinkError(f"cannot load the TLS {action} ({files}): "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """For a listener: present cert/key; with a CA, require and verify the peer's certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load("certificate and key", ctx.load_cert_chain, tls.cert, tls.key)
    if tls.ca:
        _load("CA certificates", ctx.load_verify_locations, tls.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """For dialing out: verify the peer against the CA (or the system store); optional client cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca:
        _load("CA certificates", ctx.load_verify_locations, tls.ca)
    ctx.check_hostname = tls.check_hostname
    if tls.cert:
        _load("client certificate and key", ctx.load_cert_chain, tls.cert, tls.key)
    return ctx
