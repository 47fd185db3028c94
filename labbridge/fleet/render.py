"""The fleet as text (``labbridge fleet``) and as one HTML page (``labbridge fleet serve``). Pure.

The page is rendered on the server, refreshes itself, fetches nothing (no script, no font, no stylesheet from
elsewhere), and never says a thing by color alone: every state is also a word and a mark.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from labbridge.fleet.view import needs_attention

MARKS = {"online": "●", "up": "●", "idle": "○", "offline": "✕", "down": "✕", "failed": "✕", "stale": "?",
         "unknown": "?", "degraded": "▲", "connecting": "…", "planned": "·"}
PAGE_REFRESH_S = 5


def _mark(state: str) -> str:
    return f"{MARKS.get(state, '?')} {state}"


def text(fleet: Mapping[str, Any], *, broker: str) -> str:
    """A table per node: its liveness and dashboard, then its instruments; what needs attention last."""
    instruments = sum(len(n["instruments"]) for n in fleet["nodes"])
    lines = [f"fleet at {broker}: {len(fleet['nodes'])} nodes, {instruments} instruments "
             f"({fleet['generated_at']})"]
    if not fleet["nodes"]:
        lines.append("  no labbridge node has published to this broker")
    for node in fleet["nodes"]:
        lines.append("")
        lines.append(f"{node['node']}  {_mark(node['status']).upper()}  last heard {node['last_heard_at'] or '-'}"
                     + (f"  dashboard {node['dashboard']}" if node["dashboard"] else ""))
        if node["status"] != "online":
            lines.append(f"  {node['reason']}")
        rows = [("SITE", "INSTRUMENT", "STATE", "STAGE", "LAST MESSAGE", "REASON")]
        rows += [(str(i.get("site")), str(i.get("instrument")), _mark(str(i.get("state"))), str(i.get("stage")),
                  str(i.get("last_message_at") or "-"), str(i.get("reason"))) for i in node["instruments"]]
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        lines += ["  " + "  ".join(r[c].ljust(widths[c]) for c in range(5)) + "  " + r[5] for r in rows]
    for name, state in fleet["bridges"].items():
        lines.append(f"bridge {name}: {state}")
    if fleet["rejected"]:
        lines.append(f"{fleet['rejected']} message(s) not understood, last: {fleet['last_rejected']}")
    attention = needs_attention(fleet)
    lines.append("")
    lines.append("needs attention:" if attention else "nothing needs attention")
    lines += [f"  {line}" for line in attention]
    return "\n".join(lines)


_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:1rem 2rem;color:#111;background:#fff}
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.2rem 0 .3rem}
table{border-collapse:collapse;width:100%;margin-bottom:.5rem}
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #ccc;vertical-align:top}
th{background:#eee}.s{font-weight:600;white-space:nowrap}
.online,.up{color:#05661f}.idle{color:#245}.degraded,.stale,.unknown,.connecting{color:#8a5a00}
.offline,.down,.failed{color:#b00020}.node{border:1px solid #999;border-radius:4px;padding:.5rem 1rem;margin:.8rem 0}
.why{color:#333}.small{color:#555;font-size:.9rem}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _state(state: Any) -> str:
    return f'<span class="s {_e(state)}">{_e(_mark(str(state)))}</span>'


def _sites(sites: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(s['name'])}</td><td>{_e(', '.join(s['nodes']))}</td><td>{s['instruments']}</td>"
        f"<td>{' '.join(_state(k) + f' {n}' for k, n in sorted(s['states'].items()))}</td>"
        f"<td>{'<br>'.join(_e(a) for a in s['attention']) or 'nothing'}</td></tr>" for s in sites)
    return ("<table><tr><th>site</th><th>nodes</th><th>instruments</th><th>states</th><th>needs attention</th>"
            f"</tr>{rows}</table>")


def _node(node: Mapping[str, Any]) -> str:
    name = _e(node["node"])
    title = f'<a href="{_e(node["dashboard"])}">{name}</a>' if node["dashboard"] else name
    rows = "".join(
        f"<tr><td>{_e(i.get('site'))}</td><td>{_e(i.get('instrument'))} <span class='small'>{_e(i.get('name'))}"
        f"</span></td><td>{_state(i.get('state'))}</td><td>{_e(i.get('stage'))}</td>"
        f"<td>{_e(i.get('last_message_at') or '-')}</td><td class='why'>{_e(i.get('reason'))}</td></tr>"
        for i in node["instruments"])
    link = (f' · <a href="{_e(node["dashboard"])}">open its dashboard</a>' if node["dashboard"] else "")
    return (f'<section class="node"><h2>{title} {_state(node["status"])}</h2>'
            f'<p class="small">{_e(node["reason"])} · last heard {_e(node["last_heard_at"] or "-")}{link}</p>'
            "<table><tr><th>site</th><th>instrument</th><th>state</th><th>stage</th><th>last message</th>"
            f"<th>reason</th></tr>{rows}</table></section>")


def page(fleet: Mapping[str, Any], *, broker: str, link: str) -> str:
    """The whole fleet on one page: attention first, then every site, then every node with its instruments."""
    attention = needs_attention(fleet)
    problems = ("<ul>" + "".join(f"<li>{_e(a)}</li>" for a in attention) + "</ul>") if attention else \
        "<p>Nothing needs attention.</p>"
    bridges = "".join(f"<li>bridge {_e(n)}: {_state('up' if s == 'connected' else 'down')}</li>"
                      for n, s in fleet["bridges"].items())
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" '
        f'content="{PAGE_REFRESH_S}"><meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>labbridge fleet</title><style>{_STYLE}</style></head><body>"
        f"<h1>labbridge fleet</h1><p class='small'>read from {_e(broker)} ({_e(link)}) at "
        f"{_e(fleet['generated_at'])}; {len(fleet['nodes'])} nodes; refreshes every {PAGE_REFRESH_S} s; "
        "JSON at <a href='/api/fleet'>/api/fleet</a></p>"
        f"<h2>Needs attention</h2>{problems}"
        f"{'<ul>' + bridges + '</ul>' if bridges else ''}"
        f"<h2>Sites</h2>{_sites(fleet['sites'])}"
        + "".join(_node(n) for n in fleet["nodes"])
        + "</body></html>")
