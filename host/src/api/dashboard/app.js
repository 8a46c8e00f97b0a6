// The wasmq dashboard: a hash-routed page over the JSON API (docs/openapi.json). Every value from
// the server is put in the page as text (never as HTML): job output is untrusted.

const TOKEN_KEY = "wasmq.token";
const STATES = ["ready", "scheduled", "leased", "succeeded", "dead", "cancelled"];
const PAGE = 25;

const view = document.getElementById("view");
const flash = document.getElementById("flash");
let timer = null;

// ---- small helpers ------------------------------------------------------------------------

/** Builds an element: h("a", {href: "#/"}, "text", child, …). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function time(ms) {
  if (!ms) return "—";
  return new Date(ms).toISOString().replace("T", " ");
}

function ago(ms) {
  if (!ms) return "—";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 1) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function num(n) {
  return Number(n).toLocaleString("en-US");
}

function short(hash) {
  return String(hash).replace(/^sha256:/, "").slice(0, 12);
}

function badge(state) {
  return h("span", { class: `badge ${state}` }, state);
}

function pre(value, cls = "") {
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  return h("pre", { class: cls }, text);
}

function show(message, kind = "error") {
  flash.hidden = false;
  flash.className = kind;
  flash.textContent = message;
  clearTimeout(show.t);
  show.t = setTimeout(() => (flash.hidden = true), kind === "error" ? 8000 : 3000);
}

function enc(s) {
  return encodeURIComponent(s);
}

// ---- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code;
  }
}

async function api(method, path, body) {
  const headers = {};
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

/** Runs an action from a button, then re-renders the current view. */
function action(label, run, opts = {}) {
  return h(
    "button",
    {
      class: opts.danger ? "danger" : "",
      "data-action": opts.name || label.toLowerCase(),
      onclick: async (ev) => {
        ev.preventDefault();
        if (opts.confirm && !window.confirm(opts.confirm)) return;
        ev.target.disabled = true;
        try {
          const msg = await run();
          show(msg || `${label}: done`, "ok");
        } catch (e) {
          show(`${label}: ${e.message}`);
        }
        route();
      },
    },
    label,
  );
}

// ---- views ------------------------------------------------------------------------------------

/** What the store does with accepted jobs, and what an unsafe setting risks. */
function durability(d) {
  if (!d) return null;
  if (d.backend === "memory") return h("p", { class: "muted", id: "durability" }, "Memory broker: jobs last as long as the server process.");
  const v = (x) => (x === null || x === undefined ? "?" : x === true ? "yes" : x === false ? "no" : x);
  const risk =
    d.eviction && d.eviction !== "noeviction"
      ? ` — ${d.eviction} evicts accepted jobs under memory pressure`
      : d.appendonly === false
        ? " — without the append-only file a restart loses jobs"
        : d.appendfsync === "everysec"
          ? " — a power cut may lose up to a second of accepted jobs"
          : d.backend === "redis-cluster" && d.durable_writes == null
            ? " — a failover may lose the last accepted jobs not yet on a replica"
            : "";
  const durable = d.durable_writes ? ` · durable writes: ${d.durable_writes} replica(s) confirm each` : "";
  const name = d.backend === "redis-cluster" ? "Redis Cluster" : "Redis";
  return h("p", { class: risk ? "error" : "muted", id: "durability" },
    `${name}: maxmemory-policy ${v(d.eviction)} · appendonly ${v(d.appendonly)} · appendfsync ${v(d.appendfsync)}${durable}${risk}`);
}

async function overview() {
  const [{ queues }, { rates }, { workers }, health] = await Promise.all([
    api("GET", "/v1/queues"),
    api("GET", "/v1/throughput"),
    api("GET", "/v1/workers"),
    api("GET", "/healthz"),
  ]);
  const sum = (f) => queues.reduce((n, q) => n + f(q), 0);
  const last = rates.length ? rates[rates.length - 1] : { succeeded: 0, failed: 0 };
  const stats = [
    ["Processed", num(sum((q) => q.totals.succeeded))],
    ["Failed attempts", num(sum((q) => q.totals.failed))],
    ["Dead", num(sum((q) => q.dead))],
    ["Ready", num(sum((q) => q.ready))],
    ["Workers", num(workers.length)],
  ];
  return [
    h("section", { class: "stats" }, stats.map(([k, v]) => h("div", { class: "stat" }, h("b", {}, v), h("span", {}, k)))),
    durability(health.durability),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Throughput ", h("small", { class: "muted" }, `now: ${last.succeeded.toFixed(1)} succeeded/s, ${last.failed.toFixed(1)} failed/s`)),
      chart(rates),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Queues"),
      queues.length === 0
        ? h("p", { class: "muted" }, "No queues yet: enqueue a job.")
        : h(
            "table",
            { id: "queues" },
            h("thead", {}, h("tr", {}, ["Queue", "Ready", "Scheduled", "Running", "Dead", "Oldest ready", "Succeeded", "Failed", "Limits", ""].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              queues.map((q) =>
                h(
                  "tr",
                  { "data-queue": q.queue },
                  h("td", {}, h("a", { href: `#/jobs?queue=${enc(q.queue)}` }, q.queue), q.paused ? h("span", { class: "badge paused" }, "paused") : null),
                  ["ready", "scheduled", "leased", "dead"].map((s) =>
                    h("td", { class: `num ${s}` }, h("a", { href: `#/jobs?queue=${enc(q.queue)}&state=${s}` }, num(q[s]))),
                  ),
                  h("td", {}, q.oldest_ready_ms ? ago(q.oldest_ready_ms) : "—"),
                  h("td", { class: "num" }, num(q.totals.succeeded)),
                  h("td", { class: "num" }, num(q.totals.failed)),
                  h("td", {}, limits(q.limits)),
                  h(
                    "td",
                    {},
                    q.paused
                      ? action("Resume", () => api("POST", `/v1/queues/${enc(q.queue)}/resume`))
                      : action("Pause", () => api("POST", `/v1/queues/${enc(q.queue)}/pause`)),
                  ),
                ),
              ),
            ),
          ),
    ),
  ];
}

function limits(l) {
  const parts = [];
  if (l.concurrency) parts.push(`≤ ${l.concurrency} at once`);
  if (l.rate) parts.push(`${l.rate[0]} per ${l.rate[1] >= 1000 ? `${l.rate[1] / 1000} s` : `${l.rate[1]} ms`}`);
  return parts.length ? parts.join(", ") : "—";
}

/** Succeeded/failed per second as an SVG line chart, drawn at the page's width: the last ten
 * minutes, or as much as the server has sampled (at least two minutes). */
function chart(rates) {
  const W = Math.max(480, Math.floor(view.clientWidth) - 40), H = 190, L = 44, R = 16, B = 22, T = 8;
  const now = Date.now();
  const minute = 60000;
  const history = rates.length ? now - rates[0].at_ms : 0;
  const minutes = Math.min(10, Math.max(2, Math.ceil(history / minute)));
  const span = minutes * minute;
  const shown = rates.filter((r) => r.at_ms >= now - span);
  const max = Math.max(1, ...shown.map((r) => Math.max(r.succeeded, r.failed)));
  const step = niceStep(max / 4);
  const top = Math.ceil(max / step) * step;
  const x = (t) => L + ((t - (now - span)) / span) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const line = (key) => shown.map((r) => `${x(r.at_ms).toFixed(1)},${y(r[key]).toFixed(1)}`).join(" ");
  const grid = [];
  for (let v = 0; v <= top + 1e-9; v += step) {
    grid.push(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    grid.push(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmtRate(v)));
  }
  const every = minutes > 5 ? 2 : 1;
  for (let m = minutes; m >= 0; m -= every) {
    const anchor = m === 0 ? "end" : m === minutes ? "start" : "middle";
    grid.push(svg("text", { x: x(now - m * minute), y: H - 6, "text-anchor": anchor }, m ? `-${m} min` : "now"));
  }
  return h(
    "figure",
    { class: "chart" },
    svg(
      "svg",
      { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `jobs per second over the last ${minutes} minutes` },
      grid,
      svg("polyline", { points: line("succeeded"), class: "succeeded" }),
      svg("polyline", { points: line("failed"), class: "failed" }),
    ),
    h("figcaption", {}, h("span", { class: "key succeeded" }, "succeeded/s"), h("span", { class: "key failed" }, "failed/s"),
      rates.length ? null : h("span", { class: "muted" }, " — sampled every second since the server started")),
  );
}

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function fmtRate(v) {
  return v >= 1000 ? `${(v / 1000).toFixed(v % 1000 ? 1 : 0)}k` : String(Math.round(v * 10) / 10);
}

async function jobs(params) {
  const queue = params.get("queue") || "default";
  const state = STATES.includes(params.get("state")) ? params.get("state") : "ready";
  const page = Math.max(1, Number(params.get("page")) || 1);
  const [{ queues }, list] = await Promise.all([
    api("GET", "/v1/queues"),
    api("GET", `/v1/jobs?queue=${enc(queue)}&state=${state}&offset=${(page - 1) * PAGE}&limit=${PAGE}`),
  ]);
  const names = queues.map((q) => q.queue);
  if (!names.includes(queue)) names.push(queue);
  const counts = queues.find((q) => q.queue === queue) || {};
  const link = (p) => {
    const q = new URLSearchParams({ queue, state, page: 1, ...p });
    return `#/jobs?${q}`;
  };
  const pages = Math.max(1, Math.ceil(list.total / PAGE));
  const bulk =
    state === "dead" && list.total > 0
      ? h(
          "div",
          { class: "bulk" },
          action("Retry all", async () => `retried ${(await api("POST", `/v1/dead/retry?queue=${enc(queue)}`)).retried}`, { name: "retry-all" }),
          action("Delete all", async () => `deleted ${(await api("DELETE", `/v1/dead?queue=${enc(queue)}`)).deleted}`, {
            name: "delete-all",
            danger: true,
            confirm: `Delete all ${list.total} dead jobs of ${queue}?`,
          }),
        )
      : null;
  return [
    h(
      "section",
      { class: "card" },
      h(
        "div",
        { class: "filters" },
        h("label", {}, "Queue ",
          h("select", { id: "queue", onchange: (e) => (location.hash = link({ queue: e.target.value })) },
            names.map((n) => h("option", { value: n, selected: n === queue }, n)))),
        h("div", { class: "tabs", role: "tablist" },
          STATES.map((s) =>
            h("a", { href: link({ state: s }), class: s === state ? "active" : "", "data-state": s },
              s === "leased" ? "running" : s, counts[s] !== undefined ? h("small", {}, ` ${num(counts[s])}`) : null))),
        bulk,
      ),
      list.jobs.length === 0
        ? h("p", { class: "muted empty" }, `No ${state === "leased" ? "running" : state} jobs on ${queue}.`)
        : h(
            "table",
            { id: "jobs" },
            h("thead", {}, h("tr", {}, ["Job", "Module", "Attempts", "Enqueued", state === "succeeded" || state === "dead" || state === "cancelled" ? "Finished" : "Started", "Last error", ""].map((c) => h("th", {}, c)))),
            h("tbody", {}, list.jobs.map((j) => jobRow(j))),
          ),
      h(
        "div",
        { class: "pager" },
        page > 1 ? h("a", { href: link({ page: page - 1 }) }, "← newer") : null,
        h("span", { class: "muted" }, `${num(list.total)} ${state === "leased" ? "running" : state} · page ${page} of ${pages}`),
        page < pages ? h("a", { href: link({ page: page + 1 }) }, "older →") : null,
      ),
    ),
  ];
}

function jobActions(j) {
  const q = `queue=${enc(j.queue)}`;
  const id = enc(j.id);
  switch (j.state) {
    case "scheduled":
      return [
        action("Run now", () => api("POST", `/v1/jobs/${id}/run?${q}`), { name: "run-now" }),
        action("Delete", () => api("DELETE", `/v1/jobs/${id}?${q}`), { danger: true }),
      ];
    case "ready":
    case "leased":
      return [action("Cancel", () => api("DELETE", `/v1/jobs/${id}?${q}`), { danger: true })];
    case "dead":
      return [
        action("Retry", () => api("POST", `/v1/dead/${id}/retry?${q}`)),
        action("Delete", () => api("DELETE", `/v1/dead/${id}?${q}`), { danger: true }),
      ];
    default:
      return [];
  }
}

function jobRow(j) {
  const when = j.finished_at_ms || j.started_at_ms;
  return h(
    "tr",
    { "data-job": j.id },
    h("td", {}, h("a", { href: `#/job/${enc(j.queue)}/${enc(j.id)}`, class: "mono" }, j.id)),
    h("td", { class: "mono" }, short(j.invocation.module)),
    h("td", { class: "num" }, `${j.attempts}/${j.invocation.max_attempts}`),
    h("td", { title: time(j.enqueued_at_ms) }, ago(j.enqueued_at_ms)),
    h("td", { title: time(when) }, ago(when)),
    h("td", { class: "error" }, j.last_error ? `${j.last_error.kind}: ${j.last_error.message}` : ""),
    h("td", { class: "actions" }, jobActions(j)),
  );
}

async function job(queue, id) {
  const j = await api("GET", `/v1/jobs/${enc(id)}?queue=${enc(queue)}`);
  const inv = j.invocation;
  const r = j.report || {};
  const facts = [
    ["Queue", h("a", { href: `#/jobs?queue=${enc(j.queue)}&state=${j.state}` }, j.queue)],
    ["Module", h("span", { class: "mono" }, inv.module)],
    ["Attempts", `${j.attempts} of ${inv.max_attempts}`],
    ["Priority", inv.priority],
    ["Enqueued", time(j.enqueued_at_ms)],
    ["Started", time(j.started_at_ms)],
    ["Finished", time(j.finished_at_ms)],
    ["Worker", j.worker || "—"],
    ["Parent", j.parent ? h("a", { href: `#/job/${enc(j.parent.queue)}/${enc(j.parent.id)}`, class: "mono", id: "job-parent" }, j.parent.id) : "—"],
    ["Fuel used", r.fuel_used !== undefined ? `${num(r.fuel_used)} of ${num(inv.fuel)}` : "—"],
    ["Run time", r.wall_ms !== undefined ? `${r.wall_ms.toFixed(1)} ms (limit ${num(inv.timeout_ms)} ms)` : "—"],
    ["Memory limit", `${inv.memory_mb} MiB`],
  ];
  const progress = j.progress
    ? h("div", { class: "progress" }, h("progress", { max: 100, value: j.progress.percent }), h("span", {}, ` ${j.progress.percent}% ${j.progress.note || ""}`))
    : null;
  const output = (name, c) =>
    c && (c.text || c.truncated)
      ? h("section", { class: "card" }, h("h3", {}, name, c.truncated ? h("small", { class: "muted" }, ` (truncated, ${num(c.total_bytes)} bytes written)`) : null), pre(c.text, "output"))
      : null;
  return [
    h("section", { class: "card" },
      h("h2", { class: "job-title" }, h("span", { class: "mono", id: "job-id" }, j.id), " ", badge(j.state), h("span", { class: "actions" }, jobActions(j))),
      progress,
      h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    ),
    h("section", { class: "card" }, h("h3", {}, "Args"), pre(inv.args)),
    r.result !== undefined && r.result !== null ? h("section", { class: "card" }, h("h3", {}, "Result"), pre(r.result, "result")) : null,
    output("Stdout", r.stdout),
    output("Stderr", r.stderr),
    r.logs && r.logs.length
      ? h("section", { class: "card" }, h("h3", {}, "Logs", r.logs_dropped ? h("small", { class: "muted" }, ` (${r.logs_dropped} dropped)`) : null),
          h("table", { class: "logs" }, h("tbody", {}, r.logs.map((l) => h("tr", {}, h("td", { class: `level ${l.level}` }, l.level), h("td", {}, l.message))))))
      : null,
    j.errors && j.errors.length
      ? h("section", { class: "card" }, h("h3", {}, "Failures"),
          h("table", { id: "failures" },
            h("thead", {}, h("tr", {}, ["Attempt", "Kind", "Message", "At"].map((c) => h("th", {}, c)))),
            h("tbody", {}, j.errors.map((e) => h("tr", {}, h("td", { class: "num" }, e.attempt), h("td", {}, e.kind), h("td", { class: "error" }, e.message), h("td", {}, time(e.at_ms)))))))
      : null,
    children(j, r),
  ];
}

/** A job's sub-jobs, each linked, with its state (live: the page refreshes). */
function children(j, r) {
  const kids = j.children && j.children.length
    ? j.children
    : (r.sub_jobs || []).map((id) => ({ queue: j.queue, id }));
  if (!kids.length) return null;
  const counts = {};
  for (const k of kids) if (k.state) counts[k.state] = (counts[k.state] || 0) + 1;
  const summary = Object.entries(counts).map(([state, n]) => `${n} ${state}`).join(" · ");
  return h("section", { class: "card" },
    h("h3", {}, `Sub-jobs (${kids.length})`, summary ? h("small", { class: "muted" }, ` ${summary}`) : null),
    h("ul", { id: "children" }, kids.map((k) => h("li", {},
      h("a", { href: `#/job/${enc(k.queue)}/${enc(k.id)}`, class: "mono" }, k.id), " ",
      k.state ? badge(k.state) : null))));
}

async function cron() {
  const [{ cron: entries }, { modules }] = await Promise.all([api("GET", "/v1/cron"), api("GET", "/v1/modules")]);
  const form = h(
    "form",
    {
      id: "cron-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        const f = new FormData(ev.target);
        try {
          const args = f.get("args").trim() ? JSON.parse(f.get("args")) : null;
          const invocation = { module: f.get("module"), queue: f.get("queue") || "default" };
          if (args !== null) invocation.args = args;
          await api("POST", "/v1/cron", { name: f.get("name"), schedule: f.get("schedule"), invocation });
          show(`cron entry ${f.get("name")} added`, "ok");
          route();
        } catch (e) {
          show(`Add cron entry: ${e.message}`);
        }
      },
    },
    h("input", { name: "name", placeholder: "name", required: true }),
    h("input", { name: "schedule", placeholder: "*/5 * * * *", required: true }),
    h("select", { name: "module", required: true }, modules.map((m) => h("option", { value: m.hash }, short(m.hash)))),
    h("input", { name: "queue", placeholder: "default" }),
    h("input", { name: "args", placeholder: '{"args": "as JSON"}', class: "wide" }),
    h("button", { type: "submit" }, "Add"),
  );
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Cron"),
    entries.length === 0
      ? h("p", { class: "muted" }, "No cron entries.")
      : h("table", { id: "cron" },
          h("thead", {}, h("tr", {}, ["Name", "Queue", "Schedule", "Module", "Args", "Next run", ""].map((c) => h("th", {}, c)))),
          h("tbody", {}, entries.map((e) =>
            h("tr", {},
              h("td", {}, e.name),
              h("td", {}, e.invocation.queue),
              h("td", { class: "mono" }, e.schedule),
              h("td", { class: "mono" }, short(e.invocation.module)),
              h("td", { class: "mono" }, JSON.stringify(e.invocation.args)),
              h("td", { title: time(e.next_ms) }, time(e.next_ms)),
              h("td", {}, action("Remove", () => api("DELETE", `/v1/cron/${enc(e.name)}?queue=${enc(e.invocation.queue)}`), { danger: true })),
            )))),
    h("h3", {}, "Add an entry"),
    form,
  );
}

async function modules() {
  const { modules: list } = await api("GET", "/v1/modules?usage=true");
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Modules"),
    list.length === 0
      ? h("p", { class: "muted" }, "No modules uploaded: wasmq upload job.wasm")
      : h("table", { id: "modules" },
          h("thead", {}, h("tr", {}, ["Hash", "Size", "Uploaded", "Jobs using it", ""].map((c) => h("th", {}, c)))),
          h("tbody", {}, list.map((m) =>
            h("tr", {},
              h("td", { class: "mono" }, m.hash),
              h("td", { class: "num" }, bytes(m.size)),
              h("td", { title: time(m.uploaded_at_ms) }, ago(m.uploaded_at_ms)),
              h("td", { class: "num" }, num(m.jobs)),
              h("td", {}, action("Delete", () => api("DELETE", `/v1/modules/${enc(m.hash)}`), {
                danger: true,
                confirm: m.jobs ? null : `Delete module ${short(m.hash)}?`,
              })),
            )))),
  );
}

async function workers() {
  const { workers: list } = await api("GET", "/v1/workers");
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Workers"),
    list.length === 0
      ? h("p", { class: "muted" }, "No workers heard from in the last minute.")
      : h("table", { id: "workers" },
          h("thead", {}, h("tr", {}, ["Name", "Host", "PID", "Queues", "Concurrency", "In flight", "Waiting", "Started", "Last heartbeat"].map((c) => h("th", {}, c)))),
          h("tbody", {}, list.map((w) =>
            h("tr", {},
              h("td", { class: "mono" }, w.name),
              h("td", {}, w.host),
              h("td", { class: "num" }, w.pid),
              h("td", {}, w.queues.join(", ")),
              h("td", { class: "num" }, w.concurrency),
              h("td", { class: "num" }, w.in_flight),
              h("td", { class: "num" }, w.waiting ?? 0),
              h("td", { title: time(w.started_at_ms) }, ago(w.started_at_ms)),
              h("td", { title: time(w.last_seen_ms) }, ago(w.last_seen_ms)),
            )))),
  );
}

// ---- routing ----------------------------------------------------------------------------------

/** Renders the view the hash names; refreshes it while it is shown. */
async function route() {
  clearTimeout(timer);
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  let render, nav, every;
  switch (parts[0]) {
    case undefined:
      [render, nav, every] = [overview, "overview", 2000];
      break;
    case "jobs":
      [render, nav, every] = [() => jobs(params), params.get("state") === "dead" ? "dead" : "jobs", 5000];
      break;
    case "job":
      [render, nav, every] = [() => job(parts[1], parts.slice(2).join("/")), "jobs", 2000];
      break;
    case "cron":
      [render, nav, every] = [cron, "cron", 0];
      break;
    case "modules":
      [render, nav, every] = [modules, "modules", 0];
      break;
    case "workers":
      [render, nav, every] = [workers, "workers", 5000];
      break;
    default:
      view.replaceChildren(h("p", {}, "No such page. ", h("a", { href: "#/" }, "Overview")));
      return;
  }
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === nav);
  const hash = location.hash;
  try {
    const content = await render();
    if (location.hash !== hash) return; // navigated away meanwhile
    // Keep a form being typed into: the cron page does not auto-refresh.
    view.replaceChildren(...[content].flat().filter(Boolean));
    view.dataset.view = nav;
    if (every) timer = setTimeout(route, every);
  } catch (e) {
    if (location.hash !== hash) return;
    if (e.status === 401) {
      view.replaceChildren(h("section", { class: "card" }, h("h2", {}, "A token is needed"),
        h("p", {}, "Enter an API token above (any token can read; retrying, deleting and pausing need an admin token). It is kept in this browser only.")));
      document.getElementById("token").focus();
    } else {
      view.replaceChildren(h("section", { class: "card" }, h("h2", {}, "Could not load this page"), h("p", { class: "error" }, e.message)));
      timer = setTimeout(route, 5000);
    }
  }
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  if (input.value.trim()) localStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  input.placeholder = "token saved";
  route();
});
document.getElementById("forget").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  document.getElementById("token").placeholder = "API token";
  route();
});
if (localStorage.getItem(TOKEN_KEY)) document.getElementById("token").placeholder = "token saved";
window.addEventListener("hashchange", route);
route();
