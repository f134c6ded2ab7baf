// Shared helpers for every page (window.ml4p): API calls with the CSRF token and the
// access key, DOM building without innerHTML (user text always goes through textContent),
// formatting and toasts. Annotation pages reuse these.
"use strict";
(function () {
  const KEY_STORE = "ml4paleo.apiKey";

  function cookie(name) {
    const m = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
    return m ? decodeURIComponent(m.slice(name.length + 1)) : null;
  }

  function headers(extra) {
    const h = new Headers(extra || {});
    const token = cookie("ml4paleo_csrf");
    if (token) h.set("X-CSRF-Token", token);
    const key = localStorage.getItem(KEY_STORE);
    if (key) h.set("X-API-Key", key);
    return h;
  }

  let keyPromise = null;
  // Ask for the access key once (a dialog), check it with /api/auth, remember it.
  function askKey() {
    if (keyPromise) return keyPromise;
    const dlg = document.getElementById("key-dialog");
    const form = document.getElementById("key-form");
    const input = document.getElementById("key-input");
    const err = document.getElementById("key-error");
    keyPromise = new Promise((resolve) => {
      form.onsubmit = async (ev) => {
        ev.preventDefault();
        const key = input.value.trim();
        const r = await fetch("/api/auth", {
          method: "POST", body: JSON.stringify({ key }),
          headers: headers({ "Content-Type": "application/json" }),
        });
        if (r.ok) {
          localStorage.setItem(KEY_STORE, key);
          dlg.close(); keyPromise = null; resolve(true);
        } else {
          err.textContent = "That key is not valid."; err.hidden = false;
        }
      };
      dlg.showModal();
      input.focus();
    });
    return keyPromise;
  }

  // fetch() for the API: adds CSRF token + key; on 401 asks for the key and retries.
  async function api(url, opts) {
    opts = Object.assign({}, opts || {});
    const isJson = opts.json !== undefined;
    const init = {
      method: opts.method || (isJson ? "POST" : "GET"),
      headers: headers(Object.assign(isJson ? { "Content-Type": "application/json" } : {}, opts.headers || {})),
      body: isJson ? JSON.stringify(opts.json) : opts.body,
      signal: opts.signal,
      credentials: "same-origin",
    };
    let r = await fetch(url, init);
    if (r.status === 401 && !opts.noAuthRetry) {
      await askKey();
      init.headers = headers(Object.assign(isJson ? { "Content-Type": "application/json" } : {}, opts.headers || {}));
      r = await fetch(url, init);
    }
    return r;
  }

  async function apiJSON(url, opts) {
    const r = await api(url, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const err = new Error((data && data.error) || `HTTP ${r.status}`);
      err.status = r.status; err.data = data;
      throw err;
    }
    return data;
  }

  // el("tr", {class: "x", onclick: f}, child, "text") -- text children become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined || isNaN(n)) return "–";
    const u = ["B", "KB", "MB", "GB", "TB"];
    let i = 0; n = Number(n);
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i === 0 ? 0 : n < 10 ? 1 : 0)} ${u[i]}`;
  }

  function fmtDate(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  // What a job status means comes from the server: every job answer carries its status
  // described as `state` (busy, queued, failed, step, tone, ...), and GET /api/statuses
  // serves the whole table. No status lists live in the scripts.
  let statusTable = null;
  function statuses() {
    if (!statusTable) {
      statusTable = apiJSON("/api/statuses").then((t) => t.statuses)
        .catch((err) => { statusTable = null; throw err; });
    }
    return statusTable;
  }
  // Badge class of a job's `state` ("ok", "busy", "bad" or "").
  function statusClass(state) {
    return (state && typeof state === "object" && state.tone) || "";
  }

  function toast(text, bad) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const t = el("div", { class: "toast" + (bad ? " bad" : "") }, text);
    box.append(t);
    setTimeout(() => t.remove(), 5000);
  }

  function progressBar(fraction, cls) {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100)}%`;
    return el("div", { class: "progress" + (cls ? " " + cls : "") }, bar);
  }

  // Units: NGFF names (from the API) shown short; no unit = voxel units.
  const UNIT_SHORT = { micrometer: "µm", millimeter: "mm", nanometer: "nm", centimeter: "cm", meter: "m", angstrom: "Å", inch: "in" };
  function unitLabel(infoOrUnit) {
    const unit = infoOrUnit && typeof infoOrUnit === "object" ? infoOrUnit.unit : infoOrUnit;
    if (!unit) return "voxels";
    return UNIT_SHORT[unit] || unit;
  }
  // The voxel-size warning every page shows when the size is unknown or partly assumed
  // (`info.voxel_size_status` of GET /api/job/<id>/image); hidden when it is known.
  function voxelWarning(box, info, jobId) {
    if (!box) return;
    const st = info && info.voxel_size_status;
    if (!st || st.state === "known") { box.hidden = true; box.replaceChildren(); return; }
    box.hidden = false;
    box.dataset.state = st.state;
    const children = [el("b", {}, st.state === "unknown" ? "Voxel size unknown. " : "Voxel size partly assumed. "), st.message || ""];
    if (jobId && !document.getElementById("voxel-form")) {
      children.push(" ", el("a", { href: `/job/${encodeURIComponent(jobId)}#voxel-size` }, "Set it on the job page"));
    }
    box.replaceChildren(...children);
  }

  // The model picker of the job page and the annotator: train a new model, one of this
  // job's models, or one of another job's models (found by the job's name; it is copied
  // into this job before it segments: POST /api/job/<id>/models/import).
  async function fillModelPicker(sel, jobId, opts) {
    opts = opts || {};
    const base = `/api/job/${encodeURIComponent(jobId)}`;
    const [mine, others] = await Promise.all([
      apiJSON(`${base}/models`).then((d) => d.models || []).catch(() => []),
      apiJSON(`/api/models?exclude_job=${encodeURIComponent(jobId)}`).then((d) => d.models || []).catch(() => []),
    ]);
    const keep = sel.value;
    const items = [el("option", { value: "train" }, "Train a new model on the annotations")];
    if (mine.length) {
      items.push(el("optgroup", { label: "This job's models" }, ...mine.slice().reverse().map((m) =>
        el("option", { value: `own:${m.id}` }, m.name + (m.chosen ? " (chosen)" : "")))));
    }
    const byJob = new Map();
    for (const m of others) {
      if (!byJob.has(m.job_id)) byJob.set(m.job_id, { name: m.job_name || m.job_id, models: [] });
      byJob.get(m.job_id).models.push(m);
    }
    for (const [jid, g] of byJob) {
      items.push(el("optgroup", { label: `From job “${g.name}”` }, ...g.models.map((m) =>
        el("option", { value: `job:${jid}:${m.model_id}` }, `${g.name} · ${m.name}`))));
    }
    sel.replaceChildren(...items);
    const values = Array.from(sel.querySelectorAll("option")).map((o) => o.value);
    if (values.includes(keep)) sel.value = keep;
    else if (opts.chosen && values.includes(`own:${opts.chosen}`)) sel.value = `own:${opts.chosen}`;
    return mine;
  }

  // The body of POST /api/job/<id>/start for the picker's choice (copies another job's
  // model into this job first) plus the clean-up options.
  async function segmentRequest(sel, jobId, cleanup) {
    const body = Object.assign({}, cleanup || {});
    const choice = sel.value || "train";
    if (choice === "train") body.train = true;
    else if (choice.startsWith("own:")) { body.model_id = choice.slice(4); body.train = false; }
    else if (choice.startsWith("job:")) {
      const [, src, model] = choice.split(":");
      const copied = await apiJSON(`/api/job/${encodeURIComponent(jobId)}/models/import`, { json: { source_job_id: src, model_id: model } });
      body.model_id = copied.model_id; body.train = false;
    }
    return body;
  }

  // Default class colours (index 0 = background) shared by the 2D and 3D viewers.
  const PALETTE = ["#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
    "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3"];
  function classColor(classes, label) {
    const c = classes && classes[label] && classes[label].color;
    return /^#[0-9a-fA-F]{6}$/.test(c || "") ? c : PALETTE[label % PALETTE.length];
  }

  // A job page opened without a key is a locked shell (no job data): sign in with the
  // key this browser remembers, else ask for it; then load the page for real.
  async function unlock() {
    const stored = localStorage.getItem(KEY_STORE);
    if (stored) {
      const r = await fetch("/api/auth", {
        method: "POST", body: JSON.stringify({ key: stored }),
        headers: headers({ "Content-Type": "application/json" }), credentials: "same-origin",
      });
      if (r.ok) { location.reload(); return; }
      if (r.status !== 429) localStorage.removeItem(KEY_STORE);
    }
    await askKey();
    location.reload();
  }
  if (document.body.dataset.locked === "true") unlock();

  window.ml4p = { api, apiJSON, el, fmtBytes, fmtDate, statusClass, statuses, toast, progressBar,
    cookie, headers, askKey, classColor, PALETTE, unitLabel, voxelWarning, UNIT_SHORT,
    fillModelPicker, segmentRequest,
    jobId: document.body.dataset.jobId || null };
})();
