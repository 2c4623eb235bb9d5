/* layerwatch dashboard: what every page shares.
 *
 * Data comes from the JSON API under /api/v1 with the login cookie (reads only).
 * Live pages poll every LW.LIVE_MS while the run is `running`: the series
 * endpoints answer only the points after the last step shown (`after_step`),
 * so an unchanged poll costs an index lookup, and the PNG views answer 304 to
 * their ETag. Polling rather than server-sent events: it needs no connection
 * held per viewer, works through any proxy, and with several server workers
 * needs no shared channel between them.
 */
"use strict";

const LW = (() => {
  const LIVE_MS = 2000;
  // Okabe-Ito: distinguishable with the common colour-vision deficiencies.
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];

  function query(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value === undefined || value === null || value === "") continue;
      for (const item of Array.isArray(value) ? value : [value]) search.append(key, String(item));
    }
    const text = search.toString();
    return text ? `?${text}` : "";
  }

  function showError(message) {
    const box = document.getElementById("error");
    if (!box) return;
    box.textContent = message;
    box.hidden = !message;
  }

  async function api(path, params) {
    const response = await fetch(`/api/v1${path}${query(params)}`, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (response.status === 401) {
      location.assign(`/login${query({ next: location.pathname + location.search })}`);
      throw new Error("not logged in");
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (_) { /* not JSON */ }
      const error = new Error(detail);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  /* JSON numbers may be "NaN" or "Infinity" strings; null is a missing value. */
  function num(value) {
    if (value === null || value === undefined) return null;
    return typeof value === "number" ? value : Number(value);
  }

  function fmt(value) {
    const v = num(value);
    if (v === null) return "–";
    if (!Number.isFinite(v)) return String(v);
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(2);
    return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  }

  function duration(start, end) {
    const seconds = Math.max(0, ((end ? new Date(end) : new Date()) - new Date(start)) / 1000);
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  /* Page state in the URL: a link pasted in chat opens the same view. */
  const state = {
    get(key, fallback) {
      const value = new URLSearchParams(location.search).get(key);
      return value === null ? fallback : value;
    },
    all(key) { return new URLSearchParams(location.search).getAll(key); },
    set(values) {
      const search = new URLSearchParams(location.search);
      for (const [key, value] of Object.entries(values)) {
        search.delete(key);
        for (const item of Array.isArray(value) ? value : [value]) {
          if (item !== undefined && item !== null && item !== "" && item !== false) search.append(key, String(item));
        }
      }
      const text = search.toString();
      history.replaceState(null, "", location.pathname + (text ? `?${text}` : ""));
    },
  };

  /* A uPlot time series chart in a titled panel; `names` are the y series. */
  function chart(container, title, names, { logy = false, height = 220 } = {}) {
    const panel = el("div", { class: "chart" }, el("h3", { text: title }));
    container.append(panel);
    const width = Math.max(300, panel.clientWidth - 12);
    const series = [{ label: "step", value: (u, v) => (v === null ? "–" : String(v)) }];
    names.forEach((name, i) => series.push({
      label: name, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
      value: (u, v) => fmt(v), points: { show: false },
    }));
    const plot = new uPlot({
      width, height, series,
      scales: { x: { time: false }, y: logy ? { distr: 3 } : {} },
      axes: [{ label: "step" }, { size: 60, values: (u, splits) => splits.map(fmt) }],
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
    }, [[], ...names.map(() => [])], panel);
    plot.panel = panel;
    return plot;
  }

  /* Points a chart may ask for: about one per horizontal pixel. */
  function maxPoints(plot) {
    return Math.max(64, Math.min(100000, Math.round(plot ? plot.width : 800)));
  }

  /* Append rows [step, value...] to a uPlot's data, keeping steps increasing. */
  function append(plot, steps, columns) {
    if (!steps.length) return;
    const data = plot.data.map((column) => Array.from(column));
    const last = data[0].length ? data[0][data[0].length - 1] : -Infinity;
    steps.forEach((step, i) => {
      if (step <= last) return;
      data[0].push(step);
      columns.forEach((column, j) => data[j + 1].push(num(column[i])));
    });
    plot.setData(data, true);
    if (plot.panel) plot.panel.dataset.points = String(data[0].length);
  }

  /* Merge several series with their own steps onto one x axis (nulls where missing). */
  function join(seriesList) {
    const steps = Array.from(new Set(seriesList.flatMap((s) => s.steps))).sort((a, b) => a - b);
    const index = new Map(steps.map((step, i) => [step, i]));
    const columns = seriesList.map((s) => {
      const column = new Array(steps.length).fill(null);
      s.steps.forEach((step, i) => { column[index.get(step)] = num(s.values[i]); });
      return column;
    });
    return [steps, ...columns];
  }

  function sparkline(values, { width = 90, height = 20 } = {}) {
    const canvas = el("canvas", { class: "spark", width, height, role: "img" });
    const points = values.map(num).filter((v) => v !== null && Number.isFinite(v));
    canvas.setAttribute("aria-label", points.length ? `trend from ${fmt(points[0])} to ${fmt(points[points.length - 1])}` : "no trend yet");
    if (points.length < 2) return canvas;
    const lo = Math.min(...points); const hi = Math.max(...points);
    const ctx = canvas.getContext("2d");
    ctx.strokeStyle = PALETTE[0];
    ctx.lineWidth = 1.2;
    ctx.beginPath();
    points.forEach((v, i) => {
      const x = (i / (points.length - 1)) * (width - 2) + 1;
      const y = hi === lo ? height / 2 : height - 2 - ((v - lo) / (hi - lo)) * (height - 4);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    return canvas;
  }

  /* Sortable tables: click, Enter or Space on a header with data-key sorts by
   * `row.sortValues[key]` (numbers as numbers, the rest as text). */
  function sortable(table) {
    table.querySelectorAll("th[data-key]").forEach((th) => {
      if (th.dataset.bound) return;
      th.dataset.bound = "1";
      const activate = () => {
        const descending = th.getAttribute("aria-sort") === "ascending";
        table.querySelectorAll("th[data-key]").forEach((other) => other.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        sortRows(table, th.dataset.key, descending);
      };
      th.addEventListener("click", activate);
      th.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); activate(); }
      });
    });
  }

  function sortRows(table, key, descending) {
    const body = table.tBodies[0];
    const value = (row) => {
      const raw = row.sortValues ? row.sortValues[key] : undefined;
      return raw === undefined || raw === null || (typeof raw === "number" && Number.isNaN(raw)) ? null : raw;
    };
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = value(a); const y = value(b);
      if (x === null || y === null) return x === y ? 0 : x === null ? 1 : -1;  // missing last
      const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
    body.append(...rows);
  }

  /* Re-apply the header's current sort after the rows were redrawn. */
  function resort(table) {
    const th = table.querySelector("th[aria-sort]");
    if (th) sortRows(table, th.dataset.key, th.getAttribute("aria-sort") === "descending");
  }

  /* Call `tick` every LIVE_MS while the run is running; the badge shows it. */
  function live(runId, tick) {
    const badge = document.getElementById("live");
    let timer = null;
    async function round() {
      try {
        const run = await api(`/runs/${encodeURIComponent(runId)}`);
        await tick(run);
        showError("");
        if (run.status !== "running") { badge.hidden = true; return; }
        badge.hidden = false;
      } catch (error) {
        showError(`Could not update: ${error.message}`);
      }
      timer = setTimeout(round, LIVE_MS);
    }
    timer = setTimeout(round, LIVE_MS);
    return () => clearTimeout(timer);
  }

  function runLink(run) {
    return el("a", { href: `/runs/${encodeURIComponent(run.id)}`, text: run.name || run.id });
  }

  function statusBadge(status) {
    return el("span", { class: `status ${status}`, text: status });
  }

  return { LIVE_MS, PALETTE, api, num, fmt, duration, el, state, chart, maxPoints, append, join,
    sparkline, sortable, resort, live, runLink, statusBadge, showError, query };
})();

window.addEventListener("unhandledrejection", (event) => {
  LW.showError(event.reason && event.reason.message ? event.reason.message : String(event.reason));
});
