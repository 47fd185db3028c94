"""The HTTP surface: JSON API, Prometheus /metrics, the dashboard page (no build step).

:func:`surfaces_for` is what a daemon's runner composes it with; the server itself (aiohttp, the Prometheus
client: ~12 MiB) is imported only when the configuration enables it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labbridge.config import Config
    from labbridge.runtime.api import Surface


def surfaces_for(config: Config) -> list[Surface]:
    """The surfaces a daemon with this configuration runs with: the HTTP server when ``[http]`` is enabled."""
    if not config.http.enabled:
        return []
    from labbridge.web.server import HttpSurface

    return [HttpSurface(config.http.host, config.http.port, config.http)]
