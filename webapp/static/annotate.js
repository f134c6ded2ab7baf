/* ml4paleo annotator: paint labels on any slice, retrain in memory, see the prediction.
 *
 * Label convention (server's LabelStore): 0 = unlabelled, k + 1 = class k.
 * A plane's labels live in a Uint8Array; every edit is an undoable operation
 * (changed indices with before/after values). Drafts go to localStorage at once and
 * to the server (which retrains and returns the prediction overlay) shortly after.
 */
(function () {
  "use strict";

  const root = document.body;
  const JOB = root.dataset.jobId;
  if (!JOB || !document.getElementById("annotator")) return;
  const API = `/api/job/${encodeURIComponent(JOB)}`;
  const AXES = ["z", "y", "x"];
  const UNDO_LIMIT = 100;
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ HTTP
  // API calls go through the shared helper in app.js (CSRF token, access-key dialog on 401)
  const api = (method, path, body) => window.ml4p.apiJSON(path, { method, json: body });
  const fetchRaw = (url) => (window.ml4p ? window.ml4p.api(url) : fetch(url, { credentials: "same-origin" }));
  function toast(text, kind) {
    if (window.ml4p) return window.ml4p.toast(text, kind === "error");
    const box = $("toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = "toast " + (kind || "");
    el.textContent = text;
    box.appendChild(el);
    setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
  }

  // ------------------------------------------------------------------ RLE
  function rleEncode(arr, h, w) {
    const data = [];
    let v = arr[0], n = 0;
    for (let i = 0; i < arr.length; i++) {
      if (arr[i] === v) { n++; } else { data.push(v, n); v = arr[i]; n = 1; }
    }
    if (arr.length) data.push(v, n);
    return { encoding: "rle", shape: [h, w], data };
  }
  function rleDecode(obj, out) {
    let p = 0;
    const d = obj.data;
    for (let i = 0; i < d.length; i += 2) {
      out.fill(d[i], p, p + d[i + 1]);
      p += d[i + 1];
    }
    return out;
  }

  // ------------------------------------------------------------------ state
  const S = {
    info: null,
    classes: [],
    palette: [],         // colours for new classes, by class index (from the API)
    axis: 0,
    index: 0,
    h: 0, w: 0,
    aspect: 1,           // physical height / width of a plane pixel
    raw: null,           // typed array of intensities
    labels: null,        // Uint8Array, 0 = unlabelled
    wmin: 0, wmax: 1,
    tool: "brush",
    brush: 8,
    cls: 1,              // label value to paint (class index + 1)
    undo: [], redo: [],
    history: new Map(),  // plane key -> {undo, redo}
    view: { scale: 1, tx: 0, ty: 0 },
    dirty: false,        // labels differ from what the server has
    inflight: false,
    pendingSubmit: null,
    poly: [],            // polygon vertices in image coords
    mouse: null,         // last mouse image coords
    predImg: null, uncImg: null,
    loadToken: 0,
    spaceDown: false,
    flips: [{ rows: false, cols: false }, { rows: false, cols: false }, { rows: false, cols: false }],
    cleanPreview: null,  // the clean-up preview overlay of the shown plane (an Image)
  };
  const imgCanvas = document.createElement("canvas");
  const labCanvas = document.createElement("canvas");
  let labData = null;
  const canvas = $("ann-canvas");
  const ctx = canvas.getContext("2d");
  const viewport = $("ann-viewport");
  window.ml4paleoAnnotator = S; // inspectable from tests and the console

  const planeKey = () => `${AXES[S.axis]}:${S.index}`;
  const draftKey = () => `ml4paleo-draft:${JOB}:${planeKey()}`;

  // ------------------------------------------------------------------ colours
  function hexRgb(hex) {
    const n = parseInt((hex || "#888888").slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }
  let lut = new Uint8Array(256 * 4);
  function buildLut() {
    lut = new Uint8Array(256 * 4);
    S.classes.forEach((c, k) => {
      const [r, g, b] = hexRgb(c.color);
      lut.set([r, g, b, 255], (k + 1) * 4);
    });
  }

  // ------------------------------------------------------------------ rendering
  function renderImage() {
    if (!S.raw) return;
    const ictx = imgCanvas.getContext("2d");
    const im = ictx.createImageData(S.w, S.h);
    const d = im.data, raw = S.raw;
    const lo = S.wmin, span = Math.max(1e-9, S.wmax - S.wmin);
    for (let i = 0, j = 0; i < raw.length; i++, j += 4) {
      let v = ((raw[i] - lo) / span) * 255;
      v = v < 0 ? 0 : v > 255 ? 255 : v;
      d[j] = d[j + 1] = d[j + 2] = v;
      d[j + 3] = 255;
    }
    ictx.putImageData(im, 0, 0);
    $("ann-wtext").textContent = `${fmt(S.wmin)} – ${fmt(S.wmax)}`;
  }
  function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3); }

  function paintLabels(x0, y0, x1, y1) {
    // refresh the label canvas in the bounding box [x0, x1) x [y0, y1)
    if (!labData) return;
    x0 = Math.max(0, x0 | 0); y0 = Math.max(0, y0 | 0);
    x1 = Math.min(S.w, Math.ceil(x1)); y1 = Math.min(S.h, Math.ceil(y1));
    if (x1 <= x0 || y1 <= y0) return;
    const d = labData.data, L = S.labels;
    for (let y = y0; y < y1; y++) {
      let i = y * S.w + x0, j = i * 4;
      for (let x = x0; x < x1; x++, i++, j += 4) {
        const o = L[i] * 4;
        d[j] = lut[o]; d[j + 1] = lut[o + 1]; d[j + 2] = lut[o + 2]; d[j + 3] = lut[o + 3];
      }
    }
    labCanvas.getContext("2d").putImageData(labData, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }
  function paintAllLabels() { paintLabels(0, 0, S.w, S.h); }

  let frame = 0;
  function draw() {
    if (frame) return;
    frame = requestAnimationFrame(() => { frame = 0; drawNow(); });
  }
  function drawNow() {
    const r = viewport.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const cw = Math.max(1, Math.round(r.width * dpr)), ch = Math.max(1, Math.round(r.height * dpr));
    if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#111";
    ctx.fillRect(0, 0, cw, ch);
    if (!S.raw) return;
    const v = S.view;
    // rows are stretched by the voxel aspect so anisotropic scans look right along y / x
    ctx.setTransform(v.scale * dpr, 0, 0, v.scale * S.aspect * dpr, v.tx * dpr, v.ty * dpr);
    // orientation / user flips mirror the plane inside its frame (image coordinates stay)
    const f = S.flips[S.axis];
    ctx.transform(f.cols ? -1 : 1, 0, 0, f.rows ? -1 : 1, f.cols ? S.w : 0, f.rows ? S.h : 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(imgCanvas, 0, 0);
    const pred = $("ann-clean-preview").checked && S.cleanPreview ? S.cleanPreview : S.predImg;
    if ($("ann-show-pred").checked && pred) {
      ctx.globalAlpha = $("ann-pred-op").value / 100;
      ctx.drawImage(pred, 0, 0, S.w, S.h);
    }
    if ($("ann-show-unc").checked && S.uncImg) {
      ctx.globalAlpha = 0.9;
      ctx.drawImage(S.uncImg, 0, 0, S.w, S.h);
    }
    ctx.globalAlpha = $("ann-lab-op").value / 100;
    ctx.drawImage(labCanvas, 0, 0);
    ctx.globalAlpha = 1;
    // polygon in progress
    if (S.poly.length) {
      ctx.lineWidth = 1.5 / v.scale;
      ctx.strokeStyle = S.classes[S.cls - 1] ? S.classes[S.cls - 1].color : "#fff";
      ctx.beginPath();
      ctx.moveTo(S.poly[0][0], S.poly[0][1]);
      for (const p of S.poly.slice(1)) ctx.lineTo(p[0], p[1]);
      if (S.mouse) ctx.lineTo(S.mouse[0], S.mouse[1]);
      ctx.stroke();
      ctx.fillStyle = "#fff";
      for (const p of S.poly) ctx.fillRect(p[0] - 2 / v.scale, p[1] - 2 / v.scale, 4 / v.scale, 4 / v.scale);
    }
    // brush cursor
    if (S.mouse && (S.tool === "brush" || S.tool === "eraser")) {
      ctx.lineWidth = 1 / v.scale;
      ctx.strokeStyle = S.tool === "eraser" ? "#fff" : (S.classes[S.cls - 1] || {}).color || "#fff";
      ctx.beginPath();
      ctx.arc(S.mouse[0], S.mouse[1], S.brush / 2, 0, Math.PI * 2);
      ctx.stroke();
    }
  }

  function fitView() {
    const r = viewport.getBoundingClientRect();
    if (!S.w || !r.width) return;
    const s = Math.min(r.width / S.w, r.height / (S.h * S.aspect));
    S.view = { scale: s, tx: (r.width - S.w * s) / 2, ty: (r.height - S.h * S.aspect * s) / 2 };
    draw();
  }
  function zoomAt(factor, cx, cy) {
    const v = S.view;
    const s = Math.min(64, Math.max(0.05, v.scale * factor));
    const f = s / v.scale;
    v.tx = cx - (cx - v.tx) * f;
    v.ty = cy - (cy - v.ty) * f;
    v.scale = s;
    draw();
  }
  function toImage(ev) {
    const r = canvas.getBoundingClientRect();
    const v = S.view;
    const f = S.flips[S.axis];
    const x = (ev.clientX - r.left - v.tx) / v.scale, y = (ev.clientY - r.top - v.ty) / (v.scale * S.aspect);
    return [f.cols ? S.w - x : x, f.rows ? S.h - y : y];
  }
  // the letters at the canvas edges (where the patient's directions are), after the flips
  function renderEdges() {
    const p = S.info && S.info.planes && S.info.planes[AXES[S.axis]];
    const opp = { L: "R", R: "L", A: "P", P: "A", S: "I", I: "S" };
    const f = S.flips[S.axis];
    document.querySelectorAll("#ann-viewport .ann-edge").forEach((e) => {
      if (!p) { e.hidden = true; return; }
      const top = f.rows ? p.rows : opp[p.rows], left = f.cols ? p.cols : opp[p.cols];
      e.textContent = { top, bottom: opp[top], left, right: opp[left] }[e.dataset.side];
      e.hidden = false;
    });
    viewport.dataset.flipRows = String(f.rows); viewport.dataset.flipCols = String(f.cols);
    const view = p ? { axial: "Axial", coronal: "Coronal", sagittal: "Sagittal" }[p.view] : null;
    $("ann-view-name").textContent = view ? `${view} view, as 3D Slicer shows it` : "Stored order (no anatomical frame)";
  }

  // ------------------------------------------------------------------ editing ops
  let op = null; // {mark: Map idx -> before, bbox}
  function beginOp() { op = { before: new Map(), bbox: [Infinity, Infinity, -Infinity, -Infinity] }; }
  function setPixel(i, value) {
    const L = S.labels;
    if (L[i] === value) return;
    if (!op.before.has(i)) op.before.set(i, L[i]);
    L[i] = value;
  }
  function grow(x0, y0, x1, y1) {
    const b = op.bbox;
    b[0] = Math.min(b[0], x0); b[1] = Math.min(b[1], y0);
    b[2] = Math.max(b[2], x1); b[3] = Math.max(b[3], y1);
  }
  function stamp(cx, cy, value) {
    const r = S.brush / 2;
    const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(S.w - 1, Math.ceil(cx + r));
    const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(S.h - 1, Math.ceil(cy + r));
    const r2 = Math.max(0.25, r * r);
    for (let y = y0; y <= y1; y++) {
      const dy = y + 0.5 - cy;
      for (let x = x0; x <= x1; x++) {
        const dx = x + 0.5 - cx;
        if (dx * dx + dy * dy <= r2) setPixel(y * S.w + x, value);
      }
    }
    grow(x0, y0, x1 + 1, y1 + 1);
    paintLabels(x0, y0, x1 + 1, y1 + 1);
  }
  function line(a, b, value) {
    const dist = Math.hypot(b[0] - a[0], b[1] - a[1]);
    const step = Math.max(0.5, S.brush / 4);
    const n = Math.max(1, Math.ceil(dist / step));
    for (let k = 1; k <= n; k++) {
      stamp(a[0] + ((b[0] - a[0]) * k) / n, a[1] + ((b[1] - a[1]) * k) / n, value);
    }
  }
  function endOp(label) {
    const cur = op;
    op = null;
    if (!cur || cur.before.size === 0) return false;
    const n = cur.before.size;
    const idx = new Int32Array(n), before = new Uint8Array(n), after = new Uint8Array(n);
    let k = 0;
    for (const [i, b] of cur.before) { idx[k] = i; before[k] = b; after[k] = S.labels[i]; k++; }
    S.undo.push({ idx, before, after, label });
    if (S.undo.length > UNDO_LIMIT) S.undo.shift();
    S.redo.length = 0;
    changed();
    return true;
  }
  function applyEdit(edit, forward) {
    const vals = forward ? edit.after : edit.before;
    let x0 = S.w, y0 = S.h, x1 = 0, y1 = 0;
    for (let k = 0; k < edit.idx.length; k++) {
      const i = edit.idx[k];
      S.labels[i] = vals[k];
      const x = i % S.w, y = (i / S.w) | 0;
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    paintLabels(x0, y0, x1 + 1, y1 + 1);
  }
  function undo() {
    const e = S.undo.pop();
    if (!e) return toast("Nothing to undo");
    applyEdit(e, false);
    S.redo.push(e);
    changed();
  }
  function redo() {
    const e = S.redo.pop();
    if (!e) return toast("Nothing to redo");
    applyEdit(e, true);
    S.undo.push(e);
    changed();
  }
  function clearSlice() {
    beginOp();
    for (let i = 0; i < S.labels.length; i++) if (S.labels[i]) setPixel(i, 0);
    grow(0, 0, S.w, S.h);
    paintAllLabels();
    endOp("clear");
  }

  function fillPolygon(points, value) {
    if (points.length < 3) return;
    const off = document.createElement("canvas");
    let x0 = S.w, y0 = S.h, x1 = 0, y1 = 0;
    for (const [x, y] of points) { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y); }
    x0 = Math.max(0, Math.floor(x0)); y0 = Math.max(0, Math.floor(y0));
    x1 = Math.min(S.w, Math.ceil(x1) + 1); y1 = Math.min(S.h, Math.ceil(y1) + 1);
    if (x1 <= x0 || y1 <= y0) return;
    off.width = x1 - x0; off.height = y1 - y0;
    const o = off.getContext("2d");
    o.translate(-x0, -y0);
    o.beginPath();
    o.moveTo(points[0][0], points[0][1]);
    for (const p of points.slice(1)) o.lineTo(p[0], p[1]);
    o.closePath();
    o.fillStyle = "#fff";
    o.fill();
    const a = o.getImageData(0, 0, off.width, off.height).data;
    beginOp();
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        if (a[((y - y0) * off.width + (x - x0)) * 4 + 3] >= 128) setPixel(y * S.w + x, value);
      }
    }
    grow(x0, y0, x1, y1);
    paintLabels(x0, y0, x1, y1);
    endOp("polygon");
  }

  function floodFill(px, py, value) {
    const x = Math.floor(px), y = Math.floor(py);
    if (x < 0 || y < 0 || x >= S.w || y >= S.h) return;
    const raw = S.raw, W = S.w, H = S.h;
    const seed = raw[y * W + x];
    const tol = ($("ann-fill").value / 100) * Math.max(1e-9, S.wmax - S.wmin);
    const lo = seed - tol, hi = seed + tol;
    const seen = new Uint8Array(W * H);
    const stack = [y * W + x];
    seen[y * W + x] = 1;
    beginOp();
    let x0 = x, y0 = y, x1 = x, y1 = y;
    while (stack.length) {
      const i = stack.pop();
      setPixel(i, value);
      const cx = i % W, cy = (i / W) | 0;
      if (cx < x0) x0 = cx; if (cx > x1) x1 = cx; if (cy < y0) y0 = cy; if (cy > y1) y1 = cy;
      const nb = [cx > 0 ? i - 1 : -1, cx < W - 1 ? i + 1 : -1, cy > 0 ? i - W : -1, cy < H - 1 ? i + W : -1];
      for (const j of nb) {
        if (j >= 0 && !seen[j]) {
          seen[j] = 1;
          const v = raw[j];
          if (v >= lo && v <= hi) stack.push(j);
        }
      }
    }
    grow(x0, y0, x1 + 1, y1 + 1);
    paintLabels(x0, y0, x1 + 1, y1 + 1);
    endOp("fill");
  }

  // ------------------------------------------------------------------ saving
  let draftTimer = 0, submitTimer = 0;
  function setSaveState(text, kind) {
    const el = $("ann-save");
    el.textContent = text;
    el.dataset.state = kind || "";
  }
  function changed() {
    S.dirty = true;
    setSaveState("unsaved changes", "dirty");
    draw();
    clearTimeout(draftTimer);
    draftTimer = setTimeout(saveDraft, 150);
    if ($("ann-autotrain").checked) {
      clearTimeout(submitTimer);
      submitTimer = setTimeout(() => submit(), 700);
    }
  }
  function saveDraft() {
    if (!S.labels) return;
    try {
      localStorage.setItem(draftKey(), JSON.stringify({ t: Date.now(), labels: rleEncode(S.labels, S.h, S.w) }));
      if (S.dirty) setSaveState("draft saved in this browser", "draft");
    } catch (e) {
      setSaveState("draft not saved (browser storage full)", "error");
    }
  }
  function dropDraft(key) { try { localStorage.removeItem(key); } catch (e) { /* ignore */ } }

  async function submit(opts) {
    opts = opts || {};
    clearTimeout(submitTimer);
    if (!S.labels) return;
    if (S.inflight) { S.pendingSubmit = true; return; }
    if (!S.dirty && !opts.force) { if (opts.preview !== false) await refreshPreview(); return; }
    S.inflight = true;
    const key = draftKey(), axis = S.axis, index = S.index;
    const sent = S.labels.slice();
    setSaveState("saving…", "saving");
    const t0 = performance.now();
    try {
      const res = await api("POST", `${API}/annotate/labels`, {
        axis: AXES[axis], index, mask: rleEncode(sent, S.h, S.w), preview: opts.preview !== false,
      });
      const same = axis === S.axis && index === S.index;
      if (same && sameArray(sent, S.labels)) { S.dirty = false; dropDraft(key); setSaveState("saved", "saved"); }
      else if (!same) dropDraft(key);
      if (res.counts) updateCounts(res.counts);
      $("ann-seg-note").textContent = "A new model is trained on your annotations, then the whole volume is segmented.";
      if (same && res.preview) showPreview(res.preview, performance.now() - t0);
      markAnnotated(axis, index, sent.some((v) => v));
    } catch (err) {
      setSaveState("not saved: " + err.message, "error");
      toast("Could not save the labels: " + err.message, "error");
    } finally {
      S.inflight = false;
      if (S.pendingSubmit) { S.pendingSubmit = false; if (S.dirty) submit(); }
    }
  }
  function sameArray(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  function loadImg(src) {
    return new Promise((resolve, reject) => {
      const im = new Image();
      im.onload = () => resolve(im);
      im.onerror = reject;
      im.src = src;
    });
  }
  async function showPreview(p, ms) {
    const info = $("ann-model-info");
    if (!p.overlay) {
      S.predImg = S.uncImg = null;
      info.textContent = p.message || "No model yet.";
      delete viewport.dataset.prediction;
      draw();
      return;
    }
    const [a, b] = await Promise.all([loadImg(p.overlay), loadImg(p.uncertainty)]);
    S.predImg = a; S.uncImg = b;
    viewport.dataset.prediction = String(p.model_version);
    if ($("ann-clean-preview").checked) refreshCleanup();
    const parts = Object.entries(p.fractions || {}).map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`);
    info.textContent = `Model v${p.model_version}: ${parts.join(", ")}; mean uncertainty ${(p.mean_uncertainty || 0).toFixed(2)}`;
    const t = p.timing || {};
    $("ann-timing").textContent = `retrain ${(t.retrain_s || 0).toFixed(2)} s · predict ${(t.predict_s || 0).toFixed(2)} s` +
      (ms ? ` · round trip ${(ms / 1000).toFixed(2)} s` : "");
    draw();
  }
  async function refreshPreview() {
    const axis = S.axis, index = S.index;
    try {
      const p = await api("GET", `${API}/annotate/predict?axis=${AXES[axis]}&index=${index}`);
      if (axis === S.axis && index === S.index) await showPreview(p);
    } catch (err) {
      if (err.status !== 409) toast("Prediction failed: " + err.message, "error");
    }
  }

  // ------------------------------------------------------------------ loading planes
  function planeDims(axis) {
    const [z, y, x] = S.info.shape;
    return axis === 0 ? [y, x] : axis === 1 ? [z, x] : [z, y];
  }
  async function loadPlane(axis, index) {
    if (S.labels && S.dirty) { saveDraft(); submit({ preview: false }); }
    S.history.set(planeKey(), { undo: S.undo, redo: S.redo });
    const token = ++S.loadToken;
    index = Math.max(0, Math.min(S.info.shape[axis] - 1, index | 0));
    S.axis = axis; S.index = index;
    const hist = S.history.get(planeKey()) || { undo: [], redo: [] };
    S.undo = hist.undo; S.redo = hist.redo;
    S.poly = [];
    delete viewport.dataset.prediction;
    delete viewport.dataset.loaded;
    syncSliceInputs();
    location.replace(`#axis=${AXES[axis]}&index=${index}`);
    const [h, w] = planeDims(axis);
    const [rawResp, lab] = await Promise.all([
      fetchRaw(`${API}/annotate/slice?axis=${AXES[axis]}&index=${index}&format=raw`),
      api("GET", `${API}/annotate/labels?axis=${AXES[axis]}&index=${index}`),
    ]);
    if (!rawResp.ok) throw new Error(`slice: ${rawResp.status}`);
    const buf = await rawResp.arrayBuffer();
    if (token !== S.loadToken) return;
    const dtype = rawResp.headers.get("X-Dtype");
    const Ctor = { uint8: Uint8Array, uint16: Uint16Array, int16: Int16Array, float32: Float32Array }[dtype] || Float32Array;
    S.raw = new Ctor(buf);
    const vs = S.info.voxel_size || [1, 1, 1];
    const aspect = axis === 0 ? vs[1] / vs[2] : axis === 1 ? vs[0] / vs[2] : vs[0] / vs[1];
    const newAspect = Number.isFinite(aspect) && aspect > 0 ? Math.min(20, Math.max(0.05, aspect)) : 1;
    const refit = newAspect !== S.aspect;
    S.aspect = newAspect;
    S.h = h; S.w = w;
    const labels = rleDecode(lab.labels, new Uint8Array(h * w));
    S.dirty = false;
    setSaveState("no changes", "");
    let draft = null;
    try { draft = JSON.parse(localStorage.getItem(draftKey()) || "null"); } catch (e) { draft = null; }
    if (draft && draft.labels && draft.labels.shape[0] === h && draft.labels.shape[1] === w) {
      const d = rleDecode(draft.labels, new Uint8Array(h * w));
      if (!sameArray(d, labels)) {
        labels.set(d);
        S.dirty = true;
        setSaveState("restored unsaved draft", "dirty");
        toast("Restored the unsaved labels of this slice from your browser.");
      } else {
        dropDraft(draftKey());
      }
    }
    S.labels = labels;
    if (imgCanvas.width !== w || imgCanvas.height !== h || refit) {
      imgCanvas.width = labCanvas.width = w;
      imgCanvas.height = labCanvas.height = h;
      fitView();
    }
    labData = labCanvas.getContext("2d").createImageData(w, h);
    renderImage();
    paintAllLabels();
    S.predImg = S.uncImg = S.cleanPreview = null;
    viewport.dataset.loaded = planeKey();
    draw();
    if (S.dirty) submit(); else refreshPreview();
  }
  function syncSliceInputs() {
    const n = S.info.shape[S.axis];
    $("ann-axis").value = AXES[S.axis];
    $("ann-slider").max = n - 1;
    $("ann-index").max = n;
    $("ann-slider").value = S.index;
    $("ann-index").value = S.index + 1;  // slices are numbered from 1 on the pages
    $("ann-pos").textContent = `${AXES[S.axis]} slice ${S.index + 1} / ${n}`;
    renderEdges();
  }
  const go = (axis, index) => loadPlane(axis, index).catch((e) => toast("Could not load the slice: " + e.message, "error"));

  // ------------------------------------------------------------------ classes
  function renderClasses() {
    buildLut();
    const ul = $("ann-classes");
    ul.textContent = "";
    S.classes.forEach((c, k) => {
      const li = document.createElement("li");
      li.className = "ann-class" + (S.cls === k + 1 ? " active" : "");
      li.dataset.value = String(k + 1);
      const pick = document.createElement("input");
      pick.type = "radio"; pick.name = "ann-class"; pick.checked = S.cls === k + 1;
      pick.title = `Paint ${c.name} (${k + 1})`;
      pick.addEventListener("change", () => selectClass(k + 1));
      const color = document.createElement("input");
      color.type = "color"; color.value = c.color; color.title = "Colour";
      color.addEventListener("change", () => { S.classes[k].color = color.value; saveClasses(); });
      const name = document.createElement("input");
      name.type = "text"; name.value = c.name; name.maxLength = 64; name.className = "ann-class-name";
      name.addEventListener("change", () => { S.classes[k].name = name.value; saveClasses(); });
      const count = document.createElement("span");
      count.className = "muted small ann-count";
      count.dataset.k = String(k);
      li.append(pick, color, name, count);
      li.addEventListener("click", (ev) => { if (ev.target === li) selectClass(k + 1); });
      ul.appendChild(li);
    });
    if (S.labels) paintAllLabels();
    draw();
  }
  function selectClass(v) {
    if (v < 1 || v > S.classes.length) return;
    S.cls = v;
    if (S.tool === "eraser") setTool("brush");
    document.querySelectorAll(".ann-class").forEach((li) => {
      const on = li.dataset.value === String(v);
      li.classList.toggle("active", on);
      li.querySelector("input[type=radio]").checked = on;
    });
  }
  function updateCounts(counts) {
    document.querySelectorAll(".ann-count").forEach((el) => {
      const n = counts[el.dataset.k] || 0;
      el.textContent = n ? `${n.toLocaleString()} px` : "";
    });
  }
  async function saveClasses() {
    try {
      const res = await api("PUT", `${API}/annotate/classes`, { classes: S.classes });
      S.classes = res.classes;
      S.palette = res.palette || S.palette;
      renderClasses();
      refreshPreview();
    } catch (err) {
      toast("Classes not saved: " + err.message, "error");
      const res = await api("GET", `${API}/annotate/classes`);
      S.classes = res.classes;
      S.palette = res.palette || S.palette;
      renderClasses();
    }
  }

  // ------------------------------------------------------------------ tools & input
  function setTool(t) {
    S.tool = t;
    S.poly = [];
    document.querySelectorAll(".tool").forEach((b) => b.classList.toggle("active", b.dataset.tool === t));
    viewport.dataset.tool = t;
    draw();
  }
  function setBrush(n) {
    S.brush = Math.max(1, Math.min(80, n | 0));
    $("ann-brush").value = S.brush;
    $("ann-brush-val").textContent = S.brush;
    try { localStorage.setItem("ml4paleo-brush", String(S.brush)); } catch (e) { /* ignore */ }
    draw();
  }

  let drag = null;
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointerdown", (ev) => {
    if (!S.labels) return;
    viewport.focus({ preventScroll: true });
    canvas.setPointerCapture(ev.pointerId);
    const p = toImage(ev);
    if (ev.button === 1 || ev.button === 2 || S.spaceDown) {
      drag = { kind: "pan", x: ev.clientX, y: ev.clientY, tx: S.view.tx, ty: S.view.ty };
      return;
    }
    if (ev.button !== 0) return;
    if (S.tool === "brush" || S.tool === "eraser") {
      beginOp();
      const value = S.tool === "eraser" ? 0 : S.cls;
      stamp(p[0], p[1], value);
      drag = { kind: "paint", last: p, value };
    } else if (S.tool === "polygon") {
      if (S.poly.length >= 3) {
        const f = S.poly[0];
        if (Math.hypot(f[0] - p[0], f[1] - p[1]) * S.view.scale < 8) { closePolygon(); return; }
      }
      S.poly.push(p);
      draw();
    } else if (S.tool === "fill") {
      floodFill(p[0], p[1], S.cls);
    }
  });
  canvas.addEventListener("pointermove", (ev) => {
    const p = toImage(ev);
    S.mouse = p;
    if (drag && drag.kind === "pan") {
      S.view.tx = drag.tx + ev.clientX - drag.x;
      S.view.ty = drag.ty + ev.clientY - drag.y;
    } else if (drag && drag.kind === "paint") {
      line(drag.last, p, drag.value);
      drag.last = p;
    }
    if (S.raw) {
      const x = Math.floor(p[0]), y = Math.floor(p[1]);
      if (x >= 0 && y >= 0 && x < S.w && y < S.h) {
        $("ann-pos").textContent = `${AXES[S.axis]} slice ${S.index + 1} / ${S.info.shape[S.axis]} · (${x + 1}, ${y + 1}) · value ${fmt(S.raw[y * S.w + x])}`;
      }
    }
    draw();
  });
  function endDrag() {
    if (drag && drag.kind === "paint") endOp(drag.value ? "brush" : "eraser");
    drag = null;
  }
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  canvas.addEventListener("pointerleave", () => { S.mouse = null; draw(); });
  canvas.addEventListener("dblclick", (ev) => {
    if (S.tool === "polygon") { ev.preventDefault(); closePolygon(); }
  });
  function closePolygon() {
    // a double-click adds the same point twice: drop near-duplicates
    const pts = S.poly.filter((p, i, a) => i === 0 || Math.hypot(p[0] - a[i - 1][0], p[1] - a[i - 1][1]) > 0.5);
    S.poly = [];
    if (pts.length >= 3) fillPolygon(pts, S.cls);
    draw();
  }
  viewport.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    if (ev.ctrlKey || ev.metaKey) {
      const r = canvas.getBoundingClientRect();
      zoomAt(ev.deltaY < 0 ? 1.15 : 1 / 1.15, ev.clientX - r.left, ev.clientY - r.top);
    } else if (S.info) {
      go(S.axis, S.index + (ev.deltaY > 0 ? 1 : -1));
    }
  }, { passive: false });

  document.addEventListener("keydown", (ev) => {
    if (!S.info) return;
    const t = ev.target;
    if (t && (t.tagName === "INPUT" && t.type !== "range" && t.type !== "checkbox" && t.type !== "radio" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    const k = ev.key;
    const mod = ev.ctrlKey || ev.metaKey;
    if (mod && (k === "z" || k === "Z")) { ev.preventDefault(); if (ev.shiftKey) redo(); else undo(); return; }
    if (mod && (k === "y" || k === "Y")) { ev.preventDefault(); redo(); return; }
    if (mod) return;
    const r = viewport.getBoundingClientRect();
    switch (k) {
      case "b": case "B": setTool("brush"); break;
      case "e": case "E": setTool("eraser"); break;
      case "l": case "L": setTool("polygon"); break;
      case "f": case "F": setTool("fill"); break;
      case "[": setBrush(S.brush - (S.brush > 10 ? 4 : 1)); break;
      case "]": setBrush(S.brush + (S.brush >= 10 ? 4 : 1)); break;
      case "s": case "S": submit({ force: true }); break;
      case "Enter":
        if (S.tool === "polygon" && S.poly.length) closePolygon(); else submit({ force: true });
        break;
      case "Escape": S.poly = []; draw(); break;
      case "p": case "P": $("ann-show-pred").click(); break;
      case "u": case "U": $("ann-show-unc").click(); break;
      case "g": case "G": suggest(); break;
      case ",": case "ArrowLeft": ev.preventDefault(); go(S.axis, S.index - 1); break;
      case ".": case "ArrowRight": ev.preventDefault(); go(S.axis, S.index + 1); break;
      case "+": case "=": zoomAt(1.25, r.width / 2, r.height / 2); break;
      case "-": case "_": zoomAt(0.8, r.width / 2, r.height / 2); break;
      case "0": fitView(); break;
      case " ": S.spaceDown = true; viewport.dataset.pan = "1"; ev.preventDefault(); break;
      default:
        if (/^[1-9]$/.test(k)) selectClass(Number(k));
    }
  });
  document.addEventListener("keyup", (ev) => {
    if (ev.key === " ") { S.spaceDown = false; delete viewport.dataset.pan; }
  });

  async function suggest() {
    const axis = AXES.indexOf($("ann-axis").value);
    try {
      const res = await api("GET", `${API}/annotate/suggest?axis=${AXES[axis]}`);
      $("ann-suggest-info").textContent = `Suggested ${res.axis} slice ${res.index + 1} (${res.reason})`;
      go(axis, res.index);
    } catch (err) {
      toast("No suggestion: " + err.message, "error");
    }
  }

  function markAnnotated(axis, index, has) {
    const list = S.info.annotated || [];
    const i = list.findIndex((a) => a.axis === AXES[axis] && a.index === index);
    if (has && i < 0) list.push({ axis: AXES[axis], index });
    if (!has && i >= 0) list.splice(i, 1);
    S.info.annotated = list;
  }

  // ------------------------------------------------------------------ whole volume
  let poll = 0;
  function cleanupOptions() {
    const n = Math.max(0, Math.floor(Number($("ann-min-size").value) || 0));
    return { min_size: $("ann-cleanup").checked ? n : 0, fill_holes: $("ann-fill-holes").checked };
  }
  // the prediction of this plane cleaned up as the whole volume will be
  async function refreshCleanup() {
    const axis = S.axis, index = S.index, o = cleanupOptions();
    if (!$("ann-clean-preview").checked) { S.cleanPreview = null; $("ann-clean-info").textContent = ""; draw(); return; }
    try {
      const p = await api("GET", `${API}/annotate/cleanup?axis=${AXES[axis]}&index=${index}&min_size=${o.min_size}&fill_holes=${o.fill_holes ? 1 : 0}`);
      if (axis !== S.axis || index !== S.index) return;
      if (!p.overlay) { S.cleanPreview = null; $("ann-clean-info").textContent = p.message || ""; draw(); return; }
      S.cleanPreview = await loadImg(p.overlay);
      viewport.dataset.cleanup = `${p.changed_pixels}`;
      $("ann-clean-info").textContent = `On this slice the clean-up changes ${p.changed_pixels.toLocaleString()} pixel${p.changed_pixels === 1 ? "" : "s"}` +
        (o.min_size ? ` (islands below ${p.island_pixels} px here ≈ ${o.min_size} voxels in 3D)` : "") + ".";
      draw();
    } catch (err) {
      if (err.status !== 409) toast("Clean-up preview failed: " + err.message, "error");
    }
  }
  async function queue(kind) {
    if (S.dirty) await submit({ preview: false });
    try {
      const smooth = $("ann-mesh-smooth");
      const body = kind === "mesh"
        ? (smooth ? { smooth: smooth.value } : {})
        : await window.ml4p.segmentRequest($("ann-model"), JOB, cleanupOptions());
      await api("POST", `${API}/${kind === "mesh" ? "mesh" : "segment"}`, body);
      toast(kind === "mesh" ? "Meshing queued." : "Segmentation queued.");
      watch(kind);
    } catch (err) {
      toast(err.message, "error");
      $("ann-progress-text").textContent = err.message;
      $("ann-progress").hidden = false;
    }
  }
  function watch(kind) {
    clearInterval(poll);
    $("ann-progress").hidden = false;
    $("ann-result-link").textContent = "";
    const started = Date.now();
    let seenBusy = false;
    const tick = async () => {
      let st;
      try { st = await api("GET", `${API}/status`); } catch (e) { return; }
      const status = String(st.status);
      const state = st.state || {}; // the server's description of the status
      const busy = !!state.busy, label = state.label || status;
      const pct = Math.round(100 * (st.progress || 0));
      $("ann-progress-fill").style.width = `${busy ? pct : 100}%`;
      $("ann-progress-text").textContent = `${label}${busy ? ` · ${pct}%` : ""}${st.message ? " · " + st.message : ""}`;
      $("ann-progress").dataset.status = status;
      if (busy) { seenBusy = true; return; }
      if (!seenBusy && Date.now() - started < 3000) return;
      clearInterval(poll);
      if (state.failed) {
        $("ann-progress-text").textContent = `${label}: ${st.error || "failed"}`;
        toast(`${kind === "mesh" ? "Meshing" : "Segmentation"} failed: ${st.error || status}`, "error");
        return;
      }
      const url = kind === "mesh" ? root.dataset.view3dUrl : root.dataset.viewerUrl;
      if (url) {
        const a = document.createElement("a");
        a.href = url; a.id = "ann-open-result"; a.className = "btn";
        a.textContent = kind === "mesh" ? "Open the meshes in 3D" : "Open the segmentation in the viewer";
        $("ann-result-link").replaceChildren(a);
        if ($("ann-open-result").checked) location.href = url;
      }
    };
    tick();
    poll = setInterval(tick, 1000);
  }

  // ------------------------------------------------------------------ wiring
  function wire() {
    $("ann-axis").addEventListener("change", () => {
      const a = AXES.indexOf($("ann-axis").value);
      go(a, Math.floor(S.info.shape[a] / 2));
      viewport.focus({ preventScroll: true });
    });
    $("ann-slider").addEventListener("input", () => go(S.axis, Number($("ann-slider").value)));
    $("ann-index").addEventListener("change", () => {
      go(S.axis, Number($("ann-index").value) - 1);
      viewport.focus({ preventScroll: true }); // shortcuts work again at once
    });
    $("ann-prev").addEventListener("click", () => go(S.axis, S.index - 1));
    $("ann-next").addEventListener("click", () => go(S.axis, S.index + 1));
    $("ann-suggest").addEventListener("click", suggest);
    document.querySelectorAll(".tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
    $("ann-brush").addEventListener("input", () => setBrush(Number($("ann-brush").value)));
    $("ann-fill").addEventListener("input", () => { $("ann-fill-val").textContent = $("ann-fill").value; });
    $("ann-undo").addEventListener("click", undo);
    $("ann-redo").addEventListener("click", redo);
    $("ann-clear").addEventListener("click", clearSlice);
    $("ann-submit").addEventListener("click", () => submit({ force: true }));
    for (const id of ["ann-show-pred", "ann-show-unc", "ann-pred-op", "ann-lab-op"]) {
      $(id).addEventListener("input", draw);
      $(id).addEventListener("change", draw);
    }
    $("ann-add-class").addEventListener("click", () => {
      const name = $("ann-new-class").value.trim();
      if (!name) return toast("Type a class name first");
      // the server's palette colour for the new class's index (ml4paleo.classes.PALETTE)
      const k = S.classes.length;
      S.classes.push(S.palette.length ? { name, color: S.palette[k % S.palette.length] } : { name });
      $("ann-new-class").value = "";
      saveClasses().then(() => selectClass(S.classes.length));
    });
    const span = () => Math.max(1e-9, S.info.window.source_max - S.info.window.source_min);
    const setW = () => {
      S.wmin = Number($("ann-wmin").value);
      S.wmax = Math.max(S.wmin + span() / 1000, Number($("ann-wmax").value));
      renderImage(); draw();
    };
    $("ann-wmin").addEventListener("input", setW);
    $("ann-wmax").addEventListener("input", setW);
    $("ann-wauto").addEventListener("click", () => {
      S.wmin = S.info.window.window_min; S.wmax = S.info.window.window_max;
      $("ann-wmin").value = S.wmin; $("ann-wmax").value = S.wmax;
      renderImage(); draw();
    });
    $("ann-segment").addEventListener("click", () => queue("segment"));
    for (const id of ["ann-cleanup", "ann-fill-holes", "ann-clean-preview"]) $(id).addEventListener("change", refreshCleanup);
    $("ann-min-size").addEventListener("change", refreshCleanup);
    $("ann-flip-h").addEventListener("click", () => { S.flips[S.axis].cols = !S.flips[S.axis].cols; renderEdges(); draw(); });
    $("ann-flip-v").addEventListener("click", () => { S.flips[S.axis].rows = !S.flips[S.axis].rows; renderEdges(); draw(); });
    $("ann-mesh").addEventListener("click", () => queue("mesh"));
    window.addEventListener("resize", () => { fitView(); draw(); });
    window.addEventListener("beforeunload", () => { if (S.dirty) saveDraft(); });
  }

  async function start() {
    wire();
    setTool("brush");
    setBrush(Number(localStorage.getItem("ml4paleo-brush")) || 8);
    try {
      S.info = await api("GET", `${API}/annotate/info`);
    } catch (err) {
      $("ann-empty").textContent = err.status === 409 ? err.message : "Could not open the annotator: " + err.message;
      $("ann-empty").hidden = false;
      return;
    }
    S.classes = S.info.classes;
    S.palette = S.info.palette || [];
    for (let a = 0; a < 3; a++) {  // planes shown as 3D Slicer shows them, when oriented
      const p = S.info.planes && S.info.planes[AXES[a]];
      S.flips[a] = { rows: !!(p && p.flip_rows), cols: !!(p && p.flip_cols) };
    }
    const vs = S.info.voxel_size;
    $("ann-voxel").textContent = vs ? `voxel ${vs.map((v) => +Number(v).toPrecision(4)).join(" × ")} ${window.ml4p.unitLabel(S.info)} (z, y, x)` +
      (S.info.orientation ? ` · ${S.info.orientation}` : "") : "";
    window.ml4p.voxelWarning($("ann-voxel-warning"), S.info, JOB);
    window.ml4p.fillModelPicker($("ann-model"), JOB, { annotated: (S.info.annotated || []).length > 0, chosen: S.info.chosen_model })
      .catch(() => {});
    S.cls = Math.min(2, S.classes.length);
    if (S.info.chosen_model) {
      $("ann-seg-note").textContent = "The model chosen on the models page segments the volume (pick another below; new annotations switch back to training a new model).";
    }
    renderClasses();
    selectClass(S.cls);
    updateCounts(S.info.counts || {});
    const w = S.info.window;
    for (const id of ["ann-wmin", "ann-wmax"]) {
      $(id).min = w.source_min; $(id).max = w.source_max;
      $(id).step = (w.source_max - w.source_min) / 1000 || 1;
    }
    S.wmin = w.window_min; S.wmax = w.window_max;
    $("ann-wmin").value = S.wmin; $("ann-wmax").value = S.wmax;
    const m = location.hash.match(/axis=([zyx])&index=(\d+)/);
    let axis = 0, index = Math.floor(S.info.shape[0] / 2);
    if (m) { axis = AXES.indexOf(m[1]); index = Number(m[2]); }
    else if (S.info.annotated && S.info.annotated.length) {
      const last = S.info.annotated[S.info.annotated.length - 1];
      axis = AXES.indexOf(last.axis); index = last.index;
    }
    await go(axis, index);
    const state = (await window.ml4p.statuses().catch(() => ({})))[S.info.status];
    if (state && state.busy && state.phase !== "convert") watch(state.phase === "mesh" ? "mesh" : "segment");
  }
  start();
})();
