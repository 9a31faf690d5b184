// The operator dashboard: polls the /v1 routes with the operator key, which lives in this closure
// only (no storage, no cookie, no URL). Every value from the server is written with textContent.
"use strict";

(() => {
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const POLL_MS = 2000;
  let key = null;
  let selected = null;      // the job id shown in the detail panel
  let follower = null;      // its metrics: {jobId, after, seen: Set, bySession: Map}
  let timer = null;
  let edgeNames = new Map(); // edge id -> name, from the last edges list

  const $ = (id) => document.getElementById(id);

  async function api(method, path, asBlob) {
    const response = await fetch(path, { method, headers: { Authorization: `Bearer ${key}` }, cache: "no-store", credentials: "omit" });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      const message = `${method} ${path} -> ${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
      if (response.status === 401) signOut(message);  // a wrong or revoked key: ask again
      throw new Error(message);
    }
    return asBlob ? response.blob() : response.json();
  }

  function cell(row, text, cls) {
    const td = row.insertCell();
    td.textContent = text === null || text === undefined ? "-" : String(text);
    if (cls) td.className = cls;
    return td;
  }

  // A 32-character id, shortened on screen; the whole id in its tooltip.
  function idCell(row, id) {
    const td = cell(row, id ? id.slice(0, 12) : null, "mono");
    if (id) td.title = id;
    return td;
  }

  function badge(state) {
    const span = document.createElement("span");
    span.className = `badge state-${state}`;
    span.textContent = state;
    return span;
  }

  function bar(done, total) {
    const frag = document.createDocumentFragment();
    const outer = document.createElement("span");
    outer.className = "bar";
    const inner = document.createElement("span");
    const pct = total ? Math.max(0, Math.min(100, Math.round((100 * done) / total / 5) * 5)) : 0;
    inner.className = `w${pct}`;
    outer.appendChild(inner);
    const text = document.createElement("span");
    text.className = "bar-text";
    text.textContent = total ? `${done}/${total}` : `${done}`;
    frag.append(outer, text);
    return frag;
  }

  function bytes(n) {
    if (!n) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  const when = (t) => (t ? t.replace("T", " ").slice(0, 19) : "-");
  const mode = (job) => job.spec.mode || "independent";
  const stepsPerSession = (spec) => spec.steps || (spec.federated && spec.federated.local_steps) || null;

  function jobProgress(job) {
    if (mode(job) === "federated") {
      const rounds = job.spec.federated.rounds;
      const started = job.sessions.reduce((m, s) => Math.max(m, (s.round ?? -1) + 1), 0);
      const done = job.state === "succeeded" ? rounds : Math.max(0, started - (FINAL.has(job.state) ? 0 : 1));
      return [done, rounds, "rounds"];
    }
    return [job.sessions.filter((s) => s.state === "succeeded").length, job.sessions.length, "sessions"];
  }

  function renderJobs(jobs) {
    const body = $("jobs").tBodies[0];
    body.replaceChildren();
    for (const job of jobs) {
      const row = body.insertRow();
      row.className = "clickable" + (job.id === selected ? " selected" : "");
      row.dataset.job = job.id;
      idCell(row, job.id);
      cell(row, job.name);
      row.insertCell().appendChild(badge(job.state));
      cell(row, mode(job));
      cell(row, job.spec.model);
      const [done, total, what] = jobProgress(job);
      const td = row.insertCell();
      td.appendChild(bar(done, total));
      td.title = `${done} of ${total} ${what}`;
      cell(row, when(job.created_at));
      cell(row, job.reason, "reason");
      row.addEventListener("click", () => select(job.id));
    }
  }

  function renderEdges(edges) {
    const body = $("edges").tBodies[0];
    body.replaceChildren();
    edgeNames = new Map(edges.map((e) => [e.id, e.name]));
    for (const e of edges) {
      const row = body.insertRow();
      cell(row, e.name);
      cell(row, e.address, "mono");
      row.insertCell().appendChild(badge(e.status === "up" ? "succeeded" : "failed")).textContent = e.status;
      cell(row, e.models.join(", "));
      row.insertCell().appendChild(bar(e.active_sessions, e.capacity.max_sessions));
      cell(row, bytes(e.capacity.memory_free_bytes));
      cell(row, bytes(e.capacity.memory_limit_bytes));
      cell(row, when(e.last_heartbeat_at));
    }
  }

  function renderDevices(devices) {
    const body = $("devices").tBodies[0];
    body.replaceChildren();
    for (const d of devices) {
      const row = body.insertRow();
      cell(row, d.name);
      idCell(row, d.id);
      cell(row, d.status);
      cell(row, when(d.created_at));
      cell(row, when(d.enrolled_at));
      cell(row, when(d.disabled_at));
    }
  }

  // The server's cursor comes only with a full page: the last partial page is asked again, and
  // points already seen (session, step) are skipped.
  async function followMetrics(jobId) {
    if (!follower || follower.jobId !== jobId) follower = { jobId, after: 0, seen: new Set(), bySession: new Map() };
    for (;;) {
      const page = await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}/metrics?after=${follower.after}&limit=1000`);
      for (const s of page.sessions) {
        const list = follower.bySession.get(s.session_id) || [];
        for (const p of s.points) {
          const k = `${s.session_id}/${p.step}`;
          if (!follower.seen.has(k)) { follower.seen.add(k); list.push(p); }
        }
        list.sort((a, b) => a.step - b.step);
        follower.bySession.set(s.session_id, list);
      }
      if (page.next_after === null || page.next_after === undefined) return follower.bySession;
      follower.after = page.next_after;
    }
  }

  function lossSeries(job, bySession) {
    // Federated: each round's steps follow the previous round's, so a device's curve runs on.
    const perRound = stepsPerSession(job.spec) || 0;
    const byDevice = new Map();
    for (const s of job.sessions) {
      const offset = s.round === null ? 0 : s.round * perRound;
      const points = (bySession.get(s.id) || []).map((p) => [p.step + offset, p.loss]);
      byDevice.set(s.device, (byDevice.get(s.device) || []).concat(points));
    }
    return [...byDevice].map(([name, points]) => ({ name, points: points.sort((a, b) => a[0] - b[0]) }));
  }

  function sessionRow(body, job, s, points) {
    const last = points.length ? points[points.length - 1] : null;
    const row = body.insertRow();
    row.dataset.session = s.id;
    idCell(row, s.id);
    cell(row, s.device);
    cell(row, s.round);
    if (edgeNames.has(s.edge_id)) cell(row, edgeNames.get(s.edge_id)).title = s.edge_id;
    else idCell(row, s.edge_id);
    row.insertCell().appendChild(badge(s.state));
    row.insertCell().appendChild(bar(last ? last.step : 0, stepsPerSession(job.spec)));
    cell(row, last ? last.loss.toFixed(4) : null);
    cell(row, last && last.examples_per_second !== null ? last.examples_per_second.toFixed(1) : null);
    cell(row, s.attempts);
    const td = row.insertCell();
    const lastRound = job.sessions.filter((o) => o.device === s.device).every((o) => (o.round ?? 0) <= (s.round ?? 0));
    if (s.has_adapter && s.state === "succeeded" && lastRound && !job.spec.federated?.secure_aggregation) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "download";
      button.textContent = "download";
      button.addEventListener("click", () => download(`/v1/jobs/${encodeURIComponent(job.id)}/adapters/${encodeURIComponent(s.device)}`, `${job.id}-${s.device}-adapter.tar.gz`));
      td.appendChild(button);
    } else {
      td.textContent = "-";
    }
    cell(row, s.reason, "reason");
  }

  async function renderJob(jobId) {
    const job = await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}`);
    if (jobId !== selected) return;
    const bySession = await followMetrics(jobId);
    $("job").hidden = false;
    $("job-title").textContent = `${job.name} (${job.id})`;
    $("job-state").replaceWith(Object.assign(badge(job.state), { id: "job-state" }));
    $("job-reason").textContent = job.reason;
    $("cancel").disabled = FINAL.has(job.state);
    const federated = mode(job) === "federated";
    $("global-adapter").hidden = !(federated && job.state === "succeeded");
    window.drawLineChart($("loss-chart"), lossSeries(job, bySession), {
      xLabel: federated ? "step (rounds one after another)" : "step",
      yLabel: "loss",
      boundaries: federated ? Array.from({ length: job.spec.federated.rounds }, (_, r) => r * (stepsPerSession(job.spec) || 0)) : [],
    });
    const body = $("sessions").tBodies[0];
    body.replaceChildren();
    for (const s of job.sessions) sessionRow(body, job, s, bySession.get(s.id) || []);
    $("rounds-section").hidden = !federated;
    if (federated) renderRounds(await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}/rounds`));
  }

  function renderRounds(rounds) {
    const body = $("rounds").tBodies[0];
    body.replaceChildren();
    for (const r of rounds) {
      const row = body.insertRow();
      cell(row, r.number);
      row.insertCell().appendChild(badge(r.state === "aggregated" ? "succeeded" : r.state)).textContent = r.state;
      cell(row, r.participants.join(", "));
      cell(row, r.missed.join(", "));
      cell(row, r.mean_loss === null ? null : r.mean_loss.toFixed(4));
      cell(row, `${bytes(r.bytes_up)} / ${bytes(r.bytes_down)}`);
    }
    const points = rounds.filter((r) => r.mean_loss !== null).map((r) => [r.number, r.mean_loss]);
    window.drawLineChart($("round-chart"), [{ name: "mean loss", points }], { xLabel: "round", yLabel: "mean loss" });
  }

  async function download(path, filename) {
    try {
      const blob = await api("GET", path, true);
      const url = URL.createObjectURL(blob);
      const a = document.createElement("a");
      a.href = url;
      a.download = filename;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) { setStatus(e.message, true); }
  }

  function select(jobId) {
    selected = jobId;
    follower = null;
    busy = false;
    refresh();
  }

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").classList.toggle("error", !!isError);
  }

  let busy = false;  // a slow answer must not overlap the next poll

  async function refresh() {
    if (!key || busy) return;
    busy = true;
    try {
      const [jobs, edges, devices] = await Promise.all([
        api("GET", "/v1/jobs?limit=100"), api("GET", "/v1/edges"), api("GET", "/v1/devices"),
      ]);
      renderJobs(jobs);
      renderEdges(edges);
      renderDevices(devices);
      if (selected) await renderJob(selected);
      setStatus(`updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      if (key) setStatus(e.message, true);
    } finally {
      busy = false;
    }
  }

  function signOut(message) {
    key = null;
    selected = null;
    follower = null;
    clearInterval(timer);
    $("dash").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("key");
    key = input.value.trim();
    input.value = "";  // not left in the DOM
    try {
      await api("GET", "/v1/jobs?limit=1");
    } catch (e) {
      if (key) $("login-error").textContent = e.message;
      return;
    }
    $("login").hidden = true;
    $("dash").hidden = false;
    $("logout").hidden = false;
    $("login-error").textContent = "";
    await refresh();
    timer = setInterval(refresh, POLL_MS);
  }

  async function cancelSelected() {
    if (!selected || !window.confirm(`Cancel job ${selected}? Its sessions stop and cannot resume.`)) return;
    try {
      await api("POST", `/v1/jobs/${encodeURIComponent(selected)}/cancel`);
      await refresh();
    } catch (e) { setStatus(e.message, true); }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => signOut(""));
    $("cancel").addEventListener("click", cancelSelected);
    $("global-adapter").addEventListener("click", () => download(`/v1/jobs/${encodeURIComponent(selected)}/adapter`, `${selected}-global-adapter.tar.gz`));
  });
})();
