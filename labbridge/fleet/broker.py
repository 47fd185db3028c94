"""A broker's URL and credentials, and the aiomqtt client for them (aiomqtt is imported here, when used).

``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (TLS 1.2+, verified against ``tls.ca`` or the system's trust
store, with an optional client certificate: :func:`labbridge.transports.tls.client_context`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from labbridge.config import MqttConfig, TlsConfig
from labbridge.errors import ConfigError

if TYPE_CHECKING:
    import aiomqtt


class _NoBacklogWarnings(logging.Filter):
    """aiomqtt warns when more than 10 publishes await their PUBACK; labbridge puts a batch in flight on purpose
    (its queue and the broker's link state say what matters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.getMessage()


CLIENT_LOG = logging.getLogger("labbridge.mqtt.client")
CLIENT_LOG.addFilter(_NoBacklogWarnings())


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: TlsConfig | None = None  # set: mqtts://
    username: str = ""
    password: str = ""

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str, *, username: str = "", password: str = "", tls: TlsConfig | None = None) -> Broker:
        """``url`` with its credentials; raises ConfigError for anything but mqtt:// or mqtts://host[:port]."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port == -1 or parts.path not in ("", "/"):
            raise ConfigError(url, [("url", "expected mqtt://host[:port] or mqtts://host[:port]")])
        secure = parts.scheme == "mqtts"
        return cls(parts.hostname, port or (8883 if secure else 1883), (tls or TlsConfig()) if secure else None,
                   username, password)

    @classmethod
    def from_config(cls, cfg: MqttConfig) -> Broker:
        password = cfg.password
        if cfg.password_file:
            try:
                password = Path(cfg.password_file).read_text(encoding="utf-8").splitlines()[0].strip()
            except (OSError, IndexError, UnicodeDecodeError) as exc:
                raise ConfigError(cfg.password_file, [("mqtt.password_file", f"cannot read it: {exc}")]) from None
        return cls.parse(cfg.url, username=cfg.username, password=password, tls=cfg.tls)

    def client(self, *, identifier: str, keepalive: int, will: aiomqtt.Will | None = None,
               timeout: float = 10.0) -> aiomqtt.Client:
        """An aiomqtt client (not connected: ``async with`` it). A bad TLS file raises PermanentLinkError."""
        import aiomqtt

        from labbridge.transports.tls import client_context

        return aiomqtt.Client(self.host, self.port, identifier=identifier, logger=CLIENT_LOG,
                              username=self.username or None, password=self.password or None, will=will,
                              keepalive=keepalive, timeout=timeout,
                              tls_context=client_context(self.tls) if self.tls else None,
                              max_inflight_messages=100, max_queued_incoming_messages=100_000)
