"""Changes without restart: what a new configuration changes in a running daemon, and the report of it.

A reload (``labbridge reload``, SIGHUP, ``POST /api/config/reload``) reads the daemon's config file again
and checks it whole, as ``check-config`` does (:func:`load_checked`: the file, the drivers' link defaults,
the driver names). A config with any problem is refused with all of them and nothing changes.

Otherwise the daemon is made of *parts*, each a supervised task (:func:`instrument_parts` for the
instruments' share of them): an instrument with its own listener, dial or serial port
(``instrument:ID``); instruments sharing one tcp-server ``host:port`` (``listener:HOST:PORT``, restarted
together when any of them is added, changed or removed, since its routing is built from all of them);
a LIS destination's relay (``relay:ID``); a LIS order listener (``lis_orders:ID``). :func:`plan_reload`
compares the parts of the running config and of the new one: a part whose configuration is equal keeps
running untouched (same runner, same connections); the others stop (their connections finish their
transfer first, :mod:`labbridge.links.retire`), and start anew.

``sites`` and ``log`` apply at once. The other top-level sections (``node``, ``event_loop``, ``store``,
``http``, ``backlog``, ``retention``, and any section not listed in :data:`LIVE_SECTIONS`) take effect at
the next restart: the report lists them under ``needs_restart``, and the daemon keeps running with their
old values (so a later reload reports them again until the restart).
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from labbridge.config import (
    Config,
    InstrumentConfig,
    TcpServerTransport,
    did_you_mean,
    load_config,
    with_link_defaults,
)
from labbridge.errors import ConfigError

# Top-level config sections a reload applies to the running daemon; any other change waits for a restart.
LIVE_SECTIONS = frozenset({"sites", "instruments", "lis", "lis_orders", "log"})

# How long a retiring link may take to finish its transfer before its connection is aborted (an E1381
# transfer that stalls is ended by the receiver after 30 s: LIS1-A 8.5.1's receive timer).
DRAIN_TIMEOUT_S = 30.0


def load_checked(path: str | Path) -> Config:
    """The config at ``path`` with the drivers' link defaults, checked as ``check-config`` does; raises
    :class:`ConfigError` with every problem found in one pass (a driver name no installed driver has is one,
    with the nearest known name when there is one)."""
    from labbridge.driver import available_drivers, driver_link_defaults

    known = available_drivers()
    try:
        config = with_link_defaults(load_config(path), driver_link_defaults, str(path))
    except ConfigError as exc:
        drivers = _unknown_drivers(_raw_drivers(path), known)
        reported = {key for key, _ in exc.problems}
        raise ConfigError(exc.path, exc.problems + [p for p in drivers if p[0] not in reported]) from None
    problems = _unknown_drivers([inst.driver for inst in config.instruments], known)
    if problems:
        raise ConfigError(str(path), problems)
    return config


def _raw_drivers(path: str | Path) -> list[object]:
    """The ``driver`` of each ``[[instruments]]`` entry as written (for a file that fails validation)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    items = data.get("instruments")
    return [i.get("driver") if isinstance(i, dict) else None for i in items] if isinstance(items, list) else []


def _unknown_drivers(drivers: Sequence[object], known: Iterable[str]) -> list[tuple[str, str]]:
    names = sorted(known)
    return [(f"instruments[{i}].driver", f"a known driver ({', '.join(names)}); got {driver!r}"
             + did_you_mean(driver, names))
            for i, driver in enumerate(drivers) if isinstance(driver, str) and driver not in names]


def shared_address(cfg: InstrumentConfig) -> tuple[str, int] | None:
    """The fixed tcp-server address an enabled instrument listens on, which others may share."""
    t = cfg.transport
    if isinstance(t, TcpServerTransport) and t.port != 0 and cfg.enabled:
        return (t.host, t.port)
    return None


def instrument_parts(instruments: Sequence[InstrumentConfig]) -> dict[str, tuple[InstrumentConfig, ...]]:
    """The supervised parts that run these instruments, by task name, with their members' configs in
    config order: ``instrument:ID`` alone, ``listener:HOST:PORT`` for two or more on one address."""
    groups: dict[tuple[str, int], list[InstrumentConfig]] = {}
    for cfg in instruments:
        address = shared_address(cfg)
        if address is not None:
            groups.setdefault(address, []).append(cfg)
    parts: dict[str, tuple[InstrumentConfig, ...]] = {}
    for cfg in instruments:
        address = shared_address(cfg)
        if address is None or len(groups[address]) == 1:
            parts[f"instrument:{cfg.id}"] = (cfg,)
        elif f"listener:{address[0]}:{address[1]}" not in parts:
            parts[f"listener:{address[0]}:{address[1]}"] = tuple(groups[address])
    return parts


def changed_keys(old: BaseModel, new: BaseModel) -> list[str]:
    """The top-level keys whose values differ between two models of one kind."""
    a, b = old.model_dump(), new.model_dump()
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class Action(enum.StrEnum):
    STARTED = "started"  # added
    STOPPED = "stopped"  # removed
    RESTARTED = "restarted"  # changed (or shares a listener with a changed one)
    UPDATED = "updated"  # applied without a restart (a site, the log level)


@dataclass
class Change:
    """One thing a reload did: ``kind`` is instrument, lis, lis_orders, site or log."""

    kind: str
    id: str
    action: Action
    why: str
    aborted: int = 0  # connections still busy when the drain timed out (their unfinished transfer is resent)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "why": self.why,
                **({"aborted": self.aborted} if self.action in (Action.STOPPED, Action.RESTARTED) else {})}


@dataclass
class ReloadPlan:
    """What a valid new config changes: the parts to stop and to start (by task name), and why."""

    stop: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    unchanged: dict[str, int] = field(default_factory=dict)  # instruments, lis, lis_orders left running
    needs_restart: list[tuple[str, str]] = field(default_factory=list)  # (section, why)


def _diff(kind: str, task: str, old: Sequence[Any], new: Sequence[Any], plan: ReloadPlan) -> None:
    """Destinations and LIS order listeners: one part each, restarted when its settings change."""
    before = {item.id: item for item in old}
    after = {item.id: item for item in new}
    unchanged = 0
    for ident, item in after.items():
        if ident not in before:
            plan.start.append(f"{task}:{ident}")
            plan.changes.append(Change(kind, ident, Action.STARTED, "added"))
        elif before[ident] != item:
            plan.stop.append(f"{task}:{ident}")
            plan.start.append(f"{task}:{ident}")
            plan.changes.append(Change(kind, ident, Action.RESTARTED,
                                       "changed: " + ", ".join(changed_keys(before[ident], item))))
        else:
            unchanged += 1
    for ident in before.keys() - after.keys():
        plan.stop.append(f"{task}:{ident}")
        plan.changes.append(Change(kind, ident, Action.STOPPED, "removed"))
    plan.unchanged[kind] = unchanged


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """What changes from the running ``old`` config to ``new`` (both with the drivers' link defaults)."""
    plan = ReloadPlan()
    old_parts, new_parts = instrument_parts(old.instruments), instrument_parts(new.instruments)
    plan.stop += [k for k, members in old_parts.items() if new_parts.get(k) != members]
    plan.start += [k for k, members in new_parts.items() if old_parts.get(k) != members]
    part_of = {cfg.id: key for key, members in old_parts.items() for cfg in members}
    before = {cfg.id: cfg for cfg in old.instruments}
    unchanged = 0
    for key, members in new_parts.items():
        for cfg in members:
            if cfg.id not in before:
                plan.changes.append(Change("instrument", cfg.id, Action.STARTED, "added"))
            elif before[cfg.id] != cfg:
                plan.changes.append(Change("instrument", cfg.id, Action.RESTARTED,
                                           "changed: " + ", ".join(changed_keys(before[cfg.id], cfg))))
            elif key in plan.start or part_of[cfg.id] in plan.stop:
                address = shared_address(cfg)
                where = f"{address[0]}:{address[1]}" if address else "its own port"
                plan.changes.append(Change("instrument", cfg.id, Action.RESTARTED,
                                           f"the instruments sharing its listener changed (now on {where} with "
                                           f"{len(members) - 1} other(s))"))
            else:
                unchanged += 1
    after = {cfg.id for cfg in new.instruments}
    plan.changes += [Change("instrument", cfg.id, Action.STOPPED, "removed")
                     for cfg in old.instruments if cfg.id not in after]
    plan.unchanged["instrument"] = unchanged
    _diff("lis", "relay", old.lis, new.lis, plan)
    _diff("lis_orders", "lis_orders", old.lis_orders, new.lis_orders, plan)
    old_sites = {s.id: s for s in old.sites}
    new_sites = {s.id: s for s in new.sites}
    for ident, site in new_sites.items():
        if ident not in old_sites:
            plan.changes.append(Change("site", ident, Action.UPDATED, "added"))
        elif old_sites[ident] != site:
            plan.changes.append(Change("site", ident, Action.UPDATED,
                                       "changed: " + ", ".join(changed_keys(old_sites[ident], site))))
    plan.changes += [Change("site", ident, Action.UPDATED, "removed") for ident in old_sites.keys() - new_sites.keys()]
    if old.log != new.log:
        plan.changes.append(Change("log", "level", Action.UPDATED, f"{old.log.level} -> {new.log.level}"))
    plan.needs_restart = [(section, "changed in the file; takes effect at the next restart (labbridge run)")
                          for section in changed_keys(old, new) if section not in LIVE_SECTIONS]
    return plan


def effective_config(old: Config, new: Config, plan: ReloadPlan) -> Config:
    """The config the daemon runs with after applying ``plan``: ``new``, with the sections that wait for a
    restart kept as they run."""
    return new.model_copy(update={section: getattr(old, section) for section, _ in plan.needs_restart})


class Outcome(enum.StrEnum):
    APPLIED = "applied"  # something started, stopped, restarted or was updated
    UNCHANGED = "unchanged"  # the file says what runs (perhaps with sections waiting for a restart)
    REFUSED = "refused"  # the new config has problems: nothing changed
    UNAVAILABLE = "unavailable"  # this daemon was not started from a config file


@dataclass
class ReloadReport:
    """The outcome of one reload, for the API answer, the CLI and the ``config_reloaded`` log line."""

    outcome: Outcome
    config: str
    by: str
    changes: list[Change] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (key path, problem)
    needs_restart: list[tuple[str, str]] = field(default_factory=list)
    unchanged: dict[str, int] = field(default_factory=dict)

    def of(self, action: Action) -> list[Change]:
        return [c for c in self.changes if c.action is action]

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "config": self.config,
            "by": self.by,
            **{action.value: [c.to_json() for c in self.of(action)] for action in Action},
            "unchanged": self.unchanged,
            "refused": [{"key": key, "problem": problem} for key, problem in self.refused],
            "needs_restart": [{"key": key, "why": why} for key, why in self.needs_restart],
        }

    def log_fields(self) -> dict[str, Any]:
        """Compact fields for the structured log line (IDs and counts; config keys, never patient data)."""
        fields: dict[str, Any] = {"outcome": self.outcome.value, "config": self.config, "by": self.by}
        for action in Action:
            done = self.of(action)
            if done:
                fields[action.value] = [f"{c.kind}:{c.id}" for c in done]
        aborted = sum(c.aborted for c in self.changes)
        if aborted:
            fields["aborted_connections"] = aborted
        if self.refused:
            fields["problems"] = [f"{key or '(file)'}: {problem}" for key, problem in self.refused]
        if self.needs_restart:
            fields["needs_restart"] = [key for key, _ in self.needs_restart]
        return fields
