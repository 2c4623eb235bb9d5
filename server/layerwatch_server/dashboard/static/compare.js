/* Compare page: chosen runs overlaid on the same scalar and tensor charts, and their
 * latest histograms of one tensor side by side. */
"use strict";

(() => {
  const runIds = LW.state.all("run");
  const controls = {
    tensor: document.getElementById("tensor"),
    kind: document.getElementById("kind"),
    stat: document.getElementById("stat"),
  };
  let runs = [];
  let tensorPlot = null;

  const path = (run) => `/runs/${encodeURIComponent(run.id)}`;

  async function drawScalars() {
    const container = document.getElementById("scalars");
    container.replaceChildren();
    const perRun = await Promise.all(runs.map((run) => LW.api(`${path(run)}/scalars`)));
    const names = Array.from(new Set(perRun.flatMap((r) => r.data))).sort();
    for (const name of names) {
      const plot = LW.chart(container, name, runs.map((run) => run.name));
      const series = await Promise.all(runs.map((run, i) => (perRun[i].data.includes(name)
        ? LW.api(`${path(run)}/scalars/series`, { name, max_points: LW.maxPoints(plot) })
        : Promise.resolve({ steps: [], values: [] }))));
      plot.setData(LW.join(series));
    }
  }

  async function drawTensor() {
    const { tensor, kind, stat } = { tensor: controls.tensor.value, kind: controls.kind.value, stat: controls.stat.value };
    LW.state.set({ tensor, kind, stat });
    const container = document.getElementById("tensor-chart");
    if (tensorPlot) { tensorPlot.destroy(); tensorPlot.panel.remove(); }
    if (!tensor) return;
    tensorPlot = LW.chart(container, `${tensor} · ${kind} · ${stat}`, runs.map((run) => run.name), { height: 280 });
    const series = await Promise.all(runs.map((run) => LW.api(`${path(run)}/series`, { tensor, kind, stat, max_points: LW.maxPoints(tensorPlot) })
      .catch(() => ({ steps: [], values: [] }))));  // a run without this tensor draws nothing
    tensorPlot.setData(LW.join(series));
    const box = document.getElementById("histograms");
    box.replaceChildren();
    for (const [i, run] of runs.entries()) {
      const panel = LW.el("div", { class: "chart" }, LW.el("h3", {},
        LW.el("span", { class: "swatch", style: `background:${LW.PALETTE[i % LW.PALETTE.length]}` }), ` ${run.name}`));
      box.append(panel);
      let steps;
      try {
        steps = await LW.api(`${path(run)}/histograms/steps`, { tensor, kind, max_points: 2 });
      } catch (error) {
        panel.append(LW.el("p", { class: "empty", text: error.message }));
        continue;
      }
      if (!steps.steps.length) { panel.append(LW.el("p", { class: "empty", text: "no histograms" })); continue; }
      panel.append(LW.el("img", {
        class: "plot", alt: `histograms of ${tensor} in ${run.name}, first and last step`,
        src: `/api/v1${path(run)}/plots/histogram.png${LW.query({ tensor, kind, step: steps.steps, width: 600, height: 360 })}`,
      }));
    }
  }

  async function start() {
    if (!runIds.length) return;
    document.getElementById("hint").hidden = true;
    runs = await Promise.all(runIds.map((id) => LW.api(`/runs/${encodeURIComponent(id)}`)));
    document.getElementById("legend").replaceChildren(...runs.map((run, i) => LW.el("li", {},
      LW.el("span", { class: "swatch", style: `background:${LW.PALETTE[i % LW.PALETTE.length]}` }),
      LW.runLink(run), " ", LW.statusBadge(run.status))));
    const tensors = await LW.api(`${path(runs[0])}/tensors`);
    controls.kind.value = LW.state.get("kind", "activation");
    controls.stat.value = LW.state.get("stat", "mean");
    const fill = () => {
      const names = tensors.data.filter((t) => t.kind === controls.kind.value).map((t) => t.name);
      controls.tensor.replaceChildren(...names.map((n) => LW.el("option", { value: n, text: n })));
      const wanted = LW.state.get("tensor", names[0]);
      controls.tensor.value = names.includes(wanted) ? wanted : names[0] || "";
    };
    fill();
    controls.kind.addEventListener("change", () => { fill(); drawTensor(); });
    controls.tensor.addEventListener("change", drawTensor);
    controls.stat.addEventListener("change", drawTensor);
    await drawScalars();
    await drawTensor();
    const live = runs.find((run) => run.status === "running");
    if (live) {
      LW.live(live.id, async () => {
        runs = await Promise.all(runIds.map((id) => LW.api(`/runs/${encodeURIComponent(id)}`)));
        await drawScalars();
      });
    }
  }

  start();
})();
