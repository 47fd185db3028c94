"""What the commands print: tables for people, JSON for scripts, times in local time."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any


def show(as_json: bool, data: Any, table: Callable[[Any], None]) -> None:
    """``data`` as indented JSON for scripts, or through ``table`` for people."""
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        table(data)


def line(as_json: bool, data: dict[str, Any], text: str) -> None:
    """One line of a stream: a JSON object for scripts, or the text for people."""
    print(json.dumps(data, ensure_ascii=False) if as_json else text)


def when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def mb(n: int) -> str:
    return f"{n / 1048576:.1f} MB"


# States that need nobody: a link up, idle (waiting for traffic) or planned (not enabled yet).
_FINE = frozenset({"up", "idle", "planned"})
_COLORS = {"up": "32", "idle": "36", "connecting": "33", "degraded": "33", "down": "31", "failed": "1;31",
           "planned": "2"}


def _paint(state: str, width: int) -> str:
    """The state word, colored on a terminal (never the only signal: the word is always there)."""
    text = f"{state:<{width}}"
    if not sys.stdout.isatty() or os.environ.get("NO_COLOR") or state not in _COLORS:
        return text
    return f"\x1b[{_COLORS[state]}m{text}\x1b[0m"


def needs_attention(instruments: list[dict[str, Any]], outbox: dict[str, Any],
                    uplinks: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Why a person should look, one line each: links neither up nor idle, LIS destinations not up, dead
    letters, an MQTT broker the node cannot publish to. Empty when all is well."""
    why = [f"{i['id']} is {i['state']}: {i['reason']}" for i in instruments if i["state"] not in _FINE]
    why += [f"MQTT broker {u.get('broker', '')} is {u['state']}: {u['reason']} (the fleet view does not see this "
            "node's health; the data path goes on)" for u in uplinks if u["state"] != "up"]
    for d in outbox["destinations"]:
        if d["state"] == "down":
            why.append(f"LIS {d['id']} is {d['state']}: {d['reason']}")
        if d["dead"]:
            why.append(f"LIS {d['id']}: {d['dead']} dead letter(s): see `labbridge outbox list --state dead`")
    return why


def status_by_site(seen: dict[str, Any]) -> None:
    instruments: list[dict[str, Any]] = seen["instruments"]
    named = {s["id"]: s["name"] for s in seen["sites"]}
    for site in [*named, *sorted({i["site"] for i in instruments} - set(named))]:
        mine = [i for i in instruments if i["site"] == site]
        counts = ", ".join(f"{n} {state}" for state, n in sorted(Counter(i["state"] for i in mine).items()))
        print(f"{named.get(site, site)} ({site}): {counts or 'no instrument'}")
        for i in mine:
            print(f"  {i['id']:<22} {_paint(i['state'], 10)} {i['messages_received']:>6}  {i['reason']}")
    outbox = seen["outbox"]
    store = outbox["store"]
    print(f"\nstore {store['path']}: {mb(store['size_bytes'])} (database {mb(store['file_bytes'])}, "
          f"WAL {mb(store['wal_bytes'])}); {store['results']} results, {store['messages']} messages")
    for d in outbox["destinations"]:
        print(f"LIS {d['id']:<18} {_paint(d['state'], 8)} {d['pending']} pending ({d['backlog_pending']} backlog), "
              f"{d['delivered']} delivered, {d['dead']} dead  {d['reason']}")
    for u in seen.get("uplinks", []):
        print(f"MQTT {u.get('broker', ''):<17} {_paint(u['state'], 8)} {u.get('published', 0)} published  "
              f"{u['reason']}")
    attention = seen["attention"]
    print(f"\n{len(attention)} thing(s) need attention:" if attention else "\nall links up or idle, no dead letter")
    for line_ in attention:
        print(f"  - {line_}")


def outbox_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'ID':>7} {'DESTINATION':<14} {'STATE':<9} {'INSTRUMENT':<16} {'CONTROL ID':<20} {'TRIES':>5} "
          f"{'CREATED':<19}  REASON")
    for r in rows:
        state = r["state"] + ("*" if r["backlog"] else "")
        reason = r["last_error"] or ""
        if r["dead_kind"]:
            reason = f"[{r['dead_kind']}] {reason}"
        print(f"{r['id']:>7} {r['destination']:<14} {state:<9} {r['instrument']:<16} {r['control_id']:<20} "
              f"{r['attempts']:>5} {when(r['created_at']):<19}  {reason}")
    if any(r["backlog"] for r in rows):
        print("* backlog: results measured long before they reached labbridge (sent paced)")


def retry_lines(items: list[dict[str, Any]]) -> None:
    for item in items:
        extra = item.get("reason_now") or item.get("detail") or ""
        print(f"{item['id']:>7} {item['outcome']}" + (f": {extra}" if extra else ""))


def orders_table(orders: list[dict[str, Any]]) -> None:
    print(f"{'ID':>6} {'STATE':<10} {'PRIORITY':<8} {'INSTRUMENT':<22} {'SITE':<11} {'SAMPLE':<16} TESTS")
    for o in orders:
        where = o["instrument"] or "(any)"
        print(f"{o['id']:>6} {o['state']:<10} {o['priority']:<8} {where:<22} {o['site']:<11} "
              f"{o['sample_id']:<16} {','.join(o['test_codes'])}")
        if o.get("note"):
            print(f"{'':>6} refused by {o.get('sent_to') or 'the analyzer'}: {o['note']}")


def drivers_table(rows: list[dict[str, Any]]) -> None:
    width = max([len(str(row["name"])) for row in rows] + [20])  # the longest driver name sets the column
    for row in rows:
        state = f"ERROR: {row['error']}" if "error" in row else f"{row['protocol']} v{row['version']}"
        print(f"{row['name']:<{width}} {row['source']:<12} {state}")


def purged(done: dict[str, Any]) -> None:
    skipped = ", ".join(map(str, done["skipped"]))
    print(f"purged {done['purged']} item(s)" + (f"; not purged (pending or unknown): {skipped}" if skipped else ""))
