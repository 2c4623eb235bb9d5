/* Gallery page: every server-rendered view of a run, with its parameters as controls.
 *
 * The controls come from each view's parameter schema (the server puts them in
 * `data-views`). Views of the probe batch get a step slider and a play button.
 * Images are fetched with `cache: "no-cache"`: the browser revalidates with the
 * view's ETag, so a poll of an unchanged view is a 304, and the image is
 * replaced only when its ETag changed.
 */
"use strict";

(() => {
  const runId = document.body.dataset.run;
  const runPath = `/runs/${encodeURIComponent(runId)}`;
  const container = document.getElementById("gallery");
  const views = JSON.parse(container.dataset.views);
  const cards = [];
  let meta = null;

  async function loadMeta() {
    const [run, tensors, scalars, probes, models] = await Promise.all([
      LW.api(runPath), LW.api(`${runPath}/tensors`), LW.api(`${runPath}/scalars`),
      LW.api(`${runPath}/probes`), LW.api(`${runPath}/model`),
    ]);
    const probeSteps = Array.from(new Set(probes.data.map((p) => p.step))).sort((a, b) => a - b);
    const probeLayers = Array.from(new Set(probes.data.flatMap((p) => p.layers.map((l) => l.name))));
    const mapLayers = Array.from(new Set(probes.data.flatMap((p) => p.layers.filter((l) => l.maps_shape).map((l) => l.name))));
    const byKind = { activation: [], weight: [], grad: [] };
    for (const t of tensors.data) byKind[t.kind].push(t.name);
    return { run, byKind, scalars: scalars.data, probeSteps, probeLayers, mapLayers,
      attributions: probes.data.some((p) => p.attributions), labels: probes.data.some((p) => p.labels),
      models: models.data.map((m) => m.name) };
  }

  /* Choices of a field that names something of the run, or null. */
  function namedChoices(view, field, values) {
    switch (field.name) {
      case "tensor": {
        const kind = values.kind || (view.name === "weight-change" ? "weight" : "activation");
        return meta.byKind[kind] || [];
      }
      case "layer": return view.name === "feature-maps" ? meta.mapLayers : meta.probeLayers;
      case "name": return meta.scalars;
      case "model": return meta.models;
      default: return null;
    }
  }

  function stateKey(view, field) { return `${view.name}.${field}`; }

  function initialValue(view, field) {
    const key = stateKey(view, field.name);
    if (field.many) {
      const saved = LW.state.all(key);
      return saved.length ? saved : null;
    }
    const saved = LW.state.get(key, null);
    if (saved !== null) return saved;
    return field.default === null || field.default === undefined ? null : String(field.default);
  }

  function control(card, field) {
    const { view } = card;
    const id = `${view.name}-${field.name}`;
    const label = (input, text = field.name.replace(/_/g, " ")) =>
      LW.el("label", { for: id }, `${text} `, input);
    const value = initialValue(view, field);
    if (view.probe && field.name === "step") return null;  // the slider owns it
    const named = namedChoices(view, field, card.values);
    if (named !== null || field.type === "enum") {
      const choices = named !== null ? named : field.choices;
      const select = LW.el("select", { id, multiple: field.many || undefined, size: field.many ? Math.min(4, Math.max(2, choices.length)) : undefined });
      if (!field.required && !field.many && (field.default === null || field.default === undefined)) {
        select.append(LW.el("option", { value: "", text: "(default)" }));
      }
      for (const choice of choices) select.append(LW.el("option", { value: choice, text: choice }));
      const chosen = value === null ? (field.many || field.required || field.name === "name" ? [choices[0]] : [""]) : [].concat(value);
      for (const option of select.options) option.selected = chosen.includes(option.value);
      card.read[field.name] = () => (field.many ? Array.from(select.selectedOptions).map((o) => o.value) : select.value);
      select.addEventListener("change", () => card.update(field.name));
      return label(select);
    }
    if (field.type === "boolean") {
      if (field.default === null) {
        const select = LW.el("select", { id }, ["", "true", "false"].map((v) => LW.el("option", { value: v, text: v || "auto" })));
        select.value = value || "";
        card.read[field.name] = () => select.value;
        select.addEventListener("change", () => card.update(field.name));
        return label(select);
      }
      const box = LW.el("input", { id, type: "checkbox", checked: value === "true" });
      card.read[field.name] = () => (box.checked ? "true" : "false");
      box.addEventListener("change", () => card.update(field.name));
      return label(box);
    }
    const input = LW.el("input", {
      id, type: field.many ? "text" : "number", size: field.many ? 10 : 6,
      min: field.many ? undefined : field.minimum, max: field.many ? undefined : field.maximum,
      step: field.type === "number" ? "any" : undefined, placeholder: field.many ? "0, 1, 2" : undefined,
    });
    input.value = value === null ? (field.many ? defaultList(card, field) : "") : [].concat(value).join(", ");
    card.read[field.name] = () => (field.many ? input.value.split(/[\s,]+/).filter(Boolean) : input.value);
    input.addEventListener("change", () => card.update(field.name));
    return label(input);
  }

  function defaultList(card, field) {
    if (field.name === "sample") return "0, 1, 2, 3";
    return "";
  }

  function makeCard(view) {
    const card = { view, values: {}, read: {}, etag: null, url: null, step: null };
    const form = LW.el("form", { "aria-label": `${view.title} settings`, onsubmit: (e) => e.preventDefault() });
    const img = LW.el("img", { alt: view.title });
    const note = LW.el("p", { class: "empty", hidden: true });
    const element = LW.el("section", { class: "card", id: `view-${view.name}`, "aria-label": view.title },
      LW.el("h2", { text: view.title }), form);
    card.img = img;
    card.note = note;
    const kindField = view.fields.find((f) => f.name === "kind");
    if (kindField) card.values.kind = initialValue(view, kindField);

    if (view.probe) {
      const slider = LW.el("input", { type: "range", min: 0, max: Math.max(0, meta.probeSteps.length - 1), id: `${view.name}-step`, "aria-label": "probe step" });
      const out = LW.el("output", { for: `${view.name}-step` });
      const play = LW.el("button", { type: "button", text: "▶ play", "aria-label": `play ${view.title} through the steps` });
      const wanted = Number(LW.state.get(stateKey(view, "step"), NaN));
      const at = meta.probeSteps.indexOf(wanted);
      slider.value = String(at >= 0 ? at : meta.probeSteps.length - 1);
      card.slider = slider;
      card.read.step = () => {
        const step = meta.probeSteps[Number(slider.value)];
        out.textContent = step === undefined ? "–" : `step ${step}`;
        return step === undefined ? "" : String(step);
      };
      slider.addEventListener("input", () => card.update("step"));
      play.addEventListener("click", () => togglePlay(card, play));
      element.append(LW.el("div", { class: "slider" }, play, slider, out));
    }
    element.append(note, img);

    card.build = () => {
      form.replaceChildren();
      for (const field of view.fields) {
        const node = control(card, field);
        if (node) form.append(node);
      }
    };
    card.update = (changed) => {
      for (const [name, read] of Object.entries(card.read)) card.values[name] = read();
      if (changed === "kind") {  // the tensor list depends on the kind
        delete card.read.tensor;
        LW.state.set({ [stateKey(view, "tensor")]: "" });
        card.build();
        for (const [name, read] of Object.entries(card.read)) card.values[name] = read();
      }
      // Only what differs from the view's defaults goes in the URL (the newest probe
      // step is the default of the slider).
      const saved = {};
      for (const [name, value] of Object.entries(card.values)) {
        const field = view.fields.find((f) => f.name === name);
        const fallback = name === "step" && view.probe ? String(meta.probeSteps[meta.probeSteps.length - 1])
          : field && field.default !== null && field.default !== undefined ? String(field.default) : "";
        const same = Array.isArray(value) ? value.length === 0 : String(value) === fallback;
        saved[stateKey(view, name)] = same ? "" : value;
      }
      LW.state.set(saved);
      return load(card);
    };
    card.build();
    cards.push(card);
    return element;
  }

  /* At most IMAGE_SLOTS image requests at once (each holds a render on the server), and
   * a busy answer (503, 429) is retried after its Retry-After, a few times. */
  const IMAGE_SLOTS = 4;
  let busy = 0;
  const waiting = [];
  async function fetchImage(url) {
    if (busy >= IMAGE_SLOTS) await new Promise((resolve) => waiting.push(resolve));
    busy += 1;
    try {
      for (let attempt = 0; ; attempt++) {
        const response = await fetch(url, { credentials: "same-origin", cache: "no-cache" });
        if (![429, 503].includes(response.status) || attempt === 5) return response;
        const after = Math.min(5, Number(response.headers.get("Retry-After")) || 1);
        await new Promise((resolve) => setTimeout(resolve, after * 1000));
      }
    } finally {
      busy -= 1;
      if (waiting.length) waiting.shift()();
    }
  }

  /* Fetch the view's image; replace it only when its ETag changed. */
  async function load(card) {
    const values = { ...card.values };
    if (card.view.name === "histogram" && (!values.step || !values.step.length) && values.tensor) {
      const steps = await LW.api(`${runPath}/histograms/steps`, { tensor: values.tensor, kind: values.kind || "weight", max_points: 2 });
      values.step = steps.steps;
    }
    const width = Math.max(400, Math.min(1200, Math.round(card.img.parentElement.clientWidth - 22)));
    const url = `/api/v1${runPath}/plots/${card.view.name}.png${LW.query({ ...values, width, height: Math.round(width * 0.62) })}`;
    let response;
    try {
      response = await fetchImage(url);
    } catch (error) {
      return false;
    }
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
      card.note.textContent = typeof detail === "string" ? detail : JSON.stringify(detail);
      card.note.hidden = false;
      card.img.hidden = true;
      card.img.removeAttribute("src");
      card.etag = null;
      return false;
    }
    const etag = response.headers.get("ETag");
    card.note.hidden = true;
    card.img.hidden = false;
    if (etag && etag === card.etag && card.img.src) return true;
    const blob = await response.blob();
    const previous = card.url;
    card.url = URL.createObjectURL(blob);
    await new Promise((resolve) => {
      card.img.onload = resolve;
      card.img.onerror = resolve;
      card.img.src = card.url;
    });
    if (previous) URL.revokeObjectURL(previous);
    card.etag = etag;
    card.step = values.step;
    return true;
  }

  function togglePlay(card, button) {
    if (card.playing) {
      card.playing = false;
      button.textContent = "▶ play";
      button.setAttribute("aria-label", `play ${card.view.title} through the steps`);
      return;
    }
    card.playing = true;
    button.textContent = "❚❚ pause";
    button.setAttribute("aria-label", `pause ${card.view.title}`);
    const tick = async () => {
      if (!card.playing) return;
      const slider = card.slider;
      const next = (Number(slider.value) + 1) % Math.max(1, meta.probeSteps.length);
      slider.value = String(next);
      await card.update("step");  // the next frame waits for this one to be drawn
      if (card.playing) setTimeout(tick, 700);
    };
    tick();
  }

  async function start() {
    meta = await loadMeta();
    for (const view of views) container.append(makeCard(view));
    for (const card of cards) card.update(null);
    if (meta.run.status === "running") {
      LW.live(runId, async () => {
        const fresh = await loadMeta();
        const atEnd = (card) => card.slider && Number(card.slider.value) === meta.probeSteps.length - 1;
        const follow = cards.map(atEnd);
        meta = fresh;
        await Promise.all(cards.map(async (card, i) => {
          if (card.slider) {
            card.slider.max = String(Math.max(0, meta.probeSteps.length - 1));
            if (follow[i]) card.slider.value = card.slider.max;
          }
          if (!card.playing) await card.update(null);
        }));
      });
    }
  }

  start();
})();
