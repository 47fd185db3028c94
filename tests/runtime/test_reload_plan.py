"""What a new config changes in a running daemon (labbridge.runtime.reload.plan_reload), without running one."""

from __future__ import annotations

from typing import Any

from labbridge.config import Config, parse_config
from labbridge.runtime.reload import Action, effective_config, instrument_parts, plan_reload


def config(*instruments: dict[str, Any], **sections: Any) -> Config:
    return parse_config({"sites": [{"id": "arlon", "name": "Arlon"}],
                         "instruments": [{"site": "arlon", "driver": "astm-generic", **i} for i in instruments],
                         **sections})


def server(port: int, **more: Any) -> dict[str, Any]:
    return {"transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": port}, **more}


def changes(old: Config, new: Config) -> list[tuple[str, str, str, str]]:
    return [(c.kind, c.id, c.action.value, c.why) for c in plan_reload(old, new).changes]


def test_instruments_on_one_port_are_one_part() -> None:
    parts = instrument_parts(config({"id": "a", **server(5000, sender=["A"])},
                                    {"id": "b", **server(5000, sender=["B"])},
                                    {"id": "c", **server(0)}, {"id": "d", **server(5001)}).instruments)
    assert {k: [m.id for m in v] for k, v in parts.items()} == {
        "listener:127.0.0.1:5000": ["a", "b"], "instrument:c": ["c"], "instrument:d": ["d"]}


def test_an_instrument_joining_a_port_restarts_the_one_there_and_no_other() -> None:
    old = config({"id": "a", **server(5000, sender=["A"])}, {"id": "c", **server(0)})
    new = config({"id": "a", **server(5000, sender=["A"])}, {"id": "c", **server(0)},
                 {"id": "b", **server(5000, sender=["B"])})
    plan = plan_reload(old, new)
    assert plan.stop == ["instrument:a"] and plan.start == ["listener:127.0.0.1:5000"]
    assert changes(old, new) == [
        ("instrument", "a", "restarted", "the instruments sharing its listener changed (now on 127.0.0.1:5000 with "
                                         "1 other(s))"),
        ("instrument", "b", "started", "added")]
    assert plan.unchanged["instrument"] == 1  # c


def test_a_changed_member_restarts_its_shared_listener_and_says_what_changed() -> None:
    old = config({"id": "a", **server(5000, sender=["A"])}, {"id": "b", **server(5000, sender=["B"])})
    new = config({"id": "a", **server(5000, sender=["A"], test_map={"GLU": "GLUC"})},
                 {"id": "b", **server(5000, sender=["B"])})
    plan = plan_reload(old, new)
    assert plan.stop == plan.start == ["listener:127.0.0.1:5000"]
    assert [(c.id, c.action, c.why.split(" (")[0]) for c in plan.changes] == [
        ("a", Action.RESTARTED, "changed: test_map"),
        ("b", Action.RESTARTED, "the instruments sharing its listener changed")]


def test_destinations_listeners_sites_and_sections_for_a_restart() -> None:
    lis = {"id": "lis", "host": "127.0.0.1", "port": 2575}
    old = config({"id": "a", **server(0)}, lis=[lis, {"id": "old", "host": "h", "port": 1}],
                 lis_orders=[{"id": "orders", "port": 0}], http={"port": 8470})
    new = config({"id": "a", **server(0)}, lis=[{**lis, "ack_timeout_s": 5.0}, {"id": "new", "host": "h", "port": 1}],
                 lis_orders=[{"id": "orders", "port": 0}], http={"port": 8471}, log={"level": "debug"})
    new = new.model_copy(update={"sites": [new.sites[0].model_copy(update={"name": "Arlon (zone 1)"})]})
    plan = plan_reload(old, new)
    assert changes(old, new) == [("lis", "lis", "restarted", "changed: ack_timeout_s"),
                                 ("lis", "new", "started", "added"), ("lis", "old", "stopped", "removed"),
                                 ("site", "arlon", "updated", "changed: name"),
                                 ("log", "level", "updated", "info -> debug")]
    assert sorted(plan.stop) == ["relay:lis", "relay:old"] and sorted(plan.start) == ["relay:lis", "relay:new"]
    assert plan.unchanged == {"instrument": 1, "lis": 0, "lis_orders": 1}
    assert [key for key, _ in plan.needs_restart] == ["http"]
    running = effective_config(old, new, plan)
    assert running.http == old.http and running.lis == new.lis and running.log == new.log


def test_the_same_config_changes_nothing() -> None:
    pair = ({"id": "a", **server(5000, sender=["A"])}, {"id": "b", **server(5000, sender=["B"])})
    plan = plan_reload(config(*pair), config(*pair))
    assert (plan.stop, plan.start, plan.changes, plan.needs_restart) == ([], [], [], [])
