// Home page: drop / choose a scan, give its voxel size (read from the file when it has one),
// upload it in chunks (resumable: unfinished uploads are listed and continue from the bytes
// the server has), then list jobs from /api/jobs.
"use strict";
(function () {
  const { el, api, apiJSON, fmtBytes, fmtDate, statusClass, progressBar, toast, unitLabel } = window.ml4p;
  const U = window.ml4pUpload;
  const $ = (id) => document.getElementById(id);
  const VS = ["up-vs-z", "up-vs-y", "up-vs-x"];
  let entries = [];
  let uploader = null;
  let typed = false;          // the user typed a voxel size (it then replaces the file's)
  let fileSize = null;        // what the file says: {voxel_size, unit, assumed}
  let resumeTarget = null;    // an unfinished upload the selection matches
  let unfinished = [];

  // ---- leave-page warning while bytes are on their way
  window.addEventListener("beforeunload", (ev) => {
    if (uploader && uploader.running) {
      ev.preventDefault();
      ev.returnValue = "An upload is in progress. It can be resumed later from this page.";
      return ev.returnValue;
    }
    return undefined;
  });

  // ---- voxel size: from the file (probe), or typed
  function setVoxelFields(vs, unit) {
    VS.forEach((id, i) => { $(id).value = vs ? +Number(vs[i]).toPrecision(6) : ""; });
    if (unit && Array.from($("up-unit").options).some((o) => o.value === unit)) $("up-unit").value = unit;
  }
  VS.concat(["up-unit"]).forEach((id) => $(id).addEventListener("input", () => {
    typed = true;
    $("voxel-note").textContent = "Your voxel size will be used.";
  }));
  function typedVoxelSize() {
    const values = VS.map((id) => $(id).value.trim());
    if (!typed || values.every((v) => v === "")) return null;
    const nums = values.map(Number);
    if (values.some((v) => v === "") || nums.some((v) => !(v > 0))) throw new Error("The voxel size needs three positive numbers (z, y, x).");
    return { voxel_size: nums, unit: $("up-unit").value };
  }

  async function probeVoxelSize() {
    fileSize = null;
    $("voxel-note").textContent = "Reading the voxel size from the file…";
    let got = null;
    try { got = await U.probe(entries); } catch (err) { got = null; }
    if (typed) return;  // the user was faster
    fileSize = got && got.voxel_size ? got : null;
    if (fileSize) {
      setVoxelFields(fileSize.voxel_size, fileSize.unit);
      const assumed = (fileSize.assumed || []).includes("z_spacing") ? " The slice spacing (z) is not in the file: check it." : "";
      $("voxel-note").textContent = `From the file: ${fileSize.voxel_size.map((v) => +v.toPrecision(4)).join(" × ")} ${unitLabel(fileSize.unit)}.${assumed} Change it if it is wrong.`;
    } else {
      setVoxelFields(null, null);
      $("voxel-note").textContent = "The file holds no voxel size: type it (or sizes will be in voxels; you can set it later on the job page).";
    }
    $("voxel-note").dataset.probed = "true";
  }

  function uploadKey(list) {
    return list.map((e) => `${U.uploadName(e.path)}:${e.file.size}`).sort().join("|");
  }

  async function select(list) {
    entries = list.filter(U.keep);
    if (!entries.length) { toast("No usable files in that selection.", true); return; }
    const total = entries.reduce((s, e) => s + e.file.size, 0);
    $("selection").hidden = false;
    $("selection-summary").textContent = `${entries.length} file${entries.length > 1 ? "s" : ""}, ${fmtBytes(total)}`;
    $("source-type").value = await U.detectSourceType(entries);
    if (!$("job-name").value) {
      const first = entries[0].path;
      $("job-name").value = first.includes("/") ? first.split("/")[0] : first.replace(/\.(zip|nii\.gz|nii|tiff?|npy)$/i, "");
    }
    typed = false;
    // the same files as an unfinished upload: resume that job instead of starting again
    await loadUnfinished();
    resumeTarget = null;
    const key = uploadKey(entries);
    for (const up of unfinished) {
      const m = U.matchUpload(entries, up);
      if (m.entries && m.entries.length === entries.length && uploadKey(m.entries) === key) { resumeTarget = up; break; }
    }
    if (resumeTarget) {
      const pct = resumeTarget.total_bytes ? Math.floor(100 * resumeTarget.received_bytes / resumeTarget.total_bytes) : 0;
      $("match-note").hidden = false;
      $("match-note").textContent = `These files match the unfinished upload “${resumeTarget.name}” (${pct} % sent). Uploading resumes it from where it stopped.`;
      $("upload-start").textContent = "Resume upload";
      $("job-name").value = resumeTarget.name || $("job-name").value;
      $("upload-voxel").disabled = true;
      $("voxel-note").textContent = resumeTarget.convert_options
        ? `Voxel size given when it started: ${resumeTarget.convert_options.voxel_size.join(" × ")} ${unitLabel(resumeTarget.convert_options.unit)}.`
        : "Voxel size: as the files say (you can set it on the job page later).";
    } else {
      $("match-note").hidden = true;
      $("upload-start").textContent = "Upload and convert";
      $("upload-voxel").disabled = false;
      await probeVoxelSize();
    }
  }

  const dz = $("dropzone");
  ["dragenter", "dragover"].forEach((t) => dz.addEventListener(t, (e) => { e.preventDefault(); dz.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => dz.addEventListener(t, () => dz.classList.remove("over")));
  dz.addEventListener("drop", async (e) => { e.preventDefault(); await select(await U.filesFromDrop(e.dataTransfer)); });
  dz.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file-input").click(); });
  $("file-input").addEventListener("change", (e) => select(U.filesFromInput(e.target)));
  $("folder-input").addEventListener("change", (e) => select(U.filesFromInput(e.target)));
  $("upload-clear").addEventListener("click", () => {
    entries = []; resumeTarget = null; $("selection").hidden = true; $("job-name").value = "";
    $("match-note").hidden = true;
  });

  function showProgress(done, total, name) {
    const f = total ? done / total : 1;
    $("upload-bar").style.width = `${(f * 100).toFixed(1)}%`;
    $("upload-text").textContent = `${fmtBytes(done)} of ${fmtBytes(total)} (${Math.floor(f * 100)}%)${name ? " · " + name : ""}`;
  }

  async function runUpload() {
    $("upload-cancel").hidden = false; $("upload-resume").hidden = true;
    try {
      await uploader.run();
      $("upload-text").textContent = "Upload complete; conversion is queued…";
      window.location.href = `/job/${encodeURIComponent(uploader.jobId)}`;
    } catch (err) {
      if (err.paused) { $("upload-text").textContent += " · paused"; }
      else { toast(`Upload failed: ${err.message}`, true); $("upload-text").textContent = `Failed: ${err.message}`; }
      $("upload-cancel").hidden = true; $("upload-resume").hidden = false;
      loadUnfinished();
    }
  }

  function startUploader(jobId, list) {
    uploader = new U.Uploader(jobId, list, showProgress);
    $("selection").hidden = true; $("upload-progress").hidden = false;
    showProgress(0, uploader.total, "");
    return runUpload();
  }

  $("upload-start").addEventListener("click", async () => {
    if (!entries.length) return;
    $("upload-start").disabled = true;
    try {
      if (resumeTarget) {
        await startUploader(resumeTarget.job_id, U.matchUpload(entries, resumeTarget).entries);
        return;
      }
      const body = { name: $("job-name").value.trim() || "Untitled scan", source_type: $("source-type").value, files: U.manifest(entries) };
      const vs = typedVoxelSize();
      if (vs) Object.assign(body, vs);
      const job = await apiJSON("/api/job/new", { json: body });
      refresh();
      await startUploader(job.job_id, entries);
    } catch (err) {
      toast(`Could not start the upload: ${err.message}`, true);
    } finally {
      $("upload-start").disabled = false;
    }
  });
  $("upload-cancel").addEventListener("click", () => uploader && uploader.pause());
  $("upload-resume").addEventListener("click", () => uploader && runUpload());

  // ---- unfinished uploads: progress, resume (choose the same files), cancel
  let resuming = null;
  async function loadUnfinished() {
    try { unfinished = (await apiJSON("/api/uploads")).uploads || []; } catch (err) { unfinished = []; }
    const mine = uploader && uploader.running ? uploader.jobId : null;
    const list = unfinished.filter((u) => u.job_id !== mine);
    $("unfinished-card").hidden = !list.length;
    $("unfinished-list").replaceChildren(...list.map((u) => {
      const f = u.total_bytes ? u.received_bytes / u.total_bytes : 0;
      const files = u.files.length;
      const folder = u.files.some((x) => (x.given || x.path).includes("/"));
      return el("li", { dataset: { jobId: u.job_id } },
        el("b", {}, u.name || "(unnamed)"),
        el("span", { class: "muted small" }, fmtDate(u.created_at)),
        progressBar(f),
        el("span", { class: "small upload-pct" }, `${Math.floor(f * 100)} % · ${fmtBytes(u.received_bytes)} of ${u.total_bytes === null ? "?" : fmtBytes(u.total_bytes)} · ${u.files_complete} of ${files} file${files === 1 ? "" : "s"}`),
        el("button", { class: "btn small primary", onclick: () => { resuming = u; $(folder ? "resume-folder" : "resume-files").click(); } },
          folder ? "Resume: choose the folder…" : "Resume: choose the file(s)…"),
        el("button", { class: "btn small danger", onclick: () => cancelUpload(u) }, "Cancel"));
    }));
  }

  async function cancelUpload(u) {
    if (!window.confirm(`Cancel the upload “${u.name}” and delete what was sent?`)) return;
    const r = await api(`/api/job/${encodeURIComponent(u.job_id)}`, { method: "DELETE" });
    if (!r.ok) { let msg = `HTTP ${r.status}`; try { msg = (await r.json()).error; } catch (e) { /* keep */ } toast(msg, true); }
    else toast("Upload cancelled.");
    loadUnfinished(); refresh();
  }

  async function resumeWith(input) {
    const target = resuming;
    resuming = null;
    if (!target) return;
    const chosen = U.filesFromInput(input).filter(U.keep);
    input.value = "";
    const m = U.matchUpload(chosen, target);
    if (!m.entries) { toast(`These are not the files of “${target.name}”: ${m.why}.`, true); return; }
    $("job-name").value = target.name || "";
    await startUploader(target.job_id, m.entries);
  }
  $("resume-files").addEventListener("change", (e) => resumeWith(e.target));
  $("resume-folder").addEventListener("change", (e) => resumeWith(e.target));

  // ---- job table
  let sort = "-created_at", page = 1, timer = null;
  function query(extra) {
    const p = new URLSearchParams();
    const q = $("filter-q").value.trim(); if (q) p.set("q", q);
    const s = $("filter-status").value; if (s) p.set("status", s);
    p.set("sort", sort);
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    return p.toString();
  }
  async function refresh() {
    clearTimeout(timer);
    try {
      const data = await apiJSON(`/api/jobs?${query({ page, per_page: 25 })}`);
      const body = $("jobs-table").querySelector("tbody");
      body.replaceChildren(...data.jobs.map((j) => el("tr", { dataset: { jobId: j.id } },
        el("td", {}, el("a", { href: `/job/${encodeURIComponent(j.id)}` }, j.name || "(unnamed)")),
        el("td", {}, el("span", { class: "badge " + statusClass(j.state), title: j.error || "" }, j.status)),
        el("td", {}, progressBar(j.progress, j.state && j.state.failed ? "failed" : (j.progress >= 1 ? "done" : ""))),
        el("td", {}, j.source_type || "–"),
        el("td", {}, fmtBytes(j.bytes)),
        el("td", { title: j.created_at || "" }, fmtDate(j.created_at)))));
      $("jobs-empty").hidden = data.total > 0;
      $("jobs-count").textContent = `${data.total} job${data.total === 1 ? "" : "s"} · page ${data.page} of ${data.pages}`;
      $("page-prev").disabled = data.page <= 1; $("page-next").disabled = data.page >= data.pages;
      $("csv-link").href = `/api/jobs.csv?${query()}`;
    } catch (err) {
      $("jobs-count").textContent = `Could not load jobs: ${err.message}`;
    }
    timer = setTimeout(refresh, 4000);
  }
  document.querySelectorAll("#jobs-table th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    const col = th.dataset.sort;
    sort = sort === col ? "-" + col : (sort === "-" + col ? col : (col === "name" ? col : "-" + col));
    document.querySelectorAll("#jobs-table th").forEach((h) => h.classList.remove("sorted", "asc", "desc"));
    th.classList.add("sorted", sort.startsWith("-") ? "desc" : "asc");
    refresh();
  }));
  let typing = null;
  $("filter-q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { page = 1; refresh(); }, 250); });
  $("filter-status").addEventListener("change", () => { page = 1; refresh(); });
  $("page-prev").addEventListener("click", () => { page = Math.max(1, page - 1); refresh(); });
  $("page-next").addEventListener("click", () => { page += 1; refresh(); });
  window.ml4pHome = { get uploader() { return uploader; }, loadUnfinished };
  loadUnfinished();
  refresh();
})();
