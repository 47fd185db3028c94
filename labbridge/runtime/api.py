"""What a running daemon offers the surfaces that show and steer it (the HTTP server today).

A surface depends on :class:`DaemonApi`, never on the daemon's class: it reads views and facts and
calls the operator actions, and the daemon does not know which surfaces it runs with. Whoever starts
the daemon composes it with them (``Daemon.run(stop, surfaces=[...])``); each :class:`Surface` is
started once the daemon's parts exist and stopped before the store closes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from labbridge.campaign.service import Campaign
    from labbridge.config import Config
    from labbridge.health.instrument import InstrumentHealth
    from labbridge.orders import NewOrder, Order, OrderState
    from labbridge.outbox import StoreSize

T = TypeVar("T")


class StoreView(Protocol):
    """The store as a surface reads it: its size, counters and rows (changes go through OperatorActions)."""

    @property
    def path(self) -> str: ...
    @property
    def commits(self) -> int: ...
    @property
    def commit_failures(self) -> int: ...
    @property
    def last_commit_error(self) -> str | None: ...
    @property
    def writer_restarts(self) -> int: ...
    @property
    def commit_seconds(self) -> float: ...
    @property
    def committed_jobs(self) -> int: ...
    @property
    def group_sizes(self) -> Sequence[int]: ...  # committed groups per GROUP_SIZE_BUCKETS bucket
    @property
    def checkpoints(self) -> int: ...
    @property
    def checkpoint_seconds(self) -> float: ...
    @property
    def wal_restarts_asked(self) -> int: ...  # the writer's checkpoints after background ones
    @property
    def intake_waits(self) -> int: ...  # messages that waited for a place among those in flight (MESSAGES_IN_FLIGHT)

    def size(self) -> StoreSize: ...

    async def counts(self) -> dict[str, Any]: ...

    async def outbox_rows(self, state: str | None = None, limit: int = 200,
                          destination: str | None = None) -> list[dict[str, Any]]: ...

    async def audit_rows(self, limit: int = 200) -> list[dict[str, Any]]: ...

    # The HTTP surface's credentials and audit entries (labbridge.store.users, labbridge.store.audit), and the
    # dashboard's own read-only queries (labbridge.store.dashboard).
    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


class OrderBook(Protocol):
    """Orders as a surface reads and cancels them (adding one goes through :meth:`DaemonApi.add_order`)."""

    async def list_orders(self, *, instrument: str | None = None, site: str | None = None,
                          sample_id: str | None = None, state: OrderState | None = None,
                          limit: int = 200) -> list[Order]: ...

    async def get(self, order_id: int) -> Order | None: ...

    async def cancel(self, order_id: int, *, now: float, actor: str | None = None) -> Order | None: ...


class OperatorActions(Protocol):
    """The outbox actions a person may take; each is recorded in the audit table with its actor and reason."""

    async def retry(self, item_ids: Sequence[int] | None, *, actor: str, reason: str) -> list[dict[str, Any]]:
        """Retry these dead letters, or every one (``None``). Raises ValueError or StoreError when refused."""
        ...

    async def purge(self, *, item_ids: Sequence[int] | None, state: str | None, older_than_s: float | None,
                    actor: str, reason: str) -> dict[str, Any]:
        """Delete items for good. Raises ValueError or StoreError when refused."""
        ...


class DaemonApi(Protocol):
    """The daemon as its surfaces see it."""

    @property
    def node(self) -> str:
        """This labbridge's name (``node`` in the config)."""
        ...

    @property
    def store(self) -> StoreView: ...

    # ---- dashboard (issue 17, part 1) ----
    @property
    def config(self) -> Config:
        """The configuration in force (replaced by a reload): the dashboard reads its [dashboard] settings."""
        ...
    # ---- end dashboard ----

    @property
    def orders(self) -> OrderBook: ...

    @property
    def operations(self) -> OperatorActions: ...

    @property
    def campaign(self) -> Campaign:
        """The reconnection campaign: stages, validation gate, report (labbridge.campaign.service)."""
        ...

    def instruments_json(self) -> list[dict[str, Any]]:
        """Each instrument's link health and counters, with its site's name."""
        ...

    def sites_json(self) -> list[dict[str, Any]]:
        """Each site with its number of instruments per link state."""
        ...

    def link_health(self) -> list[InstrumentHealth]:
        """Each instrument's live health (for metrics read at scrape time)."""
        ...

    def destinations_json(self) -> list[dict[str, Any]]:
        """Each LIS destination's relay health and kind (``id`` names it)."""
        ...

    def listener_health(self) -> list[InstrumentHealth]:
        """Each LIS order listener's connection health (counters such as peers_refused; metrics, /api/outbox)."""
        ...

    async def instrument_history(self, instrument: str, days: int) -> dict[str, Any] | None:
        """The instrument's state changes over the last ``days`` and its daily figures; None if unknown.

        Raises StoreError when the store cannot be read. (labbridge.health.history)
        """
        ...

    def order_problems(self, order: NewOrder) -> list[str]:
        """What makes an order unusable in this configuration (empty: it may be added)."""
        ...

    async def add_order(self, order: NewOrder, *, now: float, actor: str | None = None) -> Order:
        """Add an order without problems and wake the runner that may push it; audited with ``actor``."""
        ...

    # ---- [mqtt] (labbridge.fleet) ----
    def uplinks_json(self) -> list[dict[str, Any]]:
        """The node's own links that are not to an analyzer or a LIS: the MQTT broker's when ``[mqtt]`` is set
        (``id``, ``kind``, ``broker``, ``state``, ``reason``, ``since``, counters; docs/mqtt.md). Else empty."""
        ...
    # ---- end [mqtt] ----

    async def reload_config(self, *, by: str) -> dict[str, Any]:
        """Read the config file again and apply what changed (labbridge.runtime.reload); the report as JSON,
        whose ``outcome`` is applied, unchanged, refused (with every problem) or unavailable."""
        ...


class Surface(Protocol):
    """Something that shows or steers a running daemon from outside, e.g. the HTTP server."""

    @property
    def name(self) -> str:
        """Its key in the ready file and the start log, e.g. ``http``."""
        ...

    async def start(self, api: DaemonApi) -> tuple[str, int]:
        """Start serving ``api``; returns the address it listens on."""
        ...

    async def stop(self) -> None: ...
