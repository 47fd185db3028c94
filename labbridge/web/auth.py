"""Who may use the HTTP API and dashboard, and from where (docs/security.md).

:class:`Guard` is one aiohttp middleware and three routes (``/login``, ``/logout``):

* **Host and Origin** (DNS rebinding, cross-site requests): a request's ``Host`` must name this server (the
  configured host, ``localhost``, ``127.0.0.1``, ``::1``, a name in ``[http] allowed_hosts``, the address
  the connection arrived on, and with a wildcard host this machine's names), else 421; an ``Origin``
  naming anything else, or a state-changing request a browser marks cross-site, is refused (403). Always,
  even with authentication off.
* **Authentication**: ``Authorization: Bearer <token>`` (API tokens, :mod:`labbridge.store.users`) or the
  dashboard's session cookie (``labbridge_session``: HttpOnly, SameSite=Strict, Secure under TLS), made by
  logging in at ``/login``. Without credentials an API call is 401, a page a redirect to the login page.
  Credentials are checked against the store at every request: a revoked token or removed user stops at once.
* **CSRF**: with the session, the cookie ``labbridge_csrf`` (readable by the page's script) is set too;
  every request other than GET/HEAD authenticated by the session must carry ``X-CSRF-Token`` equal to it
  (403 otherwise). A Bearer token needs none (a browser never adds one by itself).
* **Roles**: reading needs viewer; retry, orders, campaign changes technician; purge and config reload
  admin (:func:`needed_role`; anything not listed that changes something: admin).

With ``[http] auth`` off (loopback only, config-checked) nobody is asked; the audit trail then names the
actor ``unverified:<name the request gave>`` (:func:`actor_of`), unless the request brings a Bearer token
anyway: a valid one names the actor (roles are not enforced), an unknown one is refused (401).
"""

from __future__ import annotations

import asyncio
import functools
import html
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from labbridge.config import HttpConfig
from labbridge.logs import get_logger
from labbridge.runtime.api import StoreView
from labbridge.store import users
from labbridge.store.users import Account, Role

log = get_logger("labbridge.web")

SESSION_COOKIE = "labbridge_session"
CSRF_COOKIE = "labbridge_csrf"
CSRF_HEADER = "X-CSRF-Token"
ACCOUNT_KEY = web.RequestKey("account", Account)  # the request's account (absent: auth off)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC = frozenset({("GET", "/api/health"), ("GET", "/login"), ("POST", "/login"), ("POST", "/logout")})
TECHNICIAN_POSTS = frozenset({
    "/api/outbox/retry", "/api/orders", "/api/orders/{id}/cancel", "/api/instruments/{id}/stage",
    "/api/instruments/{id}/sign-off", "/api/instruments/{id}/rollback", "/api/instruments/{id}/references",
})
HTML_PAGES = frozenset({"/", "/campaign", "/instruments/{id}"})
LOGIN_FAILURES = 5  # per client address within LOGIN_WINDOW_S, then 429 until the window passes
LOGIN_WINDOW_S = 600.0


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so a wrong name costs as long as a wrong password."""
    return users.hash_password(secrets.token_hex(16))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def needed_role(method: str, route: str) -> Role | None:
    """The least role for this request (``route``: the route's pattern), None for a public one."""
    if (method, route) in PUBLIC:
        return None
    if method in SAFE_METHODS:
        return "viewer"
    if method == "POST" and route in TECHNICIAN_POSTS:
        return "technician"
    return "admin"


def actor_of(request: web.Request, stated: object = None) -> str:
    """Who the audit trail names for this request: the authenticated account, never a name from the body;
    with authentication off, ``unverified:`` and the name the request gave (``by``), if any."""
    account = request.get(ACCOUNT_KEY)
    if account is not None:
        return str(account.actor)
    name = str(stated or "").strip()[:64]
    return f"unverified:{name}" if name else "unverified"


@dataclass
class Session:
    name: str
    csrf: str
    last_seen: float


@dataclass
class _Failures:
    since: float
    count: int = 0


def _host_of(value: str) -> str:
    """``host`` of a ``host[:port]`` (IPv6 in brackets), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass
class Guard:
    """The middleware, the login routes and the sessions (in memory: a restart logs everyone out)."""

    store: StoreView
    settings: HttpConfig
    tls: bool = False
    sessions: dict[str, Session] = field(default_factory=dict)
    failures: dict[str, _Failures] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = {"localhost", "127.0.0.1", "::1", _host_of(self.settings.host)}
        names |= {_host_of(h) for h in self.settings.allowed_hosts}
        if self.settings.host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard: this machine's own names
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.allowed = frozenset(names)

    @property
    def required(self) -> bool:
        return self.settings.auth_required

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/login", self.login_page), web.post("/login", self.login),
                web.post("/logout", self.logout), web.get("/api/me", self.me)]

    async def me(self, request: web.Request) -> web.Response:
        """Who the dashboard acts as: the signed-in account and its role, or that authentication is off (then
        the pages ask for a name, which the audit trail records as unverified)."""
        account = request.get(ACCOUNT_KEY)
        if account is None:
            return web.json_response({"auth": False})
        return web.json_response({"auth": True, "name": account.name, "role": account.role, "kind": account.kind,
                                  "actor": account.actor})

    # ---- the middleware -------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = self._place_refusal(request)
        if refused is not None:
            return refused
        if self.required:
            response = await self._authorized(request, handler)
        elif "Authorization" in request.headers:  # auth off, a token given anyway: it names the actor, or is refused
            account, problem = await self._account(request)
            if account is None:
                return _error(401, problem or "unknown or revoked token")
            request[ACCOUNT_KEY] = account
            response = await handler(request)
        else:
            response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    def _host_allowed(self, request: web.Request, host: str) -> bool:
        if host in self.allowed:
            return True
        sockname: object = request.transport.get_extra_info("sockname") if request.transport is not None else None
        # The address the connection came to: no name there for DNS rebinding to play with.
        return isinstance(sockname, tuple) and bool(sockname) and host == str(sockname[0]).lower()

    def _place_refusal(self, request: web.Request) -> web.Response | None:
        host = request.headers.get("Host", "")
        if not host or not self._host_allowed(request, _host_of(host)):
            return _error(421, f"this server does not answer to Host {host!r}: add the name to [http] allowed_hosts "
                               "if it is this labbridge's")
        origin = request.headers.get("Origin")
        if origin is not None:
            parts = urlsplit(origin)
            if not parts.hostname or not self._host_allowed(request, parts.hostname.lower()):
                return _error(403, f"cross-origin request from {origin!r} refused")
        if request.method not in SAFE_METHODS and request.headers.get("Sec-Fetch-Site") == "cross-site":
            return _error(403, "cross-site request refused")
        return None

    async def _authorized(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        needed = needed_role(request.method, route)
        if needed is None:
            return await handler(request)
        account, problem = await self._account(request)
        if account is None:
            if request.method in SAFE_METHODS and route in HTML_PAGES:
                raise web.HTTPSeeOther(f"/login?next={request.path}")
            return _error(401, problem or "log in, or send Authorization: Bearer <token>",
                          headers={"WWW-Authenticate": 'Bearer realm="labbridge"'})
        if not users.role_at_least(account.role, needed):
            return _error(403, f"{account.actor} ({account.role}) may not do this: {needed} needed")
        request[ACCOUNT_KEY] = account
        return await handler(request)

    async def _account(self, request: web.Request) -> tuple[Account | None, str | None]:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None, "Authorization: only Bearer <token> is accepted"
            account = await self.store.read(lambda conn: users.token_account(conn, token.strip()))
            return (account, None) if account is not None else (None, "unknown or revoked token")
        session = self._session(request)
        if session is None:
            return None, None
        if request.method not in SAFE_METHODS:
            given = request.headers.get(CSRF_HEADER, "")
            if not secrets.compare_digest(given.encode(), session.csrf.encode()):
                raise web.HTTPForbidden(text='{"error": "missing or wrong X-CSRF-Token (the labbridge_csrf cookie)"}',
                                        content_type="application/json")
        row = await self.store.read(lambda conn: users.user_row(conn, session.name))
        if row is None:  # removed since: the session ends
            self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
            return None, "the session's user no longer exists"
        return Account(session.name, row[0], "user"), None

    def _session(self, request: web.Request) -> Session | None:
        key = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.get(key) if key else None
        now = time.monotonic()
        if session is None or now - session.last_seen > self.settings.session_idle_s:
            if key:
                self.sessions.pop(key, None)
            return None
        session.last_seen = now
        return session

    # ---- login and logout -----------------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.Response:
        csrf = secrets.token_urlsafe(24)
        response = web.Response(text=_login_html(_next_path(request.query.get("next")), csrf, ""),
                                content_type="text/html")
        self._set_cookie(response, CSRF_COOKIE, csrf, http_only=False)
        return _page_policy(response)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given_csrf, cookie_csrf = str(form.get("csrf", "")), request.cookies.get(CSRF_COOKIE, "")
        if not cookie_csrf or not secrets.compare_digest(given_csrf.encode(), cookie_csrf.encode()):
            return _error(403, "the login form is stale or not ours: reload the login page")
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        where = request.remote or "?"
        now = time.monotonic()
        self._forget_old(now)
        seen = self.failures.get(where)
        if seen is not None and seen.count >= LOGIN_FAILURES:
            return _error(429, "too many failed logins from this address: wait ten minutes")
        row = await self.store.read(lambda conn: users.user_row(conn, name))
        ok = await asyncio.to_thread(users.password_matches, row[1] if row else _dummy_hash(), password)
        target = _next_path(str(form.get("next", "/")))
        if not ok or row is None:
            failures = self.failures.setdefault(where, _Failures(now))
            failures.count += 1
            log.warning("login_failed", user=name[:64], remote=where)
            csrf = secrets.token_urlsafe(24)
            response = web.Response(text=_login_html(target, csrf, "Wrong name or password."), status=401,
                                    content_type="text/html")
            self._set_cookie(response, CSRF_COOKIE, csrf, http_only=False)
            return _page_policy(response)
        self.failures.pop(where, None)
        key, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.sessions[key] = Session(name, csrf, now)
        log.info("login", user=name, remote=where)
        response = _redirect(target)
        self._set_cookie(response, SESSION_COOKIE, key, http_only=True)
        self._set_cookie(response, CSRF_COOKIE, csrf, http_only=False)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """End the session (POST, with the CSRF token as header or form field ``csrf``)."""
        session = self._session(request)
        if session is not None:
            given = request.headers.get(CSRF_HEADER) or str((await request.post()).get("csrf", ""))
            if not secrets.compare_digest(given.encode(), session.csrf.encode()):
                return _error(403, "missing or wrong CSRF token")
            self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
            log.info("logout", user=session.name)
        response = _redirect("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        response.del_cookie(CSRF_COOKIE, path="/")
        return response

    def _forget_old(self, now: float) -> None:
        """Drop idle sessions and failure counts past their window (what memory a login may leave behind)."""
        for key in [k for k, s in self.sessions.items() if now - s.last_seen > self.settings.session_idle_s]:
            del self.sessions[key]
        for where in [w for w, f in self.failures.items() if now - f.since > LOGIN_WINDOW_S]:
            del self.failures[where]

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, *, http_only: bool) -> None:
        response.set_cookie(name, value, path="/", httponly=http_only, samesite="Strict", secure=self.tls)


def _error(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": text}, status=status, headers=headers)


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _next_path(value: str | None) -> str:
    """Where to go after logging in: a path on this server only (never ``//elsewhere`` or a URL)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _page_policy(response: web.Response) -> web.Response:
    response.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'unsafe-inline'; "
                                                   "form-action 'self'; frame-ancestors 'none'")
    response.headers["Cache-Control"] = "no-store"
    return response


def _login_html(next_path: str, csrf: str, message: str) -> str:
    note = f'<p class="err">{html.escape(message)}</p>' if message else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>labbridge: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;background:#f4f5f7;display:flex;justify-content:center;
margin-top:12vh}}form{{background:#fff;padding:2em;border-radius:6px;box-shadow:0 1px 4px #0002;
min-width:18em}}label{{display:block;margin:.8em 0 .2em}}input{{width:100%;padding:.4em;box-sizing:border-box}}
button{{margin-top:1.2em;padding:.5em 1.5em}}.err{{color:#b00020}}</style></head>
<body><form method="post" action="/login"><h1>labbridge</h1>{note}
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<input type="hidden" name="next" value="{html.escape(next_path)}">
<label for="name">User</label><input id="name" name="name" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Log in</button></form></body></html>
"""
