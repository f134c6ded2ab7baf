/* ml4paleo annotation gallery and models pages. */
(function () {
  "use strict";

  const JOB = document.body.dataset.jobId;
  const PAGE = document.body.dataset.page;
  if (!JOB || !PAGE) return;
  const API = `/api/job/${encodeURIComponent(JOB)}`;
  const $ = (id) => document.getElementById(id);

  // API calls go through the shared helper in app.js (CSRF token, access-key dialog on 401)
  const api = (method, path, body) => window.ml4p.apiJSON(path, { method, json: body });
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  function toast(text, kind) {
    if (window.ml4p) return window.ml4p.toast(text, kind === "error");
    const box = $("toasts");
    if (!box) return;
    const t = el("div", { class: "toast " + (kind || "") }, text);
    box.appendChild(t);
    setTimeout(() => t.remove(), 5000);
  }

  // ------------------------------------------------------------------ gallery
  async function gallery() {
    const box = $("gallery");
    let data;
    try { data = await api("GET", `${API}/annotate/annotations`); } catch (err) {
      $("gal-summary").textContent = err.message;
      return;
    }
    const colors = Object.fromEntries(data.classes.map((c) => [c.name, c.color]));
    $("gal-summary").textContent = data.annotations.length
      ? `${data.annotations.length} annotated slice(s).`
      : "No annotated slices yet. Open the annotator and paint a few strokes.";
    box.textContent = "";
    for (const a of data.annotations) {
      const chips = el("ul", { class: "ann-chips" },
        ...Object.entries(a.counts || {}).map(([name, n]) =>
          el("li", {}, el("span", { class: "ann-chip", style: `background:${colors[name] || "#888"}` }), `${name}: ${n.toLocaleString()} px`)));
      const card = el("article", { class: "ann-card", "data-axis": a.axis, "data-index": String(a.index) },
        el("a", { href: a.edit, title: "Reopen to edit" }, el("img", { src: a.thumbnail, alt: `${a.axis} slice ${a.index + 1}`, loading: "lazy" })),
        el("h3", {}, `${a.axis} slice ${a.index + 1}`),
        chips,
        el("div", { class: "ann-row" },
          el("a", { class: "btn small", href: a.edit }, "Edit"),
          el("button", {
            class: "btn small danger", onclick: async () => {
              if (!confirm(`Delete the labels of ${a.axis} slice ${a.index + 1}?`)) return;
              try {
                await api("DELETE", `${API}/annotate/labels?axis=${a.axis}&index=${a.index}`);
                card.remove();
                toast(`Deleted ${a.axis} slice ${a.index + 1}`);
              } catch (err) { toast(err.message, "error"); }
            },
          }, "Delete")));
      box.appendChild(card);
    }
  }

  // ------------------------------------------------------------------ models
  function chart(models, metric) {
    const pts = models.map((m, i) => [i, (m.metrics || {})[metric]]).filter((p) => typeof p[1] === "number");
    const box = $("mod-chart");
    box.textContent = "";
    if (!pts.length) { box.append(el("p", { class: "muted" }, "No held-out metrics yet.")); return; }
    const W = 640, H = 200, P = 36;
    const ys = pts.map((p) => p[1]);
    let lo = Math.min(...ys), hi = Math.max(...ys);
    if (hi - lo < 1e-6) { lo -= 0.05; hi += 0.05; }
    const n = Math.max(1, models.length - 1);
    const X = (i) => P + ((W - 2 * P) * i) / n;
    const Y = (v) => H - P + ((P * 2 - H) * (v - lo)) / (hi - lo);
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("class", "ann-chart");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${metric} over model versions`);
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    };
    add("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#999" });
    add("line", { x1: P, y1: P, x2: P, y2: H - P, stroke: "#999" });
    add("text", { x: 4, y: P, "font-size": 11 }, hi.toFixed(3));
    add("text", { x: 4, y: H - P, "font-size": 11 }, lo.toFixed(3));
    add("polyline", { points: pts.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: "#2563eb", "stroke-width": 2 });
    for (const p of pts) {
      add("circle", { cx: X(p[0]), cy: Y(p[1]), r: 4, fill: "#2563eb" });
      add("text", { x: X(p[0]) - 6, y: H - P + 16, "font-size": 11 }, `v${p[0] + 1}`);
    }
    box.appendChild(svg);
  }
  function fmtMetric(v) {
    if (typeof v !== "number") return String(v);
    return Number.isInteger(v) ? v.toLocaleString() : v.toFixed(3);
  }
  function flatMetrics(m) {
    const out = {};
    for (const [k, v] of Object.entries(m || {})) {
      if (typeof v === "number") out[k] = v;
      else if (v && typeof v === "object") for (const [k2, v2] of Object.entries(v)) if (typeof v2 === "number") out[`${k}.${k2}`] = v2;
    }
    return out;
  }
  let jobNames = {};
  async function models() {
    // the per-dataset choice: which configuration won on the user's own labels, and how
    // every candidate scored (held-out mean Dice, cross-validated by annotated plane)
    function selectionNote(sel) {
      if (!sel || !sel.chosen) return null;
      const scores = (sel.candidates || []).map((c) => `${c.name} ${c.skipped ? `skipped (${c.skipped})` : fmtMetric(c.score)}`).join(" · ");
      const pruned = sel.pruned && sel.pruned.kept === "pruned" ? ` · features ${sel.pruned.to} of ${sel.pruned.from}` : "";
      return el("div", { class: "muted small selection", title: "held-out mean Dice of each candidate configuration" },
        `configuration: ${sel.chosen}${pruned}`, scores ? el("br") : null, scores || null);
    }
    let data;
    try { data = await api("GET", `${API}/models`); } catch (err) { $("mod-summary").textContent = err.message; return; }
    const list = data.models.map((m) => Object.assign({}, m, { metrics: flatMetrics(m.metrics) }));
    $("mod-summary").textContent = list.length
      ? `${list.length} version(s).` + (data.chosen ? ` Segmenting with ${(list.find((m) => m.id === data.chosen) || {}).name || data.chosen}.` : " The next segmentation trains a new model.")
      : "No models yet: segment the whole volume from the annotator, or save the preview model.";
    const tbody = $("mod-table").querySelector("tbody");
    tbody.textContent = "";
    list.forEach((m, i) => {
      const classes = (m.classes || []).map((c) => (typeof c === "string" ? c : c.name)).join(", ");
      const counts = m.label_counts && typeof m.label_counts === "object"
        ? Object.entries(m.label_counts).map(([k, v]) => `${k}: ${Number(v).toLocaleString()}`).join(", ") : "";
      const metrics = Object.entries(m.metrics).map(([k, v]) => `${k} ${fmtMetric(v)}`).join(", ");
      const src = m.source ? (m.source.kind === "import" ? `from job ${jobNames[m.source.job_id] || m.source.job_id}` : m.source.kind) : "training";
      tbody.appendChild(el("tr", { class: m.chosen ? "chosen" : "", "data-model": m.id },
        el("td", {}, el("b", { class: "model-name" }, m.name || `v${i + 1}`), " ",
          el("button", { class: "btn small", title: "Rename", onclick: async () => {
            const name = window.prompt("New name (empty: back to the default name):", m.name);
            if (name === null) return;
            try { await api("POST", `${API}/models/${encodeURIComponent(m.id)}/rename`, { name: name.trim() }); models(); } catch (err) { toast(err.message, "error"); }
          } }, "Rename"),
          el("div", { class: "muted small" }, el("code", {}, m.id)), m.current ? el("div", { class: "muted small" }, "latest segmentation") : null),
        el("td", {}, m.created_at || ""),
        el("td", {}, classes),
        el("td", {}, counts),
        el("td", {}, metrics, selectionNote(m.selection)),
        el("td", {}, src),
        el("td", {},
          m.chosen ? el("strong", {}, "segments next") : el("button", {
            class: "btn small", onclick: async () => {
              try { await api("POST", `${API}/models/${encodeURIComponent(m.id)}/choose`); models(); } catch (err) { toast(err.message, "error"); }
            },
          }, "Use for segmentation"),
          " ",
          el("a", { class: "btn small", href: m.download }, "Download"))));
    });
    // chartable metrics: scores in 0..1 (not counts such as n_voxels)
    const keys = [...new Set(list.flatMap((m) => Object.keys(m.metrics)
      .filter((k) => m.metrics[k] >= 0 && m.metrics[k] <= 1)))];
    const sel = $("mod-metric");
    const prev = sel.value;
    sel.textContent = "";
    for (const k of keys) sel.append(el("option", { value: k }, k));
    if (keys.includes(prev)) sel.value = prev;
    else {
      const pref = keys.find((k) => /dice/i.test(k) && !/background/i.test(k)) || keys.find((k) => /dice/i.test(k)) || keys[0];
      if (pref) sel.value = pref;
    }
    sel.onchange = () => chart(list, sel.value);
    chart(list, sel.value);
  }
  function wireModels() {
    $("mod-save-preview").addEventListener("click", async () => {
      try { const r = await api("POST", `${API}/models/save-preview`); toast(`Saved model ${r.model_id}`); models(); } catch (err) { toast(err.message, "error"); }
    });
    // other jobs' models, by the job's name (GET /api/models)
    (async () => {
      const sel = $("mod-src");
      try {
        const r = await api("GET", `/api/models?exclude_job=${encodeURIComponent(JOB)}`);
        for (const m of r.models) jobNames[m.job_id] = m.job_name;
        sel.replaceChildren(...r.models.map((m) => el("option", { value: `${m.job_id}:${m.model_id}` }, m.label)));
        if (!r.models.length) sel.replaceChildren(el("option", { value: "" }, "no other job has a model yet"));
      } catch (err) { toast(err.message, "error"); }
    })();
    $("mod-import").addEventListener("click", async () => {
      const [src, model] = ($("mod-src").value || ":").split(":");
      if (!src) return;
      try {
        await api("POST", `${API}/models/import`, { source_job_id: src, model_id: model });
        toast("Copied into this job.");
        models();
      } catch (err) { toast(err.message, "error"); }
    });
  }

  if (PAGE === "gallery") gallery();
  if (PAGE === "models") { wireModels(); models(); }
})();
