// Downloads page: every export that exists, with sizes (exact once cached).
"use strict";
(function () {
  const { el, apiJSON, fmtBytes, toast } = window.ml4p;
  const jobId = ml4p.jobId;
  const FORMAT = { zarr: "OME-Zarr (zip)", png: "PNG stack (zip)", tiff: "TIFF stack (zip)", nifti: "NIfTI (.nii.gz)", stats: "CSV", meshes: "Meshes (zip)" };
  async function load() {
    try {
      const data = await apiJSON(`/api/job/${encodeURIComponent(jobId)}/downloads`);
      const body = document.querySelector("#downloads-table tbody");
      body.replaceChildren(...data.downloads.map((d) => el("tr", {},
        el("td", {}, d.group), el("td", {}, FORMAT[d.kind] || d.kind), el("td", { class: "muted wrap" }, d.description),
        el("td", { title: d.size_is_estimate ? "size of the data before packing" : "exact" }, (d.size_is_estimate ? "≈ " : "") + fmtBytes(d.bytes)),
        el("td", {}, el("a", { class: "btn small primary", href: d.url, download: "" }, "Download")))));
      document.getElementById("downloads-empty").hidden = data.downloads.length > 0;
    } catch (err) { toast(err.message, true); }
  }
  load();
})();
