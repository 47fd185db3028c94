"""One connection: the asyncio shell that drives any sans-I/O link (:class:`labbridge.protocols.link.Link`).

:class:`LinkSession` is an :class:`asyncio.Protocol`, so TCP, TLS and serial (the thread-bridged transport
of :mod:`labbridge.transports.serial`) all drive it the same way. What is specific to a protocol lives in
its :class:`Role` (the ASTM one answers host queries and pushes orders, the HL7 one speaks IHE LAW, the
LIS order listener adds orders): a small strategy that gives meaning to the link's events.

Theory of operation:

* ``data_received`` is the fast path: the bytes go to the link with the loop's clock, whatever the link
  wants sent (an intermediate frame's ACK) is written at once, and the events that only count (frames
  accepted, junk) are handled there by :meth:`Role.on_event`. The first event that needs to wait for
  something (a complete message to commit, an order state to save) starts the session's task, which handles
  it and every event after it in order, then the role's own work, and ends when nothing is left. While the
  task runs, ``data_received`` only feeds the link (which holds a message until it is answered, and bounds
  what it buffers) and writes its output: events are never handled out of order.
* Timers: one :class:`asyncio.TimerHandle` on ``loop.call_at`` for the earliest of the link's deadline
  (:meth:`Link.get_timer`) and the role's (:meth:`Role.deadline`), re-armed lazily: only when the deadline
  comes earlier than the armed timer, or when the timer fires before the deadline it was armed for has
  moved to (the E1381 receive timer moves at every frame).
* The end of the connection is told to the link once the event in hand is handled (so a message being
  committed is answered first, and an unfinished one becomes the link's last event); then the role finishes
  and :attr:`LinkSession.closed` completes.
* Isolation: an exception in a callback or in the task is logged, ends this connection only, and is seen
  by the runner as a closed connection.
* Fairness (:class:`Limits`): one connection cannot starve the others on the loop. At most ``read_budget``
  bytes are handed to the link per turn of the loop: what a read brings beyond that waits in the session,
  reading is paused, and the rest is handed on the following turns (``call_soon``), after the other links'
  callbacks, the HTTP API and the store's answers have had theirs; reading resumes once it is all handled.
  Over ``bytes_per_s`` (a token bucket, one second of burst) reading is paused until the rate allows; each
  such episode is counted (``throttled``). A peer that does not read what we send (ACKs to an ENQ flood)
  pauses our reading too (``pause_writing``), so neither memory nor work grows with what it sends. Bytes
  already read are always handed to the link before the end of the connection is.
* Idle connections: with ``idle_timeout_s``, a connection on which nothing arrived for that long and no
  transfer is under way is closed (counted ``idle_closed``; :attr:`LinkSession.idle_closed`).
* Retiring (a reload removes or changes the link): :meth:`LinkSession.close_when_idle` closes the
  connection as soon as no transfer is under way (:attr:`Link.in_transfer`, no event in hand): the message
  being received is committed and answered first, and the role starts no work of its own meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

from labbridge.health.instrument import InstrumentHealth
from labbridge.logs import get_logger
from labbridge.protocols.link import Link

log = get_logger("labbridge.session")

READ_BUDGET = 8 * 1024  # bytes handed to one link per turn of the loop
E = TypeVar("E")
E_contra = TypeVar("E_contra", contravariant=True)


class Role(Protocol[E_contra]):
    """What one kind of link does with its events (a strategy of :class:`LinkSession`)."""

    def on_event(self, event: E_contra) -> bool:
        """Handle an event that needs no waiting (count it); False: it goes to :meth:`handle`, in the task."""
        ...

    async def handle(self, event: E_contra) -> None:
        """Handle an event that needs to wait (commit a message, then answer it through the link)."""
        ...

    def deadline(self) -> float | None:
        """The role's own next deadline on the loop's clock (an order poll, an answer awaited), or None."""
        ...

    async def work(self, now: float, *, woken: bool) -> None:
        """Its own work, at its deadline or when woken (new work for it, or a first look once connected):
        hand a message of ours to the link, time out a wait. It must move its deadline past ``now``."""
        ...

    async def finish(self) -> None:
        """The connection ended and the link's last events were handled."""
        ...


class Wakeup:
    """New work for the sessions of one instrument (an order was added): each connected one looks at once."""

    __slots__ = ("_sessions",)

    def __init__(self) -> None:
        self._sessions: set[LinkSession[Any]] = set()

    def set(self) -> None:
        for session in tuple(self._sessions):
            session.wake()

    def watch(self, session: LinkSession[Any]) -> None:
        self._sessions.add(session)

    def unwatch(self, session: LinkSession[Any]) -> None:
        self._sessions.discard(session)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may cost the loop (see "Fairness" in the module's docstring)."""

    read_budget: int = READ_BUDGET  # bytes handed to the link per turn of the loop
    bytes_per_s: float | None = None  # sustained rate; over it, reading pauses until the rate allows
    idle_timeout_s: float | None = None  # nothing received this long and no transfer under way: closed


class LinkSession(asyncio.Protocol, Generic[E]):
    """Drives one :class:`Link` over one transport (see the module's docstring)."""

    def __init__(self, link: Link[E], make_role: Callable[[LinkSession[E]], Role[E]], health: InstrumentHealth,
                 *, on_made: Callable[[LinkSession[E]], bool] | None = None,
                 on_closed: Callable[[LinkSession[E]], None] | None = None, wakeup: Wakeup | None = None,
                 limits: Limits | None = None) -> None:
        """``on_made`` may refuse the connection (False: it is closed at once, nothing else runs);
        ``on_closed`` runs once the connection's last events are handled."""
        self.link = link
        # Where bytes and messages are counted; a role may move it to the instrument a message is from.
        self.health = health
        self.peer = ""  # for reasons and logs: "10.1.2.3:5000" (from the transport), "/dev/ttyS0" (the runner)
        self.peer_ip = ""  # the peer's IP address alone (TCP), for allow_peers
        self._on_made = on_made
        self._on_closed = on_closed
        self._wakeup = wakeup
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.refused = False
        self.failure: str | None = None  # why the session ended the connection itself (a bug), for the health
        self.reset = False  # the connection ended with an error (reset by the peer, I/O error), not a close
        self.cut = False  # it ended in the middle of a transfer (the link's last event was an unfinished message)
        self._task: asyncio.Task[None] | None = None
        self._pending: E | None = None  # the event that started the task
        self._woken = False
        self._eof = False  # the peer sends nothing more (what it sent is still answered)
        self._lost = False  # the transport is gone
        self._told = False  # ... and the link was told
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._retiring = False  # close once no transfer is under way (close_when_idle)
        # Fairness and limits (see the module's docstring).
        self.limits = limits or Limits()
        self._inbox = bytearray()  # read but not yet handed to the link (over the turn's budget)
        self._holds: set[str] = set()  # why reading is paused: "backlog", "rate", "write"
        self._drain_handle: asyncio.Handle | None = None
        self._can_pause = True  # False once the transport said it cannot pause reading (serial)
        self._tokens = float(self.limits.bytes_per_s or 0.0)  # the bucket starts full: one second's worth
        self._tokens_at = self._loop.time()
        self._last_in = self._loop.time()  # loop time of the last byte received (or of the connection)
        self.idle_closed = False  # closed by labbridge after idle_timeout_s without a byte
        self.role = make_role(self)

    # ---- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (TCP, TLS, serial); uvloop's are not registered as asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
            self.peer_ip = str(peer[0])
        if self._on_made is not None and not self._on_made(self):
            self.refused = True
            transport.close()
            return
        if self._wakeup is not None:
            self._wakeup.watch(self)
        self.wake()  # the role's first look for work of its own

    def data_received(self, data: bytes) -> None:
        self._last_in = now = self._loop.time()
        # Counted; the last bytes kept to diagnose (labbridge.health.unframed); the read's wall-clock time.
        self.health.received(data, time.time())
        if self._inbox or len(data) > self.limits.read_budget:
            self._inbox += data
            self._hold("backlog")
            self._drain_later(0.0)
            return
        self._feed(data, now)
        if self.limits.bytes_per_s is not None:
            self._spend(len(data), now)

    def pause_writing(self) -> None:
        """The peer does not read what we send: read no more from it until it does."""
        self._hold("write")

    def resume_writing(self) -> None:
        self._release("write")

    def _feed(self, data: bytes, now: float | None = None) -> None:
        """Hand bytes to the link (the fast path of the module's docstring; ``now``: the loop's time of the read).
        Once per read, so :meth:`flush` and :meth:`_close_if_idle` are written out here."""
        try:
            link = self.link
            link.receive_data(data, self._loop.time() if now is None else now)
            out = link.data_to_send()
            if out:
                self.send(out)
            if self._task is None:
                event = self._take_event()
                if event is not None:
                    self._pending = event
                    self._start()
            self._arm()
            if self._retiring:
                self._close_if_idle()
        except Exception as exc:  # isolation: this connection ends, nothing else
            self._crashed(exc)

    def eof_received(self) -> bool | None:
        """The peer has sent all it will (a half-close): what it sent is still handled and answered (a final
        ACK owed after its commit), then the session closes the connection."""
        self._eof = True
        self._start()
        # Kept open for writing, except over TLS, which cannot stay half open.
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain_handle is not None:
            self._drain_handle.cancel()
            self._drain_handle = None
        if self._inbox and not self.refused:  # what was read is handled before the end is told
            rest = bytes(self._inbox)
            self._inbox.clear()
            self._feed(rest)
        if self.refused:
            if not self.closed.done():
                self.closed.set_result(None)
            return
        if exc is not None:
            self.reset = True
            log.info("connection_error", instrument=self.health.id, error=type(exc).__name__)
        self._lost = True
        if self._wakeup is not None:
            self._wakeup.unwatch(self)
        self._start()

    # ---- what roles and runners call ----------------------------------------------------------------

    @property
    def clean_close(self) -> bool:
        """The connection ended between transmissions, closed without an error and not by a failure of ours
        (an analyzer that connects per transmission hangs up this way after its EOT)."""
        return self._lost and not (self.reset or self.cut or self.refused or self.failure)

    def send(self, data: bytes) -> None:
        """Write bytes of our own (the link's are written by the session)."""
        transport = self.transport
        if data and transport is not None and not self._lost and not transport.is_closing():
            transport.write(data)

    def now(self) -> float:
        return self._loop.time()

    def wake(self) -> None:
        """Run the role's work soon (new work for it, or a first look)."""
        self._woken = True
        self._start()

    def close(self) -> None:
        """Close the connection (pending output is flushed first); :attr:`closed` completes after."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now (a replaced link, or a retiring one past its time)."""
        if self.transport is not None:
            self.transport.abort()

    def close_when_idle(self) -> None:
        """Close the connection once no transfer is under way (now, if none is): the link is being retired."""
        self._retiring = True
        self._close_if_idle()

    def quiet_s(self) -> float:
        """Seconds since anything arrived on this connection (since it opened, if nothing did)."""
        return self._loop.time() - self._last_in

    @property
    def in_transfer(self) -> bool:
        """A message is being received, committed, answered or sent on this connection."""
        return self._task is not None or self._pending is not None or self.link.in_transfer

    # ---- internals --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the link wants sent (an acknowledgement before slower work, say)."""
        out = self.link.data_to_send()
        if out:
            self.send(out)

    def _take_event(self) -> E | None:
        """The next event that needs the task; those that only count are handled on the way."""
        event = self._pending
        if event is not None:
            self._pending = None
            return event
        link, role = self.link, self.role
        while (event := link.next_event()) is not None:
            if not role.on_event(event):
                return event
        return None

    def _start(self) -> None:
        if self._task is None and not self.closed.done():
            self._task = self._loop.create_task(self._run())

    def _close_if_idle(self) -> None:
        if self._retiring and not self._lost and not self.in_transfer:
            self.close()

    async def _run(self) -> None:
        try:
            worked = False
            while True:
                event = self._take_event()
                if event is not None:
                    if self._told:
                        self.cut = True  # what the link gives after the end is an unfinished message
                    await self.role.handle(event)
                    self.flush()
                    continue
                if self._lost:
                    if not self._told:
                        self._told = True
                        self._cancel_timer()
                        self.link.connection_lost()
                        continue
                    await self.role.finish()
                    break
                if self._eof:  # all it sent is answered: nothing more to do on this connection
                    self.close()
                    break
                now = self._loop.time()
                deadline = self.role.deadline()
                if self._retiring:  # no new work of its own on a connection about to close
                    self._woken = False
                elif self._woken or (not worked and deadline is not None and now >= deadline):
                    woken, self._woken = self._woken, False
                    worked = True
                    await self.role.work(now, woken=woken)
                    self.flush()
                    continue
                break
        except asyncio.CancelledError:
            self._finish_closed()
            raise
        except Exception as exc:
            self._crashed(exc)
        finally:
            self._task = None
        if self._lost and self._told:
            self._finish_closed()
        elif self._lost or self._woken:
            self._start()  # woken or lost while the last step ran: go round again
        else:
            self._arm()
            self._close_if_idle()

    # ---- fairness: budget per turn, rate, a peer that does not read ---------------------------------

    def _hold(self, why: str) -> None:
        if not self._holds and self.transport is not None and not self._lost:
            try:
                self.transport.pause_reading()
            except NotImplementedError:  # serial's threads: its line speed bounds it instead, and no rate
                self._can_pause = False  # applies (what is read would pile up in the session)
            except RuntimeError:
                pass
        self._holds.add(why)

    def _release(self, why: str) -> None:
        if why not in self._holds:
            return
        self._holds.discard(why)
        if not self._holds and self.transport is not None and not self._lost and not self.transport.is_closing():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self.transport.resume_reading()

    def _drain_later(self, delay: float) -> None:
        if self._drain_handle is None and not self._lost:
            self._drain_handle = (self._loop.call_soon(self._drain) if delay <= 0
                                  else self._loop.call_later(delay, self._drain))

    def _drain(self) -> None:
        """One turn's share of what waits: at most ``read_budget`` bytes, within the rate."""
        self._drain_handle = None
        if self._lost:
            return
        wait = self._rate_wait()
        if wait > 0:
            self._drain_later(wait)
            return
        budget = self.limits.read_budget
        chunk = bytes(self._inbox[:budget])
        del self._inbox[:budget]
        self._feed(chunk)
        self._spend(len(chunk))
        if self._inbox:
            self._drain_later(0.0)
        else:
            self._release("backlog")

    def _rate_wait(self) -> float:
        """Seconds until the rate allows more (0: now); refills the bucket."""
        rate = self.limits.bytes_per_s
        if rate is None or not self._can_pause:
            return 0.0
        now = self._loop.time()
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        return -self._tokens / rate if self._tokens < 0 else 0.0

    def _spend(self, count: int, now: float | None = None) -> None:
        """``count`` bytes handed to the link (``now``: the loop's time of the read): over the rate, reading
        pauses until it allows more."""
        rate = self.limits.bytes_per_s
        if rate is None or not self._can_pause:
            return
        if now is None:
            now = self._loop.time()
        # The bucket refilled, then spent (as _rate_wait, once per read).
        self._tokens = tokens = min(rate, self._tokens + (now - self._tokens_at) * rate) - count
        self._tokens_at = now
        wait = -tokens / rate if tokens < 0 else 0.0
        if wait > 0 and "rate" not in self._holds:
            self.health.counters.throttled += 1
            self.health.notice("throttled", f"the analyzer sent faster than {self.limits.bytes_per_s:g} bytes/s "
                                            "(link.max_bytes_per_s): reading was slowed down")
            self._hold("rate")
            self._loop.call_later(wait, self._release, "rate")

    def _idle_deadline(self) -> float | None:
        idle = self.limits.idle_timeout_s
        return None if idle is None or self.in_transfer else self._last_in + idle

    def _close_idle(self, now: float) -> None:
        self.idle_closed = True
        self.health.counters.idle_closed += 1
        idle = self.limits.idle_timeout_s  # an expected event when configured: counted and logged, not a notice
        log.info("idle_connection_closed", instrument=self.health.id, peer=self.peer, idle_timeout_s=idle)
        self.close()

    def _finish_closed(self) -> None:
        self._cancel_timer()
        if not self.closed.done():
            self.closed.set_result(None)
            if self._on_closed is not None:
                self._on_closed(self)

    def _crashed(self, exc: Exception) -> None:
        log.error("session_crashed", instrument=self.health.id, error=type(exc).__name__, exc_info=exc)
        self.failure = (f"internal error on this link ({type(exc).__name__}); the connection was closed and "
                        "the analyzer will send again")
        self.health.set_state("down", self.failure)
        self.abort()

    def _arm(self) -> None:
        """Arm the timer for the earliest of the link's, the role's and the idle deadline, if it comes before
        the armed one (once per read: no list is built, and no idle deadline is asked for when there is none)."""
        if self._lost:
            return
        deadline = self.link.get_timer()
        role = self.role.deadline()
        if role is not None and (deadline is None or role < deadline):
            deadline = role
        if self.limits.idle_timeout_s is not None:  # off by default
            idle = self._idle_deadline()
            if idle is not None and (deadline is None or idle < deadline):
                deadline = idle
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self._lost or self._task is not None:
            return  # the task arms the timer again when it ends
        try:
            now = self._loop.time()
            idle = self._idle_deadline()
            if idle is not None and now >= idle and not self._inbox:
                self._close_idle(now)
                return
            timer = self.link.get_timer()
            if timer is not None and now >= timer:
                self.link.handle_timer(now)
                self.flush()
            event = self._take_event()
            own = self.role.deadline()
            if event is not None:
                self._pending = event
                self._start()
            elif own is not None and now >= own:
                self._start()
            else:
                self._arm()
                self._close_if_idle()
        except Exception as exc:
            self._crashed(exc)
