// Home page: drop / choose a scan, upload it in chunks, then list jobs from /api/jobs.
"use strict";
(function () {
  const { el, apiJSON, fmtBytes, fmtDate, statusClass, progressBar, toast } = window.ml4p;
  const U = window.ml4pUpload;
  const $ = (id) => document.getElementById(id);
  let entries = [];
  let uploader = null;

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
  }

  const dz = $("dropzone");
  ["dragenter", "dragover"].forEach((t) => dz.addEventListener(t, (e) => { e.preventDefault(); dz.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => dz.addEventListener(t, () => dz.classList.remove("over")));
  dz.addEventListener("drop", async (e) => { e.preventDefault(); await select(await U.filesFromDrop(e.dataTransfer)); });
  dz.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file-input").click(); });
  $("file-input").addEventListener("change", (e) => select(U.filesFromInput(e.target)));
  $("folder-input").addEventListener("change", (e) => select(U.filesFromInput(e.target)));
  $("upload-clear").addEventListener("click", () => { entries = []; $("selection").hidden = true; $("job-name").value = ""; });

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
    }
  }

  $("upload-start").addEventListener("click", async () => {
    if (!entries.length) return;
    $("upload-start").disabled = true;
    try {
      const job = await apiJSON("/api/job/new", { json: { name: $("job-name").value.trim() || "Untitled scan", source_type: $("source-type").value } });
      uploader = new U.Uploader(job.job_id, entries, showProgress);
      $("selection").hidden = true; $("upload-progress").hidden = false;
      showProgress(0, uploader.total, "");
      refresh();
      await runUpload();
    } catch (err) {
      toast(`Could not create the job: ${err.message}`, true);
    } finally {
      $("upload-start").disabled = false;
    }
  });
  $("upload-cancel").addEventListener("click", () => uploader && uploader.pause());
  $("upload-resume").addEventListener("click", () => uploader && runUpload());

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
  refresh();
})();
