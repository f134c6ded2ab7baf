// Slice viewer: three orthogonal planes of the image pyramid, tiled; zoom/pan, window/level,
// segmentation overlay coloured per class. Tiles come from the pyramid level that matches
// the zoom, so a large slice shows after a few small reads.
"use strict";
(function () {
  const { el, api, apiJSON, toast, classColor, unitLabel } = window.ml4p;
  const jobId = ml4p.jobId;
  const base = `/api/job/${encodeURIComponent(jobId)}`;
  const $ = (id) => document.getElementById(id);
  const TILE = 256;
  const AXIS_NAMES = ["z", "y", "x"];
  const AXIS_COLORS = ["#60a5fa", "#f87171", "#4ade80"];
  const PLANE_TITLES = ["XY plane (z)", "XZ plane (y)", "YZ plane (x)"];
  const VIEW_NAMES = { axial: "Axial", coronal: "Coronal", sagittal: "Sagittal" };
  // Slices are numbered from 1 on the pages (the API's index is 0-based: slice = index + 1).

  let info = null, seg = null, segInfo = null;
  const cursor = [0, 0, 0];
  const win = { lo: 0, hi: 1 };
  let opacity = 0.45;
  let thickness = null, thicknessOn = false, thicknessOpacity = 0.85; // GET /measure answer
  let classes = [], hidden = new Set(), colorVersion = 0;
  const cache = new Map(); // key -> {bitmap|canvas|null, pending}
  const planes = [];

  function dimsOf(axis) { return [0, 1, 2].filter((d) => d !== axis); } // [row dim, col dim]

  function fetchTile(url, key, kind) {
    if (cache.has(key)) return cache.get(key);
    const entry = { img: null, failed: false };
    cache.set(key, entry);
    if (cache.size > 1500) { // drop the oldest entries
      const drop = Array.from(cache.keys()).slice(0, 300);
      drop.forEach((k) => cache.delete(k));
    }
    api(url).then(async (r) => {
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const bmp = await createImageBitmap(await r.blob());
      entry.img = kind === "labels" ? labelData(bmp) : bmp;
      requestDraw();
    }).catch(() => { entry.failed = true; });
    return entry;
  }

  // Label tile -> raw label values (from the red channel of the greyscale PNG).
  function labelData(bmp) {
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    const g = c.getContext("2d");
    g.drawImage(bmp, 0, 0);
    const d = g.getImageData(0, 0, bmp.width, bmp.height);
    return { width: bmp.width, height: bmp.height, data: d, colored: null, version: -1 };
  }

  function colorize(t) {
    if (t.version === colorVersion) return t.colored;
    const rgba = {};
    const out = new ImageData(t.width, t.height);
    const src = t.data.data, dst = out.data;
    for (let i = 0; i < src.length; i += 4) {
      const label = src[i];
      if (label === 0 || hidden.has(label)) continue;
      let c = rgba[label];
      if (!c) {
        const hex = classColor(classes, label);
        c = rgba[label] = [parseInt(hex.slice(1, 3), 16), parseInt(hex.slice(3, 5), 16), parseInt(hex.slice(5, 7), 16)];
      }
      dst[i] = c[0]; dst[i + 1] = c[1]; dst[i + 2] = c[2]; dst[i + 3] = 255;
    }
    const canvas = t.colored || new OffscreenCanvas(t.width, t.height);
    canvas.getContext("2d").putImageData(out, 0, 0);
    t.colored = canvas; t.version = colorVersion;
    return canvas;
  }

  class Plane {
    constructor(axis) {
      this.axis = axis;
      [this.rowDim, this.colDim] = dimsOf(axis);
      // orientation: flips that show the plane as 3D Slicer does (superior / anterior up,
      // the patient's right on the left) when the scan has an anatomical frame
      this.orient = (info.planes || {})[AXIS_NAMES[axis]] || null;
      this.flipRows = !!(this.orient && this.orient.flip_rows);
      this.flipCols = !!(this.orient && this.orient.flip_cols);
      const name = this.orient ? `${VIEW_NAMES[this.orient.view]} (${AXIS_NAMES[axis]})` : PLANE_TITLES[axis];
      this.name = name;
      this.canvas = el("canvas", { "aria-label": name });
      this.title = el("div", { class: "label" });
      this.edges = ["top", "bottom", "left", "right"].map((side) => el("span", { class: `edge ${side}`, dataset: { side } }));
      const flipH = el("button", { class: "btn small flip", title: "Flip left–right", "aria-label": `flip ${name} left-right`, dataset: { flip: "h" } }, "⇋");
      const flipV = el("button", { class: "btn small flip", title: "Flip up–down", "aria-label": `flip ${name} up-down`, dataset: { flip: "v" } }, "⇵");
      flipH.addEventListener("click", () => { this.flipCols = !this.flipCols; requestDraw(); });
      flipV.addEventListener("click", () => { this.flipRows = !this.flipRows; requestDraw(); });
      this.slider = el("input", { type: "range", min: 0, max: info.shape[axis] - 1, value: cursor[axis], "aria-label": `${AXIS_NAMES[axis]} slice` });
      this.root = el("div", { class: "plane", dataset: { axis: AXIS_NAMES[axis] } }, this.canvas, this.title,
        ...this.edges, el("div", { class: "flips" }, flipH, flipV), el("div", { class: "slider" }, this.slider));
      this.zoom = 1; this.cx = 0; this.cy = 0; this.fitted = false;
      this.slider.addEventListener("input", () => { cursor[axis] = +this.slider.value; requestDraw(); });
      this.bind();
    }

    // the letter at each edge: where increasing rows / columns point, after the flips
    edgeLetters() {
      if (!this.orient) return null;
      const opp = { L: "R", R: "L", A: "P", P: "A", S: "I", I: "S" };
      const top = this.flipRows ? this.orient.rows : opp[this.orient.rows];
      const left = this.flipCols ? this.orient.cols : opp[this.orient.cols];
      return { top, bottom: opp[top], left, right: opp[left] };
    }

    vs(dim) { return info.voxel_size[dim]; }
    physW() { return info.shape[this.colDim] * this.vs(this.colDim); }
    physH() { return info.shape[this.rowDim] * this.vs(this.rowDim); }

    sizeCanvas() {
      const r = this.canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
      const w = Math.max(1, Math.round(r.width * dpr)), h = Math.max(1, Math.round(r.height * dpr));
      if (this.canvas.width !== w || this.canvas.height !== h) { this.canvas.width = w; this.canvas.height = h; }
      return r.width > 0 && r.height > 0;
    }

    fit() {
      if (!this.sizeCanvas()) return;
      const W = this.canvas.width, H = this.canvas.height;
      this.zoom = 0.96 * Math.min(W / this.physW(), H / this.physH());
      this.cx = this.physW() / 2; this.cy = this.physH() / 2; this.fitted = true;
    }

    // physical plane coordinates (px along the columns, py along the rows) <-> canvas
    // pixels; a flip mirrors about the plane's centre
    sx() { return this.flipCols ? -1 : 1; }
    sy() { return this.flipRows ? -1 : 1; }
    toScreen(px, py) {
      return [(px - this.cx) * this.zoom * this.sx() + this.canvas.width / 2,
        (py - this.cy) * this.zoom * this.sy() + this.canvas.height / 2];
    }
    toPhys(sx, sy) {
      return [(sx - this.canvas.width / 2) / (this.zoom * this.sx()) + this.cx,
        (sy - this.canvas.height / 2) / (this.zoom * this.sy()) + this.cy];
    }
    // canvas transform drawing in physical plane coordinates
    dataTransform(g) {
      const a = this.zoom * this.sx(), d = this.zoom * this.sy();
      g.setTransform(a, 0, 0, d, this.canvas.width / 2 - a * this.cx, this.canvas.height / 2 - d * this.cy);
    }

    bind() {
      const c = this.canvas;
      let drag = null;
      const dpr = () => window.devicePixelRatio || 1;
      c.addEventListener("wheel", (e) => {
        e.preventDefault();
        if (e.ctrlKey || e.metaKey) {
          const [px, py] = this.toPhys(e.offsetX * dpr(), e.offsetY * dpr());
          const f = Math.exp(-e.deltaY * 0.0025);
          this.zoom *= f;
          this.cx = px - (px - this.cx) / f; this.cy = py - (py - this.cy) / f;
        } else {
          const step = (e.deltaY > 0 ? 1 : -1) * (e.shiftKey ? 10 : 1);
          cursor[this.axis] = Math.max(0, Math.min(info.shape[this.axis] - 1, cursor[this.axis] + step));
        }
        requestDraw();
      }, { passive: false });
      c.addEventListener("pointerdown", (e) => { drag = { x: e.offsetX, y: e.offsetY, moved: false }; c.setPointerCapture(e.pointerId); });
      c.addEventListener("pointermove", (e) => {
        if (!drag) return;
        const dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
        if (drag.moved) {
          this.cx -= dx * dpr() / (this.zoom * this.sx()); this.cy -= dy * dpr() / (this.zoom * this.sy());
          drag.x = e.offsetX; drag.y = e.offsetY; requestDraw();
        }
      });
      c.addEventListener("pointerup", (e) => {
        if (drag && !drag.moved) { // click: move the crosshair (the other planes' slices)
          const [px, py] = this.toPhys(e.offsetX * dpr(), e.offsetY * dpr());
          const col = Math.floor(px / this.vs(this.colDim)), row = Math.floor(py / this.vs(this.rowDim));
          if (col >= 0 && row >= 0 && col < info.shape[this.colDim] && row < info.shape[this.rowDim]) {
            cursor[this.colDim] = col; cursor[this.rowDim] = row; requestDraw();
          }
        }
        drag = null;
      });
      c.addEventListener("dblclick", () => { this.fit(); requestDraw(); });
      new ResizeObserver(() => {
        this.sizeCanvas();
        if (!this.fitted) this.fit();
        requestDraw();
      }).observe(c);
    }

    // the level whose pixel size is nearest (in log scale) to one canvas pixel
    level(levels) {
      let L = 0;
      while (L + 1 < levels.length && this.zoom * levels[L + 1].scale[this.colDim] <= Math.SQRT2) L++;
      return L;
    }

    drawLayer(g, levels, L, urlFor, keyFor, kind) {
      const lv = levels[L];
      const rows = lv.shape[this.rowDim], cols = lv.shape[this.colDim];
      const sr = lv.scale[this.rowDim], sc = lv.scale[this.colDim];
      const [ax, ay] = this.toPhys(0, 0), [bx, by] = this.toPhys(this.canvas.width, this.canvas.height);
      const [p0x, p1x] = [Math.min(ax, bx), Math.max(ax, bx)], [p0y, p1y] = [Math.min(ay, by), Math.max(ay, by)];
      const tx0 = Math.max(0, Math.floor(p0x / sc / TILE)), tx1 = Math.min(Math.ceil(cols / TILE) - 1, Math.floor(p1x / sc / TILE));
      const ty0 = Math.max(0, Math.floor(p0y / sr / TILE)), ty1 = Math.min(Math.ceil(rows / TILE) - 1, Math.floor(p1y / sr / TILE));
      let complete = true;
      this.dataTransform(g);
      for (let ty = ty0; ty <= ty1; ty++) {
        for (let tx = tx0; tx <= tx1; tx++) {
          const t = fetchTile(urlFor(L, ty, tx), keyFor(L, ty, tx), kind);
          if (!t.img) { complete = complete && t.failed; continue; }
          const img = kind === "labels" ? colorize(t.img) : t.img;
          g.drawImage(img, tx * TILE * sc, ty * TILE * sr, t.img.width * sc, t.img.height * sr);
        }
      }
      g.setTransform(1, 0, 0, 1, 0, 0);
      return complete;
    }

    draw() {
      if (!this.fitted) this.fit();
      if (!this.fitted) return; // not laid out yet
      const g = this.canvas.getContext("2d");
      const W = this.canvas.width, H = this.canvas.height;
      g.fillStyle = "#000"; g.fillRect(0, 0, W, H);
      const a = this.axis, idx = cursor[a];
      this.slider.value = idx;
      const coarsest = info.levels.length - 1;
      const L = this.level(info.levels);
      g.imageSmoothingEnabled = this.zoom * info.levels[0].scale[this.colDim] < 2;
      const wkey = `${win.lo.toFixed(3)},${win.hi.toFixed(3)}`;
      const imgUrl = (lvl, ty, tx) => `${base}/slice?axis=${AXIS_NAMES[a]}&index=${idx}&level=${lvl}&tile=${ty},${tx}&tile_size=${TILE}&window=${wkey}`;
      const imgKey = (lvl, ty, tx) => `i/${a}/${idx >> lvl}/${lvl}/${ty},${tx}/${wkey}`;
      if (L !== coarsest) this.drawLayer(g, info.levels, coarsest, imgUrl, imgKey, "image");
      this.drawLayer(g, info.levels, L, imgUrl, imgKey, "image");
      if (segInfo && opacity > 0) {
        g.globalAlpha = opacity;
        g.imageSmoothingEnabled = false;
        const levels = segInfo.levels;
        const SL = Math.min(this.level(levels), levels.length - 1);
        const segUrl = (lvl, ty, tx) => `${base}/segmentation/${encodeURIComponent(seg)}/slice?axis=${AXIS_NAMES[a]}&index=${idx}&level=${lvl}&tile=${ty},${tx}&tile_size=${TILE}`;
        const segKey = (lvl, ty, tx) => `s/${seg}/${a}/${idx >> lvl}/${lvl}/${ty},${tx}`;
        this.drawLayer(g, levels, SL, segUrl, segKey, "labels");
        g.globalAlpha = 1;
      }
      if (segInfo && thickness && thicknessOn && thicknessOpacity > 0) {
        // RGBA tiles on the labels' pyramid (transparent outside every class)
        g.globalAlpha = thicknessOpacity;
        g.imageSmoothingEnabled = false;
        const levels = segInfo.levels;
        const TL = Math.min(this.level(levels), levels.length - 1);
        const tUrl = (lvl, ty, tx) => `${thickness.thickness_slice}?axis=${AXIS_NAMES[a]}&index=${idx}&level=${lvl}&tile=${ty},${tx}&tile_size=${TILE}`;
        const tKey = (lvl, ty, tx) => `t/${seg}/${thickness.created_at}/${a}/${idx >> lvl}/${lvl}/${ty},${tx}`;
        this.drawLayer(g, levels, TL, tUrl, tKey, "image");
        g.globalAlpha = 1;
      }
      // crosshair: the other two planes' positions
      g.lineWidth = 1;
      const [rd, cd] = [this.rowDim, this.colDim];
      const [xLine] = this.toScreen((cursor[cd] + 0.5) * this.vs(cd), 0);
      const [, yLine] = this.toScreen(0, (cursor[rd] + 0.5) * this.vs(rd));
      g.setLineDash([4, 4]);
      g.strokeStyle = AXIS_COLORS[cd]; g.beginPath(); g.moveTo(xLine, 0); g.lineTo(xLine, H); g.stroke();
      g.strokeStyle = AXIS_COLORS[rd]; g.beginPath(); g.moveTo(0, yLine); g.lineTo(W, yLine); g.stroke();
      g.setLineDash([]);
      g.strokeStyle = AXIS_COLORS[a]; g.lineWidth = 3; g.strokeRect(1, 1, W - 2, H - 2);
      this.title.textContent = `${this.name} · slice ${idx + 1} / ${info.shape[a]} · level ${L} · ${Math.round(this.zoom * info.voxel_size[cd] * 100)}%`;
      const letters = this.edgeLetters();
      this.edges.forEach((e) => { e.textContent = letters ? letters[e.dataset.side] : ""; e.hidden = !letters; });
      this.root.dataset.flipRows = String(this.flipRows); this.root.dataset.flipCols = String(this.flipCols);
    }
  }

  // the fourth cell of the three-plane layout: where the crosshair is
  const infoCell = el("div", { class: "plane info-cell" });
  function renderInfo() {
    if (!infoCell.isConnected) return;
    const unit = ` ${unitLabel(info)}`;
    const pos = cursor.map((c, i) => +(c * info.voxel_size[i]).toPrecision(5));
    infoCell.replaceChildren(...[
      el("h3", {}, "Crosshair"),
      el("dl", { class: "meta" },
        ...["z", "y", "x"].flatMap((n, i) => [el("dt", {}, n), el("dd", {}, `slice ${cursor[i] + 1} / ${info.shape[i]} · ${pos[i]}${unit}`)])),
      el("p", { class: "small" }, "Click a plane to move the other two planes there."),
      segInfo ? el("p", { class: "small" }, `Overlay: ${segInfo.name || seg} at ${Math.round(opacity * 100)}% opacity`) : null,
      thickness && thicknessOn ? el("p", { class: "small" }, `Local thickness of ${segInfo && segInfo.name ? segInfo.name : seg}, 0–${+thickness.legend.max.toPrecision(4)} ${thickness.legend.unit || "voxel"}`) : null,
    ].filter(Boolean));
  }

  let drawQueued = false;
  function requestDraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      planes.forEach((p) => p.root.isConnected && p.draw());
      renderInfo();
    });
  }

  function setupWindow() {
    const { min, max, p_low, p_high } = info.intensity;
    const step = (max - min) / 500 || 1;
    for (const [id, v] of [["win-lo", p_low], ["win-hi", p_high]]) {
      Object.assign($(id), { min, max: max === min ? min + 1 : max, step, value: v });
    }
    win.lo = p_low; win.hi = p_high;
    let t = null;
    const update = () => {
      let lo = +$("win-lo").value, hi = +$("win-hi").value;
      if (hi <= lo) hi = lo + step;
      win.lo = lo; win.hi = hi;
      $("win-text").textContent = `level ${+((lo + hi) / 2).toPrecision(4)}, width ${+(hi - lo).toPrecision(4)}`;
      clearTimeout(t); t = setTimeout(requestDraw, 120);
    };
    $("win-lo").addEventListener("input", update); $("win-hi").addEventListener("input", update);
    $("win-auto").addEventListener("click", () => { $("win-lo").value = p_low; $("win-hi").value = p_high; update(); });
    update();
  }

  function renderClasses() {
    const labels = [];
    const n = Math.max(classes.length, 2);
    for (let k = 1; k < n; k++) labels.push(k);
    $("class-list").replaceChildren(...labels.map((k) => {
      const color = el("input", { type: "color", value: classColor(classes, k), "aria-label": "colour" });
      color.addEventListener("input", () => {
        classes[k] = Object.assign({}, classes[k] || { name: `class ${k}` }, { color: color.value });
        colorVersion++; requestDraw();
      });
      const box = el("input", { type: "checkbox", checked: !hidden.has(k), "aria-label": "visible" });
      box.addEventListener("change", () => { box.checked ? hidden.delete(k) : hidden.add(k); colorVersion++; requestDraw(); });
      return el("li", {}, box, color, (classes[k] && classes[k].name) || `label ${k}`);
    }));
  }

  // the thickness map of the selected segmentation, when it was measured with one
  function renderThickness() {
    $("thickness-controls").hidden = !thickness;
    if (!thickness) return;
    const lg = thickness.legend;
    $("thickness-bar").style.background = `linear-gradient(to right, ${lg.colors.join(", ")})`;
    $("thickness-ticks").replaceChildren(...lg.ticks.map((t) => el("span", {}, String(+t.toPrecision(3)))));
    $("thickness-unit").textContent = `local thickness (${lg.unit || "voxel"})${thickness.clipped ? " · thicker structures shown as the maximum" : ""}; transparent: no class`;
  }

  async function selectSeg(id) {
    seg = id || null; segInfo = null; thickness = null;
    if (seg) {
      try {
        segInfo = await apiJSON(`${base}/segmentation/${encodeURIComponent(seg)}`);
        classes = (segInfo.classes || []).slice();
        if (!segInfo.levels) segInfo = null;
      } catch (err) { toast(err.message, true); }
      if (segInfo && segInfo.morphometry) {
        try {
          const res = await apiJSON(`${base}/measure?segmentation_id=${encodeURIComponent(seg)}`);
          if (res.thickness_map && res.legend) thickness = res;
        } catch (err) { if (err.status !== 404) toast(err.message, true); }
      }
    }
    renderThickness();
    colorVersion++; renderClasses(); requestDraw();
  }

  function layout() {
    const v = $("layout").value;
    const container = $("planes");
    const show = v === "3" ? planes : planes.filter((p) => AXIS_NAMES[p.axis] === v);
    container.classList.toggle("single", v !== "3");
    container.replaceChildren(...show.map((p) => p.root), ...(v === "3" ? [infoCell] : []));
    show.forEach((p) => { p.fitted = false; });
    requestDraw();
  }

  async function init() {
    try {
      info = await apiJSON(`${base}/image`);
    } catch (err) {
      $("viewer-empty").hidden = false;
      if (err.status !== 404) $("viewer-empty").textContent = err.message;
      return;
    }
    info.shape.forEach((s, i) => { cursor[i] = Math.floor(s / 2); });
    $("viewer-info").textContent = `${info.shape.join(" × ")} voxels · ${info.dtype} · voxel ${info.voxel_size.map((v) => +v.toPrecision(3)).join(" × ")} ${unitLabel(info)}` +
      (info.orientation ? ` · orientation ${info.orientation}` : "");
    ml4p.voxelWarning($("viewer-warning"), info, ml4p.jobId);
    setupWindow();
    for (let a = 0; a < 3; a++) planes.push(new Plane(a));
    $("layout").addEventListener("change", layout);
    layout();
    const out = await apiJSON(`${base}/outputs`);
    const segs = out.segmentations.filter((s) => s.labels);
    if (segs.length) {
      $("overlay-controls").hidden = false;
      const wanted = new URLSearchParams(location.search).get("seg");
      $("seg-select").replaceChildren(el("option", { value: "" }, "none"), ...segs.map((s) => el("option", { value: s.id }, s.name || s.id)));
      $("seg-select").value = segs.some((s) => s.id === wanted) ? wanted : segs[segs.length - 1].id;
      $("seg-select").addEventListener("change", () => selectSeg($("seg-select").value));
      $("seg-opacity").addEventListener("input", () => { opacity = +$("seg-opacity").value / 100; requestDraw(); });
      thicknessOn = new URLSearchParams(location.search).get("thickness") === "1";
      $("thickness-show").checked = thicknessOn;
      $("thickness-show").addEventListener("change", () => { thicknessOn = $("thickness-show").checked; requestDraw(); });
      $("thickness-opacity").addEventListener("input", () => { thicknessOpacity = +$("thickness-opacity").value / 100; requestDraw(); });
      await selectSeg($("seg-select").value);
    }
  }
  init();
})();
