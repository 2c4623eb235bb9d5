/* Layer page: one tensor's statistic over steps, its histogram at a chosen step,
 * its distributions over time and its per-unit means. */
"use strict";

(() => {
  const runId = document.body.dataset.run;
  const runPath = `/runs/${encodeURIComponent(runId)}`;
  const controls = {
    tensor: document.getElementById("tensor"),
    kind: document.getElementById("kind"),
    stat: document.getElementById("stat"),
    logy: document.getElementById("logy"),
  };
  const slider = document.getElementById("hist-step");
  const sliderOut = document.getElementById("hist-step-out");
  let plot = null;
  let histSteps = [];
  let first = null;
  let last = null;
  let stopLive = null;

  function selection() {
    return { tensor: controls.tensor.value, kind: controls.kind.value, stat: controls.stat.value };
  }

  async function fillTensors(tensors) {
    const kind = controls.kind.value;
    const names = tensors.filter((t) => t.kind === kind).map((t) => t.name);
    const wanted = LW.state.get("tensor", names[0]);
    controls.tensor.replaceChildren(...names.map((name) => LW.el("option", { value: name, text: name })));
    controls.tensor.value = names.includes(wanted) ? wanted : names[0] || "";
  }

  async function drawStat() {
    const { tensor, kind, stat } = selection();
    const container = document.getElementById("stat-chart");
    if (plot) { plot.destroy(); plot.panel.remove(); }
    plot = LW.chart(container, `${tensor} · ${kind} · ${stat}`, [stat], { logy: controls.logy.checked, height: 300 });
    const series = await LW.api(`${runPath}/series`, { tensor, kind, stat, max_points: LW.maxPoints(plot) });
    LW.append(plot, series.steps, [series.values]);
    plot.lastStep = series.steps.length ? series.steps[series.steps.length - 1] : null;
    return series;
  }

  async function histogramAt(step) {
    const { tensor, kind } = selection();
    const page = await LW.api(`${runPath}/histograms`, { tensor, kind, start: step, limit: 1 });
    return page.data[0] || null;
  }

  async function loadHistogramSteps() {
    const { tensor, kind } = selection();
    const page = await LW.api(`${runPath}/histograms/steps`, { tensor, kind, max_points: 2000 });
    histSteps = page.steps;
    first = histSteps.length ? await histogramAt(histSteps[0]) : null;
    last = histSteps.length > 1 ? await histogramAt(histSteps[histSteps.length - 1]) : first;
  }

  function density(hist) {
    const total = hist.counts.reduce((a, b) => a + b, 0) || 1;
    return hist.counts.map((c, i) => c / total / Math.max(hist.edges[i + 1] - hist.edges[i], 1e-300));
  }

  function drawHistogram(chosen) {
    const container = document.getElementById("hist-chart");
    container.replaceChildren();
    const panel = LW.el("div", { class: "chart" }, LW.el("h3", { text: chosen ? `step ${chosen.step}` : "no histogram" }));
    container.append(panel);
    if (!chosen) return;
    const width = Math.max(300, panel.clientWidth - 12);
    const height = 260;
    const canvas = LW.el("canvas", { width, height, role: "img", "aria-label": `histogram at step ${chosen.step}` });
    panel.append(canvas);
    const shown = [[first, LW.PALETTE[1]], [last, LW.PALETTE[2]], [chosen, LW.PALETTE[0]]].filter(([h]) => h);
    const lo = Math.min(...shown.map(([h]) => h.edges[0]));
    const hi = Math.max(...shown.map(([h]) => h.edges[h.edges.length - 1]));
    const top = Math.max(...shown.map(([h]) => Math.max(...density(h)))) || 1;
    const pad = { l: 50, r: 10, t: 10, b: 24 };
    const x = (v) => pad.l + ((v - lo) / (hi - lo || 1)) * (width - pad.l - pad.r);
    const y = (v) => height - pad.b - (v / top) * (height - pad.t - pad.b);
    const ctx = canvas.getContext("2d");
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#5b6470";
    ctx.fillText(LW.fmt(lo), pad.l, height - 6);
    ctx.textAlign = "right";
    ctx.fillText(LW.fmt(hi), width - pad.r, height - 6);
    ctx.fillText(LW.fmt(top), pad.l - 4, pad.t + 8);
    for (const [hist, colour] of shown) {
      const dens = density(hist);
      const solid = hist === chosen;
      ctx.beginPath();
      ctx.moveTo(x(hist.edges[0]), y(0));
      dens.forEach((d, i) => { ctx.lineTo(x(hist.edges[i]), y(d)); ctx.lineTo(x(hist.edges[i + 1]), y(d)); });
      ctx.lineTo(x(hist.edges[hist.edges.length - 1]), y(0));
      if (solid) { ctx.fillStyle = `${colour}99`; ctx.fill(); }
      ctx.strokeStyle = colour;
      ctx.lineWidth = solid ? 1 : 2;
      ctx.stroke();
    }
    const legend = LW.el("ul", { class: "legend" },
      shown.map(([hist, colour]) => LW.el("li", {}, LW.el("span", { class: "swatch", style: `background:${colour}` }),
        hist === chosen ? `step ${hist.step}` : hist === first ? `first (${hist.step})` : `last (${hist.step})`)));
    panel.append(legend);
  }

  async function showStep(index) {
    const step = histSteps[index];
    sliderOut.textContent = step === undefined ? "–" : String(step);
    LW.state.set({ step });
    const hist = step === undefined ? null : await histogramAt(step);
    drawHistogram(hist);
  }

  function images() {
    const { tensor, kind } = selection();
    const width = Math.min(1400, Math.max(500, document.getElementById("main").clientWidth - 40));
    const dist = document.getElementById("distributions");
    dist.src = `/api/v1${runPath}/plots/distributions.png${LW.query({ tensor, kind, width, height: 420 })}`;
    const units = document.getElementById("units");
    const hasUnits = kind === "activation";
    units.hidden = !hasUnits;
    document.getElementById("no-units").hidden = hasUnits;
    if (hasUnits) units.src = `/api/v1${runPath}/plots/dead-units.png${LW.query({ tensor, width, height: 420 })}`;
  }

  async function refresh() {
    const { tensor, kind, stat } = selection();
    LW.state.set({ tensor, kind, stat, logy: controls.logy.checked ? 1 : "" });
    document.getElementById("title").textContent = `${tensor} (${kind})`;
    first = null; last = null;
    await drawStat();
    await loadHistogramSteps();
    slider.max = String(Math.max(0, histSteps.length - 1));
    const wanted = Number(LW.state.get("step", NaN));
    const at = histSteps.indexOf(wanted);
    slider.value = String(at >= 0 ? at : histSteps.length - 1);
    await showStep(Number(slider.value));
    images();
  }

  async function start() {
    const [run, tensors] = await Promise.all([LW.api(runPath), LW.api(`${runPath}/tensors`)]);
    controls.kind.value = LW.state.get("kind", "activation");
    controls.stat.value = LW.state.get("stat", "mean");
    controls.logy.checked = LW.state.get("logy", "") === "1";
    await fillTensors(tensors.data);
    controls.kind.addEventListener("change", async () => { await fillTensors(tensors.data); refresh(); });
    for (const key of ["tensor", "stat", "logy"]) controls[key].addEventListener("change", refresh);
    slider.addEventListener("input", () => showStep(Number(slider.value)));
    await refresh();
    if (run.status === "running") {
      stopLive = LW.live(runId, async () => {
        const { tensor, kind, stat } = selection();
        const page = await LW.api(`${runPath}/series`, { tensor, kind, stat, after_step: plot.lastStep, limit: 5000 });
        LW.append(plot, page.steps, [page.values]);
        if (page.steps.length) plot.lastStep = page.steps[page.steps.length - 1];
        const atEnd = Number(slider.value) === histSteps.length - 1;
        const before = histSteps[histSteps.length - 1];
        await loadHistogramSteps();
        if (histSteps[histSteps.length - 1] !== before) {
          slider.max = String(Math.max(0, histSteps.length - 1));
          if (atEnd) { slider.value = slider.max; await showStep(histSteps.length - 1); }
          images();
        }
      });
    }
  }

  start();
  window.addEventListener("pagehide", () => stopLive && stopLive());
})();
