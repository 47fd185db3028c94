// labbridge: one instrument's page (static/instrument.html). Reads the JSON API, changes go through LB.send().
"use strict";
(() => {
  const {el, badge, ago, when} = LB;
  const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
  const enc = encodeURIComponent(id);
  const $ = sel => document.getElementById(sel);
  let hours = 24;  // the window shown: 1, 24 or 168 hours (the history is read by whole days)
  let current = null;
  let masked = true;

  const actor = $("actor");
  actor.value = localStorage.getItem("labbridge_actor") || "";
  actor.addEventListener("change", () => localStorage.setItem("labbridge_actor", actor.value.trim()));
  let signedIn = null;  // the account the server authenticated (then the audit names it, not a typed name)
  LB.getJson("/api/me").then(me => {
    if (!me.auth) return;
    signedIn = me.actor;
    $("who-ask").hidden = true;
    $("who-signed").hidden = false;
    $("who-name").textContent = `${me.name} (${me.role})`;
  }).catch(() => {});
  $("sign-out").addEventListener("click", async () => {
    try { await LB.send("POST", "/logout"); } catch (e) { /* the server ends the session either way */ }
    location.href = "/login";
  });
  function who(outcome) {
    if (signedIn) return signedIn;
    const name = actor.value.trim();
    if (!name) { say(outcome, false, "Give your name first (Who acts): it goes to the audit trail."); actor.focus(); }
    return name;
  }
  function say(target, ok, text) { target.className = `outcome ${ok ? "ok" : "bad"}`; target.textContent = text; }
  function fail(e) { const b = $("error"); b.hidden = false; b.textContent = `Cannot read this instrument: ${e.message}`; }

  function duration(s) {
    if (s < 1) return "<1 s";
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} days`;
  }

  function percent(share) { return share > 0 && share < 0.01 ? "<1%" : `${Math.round(100 * share)}%`; }

  function showInstrument(i) {
    const before = current;
    current = i;
    document.title = `labbridge · ${i.name || i.id}`;
    $("title").replaceChildren(i.name || i.id, el("small", {}, ` ${i.id} · site ${i.site}`));
    $("state").replaceChildren(badge(i.state));
    $("state").dataset.state = i.state;
    $("since").textContent = `since ${when(i.state_since)}`;
    $("reason").textContent = i.reason;
    $("facts").replaceChildren(...[
      `driver ${i.driver}`, `transport ${i.transport}`, i.listening ? `listening on ${i.listening}` : null,
      i.peer ? `connected from ${i.peer}` : null, `last message ${ago(i.last_message_at)}`,
      i.expected_every_s ? `usually every ${duration(i.expected_every_s)} (${i.expected_source})` : null,
      `waiting for the LIS ${i.lis_pending_results ?? "—"}`,
    ].filter(Boolean).map(t => el("span", {}, t)));
    $("counters").replaceChildren(...Object.entries(i.counters).map(([k, v]) =>
      el("div", {}, el("dt", {}, k.replaceAll("_", " ")), el("dd", {"data-counter": k}, String(v)))));
    if (before && before.state !== i.state) {
      LB.announce(`${i.name || i.id}: ${before.state} to ${i.state}. ${i.reason}`);
      loadTimeline();
    }
  }

  async function loadInstrument() { showInstrument(await LB.getJson(`/api/instruments/${enc}`)); }

  async function loadTimeline() {
    const h = await LB.getJson(`/api/instruments/${enc}/history?days=${Math.max(1, Math.ceil(hours / 24))}`);
    const end = Date.parse(h.now), start = Math.max(Date.parse(h.since), end - hours * 3600e3);
    const span = Math.max(end - start, 1);
    const segments = [];
    // Changes before the window opens only set the state it opens in (no record before: not running).
    let at = start, state = h.before ? h.before.state : "stopped";
    for (const c of h.changes) {
      const t = Math.max(Date.parse(c.at), start);
      if (t > at) segments.push({state, from: at, to: t});
      at = t; state = c.state;
    }
    if (end > at) segments.push({state, from: at, to: end});
    const totals = {};
    for (const s of segments) totals[s.state] = (totals[s.state] || 0) + (s.to - s.from) / 1000;
    $("timeline").replaceChildren(...segments.map(s => el("span", {
      class: `seg s-${s.state}`, "data-state": s.state, style: `width:${100 * (s.to - s.from) / span}%`,
      title: `${s.state}: ${when(s.from / 1000)} – ${when(s.to / 1000)}`})));
    const summary = Object.entries(totals).sort((a, b) => b[1] - a[1])
      .map(([s, secs]) => `${s} ${percent(secs * 1000 / span)}`).join(", ");
    const period = {1: "hour", 24: "24 hours", 168: "7 days"}[hours];
    $("timeline").setAttribute("aria-label", `state over the last ${period}: ${summary}`);
    $("axis-from").textContent = when(start / 1000);
    $("legend").replaceChildren(...Object.entries(totals).sort((a, b) => b[1] - a[1]).map(([s, secs]) =>
      el("li", {"data-legend": s}, badge(s), `${duration(secs)} (${percent(secs * 1000 / span)})`)));
    $("change-count").textContent = String(h.changes.length);
    $("changes").replaceChildren(...[...h.changes].reverse().map(c =>
      el("tr", {}, el("td", {}, when(c.at)), el("td", {}, badge(c.state)), el("td", {}, c.reason))));
    const today = h.daily.length ? h.daily[h.daily.length - 1] : null;
    const pick = ["messages_received", "results_received", "frames_rejected", "naks_received", "timeouts",
                  "decode_errors", "connections"];
    $("today").replaceChildren(...pick.map(k => el("div", {}, el("dt", {}, `today: ${k.replaceAll("_", " ")}`),
      el("dd", {"data-today": k}, String(today ? today.counters[k] ?? 0 : 0)))));
  }

  function mask(sample) { return masked && sample && sample.length > 3 ? `•••${sample.slice(-3)}` : sample; }

  async function loadCampaign() {
    const status = await LB.getJson("/api/campaign");
    const row = status.sites.flatMap(s => s.instruments).find(r => r.id === id);
    if (!row) return;
    const stage = $("stage");
    stage.textContent = row.stage;
    stage.dataset.stage = row.stage;
    $("stage-note").textContent = [row.stage_since ? `since ${when(row.stage_since)}` : "",
      row.stage_by ? `by ${row.stage_by}` : "", row.held ? `· ${row.held} results held` : "",
      row.blocked ? `· ${row.blocked}` : ""].filter(Boolean).join(" ");
    $("signoff").hidden = row.stage !== "validating";
    $("rollback").hidden = !["live", "validating"].includes(row.stage);
    if (row.stage !== "validating") { $("validation").replaceChildren(); return; }
    const v = await LB.getJson(`/api/instruments/${enc}/validation`);
    $("validation").replaceChildren(
      el("p", {"data-validation": v.ok ? "ok" : "not-ok"},
        el("b", {class: v.ok ? "verdict-within" : "verdict-outside"}, v.ok ? "✓ all within tolerance" : "✕ not within tolerance"),
        ` — ${v.references} reference(s): ${v.within} within, ${v.outside} outside, ${v.missing} missing`),
      el("div", {class: "scroll"}, el("table", {},
        el("thead", {}, el("tr", {}, ...["sample", "test", "expected", "tolerance", "result", "difference", "verdict"]
          .map(h => el("th", {}, h)))),
        el("tbody", {}, ...v.rows.map(r => el("tr", {},
          el("td", {class: "masked"}, mask(r.sample)), el("td", {}, r.test), el("td", {}, `${r.expected} ${r.unit || ""}`),
          el("td", {}, r.tolerance || "exact"), el("td", {}, r.value === null ? "—" : `${r.value} ${r.result_unit || ""}`),
          el("td", {class: "num"}, r.difference === null ? "—" : String(r.difference)),
          el("td", {class: `verdict-${r.verdict}`}, `${r.verdict === "within" ? "✓" : "✕"} ${r.verdict}`)))))));
  }

  async function loadDead() {
    const d = await LB.getJson(`/api/instruments/${enc}/dead-letters?limit=100`);
    $("dead-count").textContent = `(${d.items.length}${d.items.length === 100 ? "+" : ""})`;
    $("retry-all").disabled = d.items.length === 0;
    $("retry-all").dataset.ids = JSON.stringify(d.items.map(x => x.id));
    $("dead").replaceChildren(...(d.items.length ? d.items.map(x => el("tr", {"data-dead": x.id},
      el("td", {class: "num"}, String(x.id)), el("td", {}, x.dead_kind || "lis-rejected"), el("td", {}, x.destination),
      el("td", {}, x.last_error || ""), el("td", {}, when(x.created_at)),
      el("td", {}, el("button", {type: "button", class: "secondary", "data-retry": x.id,
                                 "aria-label": `Retry item ${x.id}`}, "Retry"))))
      : [el("tr", {}, el("td", {colspan: "6"}, "No dead letters: everything of this instrument went through or waits its turn."))]));
  }

  async function retry(ids) {
    const out = $("dead-outcome");
    const by = who(out);
    if (!by) return;
    try {
      const r = await LB.send("POST", "/api/outbox/retry", {ids, by, reason: $("retry-reason").value.trim()});
      const tally = {};
      for (const item of r.items) tally[item.outcome] = (tally[item.outcome] || 0) + 1;
      say(out, true, `Retried: ${Object.entries(tally).map(([k, n]) => `${n} ${k}`).join(", ")}`);
    } catch (e) { say(out, false, `Retry refused: ${e.message}`); }
    loadDead().catch(fail);
  }
  $("dead").addEventListener("click", ev => {
    const b = ev.target.closest("button[data-retry]");
    if (b) retry([Number(b.dataset.retry)]);
  });
  $("retry-all").addEventListener("click", () => retry(JSON.parse($("retry-all").dataset.ids || "[]")));

  $("signoff").addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = $("campaign-outcome");
    const by = who(out);
    if (!by) return;
    $("signoff-button").disabled = true;
    try {
      const r = await LB.send("POST", `/api/instruments/${enc}/sign-off`, {by, held: $("held").value,
        override: $("override").checked, reason: $("signoff-reason").value.trim()});
      say(out, true, `Signed off: ${id} is ${r.stage}; ${r.items} held result(s) ${r.held}.`);
    } catch (e) { say(out, false, `Sign-off refused: ${e.message}`); }
    $("signoff-button").disabled = false;
    loadCampaign().catch(fail);
  });
  $("rollback").addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = $("campaign-outcome");
    const by = who(out);
    if (!by) return;
    try {
      const r = await LB.send("POST", `/api/instruments/${enc}/rollback`, {by, reason: $("rollback-reason").value.trim()});
      say(out, true, `Rolled back: ${id} is ${r.stage}; ${r.held_again} result(s) held again.`);
    } catch (e) { say(out, false, `Rollback refused: ${e.message}`); }
    loadCampaign().catch(fail);
  });

  async function loadMessages() {
    const m = await LB.getJson(`/api/instruments/${enc}/messages?limit=25`);
    masked = m.identifiers === "masked";
    $("masking").textContent = masked ? "· patient identifiers masked ([dashboard] show_patient_identifiers)" : "";
    $("messages").replaceChildren(...(m.messages.length ? m.messages.map(msg => {
      const r0 = msg.results[0] || {};
      return el("tr", {"data-message": msg.id},
        el("td", {}, when(msg.received_at)),
        el("td", {}, msg.status + (msg.error ? `: ${msg.error}` : "") + (msg.duplicate_count ? ` (${msg.duplicate_count} duplicates)` : "")),
        el("td", {class: "num"}, String(msg.result_count)),
        el("td", {class: "masked"}, r0.sample_id || "—", r0.kind && r0.kind !== "patient" ? ` (${r0.kind})` : ""),
        el("td", {class: "masked"}, r0.patient_id || "—"),
        el("td", {}, msg.results.map(r => `${r.test_code} = ${r.value}${r.units ? " " + r.units : ""}` +
          (r.flags && r.flags.length ? ` [${r.flags.join(",")}]` : "")).join(" · ")));
    }) : [el("tr", {}, el("td", {colspan: "6"}, "No message stored yet."))]));
  }

  for (const b of document.querySelectorAll("button[data-hours]")) {
    b.addEventListener("click", () => {
      hours = Number(b.dataset.hours);
      for (const o of document.querySelectorAll("button[data-hours]")) o.setAttribute("aria-pressed", String(o === b));
      loadTimeline().catch(fail);
    });
  }

  Promise.all([loadInstrument(), loadTimeline(), loadCampaign(), loadDead(), loadMessages()]).catch(fail);
  let lastCounts = "";
  LB.live({
    snapshot: s => {
      $("node").textContent = `· ${s.node}`;
      const i = s.instruments.find(x => x.id === id);
      if (i) showInstrument(i);
    },
    instrument: i => {
      if (i.id !== id) return;
      showInstrument(i);
      const counts = `${i.messages_received}/${i.dead_letters}`;
      if (counts !== lastCounts) { lastCounts = counts; loadMessages().catch(fail); loadDead().catch(fail); }
    },
    campaign: () => loadCampaign().catch(fail),
  }, $("live"), null);
})();
