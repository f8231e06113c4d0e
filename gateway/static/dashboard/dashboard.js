// voxgate's finance dashboard: every amount comes from GET /v1/organization/costs, in integer
// micro-USD, and is shown in full (six decimals) so the page equals the API to the micro-dollar.
// The token lives in sessionStorage and in request headers only, never in a URL (docs/finance.md).
"use strict";

(() => {
  const TOKEN_KEY = "voxgate.dashboard.token";
  const ZONES = [
    "UTC", "America/Los_Angeles", "America/New_York", "America/St_Johns", "Europe/London",
    "Europe/Paris", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Tokyo", "Australia/Adelaide",
  ];
  const COLORS = ["#3b6fd8", "#e08a2e", "#3aa676", "#c8412f", "#8a5cc7", "#2aa3b8", "#b3a136", "#d45d9c", "#6d7b8f", "#7fb24a"];
  const TOPS = ["api_key_id", "end_user", "tag"];
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  // What the page shows, for the CSV and for tests (window.voxgateDashboard); never the token.
  const view = {
    status: "signed-out", zone: "UTC", monthStart: 0, chartStart: 0, tenants: [], selected: null,
    stack: "line_item", daily: [], tops: {}, tagKey: "", error: null, loads: 0,
  };
  window.voxgateDashboard = view;

  // -- money and time ---------------------------------------------------------------------

  function usd(micro) {
    const sign = micro < 0 ? "-" : "";
    const abs = Math.abs(micro);
    return sign + Math.floor(abs / 1e6) + "." + String(abs % 1e6).padStart(6, "0");
  }

  const formats = new Map();
  function wallClock(ms, zone) {
    let format = formats.get(zone);
    if (!format) {
      format = new Intl.DateTimeFormat("en-US", {
        timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit",
      });
      formats.set(zone, format);
    }
    const p = {};
    for (const part of format.formatToParts(new Date(ms))) p[part.type] = Number(part.value);
    return { y: p.year, m: p.month, d: p.day, h: p.hour, mi: p.minute, s: p.second };
  }

  // The instant (ms) a zone's clocks read 00:00 on a date (month 0-based; days may overflow).
  function localMidnight(y, m0, d, zone) {
    const wall = Date.UTC(y, m0, d);
    let t = wall;
    for (let i = 0; i < 3; i++) {
      const c = wallClock(t, zone);
      const offset = Date.UTC(c.y, c.m - 1, c.d, c.h, c.mi, c.s) - Math.floor(t / 1000) * 1000;
      t = wall - offset;
    }
    return t;
  }

  function localDate(ms, zone) {
    const c = wallClock(ms, zone);
    return `${c.y}-${String(c.m).padStart(2, "0")}-${String(c.d).padStart(2, "0")}`;
  }

  // -- the API ----------------------------------------------------------------------------

  class SignedOut extends Error {}

  async function api(path, params) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new SignedOut("Sign in first.");
    const url = new URL(path, location.origin);
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
    }
    const response = await fetch(url, {
      headers: { authorization: `Bearer ${token}` }, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401 || response.status === 403) {
      throw new SignedOut((body.error && body.error.message) || "This token may not read costs.");
    }
    if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    return body;
  }

  async function costs(params) {
    const buckets = [];
    let page = null;
    do {
      const body = await api("/v1/organization/costs", { ...params, page });
      buckets.push(...body.data);
      page = body.has_more ? body.next_page : null;
    } while (page);
    return buckets;
  }

  function sumBy(buckets, key) {
    const sums = new Map();
    for (const bucket of buckets) {
      for (const r of bucket.results) sums.set(r[key], (sums.get(r[key]) || 0) + r.amount_micro_usd);
    }
    return sums;
  }

  // -- loading ----------------------------------------------------------------------------

  async function loadTotals() {
    const now = wallClock(Date.now(), view.zone);
    view.monthStart = localMidnight(now.y, now.m - 1, 1, view.zone) / 1000;
    view.chartStart = localMidnight(now.y, now.m - 1, now.d - 29, view.zone) / 1000;
    const [budgets, month] = await Promise.all([
      api("/v1/organization/budgets"),
      costs({ start_time: view.monthStart, bucket_width: "1mo", tz: view.zone, group_by: "project_id", limit: 1 }),
    ]);
    const spent = sumBy(month, "project_id");
    view.tenants = budgets.data.map((b) => ({
      project_id: b.project_id, name: b.name, monthly_budget_micro_usd: b.monthly_budget_micro_usd,
      cost_micro_usd: spent.get(b.project_id) || 0,
    }));
    if (!view.tenants.some((t) => t.project_id === view.selected)) {
      view.selected = view.tenants.length ? view.tenants[0].project_id : null;
    }
  }

  async function loadTenant() {
    view.daily = [];
    view.tops = {};
    if (!view.selected) return;
    const scope = { tz: view.zone, project_ids: view.selected };
    const daily = costs({ ...scope, start_time: view.chartStart, bucket_width: "1d", group_by: view.stack, limit: 31 });
    const month = { ...scope, start_time: view.monthStart, bucket_width: "1mo", limit: 1 };
    const tops = TOPS.map((key) =>
      key === "tag" && !view.tagKey ? Promise.resolve([]) : costs({ ...month, group_by: key, tag_key: key === "tag" ? view.tagKey : null }));
    const [days, ...lists] = await Promise.all([daily, ...tops]);
    view.daily = days.map((b) => ({
      start_time: b.start_time, date: localDate(b.start_time * 1000, view.zone),
      parts: b.results.map((r) => ({ key: r[view.stack] || "(none)", amount_micro_usd: r.amount_micro_usd })),
    }));
    TOPS.forEach((key, i) => {
      view.tops[key] = [...sumBy(lists[i], key)]
        .map(([id, amount]) => ({ id: id || "(none)", amount_micro_usd: amount }))
        .sort((a, b) => b.amount_micro_usd - a.amount_micro_usd || (a.id < b.id ? -1 : 1))
        .slice(0, 10);
    });
  }

  async function refresh(what) {
    view.status = "loading";
    status("Loading…");
    try {
      if (what === "all") await loadTotals();
      await loadTenant();
      view.status = "ready";
      view.error = null;
      view.loads += 1;
      render();
      status(`Updated ${new Date().toLocaleTimeString()} · amounts in USD to the micro-dollar · zone ${view.zone}`);
    } catch (error) {
      view.status = "error";
      view.error = String(error.message || error);
      if (error instanceof SignedOut) signOut(view.error);
      else status(view.error);
    }
  }

  // -- drawing ----------------------------------------------------------------------------

  function status(text) {
    $("status").textContent = text;
  }

  function svg(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function cell(row, text, cls) {
    const td = row.insertCell();
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function usageBar(parent, spent, budget) {
    if (!budget) {
      parent.textContent = "no monthly budget";
      return;
    }
    const share = spent / budget;
    const bar = svg("svg", { class: "bar", width: 160, height: 14, viewBox: "0 0 160 14", role: "img" }, parent);
    svg("rect", { class: "track", x: 0, y: 0, width: 160, height: 14 }, bar);
    svg("rect", { class: share >= 1 ? "fill over" : "fill", x: 0, y: 0, width: Math.min(160, 160 * share), height: 14 }, bar);
    bar.setAttribute("aria-label", `${(share * 100).toFixed(1)}% of the monthly budget`);
    const label = document.createElement("span");
    label.textContent = ` ${(share * 100).toFixed(1)}%`;
    parent.appendChild(label);
  }

  function renderTotals() {
    const body = $("totals").tBodies[0];
    body.replaceChildren();
    let total = 0;
    for (const t of view.tenants) {
      const row = body.insertRow();
      row.dataset.tenant = t.project_id;
      if (t.project_id === view.selected) row.className = "selected";
      cell(row, `${t.name} (${t.project_id})`);
      cell(row, usd(t.cost_micro_usd), "num cost");
      cell(row, t.monthly_budget_micro_usd === null ? "—" : usd(t.monthly_budget_micro_usd), "num");
      usageBar(cell(row, ""), t.cost_micro_usd, t.monthly_budget_micro_usd);
      row.addEventListener("click", () => select(t.project_id));
      total += t.cost_micro_usd;
    }
    $("grand-total").textContent = usd(total);
    $("month-label").textContent = `since ${localDate(view.monthStart * 1000, view.zone)} 00:00 ${view.zone}`;
    const picker = $("tenant");
    picker.replaceChildren(...view.tenants.map((t) => new Option(t.name, t.project_id, false, t.project_id === view.selected)));
  }

  function renderChart() {
    const chart = $("chart");
    chart.replaceChildren();
    const keys = [...new Set(view.daily.flatMap((d) => d.parts.map((p) => p.key)))].sort();
    const color = (key) => COLORS[keys.indexOf(key) % COLORS.length];
    const max = Math.max(1, ...view.daily.map((d) => d.parts.reduce((s, p) => s + p.amount_micro_usd, 0)));
    const [left, top, width, height] = [70, 10, 880, 250];
    svg("line", { class: "axis", x1: left, y1: top + height, x2: left + width, y2: top + height }, chart);
    for (let i = 0; i <= 4; i++) {
      const y = top + height - (height * i) / 4;
      svg("line", { class: "axis", x1: left, y1: y, x2: left + width, y2: y }, chart);
      svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, chart).textContent = "$" + (max * i / 4 / 1e6).toFixed(2);
    }
    const slot = width / Math.max(1, view.daily.length);
    view.daily.forEach((day, i) => {
      let y = top + height;
      for (const part of [...day.parts].sort((a, b) => (a.key < b.key ? -1 : 1))) {
        const h = (height * part.amount_micro_usd) / max;
        y -= h;
        const rect = svg("rect", { x: left + i * slot + 1, y, width: Math.max(1, slot - 2), height: h, fill: color(part.key) }, chart);
        svg("title", {}, rect).textContent = `${day.date} · ${part.key}: $${usd(part.amount_micro_usd)}`;
      }
      if (i % 5 === 0 || i === view.daily.length - 1) {
        svg("text", { x: left + i * slot + slot / 2, y: top + height + 16, "text-anchor": "middle" }, chart).textContent = day.date.slice(5);
      }
    });
    $("legend").replaceChildren(...keys.map((key) => {
      const item = document.createElement("li");
      const swatch = svg("svg", { width: 12, height: 12, viewBox: "0 0 12 12" });
      svg("rect", { width: 12, height: 12, fill: color(key) }, swatch);
      item.append(swatch, key);
      return item;
    }));
  }

  function renderTops() {
    const tenant = view.tenants.find((t) => t.project_id === view.selected);
    $("top-tenant").textContent = tenant ? tenant.name : "";
    for (const key of TOPS) {
      const body = $(`top-${key}`).tBodies[0];
      body.replaceChildren();
      for (const entry of view.tops[key] || []) {
        const row = body.insertRow();
        cell(row, entry.id);
        cell(row, usd(entry.amount_micro_usd), "num");
      }
    }
  }

  function render() {
    renderTotals();
    renderChart();
    renderTops();
  }

  // -- the CSV of what is on screen -------------------------------------------------------

  function csvField(value) {
    const text = value === null || value === undefined ? "" : String(value);
    return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  }

  function csvText() {
    const rows = [["section", "project_id", "period_start", "dimension", "value", "amount_usd", "amount_micro_usd", "budget_micro_usd", "tz"]];
    const month = new Date(view.monthStart * 1000).toISOString();
    for (const t of view.tenants) {
      rows.push(["month_to_date", t.project_id, month, "project_id", t.name, usd(t.cost_micro_usd), t.cost_micro_usd, t.monthly_budget_micro_usd, view.zone]);
    }
    for (const day of view.daily) {
      for (const part of day.parts) {
        rows.push(["daily", view.selected, new Date(day.start_time * 1000).toISOString(), view.stack, part.key, usd(part.amount_micro_usd), part.amount_micro_usd, null, view.zone]);
      }
    }
    for (const key of TOPS) {
      for (const entry of view.tops[key] || []) {
        const dimension = key === "tag" ? `tag:${view.tagKey}` : key;
        rows.push([`top_${key}`, view.selected, month, dimension, entry.id, usd(entry.amount_micro_usd), entry.amount_micro_usd, null, view.zone]);
      }
    }
    return rows.map((r) => r.map(csvField).join(",")).join("\r\n") + "\r\n";
  }

  function downloadCsv() {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([csvText()], { type: "text/csv" }));
    link.download = `voxgate-costs-${localDate(Date.now(), view.zone)}.csv`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }

  // -- signing in and out, controls -------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    view.status = "signed-out";
    $("board").hidden = true;
    $("controls").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
  }

  function showBoard() {
    $("signin").hidden = true;
    $("board").hidden = false;
    $("controls").hidden = false;
    refresh("all");
  }

  function select(tenantId) {
    view.selected = tenantId;
    refresh("tenant");
  }

  function start() {
    const zones = $("zone");
    const mine = Intl.DateTimeFormat().resolvedOptions().timeZone;
    for (const zone of ZONES.includes(mine) || !mine ? ZONES : [...ZONES, mine]) zones.add(new Option(zone, zone));
    zones.value = view.zone;
    zones.addEventListener("change", () => { view.zone = zones.value; refresh("all"); });
    $("tenant").addEventListener("change", (e) => select(e.target.value));
    $("stack").addEventListener("change", (e) => { view.stack = e.target.value; refresh("tenant"); });
    view.tagKey = $("tag-key").value.trim();
    $("tag-key").addEventListener("change", (e) => { view.tagKey = e.target.value.trim(); refresh("tenant"); });
    $("csv").addEventListener("click", downloadCsv);
    $("signout").addEventListener("click", () => signOut(""));
    $("signin").addEventListener("submit", (event) => {
      event.preventDefault();
      const field = $("token");
      const token = field.value.trim();
      field.value = "";
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("signin-error").textContent = "";
      showBoard();
    });
    if (sessionStorage.getItem(TOKEN_KEY)) showBoard();
  }

  start();
})();
