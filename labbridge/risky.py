"""Risky settings: what in a valid config (and the files it names) weakens a clean zone, each with a
one-line reason and what to do. ``labbridge check-config`` lists them; the severe ones make it fail.

Severe (``refuse``): a store folder or store file everyone may write (anyone on the machine can replace or
delete the results); a trusted bundle key everyone may write (``[bundles] trusted_keys``); a private key
file (any config key named ``key``, ``*_key``, ``*key_file``, ``*key_path``) everyone may read. Warnings:
the HTTP API on a non-loopback address without authentication; TLS verification switched off
(``verify_tls = false``, ``check_hostname = false`` or any other ``verify*`` setting that is false); a store
file everyone may read (patients' results); a trusted bundle key that cannot be read.

Keys are found by walking the validated config, so a section added later is covered by the same rules.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from labbridge.config import Config

Severity = Literal["refuse", "warn"]


@dataclasses.dataclass(frozen=True)
class Risk:
    severity: Severity
    key: str  # the config key path it comes from, e.g. "instruments[2].transport.tls.key"
    reason: str
    fix: str


def risky_settings(config: Config) -> list[Risk]:
    """Every risky setting of ``config`` (loaded by :func:`labbridge.config.load_config`: paths resolved)."""
    return [*_http(config), *_store(config), *_walk_keys(config), *_trusted_keys(config)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, "" or "0.0.0.0"-like wildcards resolve beyond loopback


def _http(config: Config) -> Iterator[Risk]:
    http = config.http
    if not http.enabled or is_loopback(http.host):
        return
    auth = getattr(http, "auth", None)  # [http] auth: "auto" | "required" | "off", where this build has it
    if auth is None:
        yield Risk("warn", "http.host", f"the HTTP API listens on {http.host}, beyond this machine, and this "
                   "build has no HTTP authentication: anyone who reaches the port can act as an operator",
                   "keep http.host on 127.0.0.1 and reach it through an authenticating reverse proxy")
    elif auth == "off":
        yield Risk("warn", "http.auth", f"the HTTP API listens on {http.host} with authentication off: anyone "
                   "who reaches the port can act as an operator", 'set http.auth = "required" (or "auto")')


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode
    except OSError:
        return None


def _store(config: Config) -> Iterator[Risk]:
    store = Path(config.store.path)
    folder_mode = _mode(store.parent)
    if folder_mode is not None and folder_mode & stat.S_IWOTH:
        yield Risk("refuse", "store.path", f"the store's folder {store.parent} is writable by everyone "
                   f"(mode {stat.S_IMODE(folder_mode):o}): anyone on this machine can replace or delete results",
                   f"chmod o-w {store.parent}, or put the store in a folder only labbridge's user can write")
    file_mode = _mode(store)
    if file_mode is None:
        return
    if file_mode & stat.S_IWOTH:
        yield Risk("refuse", "store.path", f"the store {store} is writable by everyone "
                   f"(mode {stat.S_IMODE(file_mode):o}): anyone on this machine can alter results",
                   f"chmod 600 {store}")
    elif file_mode & stat.S_IROTH:
        yield Risk("warn", "store.path", f"the store {store} is readable by everyone "
                   f"(mode {stat.S_IMODE(file_mode):o}): patients' results are open to every local user",
                   f"chmod 600 {store}")


def _trusted_keys(config: Config) -> Iterator[Risk]:
    for i, key in enumerate(config.bundles.trusted_keys):
        mode = _mode(Path(key))
        where = f"bundles.trusted_keys[{i}]"
        if mode is None:
            yield Risk("warn", where, f"the trusted key {key} cannot be read: bundles cannot be verified with it",
                       "copy the signer's public key there, or remove the entry")
        elif mode & stat.S_IWOTH:
            yield Risk("refuse", where, f"the trusted key {key} is writable by everyone (mode {stat.S_IMODE(mode):o}): "
                       "anyone on this machine can add their key and have their bundles accepted", f"chmod 644 {key}")


def _is_private_key_field(name: str) -> bool:
    lowered = name.lower()
    if "public" in lowered or "trusted" in lowered:
        return False
    return lowered == "key" or lowered.endswith(("_key", "key_file", "key_path"))


def _walk(value: Any, where: str) -> Iterator[tuple[str, str, Any]]:
    """(key path, field name, value) for every field under ``value``, depth first."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            child = getattr(value, name)
            path = f"{where}.{name}" if where else name
            yield path, name, child
            yield from _walk(child, path)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, item in value.items():
            if isinstance(item, BaseModel | list | dict):
                yield from _walk(item, f"{where}.{k}")


def _walk_keys(config: Config) -> Iterator[Risk]:
    for path, name, value in _walk(config, ""):
        if isinstance(value, str) and value and _is_private_key_field(name):
            mode = _mode(Path(value))
            if mode is not None and mode & stat.S_IROTH:
                yield Risk("refuse", path, f"the private key {value} is readable by everyone "
                           f"(mode {stat.S_IMODE(mode):o}): any local user can impersonate this node",
                           f"chmod 600 {value} (or 640 with the group labbridge runs as)")
        elif value is False and (name.lower().startswith("verify") or name.lower().endswith("_verify")
                                 or name == "check_hostname"):
            yield Risk("warn", path, f"TLS verification is off ({name} = false): a machine on the path can pose "
                       "as the peer and read or change what is sent",
                       f"remove {name} = false and give the peer's CA (tls.ca) instead")
