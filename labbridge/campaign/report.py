"""The campaign report per site and for the group, as JSON, Markdown and self-contained HTML (pure).

Built from the campaign status (:meth:`labbridge.campaign.service.Campaign.status`): per site, which
instruments are live and since when, which are validating (and how their comparison stands), which are
blocked and why, and whether the results are reconciled (nothing held, waiting for the LIS or in the dead
letters). The HTML has no external assets (inline CSS, no script) so it can be mailed or archived as is.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

Json = dict[str, Any]
FORMATS = ("md", "html", "json")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _reconciliation(progress: Json) -> Json:
    waiting = progress["held"] + progress["pending"] + progress["dead"]
    return {"reconciled": waiting == 0, "held": progress["held"], "pending": progress["pending"],
            "dead": progress["dead"], "delivered": progress["delivered"], "discarded": progress["discarded"],
            "qc_held": progress.get("qc_held", 0)}


def build_report(status: Json, *, node: str, generated_at: float, group: bool) -> Json:
    """The report's content (the JSON format), from the campaign status."""
    sites = []
    totals: Json = {"instruments": 0, "live": 0, "validating": 0, "blocked": 0, "held": 0, "pending": 0, "dead": 0,
                    "delivered": 0, "discarded": 0, "qc_held": 0}
    for site in status["sites"]:
        rows = site["instruments"]
        prog = site["progress"]
        for key in totals:
            totals[key] += prog[key]
        sites.append({
            "id": site["id"], "name": site["name"], "progress": prog,
            "fully_live": bool(rows) and prog["live"] == prog["instruments"],
            "live": [{"id": r["id"], "name": r["name"], "live_since": r["live_since"]} for r in rows
                     if r["stage"] == "live"],
            "validating": [{"id": r["id"], "name": r["name"], "since": r["stage_since"], "held": r["held"],
                            "validation": r.get("validation")} for r in rows if r["stage"] == "validating"],
            "in_progress": [{"id": r["id"], "name": r["name"], "stage": r["stage"], "since": r["stage_since"]}
                            for r in rows if r["stage"] not in ("live", "validating")],
            "blocked": [{"id": r["id"], "name": r["name"], "stage": r["stage"], "why": r["blocked"]} for r in rows
                        if r["blocked"]],
            "backlog": _reconciliation(prog),
            "instruments": rows,
        })
    out: Json = {"node": node, "generated_at": _iso(generated_at), "scope": "group" if group else "site",
                 "sites": sites}
    if group:
        out["group"] = {**totals, "sites": len(sites), "sites_fully_live": sum(1 for s in sites if s["fully_live"]),
                        "backlog": _reconciliation(totals)}
    return out


def _instrument(entry: Json) -> str:
    return f"{entry['name'] or entry['id']} ({entry['id']})"


def _validation_text(v: Json | None) -> str:
    if not v:
        return "no comparison"
    if not v["references"]:
        return "no reference values yet"
    return f"{v['within']}/{v['references']} within tolerance, {v['outside']} outside, {v['missing']} missing"


def _backlog_text(b: Json) -> str:
    qc = f"; {b['qc_held']} QC result(s) held from the LIS by its qc setting" if b.get("qc_held") else ""
    if b["reconciled"]:
        return f"reconciled: {b['delivered']} result(s) delivered, nothing waiting{qc}"
    return (f"not reconciled: {b['held']} held by validation, {b['pending']} waiting for the LIS, {b['dead']} in the"
            f" dead letters ({b['delivered']} delivered, {b['discarded']} discarded){qc}")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Json) -> str:
    lines = [f"# Reconnection campaign: {report['node']}", "", f"Generated {report['generated_at']}.", ""]
    group = report.get("group")
    if group:
        lines += ["## Group", "",
                  f"- {group['live']} of {group['instruments']} instruments live; {group['validating']} validating; "
                  f"{group['blocked']} blocked",
                  f"- {group['sites_fully_live']} of {group['sites']} sites fully live",
                  f"- Results: {_backlog_text(group['backlog'])}", ""]
    for site in report["sites"]:
        prog = site["progress"]
        lines += [f"## {site['name']} ({site['id']})", "",
                  f"{prog['live']} of {prog['instruments']} instruments live"
                  + (" (fully live)" if site["fully_live"] else "") + f". Results: {_backlog_text(site['backlog'])}.",
                  ""]
        lines += ["| instrument | stage | since | link | held | delivered | blocked |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in site["instruments"]:
            since = r["live_since"] if r["stage"] == "live" else r["stage_since"]
            lines.append(f"| {_md_escape(_instrument(r))} | {r['stage']} | {since or ''} | {r['state'] or 'unknown'} "
                         f"| {r['held']} | {r['delivered']} | {_md_escape(r['blocked'] or '')} |")
        lines.append("")
        if site["validating"]:
            lines += ["Validating:", ""]
            lines += [f"- {_md_escape(_instrument(v))}: {_validation_text(v['validation'])}; {v['held']} result(s) held"
                      for v in site["validating"]]
            lines.append("")
        if site["blocked"]:
            lines += ["Blocked:", ""]
            lines += [f"- {_md_escape(_instrument(b))} ({b['stage']}): {_md_escape(b['why'])}" for b in site["blocked"]]
            lines.append("")
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1em}"
        "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}"
        ".live{color:#176c2c;font-weight:600}.validating{color:#8a5a00;font-weight:600}"
        ".rolled-back{color:#a11;font-weight:600}.blocked{color:#a11}.within{color:#176c2c}.outside{color:#a11;"
        "font-weight:600}.missing{color:#8a5a00}")


def _cells(values: Sequence[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{v}</{tag}>" for v in values) + "</tr>"


def _comparison_html(instrument: str, compared: Json) -> str:
    e = html.escape
    rows = [_cells(["sample", "test", "expected", "tolerance", "value", "difference", "verdict"], "th")]
    for r in compared["rows"]:
        diff = "" if r["difference"] is None else f"{r['difference']:+.3g}"
        verdict = f"<span class=\"{e(r['verdict'])}\">{e(r['verdict'])}</span>"
        rows.append(_cells([e(r["sample"]), e(r["test"]), e(r["expected"] + (" " + r["unit"] if r["unit"] else "")),
                            e(r["tolerance"] or "exact"), e(r["value"] if r["value"] is not None else "-"), e(diff),
                            verdict]))
    summary = (f"{compared['within']} within, {compared['outside']} outside, {compared['missing']} missing of "
               f"{compared['references']}: " + ("ready for sign-off" if compared["ok"] else "not ready"))
    return f"<h3>Validation of {e(instrument)}</h3><p>{e(summary)}</p><table>{''.join(rows)}</table>"


def render_html(report: Json, *, comparisons: Mapping[str, Json] | None = None, refresh_s: int | None = None) -> str:
    """The report as one self-contained page; ``comparisons`` (instrument -> its validation comparison) adds
    the side-by-side tables under each site, ``refresh_s`` a reload (the dashboard's live page)."""
    e = html.escape
    refresh = f"<meta http-equiv=\"refresh\" content=\"{int(refresh_s)}\">" if refresh_s else ""
    parts = ["<!DOCTYPE html>", f"<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}",
             f"<title>Reconnection campaign: {e(report['node'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>Reconnection campaign: {e(report['node'])}</h1>", f"<p>Generated {e(report['generated_at'])}.</p>"]
    group = report.get("group")
    if group:
        parts.append("<h2>Group</h2><ul>"
                     f"<li>{group['live']} of {group['instruments']} instruments live; {group['validating']} "
                     f"validating; {group['blocked']} blocked</li>"
                     f"<li>{group['sites_fully_live']} of {group['sites']} sites fully live</li>"
                     f"<li>Results: {e(_backlog_text(group['backlog']))}</li></ul>")
    for site in report["sites"]:
        prog = site["progress"]
        parts.append(f"<h2>{e(site['name'])} ({e(site['id'])})</h2><p>{prog['live']} of {prog['instruments']} "
                     f"instruments live{' (fully live)' if site['fully_live'] else ''}. "
                     f"Results: {e(_backlog_text(site['backlog']))}.</p>")
        parts.append("<table>" + _cells(["instrument", "stage", "since", "link", "held", "delivered", "validation",
                                         "blocked"], "th"))
        for r in site["instruments"]:
            since = r["live_since"] if r["stage"] == "live" else r["stage_since"]
            parts.append(_cells([e(_instrument(r)), f"<span class=\"{e(r['stage'])}\">{e(r['stage'])}</span>",
                                 e(since or ""), e(r["state"] or "unknown"), str(r["held"]), str(r["delivered"]),
                                 e(_validation_text(r.get("validation")) if r["stage"] == "validating" else ""),
                                 f"<span class=\"blocked\">{e(r['blocked'] or '')}</span>"]))
        parts.append("</table>")
        parts.extend(_comparison_html(_instrument(v), comparisons[v["id"]]) for v in site["validating"]
                     if comparisons and v["id"] in comparisons)
    parts.append("</body></html>")
    return "\n".join(parts)
