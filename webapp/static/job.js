// Job page: pipeline with live progress (polls /api/job/<id>), metadata, outputs, actions.
"use strict";
(function () {
  const { el, api, apiJSON, fmtBytes, fmtDate, statusClass, toast } = window.ml4p;
  const jobId = ml4p.jobId;
  const base = `/api/job/${encodeURIComponent(jobId)}`;
  const $ = (id) => document.getElementById(id);
  const annotate = document.body.dataset.annotate === "true";
  let imageShown = false, timer = null, lastState = null;

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
    const failed = !!(job.state && job.state.failed);
    badge.textContent = job.status; badge.className = "badge " + statusClass(job.state);
    const p = Math.max(0, Math.min(1, job.progress || 0));
    $("job-bar").style.width = `${(p * 100).toFixed(1)}%`;
    $("job-bar").parentElement.className = "progress grow" + (failed ? " failed" : p >= 1 ? " done" : "");
    $("job-percent").textContent = `${Math.round(p * 100)}%`;
    $("job-message").textContent = failed && job.message === job.error ? "" : (job.message || "");
    $("job-error").hidden = !failed;
    $("job-error-text").textContent = failed ? (job.error || "The step failed.") : "";
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

  function renderActions(job) {
    const avail = job.available || {};
    const items = [];
    const image = avail.image && avail.image.exists;
    const segs = (avail.segmentations || []).filter((s) => s.labels);
    if (image && annotate) items.push(link(`/job/annotate/${encodeURIComponent(jobId)}`, "Annotate", !segs.length));
    if (image) items.push(link(`/job/${encodeURIComponent(jobId)}/viewer`, "Slice viewer", segs.length > 0));
    if (image) items.push(link(`/job/${encodeURIComponent(jobId)}/3d`, "3D view"));
    if (image) items.push(link(`/job/${encodeURIComponent(jobId)}/download`, "Downloads"));
    const busy = !!(job.state && job.state.busy);
    const annotated = avail.annotations && avail.annotations.exists;
    if (annotate && image && annotated && !busy) {
      items.push(el("button", { class: "btn", id: "segment-btn", onclick: () => post("start", "Segmentation queued.") }, "Segment whole volume"));
    }
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
    if (busy) {
      items.push(el("button", { class: "btn", onclick: () => post("cancel", "Cancelled.") }, "Cancel"));
    }
    $("actions").replaceChildren(...items);
    const results = [];
    for (const s of avail.segmentations || []) {
      const classes = (s.classes || []).map((c) => c.name).join(", ");
      results.push(el("div", { class: "result" },
        el("b", {}, `Segmentation ${s.id}`),
        el("div", { class: "muted small" }, [s.labels ? `labels ${fmtBytes(s.labels_bytes)}` : "labels pending",
          meshSummary(s.meshes), classes].filter(Boolean).join(" · "))));
    }
    if (image) results.unshift(el("div", {}, el("b", {}, "Image"), el("div", { class: "muted small" }, `OME-Zarr, ${fmtBytes(avail.image.bytes)}`)));
    if (results.length) $("results").replaceChildren(...results);
  }

  function dl(rows) {
    return rows.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]);
  }

  async function renderImage() {
    try {
      const info = await apiJSON(`${base}/image`);
      const src = info.source || {};
      const unit = info.unit ? ` ${info.unit}` : "";
      $("image-meta").replaceChildren(...dl([
        ["Shape (z, y, x)", info.shape.join(" × ")],
        ["Data type", info.dtype],
        ["Voxel size", info.voxel_size.map((v) => +v.toPrecision(4)).join(" × ") + unit],
        ["Pyramid", `${info.levels.length} level${info.levels.length > 1 ? "s" : ""}`],
        ["Intensity", `${+info.intensity.min.toPrecision(5)} … ${+info.intensity.max.toPrecision(5)}`],
        ["Source", info.source_type],
        ["Modality", src.modality], ["Manufacturer", src.manufacturer], ["Scanner model", src.manufacturer_model],
        ["Series", src.series_description], ["Series UID", src.series_uid], ["Study UID", src.study_uid],
        ["Non-uniform spacing", src.non_uniform_spacing ? "yes" : null],
      ]));
      imageShown = true;
    } catch (err) {
      if (err.status !== 404) toast(`Image metadata: ${err.message}`, true);
    }
  }

  async function poll() {
    clearTimeout(timer);
    try {
      const job = await apiJSON(base);
      renderStatus(job); renderPipeline(job); renderActions(job);
      if (!imageShown && job.available && job.available.image.exists) await renderImage();
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
  poll();
})();
