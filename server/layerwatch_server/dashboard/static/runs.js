/* Runs page: the runs the caller may read, newest first, a page at a time from the server. */
"use strict";

(() => {
  const PAGE = 50;
  const MAX_SCALAR_COLUMNS = 4;
  const table = document.getElementById("runs");
  const form = document.getElementById("filters");
  const compareButton = document.getElementById("compare-selected");
  const selected = new Set(LW.state.all("select"));
  let rows = [];

  const fields = ["project", "status", "tag", "name", "config", "columns"];
  for (const field of fields) form.elements[field].value = LW.state.get(field, "");

  async function loadProjects() {
    const projects = await LW.api("/projects");
    const select = document.getElementById("f-project");
    for (const project of projects.data) {
      select.append(LW.el("option", { value: project.name, text: `${project.name} (${project.runs})` }));
    }
    select.value = LW.state.get("project", "");
  }

  function configColumns() {
    return (form.elements.columns.value || "").split(",").map((s) => s.trim()).filter(Boolean);
  }

  function configValue(config, key) {
    let value = config;
    for (const part of key.split(".")) value = value && typeof value === "object" ? value[part] : undefined;
    return value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  async function load() {
    const offset = Number(LW.state.get("offset", "0")) || 0;
    const params = { offset, limit: PAGE };
    for (const field of ["project", "status", "tag", "name"]) params[field] = form.elements[field].value;
    const config = form.elements.config.value.trim();
    if (config) params.config = config.split(/\s*;\s*/).filter(Boolean);
    let runs;
    try {
      runs = await LW.api("/runs", params);
    } catch (error) {
      LW.showError(`Runs: ${error.message}`);
      return;
    }
    LW.showError("");
    const latest = runs.data.length
      ? await LW.api("/scalars/latest", { run: runs.data.map((r) => r.id) })
      : { data: [] };
    const byRun = new Map(latest.data.map((entry) => [entry.run_id, entry]));
    const counts = new Map();
    for (const entry of latest.data) {
      for (const name of Object.keys(entry.scalars)) counts.set(name, (counts.get(name) || 0) + 1);
    }
    const scalarNames = Array.from(counts.keys())
      .sort((a, b) => counts.get(b) - counts.get(a) || a.localeCompare(b))
      .slice(0, MAX_SCALAR_COLUMNS);
    rows = runs.data.map((run) => ({ run, latest: byRun.get(run.id) }));
    render(scalarNames, configColumns());
    document.getElementById("page-info").textContent = runs.count
      ? `${offset + 1}–${offset + runs.data.length} of ${runs.count}` : "no runs match";
    document.getElementById("prev").disabled = offset === 0;
    document.getElementById("next").disabled = offset + PAGE >= runs.count;
  }

  function render(scalarNames, configKeys) {
    const head = table.tHead.rows[0];
    head.querySelectorAll("th.extra").forEach((th) => th.remove());
    for (const name of scalarNames) {
      head.append(LW.el("th", { class: "extra", scope: "col", "data-key": `s:${name}`, tabindex: "0", text: name }));
    }
    for (const key of configKeys) {
      head.append(LW.el("th", { class: "extra", scope: "col", "data-key": `c:${key}`, tabindex: "0", text: key }));
    }
    LW.sortable(table);
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const { run, latest } of rows) {
      const box = LW.el("input", {
        type: "checkbox", "aria-label": `select ${run.name}`, checked: selected.has(run.id),
        onchange: (event) => { if (event.target.checked) selected.add(run.id); else selected.delete(run.id); updateCompare(); },
      });
      const lastStep = latest && latest.last_step !== null ? latest.last_step : null;
      const tr = LW.el("tr", {},
        LW.el("td", {}, box),
        LW.el("td", {}, LW.runLink(run)),
        LW.el("td", { text: run.project }),
        LW.el("td", {}, LW.statusBadge(run.status)),
        LW.el("td", { text: new Date(run.started_at).toLocaleString(), title: run.started_at }),
        LW.el("td", { class: "num", text: LW.duration(run.started_at, run.status === "running" ? null : run.finished_at || run.updated_at) }),
        LW.el("td", { class: "num", text: lastStep === null ? "–" : String(lastStep) }),
        LW.el("td", {}, run.tags.map((tag) => LW.el("span", { class: "tag", text: tag }))),
      );
      tr.sortValues = {
        name: run.name, project: run.project, status: run.status,
        started_at: new Date(run.started_at).getTime(),
        duration: new Date(run.finished_at || run.updated_at) - new Date(run.started_at),
        last_step: lastStep,
      };
      for (const name of scalarNames) {
        const value = latest && latest.scalars[name] ? latest.scalars[name].value : null;
        tr.append(LW.el("td", { class: "num", text: LW.fmt(value) }));
        tr.sortValues[`s:${name}`] = LW.num(value);
      }
      for (const key of configKeys) {
        const value = configValue(run.config, key);
        tr.append(LW.el("td", { text: value }));
        tr.sortValues[`c:${key}`] = value === "" || Number.isNaN(Number(value)) ? value || null : Number(value);
      }
      body.append(tr);
    }
    LW.resort(table);
    updateCompare();
  }

  function updateCompare() {
    compareButton.disabled = selected.size < 2;
    compareButton.textContent = `Compare selected (${selected.size})`;
    LW.state.set({ select: Array.from(selected) });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = { offset: 0 };
    for (const field of fields) values[field] = form.elements[field].value.trim();
    LW.state.set(values);
    load();
  });
  form.elements.project.addEventListener("change", () => form.requestSubmit());
  form.elements.status.addEventListener("change", () => form.requestSubmit());
  compareButton.addEventListener("click", () => {
    location.assign(`/compare${LW.query({ run: Array.from(selected) })}`);
  });
  document.getElementById("prev").addEventListener("click", () => {
    LW.state.set({ offset: Math.max(0, Number(LW.state.get("offset", "0")) - PAGE) });
    load();
  });
  document.getElementById("next").addEventListener("click", () => {
    LW.state.set({ offset: Number(LW.state.get("offset", "0")) + PAGE });
    load();
  });

  loadProjects().then(load);
  // The list is live too: statuses and last steps move while runs train.
  setInterval(() => { if (!document.hidden) load(); }, LW.LIVE_MS * 5);
})();
