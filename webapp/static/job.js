// Job page: pipeline with live progress (polls /api/job/<id>), metadata with the voxel size
// (editable), warnings, results with their names and reports, actions (segment with a model
// picker and clean-up options, mesh, retry where a retry can help).
"use strict";
(function () {
  const { el, api, apiJSON, fmtBytes, fmtDate, statusClass, toast, unitLabel, voxelWarning } = window.ml4p;
  const jobId = ml4p.jobId;
  const base = `/api/job/${encodeURIComponent(jobId)}`;
  const $ = (id) => document.getElementById(id);
  const annotate = document.body.dataset.annotate === "true";
  let imageShown = false, timer = null, lastState = null, lastJob = null, imageInfo = null;

  // What the status means (which step, busy, queued, failed) is the server's `job.state`;
  // whether a step's result exists comes from what is on disk (`job.available`).
  function renderPipeline(job) {
    const st = job.state || {};
    const avail = job.available || {};
    const segs = avail.segmentations || [];
    const models = (avail.models || []).length > 0;
    const done = {
      upload: st.phase !== "upload",
      convert: !!(avail.image && avail.image.exists),
      annotate: !!(avail.annotations && avail.annotations.exists) || models,
      train: models,
      segment: segs.some((s) => s.labels),
      mesh: segs.some((s) => s.meshes.length),
      measure: segs.some((s) => s.morphometry),
    };
    // a failed segment stage failed in training when no model exists yet
    const failed = st.failed ? (st.step === "segment" && !models ? "train" : st.step) : null;
    document.querySelectorAll("#pipeline li").forEach((li) => {
      const step = li.dataset.step;
      li.classList.remove("done", "active", "failed");
      let note = "";
      if (failed === step) { li.classList.add("failed"); note = "failed"; }
      else if (st.active && st.step === step) {
        li.classList.add("active");
        note = st.queued ? "queued" : `${Math.round((job.progress || 0) * 100)}%`;
      } else if (done[step]) { li.classList.add("done"); note = "done"; }
      li.querySelector("small").textContent = note;
    });
  }

  function renderStatus(job) {
    $("job-name").textContent = job.name || "(unnamed)";
    document.title = `${job.name || "job"} · ml4paleo`;
    const badge = $("status-badge");
    const st = job.state || {};
    const failed = !!st.failed;
    badge.textContent = job.status; badge.className = "badge " + statusClass(st);
    badge.title = st.label || job.status;
    const p = Math.max(0, Math.min(1, job.progress || 0));
    $("job-bar").style.width = `${(p * 100).toFixed(1)}%`;
    $("job-bar").parentElement.className = "progress grow" + (failed ? " failed" : p >= 1 ? " done" : "");
    $("job-percent").textContent = `${Math.round(p * 100)}%`;
    // the message is written with the status (the server keeps them in step)
    $("job-message").textContent = failed && job.message === job.error ? "" : (job.message || "");
    $("job-error").hidden = !failed;
    $("job-error-text").textContent = failed ? (job.error || "The step failed.") : "";
    // Retry only where it can help: not for bad input, which fails the same way again
    $("retry-btn").hidden = !(failed && job.retry_helps);
    $("retry-hint").hidden = !(failed && !job.retry_helps);
    $("retry-hint").textContent = failed && !job.retry_helps ? (st.phase === "convert"
      ? "Retrying cannot help: the files cannot be converted as they are. Fix them and upload them again as a new job."
      : "Retrying cannot help with this error: change what it names (annotations, model, input) and start the step again.") : "";
    // the voxel size's own warning sits with the image (and its form)
    const warnings = (job.warnings || []).filter((w) => w.code !== "voxel_size_unknown");
    $("job-warnings").hidden = !warnings.length;
    $("job-warnings-list").replaceChildren(...warnings.map((w) => el("li", { dataset: { code: w.code } }, w.message)));
    $("history").replaceChildren(...(job.history || []).slice().reverse().map((h) =>
      el("li", {}, el("span", { class: "muted" }, fmtDate(h.at)), " · ", el("b", {}, h.status), h.message ? ` · ${h.message}` : "")));
  }

  function meshSummary(meshes) {
    if (!meshes.length) return "no meshes";
    const labels = new Set(meshes.map((m) => m.label));
    const formats = Array.from(new Set(meshes.map((m) => m.format.toUpperCase()))).join(", ");
    return `${labels.size} label${labels.size === 1 ? "" : "s"} meshed (${formats})`;
  }

  function link(href, text, primary) { return el("a", { class: "btn" + (primary ? " primary" : ""), href }, text); }

  async function rename(kind, id, current) {
    const name = window.prompt(`New name (empty: back to the default name):`, current);
    if (name === null) return;
    const url = kind === "model" ? `${base}/models/${encodeURIComponent(id)}/rename` : `${base}/segmentation/${encodeURIComponent(id)}/rename`;
    try { await apiJSON(url, { json: { name: name.trim() } }); toast("Renamed."); } catch (err) { toast(err.message, true); }
    pickerFilled = false;
    poll();
  }

  function renderResults(job) {
    const avail = job.available || {};
    const image = avail.image && avail.image.exists;
    const results = [];
    for (const s of (avail.segmentations || []).slice().reverse()) {
      const classes = (s.classes || []).map((c) => c.name).join(", ");
      const segBase = `${base}/segmentation/${encodeURIComponent(s.id)}`;
      const cleanup = s.cleanup && (s.cleanup.min_size || s.cleanup.fill_holes)
        ? `clean-up: ${[s.cleanup.min_size ? `islands < ${s.cleanup.min_size} voxels removed` : "", s.cleanup.fill_holes ? "holes filled" : ""].filter(Boolean).join(", ")}` : "";
      results.push(el("div", { class: "result", dataset: { segmentation: s.id } },
        el("div", { class: "row spread" }, el("b", { class: "seg-name" }, s.name || `Segmentation ${s.id}`),
          el("button", { class: "btn small", onclick: () => rename("segmentation", s.id, s.name) }, "Rename")),
        el("div", { class: "muted small" }, [s.labels ? `labels ${fmtBytes(s.labels_bytes)}` : "labels pending",
          meshSummary(s.meshes), s.morphometry ? "measured" : "", classes, cleanup].filter(Boolean).join(" · ")),
        s.measurements_outdated ? el("p", { class: "small warn-text" }, "The voxel size changed after these meshes and statistics were made: make meshes again to measure in the new size.") : null,
        s.labels ? el("div", { class: "row wrap small" },
          el("a", { href: `${segBase}/report.pdf`, target: "_blank", class: "report-pdf" }, "Report (PDF)"),
          el("a", { href: `${segBase}/report.html`, target: "_blank", class: "report-html" }, "Report (web page)"),
          el("a", { href: `/job/${encodeURIComponent(jobId)}/viewer?seg=${encodeURIComponent(s.id)}` }, "View")) : null));
    }
    const models = lastModels || [];
    if (models.length) {
      results.push(el("h3", {}, "Models"));
      for (const m of models.slice().reverse()) {
        results.push(el("div", { class: "result small", dataset: { model: m.id } },
          el("div", { class: "row spread" }, el("span", { class: "model-name" }, m.name),
            el("button", { class: "btn small", onclick: () => rename("model", m.id, m.name) }, "Rename"))));
      }    }
    if (image) results.unshift(el("div", {}, el("b", {}, "Image"), el("div", { class: "muted small" }, `OME-Zarr, ${fmtBytes(avail.image.bytes)}`)));
    if (results.length) $("results").replaceChildren(...results);
  }

  // The morphometry table of the newest measured segmentation (GET /api/job/<id>/measure).
  const COLUMNS = [
    ["bv_tv", "BV/TV"], ["bs_tv", "BS/TV"], ["thickness_mean", "Th mean"], ["thickness_sd", "Th SD"],
    ["thickness_max", "Th max"], ["spacing_mean", "Sp mean"], ["connectivity_density", "Conn.D"],
    ["degree_of_anisotropy", "DA"], ["objects", "objects"],
  ];
  let shownMorphometry = null;
  function num(v) { return v === null || v === undefined ? "–" : typeof v === "number" ? String(+v.toPrecision(4)) : String(v); }
  async function renderMorphometry(job) {
    const segs = ((job.available || {}).segmentations || []).filter((s) => s.morphometry);
    if (!segs.length) { $("morphometry-card").hidden = true; return; }
    const seg = segs.some((s) => s.id === job.segmentation_id) ? job.segmentation_id : segs[segs.length - 1].id;
    const stamp = `${seg}/${((job.morphometry || {})[seg] || {}).created_at || ""}`;
    if (stamp === shownMorphometry) return;
    let res;
    try {
      res = await apiJSON(`${base}/measure?segmentation_id=${encodeURIComponent(seg)}`);
    } catch (err) { if (err.status !== 404) toast(`Morphometry: ${err.message}`, true); return; }
    shownMorphometry = stamp;
    const units = res.column_units || {};
    const head = el("tr", {}, el("th", {}, "class"), ...COLUMNS.map(([k, name]) =>
      el("th", {}, units[k] ? `${name} (${units[k]})` : name)));
    const rows = (res.table || []).map((r) => el("tr", { dataset: { value: r.value } }, el("td", {}, r.name),
      ...COLUMNS.map(([k]) => el("td", { class: "num" }, num(r[k])))));
    $("morphometry-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
    $("morphometry-note").textContent = `Segmentation ${seg} · measured ${fmtDate(res.created_at)}` +
      (res.max_thickness ? ` · thickness up to ${num(res.max_thickness)} ${res.unit || "voxel"}${res.clipped ? " (reached by some thickness or spacing: those are under-reported)" : ""}` : "");
    $("morphometry-files").replaceChildren(
      ...(res.thickness_map ? [link(`/job/${encodeURIComponent(jobId)}/viewer?seg=${encodeURIComponent(seg)}&thickness=1`, "Thickness map")] : []),
      ...Object.entries(res.files || {}).map(([name, href]) => link(href, name)));
    $("morphometry-card").hidden = false;
  }

  // ---- segment form: model picker (this job's models, other jobs' by job name) + clean-up
  let lastModels = null, pickerFilled = false;
  function cleanupOptions() {
    const minSize = Math.max(0, Math.floor(Number($("seg-min-size").value) || 0));
    return { min_size: $("seg-cleanup").checked ? minSize : 0, fill_holes: $("seg-fill-holes").checked };  }

  async function startSegmentation() {
    try {
      const body = await ml4p.segmentRequest($("seg-model"), jobId, cleanupOptions());
      await apiJSON(`${base}/start`, { json: body });
      toast("Segmentation queued.");
      pickerFilled = false;
    } catch (err) { toast(err.message, true); }
    poll();
  }

  function renderActions(job) {
    const avail = job.available || {};
    const items = [];
    const image = avail.image && avail.image.exists;
    const segs = (avail.segmentations || []).filter((s) => s.labels);
    if (image && annotate) items.push(link(`/job/${encodeURIComponent(jobId)}/annotate`, "Annotate", !segs.length));
    if (image) items.push(link(`/job/${encodeURIComponent(jobId)}/viewer`, "Slice viewer", segs.length > 0));
    if (image) items.push(link(`/job/${encodeURIComponent(jobId)}/3d`, "3D view"));
    if (image) items.push(link(`/job/${encodeURIComponent(jobId)}/download`, "Downloads"));
    const busy = !!(job.state && job.state.busy);
    if (annotate && segs.length && !busy) {
      const shown = document.getElementById("mesh-smooth");  // keep the choice across re-renders
      const smooth = el("select", { id: "mesh-smooth", title: "Surface of the meshes" },
        el("option", { value: "light" }, "smooth surface"),
        el("option", { value: "strong" }, "smoother surface"),
        el("option", { value: "none" }, "voxel steps"));
      smooth.value = shown ? shown.value : "light";
      items.push(smooth);
      items.push(el("button", { class: "btn", id: "mesh-btn", onclick: () => post("mesh", "Meshing queued.", { formats: ["stl", "glb"], smooth: smooth.value }) }, "Make meshes"));
    }
    if (segs.length && !busy) {
      items.push(el("button", { class: "btn", id: "measure-btn", onclick: () => post("measure", "Measuring queued.") }, "Measure"));
    }
    if (busy) {
      items.push(el("button", { class: "btn", onclick: () => post("cancel", "Cancelled.") }, "Cancel"));
    }
    $("actions").replaceChildren(...items);
    const canSegment = annotate && image && !busy;
    $("segment-card").hidden = !(annotate && image);
    $("segment-btn").disabled = !canSegment;
    const pickerKey = `${(avail.models || []).length}:${job.chosen_model_id || ""}`;
    if (canSegment && pickerFilled !== pickerKey) {
      pickerFilled = pickerKey;
      const annotated = !!(avail.annotations && avail.annotations.exists);
      ml4p.fillModelPicker($("seg-model"), jobId, { annotated, chosen: job.chosen_model_id })
        .then((mine) => { lastModels = mine; renderResults(job); });
    }
  }

  function dl(rows) {
    return rows.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v instanceof Node ? v : String(v))]);
  }

  function fmtSize(vs) { return vs.map((v) => +Number(v).toPrecision(4)).join(" × "); }

  async function renderImage() {
    try {
      const info = await apiJSON(`${base}/image`);
      imageInfo = info;
      const src = info.source || {};
      const st = info.voxel_size_status || {};
      const sizeText = `${fmtSize(info.voxel_size)} ${unitLabel(info)}`;
      const tag = { known: st.source === "user" ? "set by you" : "from the file", assumed: "partly assumed", unknown: "unknown" }[st.state] || "";
      $("image-meta").replaceChildren(...dl([
        ["Shape (z, y, x)", info.shape.join(" × ")],
        ["Data type", info.dtype],
        ["Voxel size (z, y, x)", el("span", { id: "voxel-size-text" }, sizeText, el("span", { class: "muted" }, ` (${tag})`))],
        ["Orientation", info.orientation],
        ["Pyramid", `${info.levels.length} level${info.levels.length > 1 ? "s" : ""}`],
        ["Intensity", `${+info.intensity.min.toPrecision(5)} … ${+info.intensity.max.toPrecision(5)}`],
        ["Source", info.source_type],
        ["Modality", src.modality], ["Manufacturer", src.manufacturer], ["Scanner model", src.manufacturer_model],
        ["Series", src.series_description], ["Series UID", src.series_uid], ["Study UID", src.study_uid],
        ["Non-uniform spacing", src.non_uniform_spacing ? "yes" : null],
      ]));
      voxelWarning($("voxel-warning"), info, jobId);
      fillVoxelForm(info);
      $("voxel-size").hidden = false;
      imageShown = true;
    } catch (err) {
      if (err.status !== 404) toast(`Image metadata: ${err.message}`, true);
    }
  }

  function fillVoxelForm(info) {
    ["vs-z", "vs-y", "vs-x"].forEach((id, i) => { $(id).value = +Number(info.voxel_size[i]).toPrecision(6); });
    const unit = info.unit && Array.from($("vs-unit").options).some((o) => o.value === info.unit) ? info.unit : "micrometer";
    $("vs-unit").value = unit;
  }

  $("voxel-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const voxel_size = ["vs-z", "vs-y", "vs-x"].map((id) => Number($(id).value));
    try {
      const r = await apiJSON(`${base}/voxel-size`, { json: { voxel_size, unit: $("vs-unit").value } });
      toast(`Voxel size set to ${fmtSize(r.voxel_size)} ${unitLabel(r.unit)}.`);
      imageShown = false;
    } catch (err) { toast(err.message, true); }
    poll();
  });

  async function poll() {
    clearTimeout(timer);
    try {
      const job = await apiJSON(base);
      lastJob = job;
      renderStatus(job); renderPipeline(job);
      renderActions(job); renderResults(job); renderMorphometry(job);      if (!imageShown && job.available && job.available.image.exists) await renderImage();
      $("voxel-save").disabled = !!(job.state && job.state.busy);
      lastState = job.state;
    } catch (err) {
      if (err.status === 404) { $("job-message").textContent = "This job no longer exists."; return; }
      $("job-message").textContent = `Connection problem: ${err.message}`;
    }
    timer = setTimeout(poll, lastState && lastState.active ? 1200 : 5000);
  }

  async function post(action, done, body) {
    try {
      await apiJSON(`${base}/${action}`, { json: body || {} });
      toast(done);
    } catch (err) { toast(err.message, true); }
    poll();
  }

  $("segment-btn").addEventListener("click", startSegmentation);
  $("seg-cleanup").addEventListener("change", () => { $("seg-min-size").disabled = !$("seg-cleanup").checked; });
  $("retry-btn").addEventListener("click", () => post("retry", "Queued again."));
  $("rename-btn").addEventListener("click", async () => {
    const name = window.prompt("New name for this job:", $("job-name").textContent);
    if (name === null || !name.trim()) return;
    try {
      await apiJSON(`${base}/rename`, { json: { name: name.trim() } });
      toast("Renamed.");
    } catch (err) { toast(err.message, true); }
    poll();
  });
  $("delete-btn").addEventListener("click", async () => {
    if (!window.confirm("Delete this job and all its files? This cannot be undone.")) return;
    const r = await api(base, { method: "DELETE" });
    if (r.ok) { window.location.href = "/"; return; }
    let msg = `HTTP ${r.status}`; try { msg = (await r.json()).error; } catch (e) { /* keep */ }
    toast(msg, true);
  });
  window.ml4pJob = { get job() { return lastJob; }, get image() { return imageInfo; } };
  poll();
})();
