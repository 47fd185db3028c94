"""What an operator does to a labbridge (outbox, orders): one interface, :class:`OperatorClient`, two
implementations returning the same JSON (docs/api.md). :class:`HttpOperatorClient` calls the running
daemon's API; :class:`LocalOperatorClient` acts on its store file when it is stopped, through the
daemon's own operations, order source and decoder wiring. :func:`open_client` picks one."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, Protocol, cast

import aiohttp

from labbridge.cli.campaign_client import CampaignOperator, HttpCampaignCalls, LocalCampaignCalls
from labbridge.cli.local import local_actor
from labbridge.config import Config, load_config, with_link_defaults
from labbridge.driver import driver_link_defaults
from labbridge.errors import LabbridgeError
from labbridge.links.intake import InstrumentDecoder, instrument_decoder, load_instrument_driver
from labbridge.orders import NewOrder, OrderState, complete_order, order_problems
from labbridge.outbox import Route
from labbridge.relay.operations import Operations
from labbridge.store.db import Store
from labbridge.store.orders import SqliteOrderSource

READ_TIMEOUT_S = 5.0
ACTION_TIMEOUT_S = 60.0  # a retry re-decodes every dead letter it names: allow it time
Json = dict[str, Any]


class DaemonUnreachable(LabbridgeError, ConnectionError):
    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"cannot reach the labbridge daemon at {url}: {reason}")


class ApiError(LabbridgeError):
    """The daemon refused a request: ``status`` is the HTTP status, the message the server's text."""
    def __init__(self, status: int, text: str) -> None:
        self.status = status
        super().__init__(text)


class OrderRefused(LabbridgeError, ValueError):
    """An order that cannot be used in this configuration, and why (one entry per problem)."""
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class OperatorClient(CampaignOperator, Protocol):
    """The operator's actions on one labbridge, each returning the JSON the daemon's API returns for it.
    ``retry`` and ``purge`` take ``ids=None`` for "every one"; ``add_order`` raises :class:`OrderRefused`;
    ``get_order`` and ``cancel_order`` return ``None`` for an unknown order. The campaign's actions are
    :class:`~labbridge.cli.campaign_client.CampaignOperator`'s."""

    async def outbox_items(self, *, state: str | None, destination: str | None, limit: int) -> list[Json]: ...
    async def retry(self, ids: Sequence[int] | None, *, actor: str, reason: str) -> list[Json]: ...
    async def purge(self, ids: Sequence[int] | None, *, state: str | None, older_than_s: float | None,
                    actor: str, reason: str) -> Json: ...
    async def add_order(self, order: NewOrder) -> Json: ...
    async def list_orders(self, *, instrument: str | None, site: str | None, sample_id: str | None,
                          state: OrderState | None, limit: int) -> list[Json]: ...
    async def get_order(self, order_id: int) -> Json | None: ...
    async def cancel_order(self, order_id: int) -> Json | None: ...


@dataclasses.dataclass(frozen=True)
class HttpCredentials:
    """How the CLI proves itself to a daemon that requires it (docs/security.md): an API token, sent as
    ``Authorization: Bearer``, and the CA that signed the daemon's certificate for ``https://``."""

    token: str | None = None
    ca_file: str | None = None

    @classmethod
    def of(cls, token: str | None = None, token_file: str | None = None, ca_file: str | None = None) -> HttpCredentials:
        """From the options given, else the environment: ``LABBRIDGE_TOKEN``, ``LABBRIDGE_TOKEN_FILE``,
        ``LABBRIDGE_CA_FILE`` (a token in a file or the environment stays out of ``ps`` and shell history)."""
        token = token or os.environ.get("LABBRIDGE_TOKEN") or None
        token_file = token_file or os.environ.get("LABBRIDGE_TOKEN_FILE") or None
        if token is None and token_file is not None:
            try:
                token = Path(token_file).read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise LabbridgeError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from None
        return cls(token, ca_file or os.environ.get("LABBRIDGE_CA_FILE") or None)

    @classmethod
    def from_args(cls, args: Any) -> HttpCredentials:
        return cls.of(getattr(args, "token", None), getattr(args, "token_file", None), getattr(args, "ca_file", None))


class HttpOperatorClient(HttpCampaignCalls):
    """The running daemon, through its JSON API. Its refusals are :class:`ApiError` with the server's text;
    no answer at all is :class:`DaemonUnreachable`. Also reads what only a running daemon knows (status).
    ``credentials``: the token and CA to use (default: from the environment, :meth:`HttpCredentials.of`)."""

    def __init__(self, url: str, credentials: HttpCredentials | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an HTTP URL: {url}")
        self.url = url.rstrip("/")
        creds = credentials if credentials is not None else HttpCredentials.of()
        headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else {}
        tls = ssl.create_default_context(cafile=creds.ca_file) if creds.ca_file else None
        # in a coroutine: the session binds to the running loop
        self._session = aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=tls or True))

    async def aclose(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, *, query: Json | None = None, body: Json | None = None,
                    slow: bool = False, missing: bool = False, answers: tuple[int, ...] = ()) -> Any:
        """The answer's JSON; ``None`` for a 404 if the thing may be ``missing``; the JSON of an error status
        listed in ``answers`` too (a refusal whose body is the answer)."""
        params = {k: str(v) for k, v in (query or {}).items() if v not in (None, "")}
        timeout = aiohttp.ClientTimeout(total=ACTION_TIMEOUT_S if slow else READ_TIMEOUT_S)
        try:
            async with self._session.request(method, self.url + path, params=params, json=body,
                                             timeout=timeout) as resp:
                status, text = resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DaemonUnreachable(self.url, str(exc) or type(exc).__name__) from exc
        try:
            data = json.loads(text)
        except ValueError:
            raise ApiError(status, f"HTTP {status}: not a labbridge answer: {text[:200]!r}") from None
        if status < 400 or status in answers:
            return data
        if missing and status == 404:
            return None
        if isinstance(data, dict) and isinstance(data.get("problems"), list):
            raise OrderRefused([str(p) for p in data["problems"]])
        raise ApiError(status, str(data.get("error", f"HTTP {status}")) if isinstance(data, dict) else f"HTTP {status}")

    async def answers(self) -> bool:
        """Whether a labbridge daemon answers at this URL."""
        try:
            await self._call("GET", "/api/health")
        except LabbridgeError:
            return False
        return True

    async def read(self, path: str) -> Any:
        """What only a running daemon knows, e.g. ``/api/instruments`` (link health) for ``status``."""
        return await self._call("GET", path)

    async def outbox_items(self, *, state: str | None, destination: str | None, limit: int) -> list[Json]:
        query = {"state": state, "destination": destination, "limit": limit}
        return cast(list[Json], await self._call("GET", "/api/outbox/items", query=query))

    async def retry(self, ids: Sequence[int] | None, *, actor: str, reason: str) -> list[Json]:
        which: Json = {"all_dead": True} if ids is None else {"ids": list(ids)}
        done = await self._call("POST", "/api/outbox/retry", body={"reason": reason, "by": actor, **which}, slow=True)
        return cast(list[Json], done["items"])

    async def purge(self, ids: Sequence[int] | None, *, state: str | None, older_than_s: float | None,
                    actor: str, reason: str) -> Json:
        which: Json = {} if ids is None else {"ids": list(ids)}
        body = {"reason": reason, "by": actor, "confirm": True, "state": state, "older_than_s": older_than_s, **which}
        return cast(Json, await self._call("POST", "/api/outbox/purge", body=body, slow=True))

    async def add_order(self, order: NewOrder) -> Json:
        return cast(Json, await self._call("POST", "/api/orders", body=dataclasses.asdict(order)))

    async def list_orders(self, *, instrument: str | None, site: str | None, sample_id: str | None,
                          state: OrderState | None, limit: int) -> list[Json]:
        query = {"instrument": instrument, "site": site, "sample_id": sample_id, "state": state, "limit": limit}
        return cast(list[Json], await self._call("GET", "/api/orders", query=query))

    async def get_order(self, order_id: int) -> Json | None:
        return cast(Json | None, await self._call("GET", f"/api/orders/{order_id}", missing=True))

    async def cancel_order(self, order_id: int) -> Json | None:
        return cast(Json | None, await self._call("POST", f"/api/orders/{order_id}/cancel", body={}, missing=True))

    async def reload_config(self, *, actor: str) -> Json:
        """Have the daemon apply its config file as it is now: its report, refused ones included (422)."""
        return cast(Json, await self._call("POST", "/api/config/reload", body={"by": actor}, slow=True,
                                           answers=(409, 422)))


class LocalOperatorClient(LocalCampaignCalls):
    """The store file of a stopped daemon. With the daemon's config, names are checked against it and dead
    letters are re-decoded with its drivers and mapping; without one, re-decoding is not possible. Its
    actions are audited as :func:`local_actor` (the ``actor`` given is not used: the OS knows who runs it).

    The outbox actions need an existing store; the order actions create one (an order source of its own).
    """

    def __init__(self, path: str, config: Config | None = None) -> None:
        self.path = path
        # The drivers' link defaults applied, as the daemon does: re-decoding reads the bytes with its dialect.
        self.config = with_link_defaults(config, driver_link_defaults) if config is not None else None
        self._exists = Path(path).is_file()
        self._store: Store | None = None

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.close()

    async def _open(self, *, create: bool) -> Store:
        if self._store is None:
            if not create and not self._exists:
                raise LabbridgeError(f"no store at {self.path}")
            group = self.config.store.group if self.config is not None else None
            store = Store(self.path, group=group, keep_group_read=self.config is None)
            await store.open()
            self._store = store
        return self._store

    def _decoder_for(self, instrument: str) -> InstrumentDecoder | None:
        cfg = next((i for i in self.config.instruments if i.id == instrument), None) if self.config else None
        if cfg is None:
            return None
        driver, _why = load_instrument_driver(cfg)
        return instrument_decoder(cfg, driver) if driver is not None else None

    def _route_for(self, destination: str) -> Route | None:
        """Which results this destination takes, as the config says (issue 20: QC per destination)."""
        lis = self.config.lis if self.config is not None else []
        return next((d.route() for d in lis if d.id == destination), None)

    async def _operations(self) -> Operations:
        backlog = self.config.backlog.older_than_s if self.config is not None else None
        return Operations(await self._open(create=False), self._decoder_for, backlog_after_s=backlog,
                          route_for=self._route_for)

    async def _orders(self) -> SqliteOrderSource:
        return SqliteOrderSource(await self._open(create=True))

    async def outbox_items(self, *, state: str | None, destination: str | None,
                           limit: int) -> list[Json]:
        store = await self._open(create=False)
        return await store.outbox_rows(state=state, limit=limit, destination=destination)

    async def retry(self, ids: Sequence[int] | None, *, actor: str, reason: str) -> list[Json]:
        return await (await self._operations()).retry(ids, actor=local_actor(), reason=reason)

    async def purge(self, ids: Sequence[int] | None, *, state: str | None, older_than_s: float | None,
                    actor: str, reason: str) -> Json:
        return await (await self._operations()).purge(item_ids=ids, state=state, older_than_s=older_than_s,
                                                      actor=local_actor(), reason=reason)

    async def add_order(self, order: NewOrder) -> Json:
        problems = order_problems(self.config, order) if self.config is not None else order.problems()
        if problems:
            raise OrderRefused(problems)
        if self.config is not None:
            order = complete_order(self.config, order)
        return (await (await self._orders()).add_order(order, now=time.time(), actor=local_actor())).to_json()

    async def list_orders(self, *, instrument: str | None, site: str | None, sample_id: str | None,
                          state: OrderState | None, limit: int) -> list[Json]:
        orders = await (await self._orders()).list_orders(instrument=instrument, site=site, sample_id=sample_id,
                                                          state=state, limit=limit)
        return [o.to_json() for o in orders]

    async def get_order(self, order_id: int) -> Json | None:
        order = await (await self._orders()).get(order_id)
        return order.to_json() if order is not None else None

    async def cancel_order(self, order_id: int) -> Json | None:
        order = await (await self._orders()).cancel(order_id, now=time.time(), actor=local_actor())
        return order.to_json() if order is not None else None


def daemon_url(host: str, port: int, tls: bool = False) -> str:
    """Where a daemon listening on ``host:port`` serves its API, as seen from this host."""
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104
    return f"{'https' if tls else 'http'}://{host}:{port}"


@contextlib.asynccontextmanager
async def open_client(*, url: str, store: str | None = None, config_path: str | None = None,
                      credentials: HttpCredentials | None = None) -> AsyncIterator[OperatorClient]:
    """The client for ``--store PATH`` (that file), ``-c CONFIG`` (the config's daemon if it answers, else
    its store file, checked against the config) or ``--url URL`` (the daemon there)."""
    async with contextlib.AsyncExitStack() as stack:
        if store:
            yield await stack.enter_async_context(aclosing(LocalOperatorClient(store)))
            return
        config = load_config(config_path) if config_path else None
        if config is not None:
            url = daemon_url(config.http.host, config.http.port, config.http.tls_cert is not None)
        if config is None or config.http.enabled:
            http = await stack.enter_async_context(aclosing(HttpOperatorClient(url, credentials)))
            if config is None or await http.answers():
                yield http
                return
        assert config is not None  # -c, and its daemon does not answer: its store file
        yield await stack.enter_async_context(aclosing(LocalOperatorClient(config.store.path, config)))
