/* Run page: header, the diagnosis's findings, scalar charts, the layer table (rows a
 * finding names marked), the probes (what they left out) and the model tree; live while
 * running. */
"use strict";

(() => {
  const runId = document.body.dataset.run;
  const runPath = `/runs/${encodeURIComponent(runId)}`;
  const charts = new Map();  // scalar name -> uPlot
  const layerTable = document.getElementById("layers");

  function renderHead(run, tensors) {
    const head = document.getElementById("head");
    const config = Object.entries(run.config || {});
    head.replaceChildren(
      LW.el("h1", {}, `${run.name} `, LW.statusBadge(run.status)),
      LW.el("dl", {},
        LW.el("dt", { text: "project" }), LW.el("dd", { text: run.project }),
        LW.el("dt", { text: "id" }), LW.el("dd", {}, LW.el("code", { text: run.id })),
        LW.el("dt", { text: "host" }), LW.el("dd", { text: run.host || "–" }),
        LW.el("dt", { text: "started" }), LW.el("dd", { text: new Date(run.started_at).toLocaleString() }),
        LW.el("dt", { text: "duration" }), LW.el("dd", { text: LW.duration(run.started_at, run.status === "running" ? null : run.finished_at || run.updated_at) }),
        LW.el("dt", { text: "last seen" }), LW.el("dd", { text: run.last_seen_at ? new Date(run.last_seen_at).toLocaleTimeString() : "–" }),
        LW.el("dt", { text: "tensors" }), LW.el("dd", { text: String(tensors) }),
        LW.el("dt", { text: "tags" }), LW.el("dd", {}, run.tags.length ? run.tags.map((t) => LW.el("span", { class: "tag", text: t })) : "–"),
      ),
      LW.el("dl", { "aria-label": "config" },
        config.length ? config.flatMap(([key, value]) => [
          LW.el("dt", { text: key }),
          LW.el("dd", { text: typeof value === "object" ? JSON.stringify(value) : String(value) }),
        ]) : [LW.el("dt", { text: "config" }), LW.el("dd", { text: "–" })],
      ),
    );
    document.title = `${run.name} · layerwatch`;
  }

  async function loadScalars() {
    const names = (await LW.api(`${runPath}/scalars`)).data;
    const container = document.getElementById("scalars");
    document.getElementById("no-scalars").hidden = names.length > 0;
    for (const name of names) {
      if (charts.has(name)) continue;
      const plot = LW.chart(container, name, [name]);
      charts.set(name, plot);
      const series = await LW.api(`${runPath}/scalars/series`, { name, max_points: LW.maxPoints(plot) });
      LW.append(plot, series.steps, [series.values]);
      plot.lastStep = series.steps.length ? series.steps[series.steps.length - 1] : null;
      // Time to first chart, from navigation start: read by bench/dashboard.py.
      if (!performance.getEntriesByName("lw:first-chart").length) performance.mark("lw:first-chart");
    }
  }

  /* New points only: everything after the last step drawn, appended. */
  async function appendScalars() {
    await loadScalars();  // a scalar logged for the first time gets its chart
    for (const [name, plot] of charts) {
      let after = plot.lastStep;
      for (;;) {
        const page = await LW.api(`${runPath}/scalars/series`, { name, after_step: after, limit: 5000 });
        LW.append(plot, page.steps, [page.values]);
        if (page.steps.length) after = page.steps[page.steps.length - 1];
        if (page.next_after_step === null) break;
      }
      plot.lastStep = after;
    }
  }

  function problems(layer) {
    const s = layer.stats;
    const flags = {};
    if (LW.num(s.nonfinite) > 0) flags.nonfinite = ["bad", "non-finite values"];
    if (layer.kind === "activation" && LW.num(s.zero_frac) > 0.9) flags.zero_frac = ["warn", "mostly zero: dead units?"];
    if (layer.kind === "grad" && layer.step !== null && LW.num(s.l2) !== null && LW.num(s.l2) < 1e-7) flags.l2 = ["warn", "vanishing gradient"];
    if (layer.kind === "grad" && LW.num(s.l2) > 1e3) flags.l2 = ["bad", "exploding gradient"];
    const ratio = LW.num(layer.update_ratio);
    if (ratio !== null && Number.isFinite(ratio) && (ratio > 1e-1 || ratio < 1e-5)) {
      flags.update_ratio = ["warn", ratio > 1e-1 ? "updates large for the weights (learning rate high?)" : "weights barely move (learning rate low?)"];
    }
    return flags;
  }

  async function loadLayers() {
    const layers = (await LW.api(`${runPath}/layers/latest`)).data;
    const body = layerTable.tBodies[0];
    body.replaceChildren();
    layers.forEach((layer, index) => {
      const flags = problems(layer);
      const cell = (key, value) => {
        const flag = flags[key];
        return LW.el("td", { class: `num${flag ? ` ${flag[0]}` : ""}`, title: flag ? flag[1] : undefined, text: LW.fmt(value) });
      };
      const href = `/runs/${encodeURIComponent(runId)}/layer${LW.query({ tensor: layer.name, kind: layer.kind })}`;
      const tr = LW.el("tr", { "data-tensor": layer.name, "data-kind": layer.kind },
        LW.el("td", { class: "num", text: String(index + 1) }),
        LW.el("td", {}, LW.el("a", { href, text: layer.name })),
        LW.el("td", { text: layer.kind }),
        LW.el("td", { text: layer.shape ? `(${layer.shape.join(", ")})` : "–" }),
        LW.el("td", { class: "num", text: layer.step === null ? "–" : String(layer.step) }),
        cell("mean", layer.stats.mean), cell("std", layer.stats.std),
        cell("zero_frac", layer.stats.zero_frac), cell("nonfinite", layer.stats.nonfinite),
        cell("l2", layer.stats.l2), cell("update_ratio", layer.update_ratio),
        LW.el("td", { title: `${layer.trend_stat}, last ${layer.trend.length} captures` }, LW.sparkline(layer.trend)),
      );
      tr.sortValues = {
        index, name: layer.name, kind: layer.kind, step: layer.step,
        mean: LW.num(layer.stats.mean), std: LW.num(layer.stats.std), zero_frac: LW.num(layer.stats.zero_frac),
        nonfinite: LW.num(layer.stats.nonfinite), l2: LW.num(layer.stats.l2), update_ratio: LW.num(layer.update_ratio),
      };
      body.append(tr);
    });
    LW.resort(layerTable);
    markFound();
    if (!performance.getEntriesByName("lw:layers").length) performance.mark("lw:layers");
    return layers.length;
  }

  async function loadModel() {
    const trees = (await LW.api(`${runPath}/model`)).data;
    const box = document.getElementById("model");
    box.replaceChildren();
    if (!trees.length) { box.textContent = "No model tree was sent."; return; }
    for (const tree of trees) {
      box.append(LW.el("div", { text: `${tree.name} (rank ${tree.rank}): ${tree.params.toLocaleString()} parameters` }));
      for (const module of tree.modules) {
        if (!module.path) continue;
        const depth = module.path.split(".").length;
        const out = module.outputs && module.outputs.length ? ` → ${module.outputs.map((s) => `(${s.join(", ")})`).join(", ")}` : "";
        const params = module.params ? `  ${module.params.toLocaleString()} params` : "";
        box.append(LW.el("div", { text: `${"  ".repeat(depth)}${module.path}: ${module.type}${out}${params}` }));
      }
    }
  }

  /* The server's diagnosis: a row per finding, most severe first, and the layer table's
   * rows of the tensors a warning or an error names marked. */
  let found = [];
  async function loadFindings() {
    found = (await LW.api(`${runPath}/findings`)).findings;
    const body = document.querySelector("#findings tbody");
    if (!found.length) {
      body.replaceChildren(LW.el("tr", {}, LW.el("td", { colspan: 6, class: "muted", text: "No findings: nothing looks wrong in the stored data." })));
    } else {
      body.replaceChildren(...found.map((f) => {
        const layer = f.tensor && f.tensor_kind
          ? LW.el("a", { href: `${runPath}/layer${LW.query({ tensor: f.tensor, kind: f.tensor_kind })}`, text: f.tensor })
          : (f.tensor || f.scalar || "–");
        const steps = f.last_step !== null && f.last_step !== f.step ? `${f.step}–${f.last_step}` : String(f.step);
        return LW.el("tr", { class: `finding ${f.severity}` },
          LW.el("td", {}, LW.el("span", { class: `severity ${f.severity}`, text: f.severity })),
          LW.el("td", {}, LW.el("code", { text: f.kind })),
          LW.el("td", {}, layer),
          LW.el("td", { class: "num", text: steps }),
          LW.el("td", { text: f.message }),
          LW.el("td", {}, f.view ? LW.el("a", { href: f.view, target: "_blank", rel: "noopener", text: "plot" }) : "–"));
      }));
    }
    markFound();
  }

  function markFound() {
    for (const row of layerTable.tBodies[0].rows) {
      const named = found.filter((f) => f.severity !== "info" && f.tensor === row.dataset.tensor && f.tensor_kind === row.dataset.kind);
      row.classList.toggle("found", named.length > 0);
      row.title = named.map((f) => f.message).join("\n");
    }
  }

  /* The probe batch's steps and layers, and what the client left out of it and why
   * (a packed sequence, a sparse output): missing data is said, never silent. */
  async function loadProbes() {
    const probes = (await LW.api(`${runPath}/probes`)).data;
    const box = document.getElementById("probes");
    if (!probes.length) {
      box.replaceChildren(LW.el("p", { class: "muted", text: "No probe batch was sent (watch(..., probe=...))." }));
      return;
    }
    const steps = probes.map((p) => p.step);
    const newest = probes[probes.length - 1];
    const skipped = new Map();
    for (const probe of probes) for (const s of probe.skipped) if (!skipped.has(s.name)) skipped.set(s.name, s.reason);
    const count = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
    const nodes = [LW.el("p", { text:
      `${count(probes.length, "probe")} of ${newest.samples} samples, steps ${steps[0]}–${steps[steps.length - 1]}; `
      + `${count(newest.layers.length, "layer")} recorded${newest.labels ? ", with labels" : ""}. ` }, LW.el("a", { href: `${runPath}/gallery`, text: "Views of the probe" }))];
    if (skipped.size) {
      nodes.push(LW.el("p", { class: "warn-note", role: "note", text: `${count(skipped.size, "layer")} left out of the probes:` }),
        LW.el("ul", { id: "probe-skipped" }, Array.from(skipped, ([name, reason]) =>
          LW.el("li", {}, LW.el("code", { text: name }), `: ${reason}`))));
    }
    box.replaceChildren(...nodes);
  }

  async function start() {
    const run = await LW.api(runPath);
    document.getElementById("live").hidden = run.status !== "running";
    renderHead(run, "…");
    await loadScalars();
    const tensors = await loadLayers();
    renderHead(run, tensors);
    await Promise.all([loadFindings(), loadProbes(), loadModel()]);
    if (run.status === "running") {
      LW.live(runId, async (latest) => {
        await appendScalars();
        renderHead(latest, await loadLayers());
        await Promise.all([loadFindings(), loadProbes()]);
      });
    }
  }

  LW.sortable(layerTable);
  start();
})();
