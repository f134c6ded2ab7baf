// Downloads page: every export that exists (the report too), with sizes that say how well
// they are known: exact once packed, "≈" for a Zarr zip, "up to" before packing a
// compressed one, "made on request" for a report not built yet.
"use strict";
(function () {
  const { el, apiJSON, fmtBytes, toast, unitLabel, voxelWarning } = window.ml4p;
  const jobId = ml4p.jobId;
  const FORMAT = { zarr: "OME-Zarr (zip)", png: "PNG stack (zip)", tiff: "TIFF stack (zip)", nifti: "NIfTI (.nii.gz)", stats: "CSV", meshes: "Meshes (zip)",
    report_pdf: "Report (PDF)", report_html: "Report (web page)" };
  const HOW = { exact: "exact size", about: "within a few per cent", at_most: "upper bound: the file is packed when downloaded and is usually smaller", unknown: "made on request" };
  function sizeText(d) {
    if (d.size_kind === "unknown" || d.bytes === null || d.bytes === undefined) return "made on request";
    if (d.size_kind === "about") return `≈ ${fmtBytes(d.bytes)}`;
    if (d.size_kind === "at_most") return `up to ${fmtBytes(d.bytes)}`;
    return fmtBytes(d.bytes);
  }
  async function load() {
    try {
      const data = await apiJSON(`/api/job/${encodeURIComponent(jobId)}/downloads`);
      const body = document.querySelector("#downloads-table tbody");
      body.replaceChildren(...data.downloads.map((d) => el("tr", { dataset: { kind: d.kind, group: d.group } },
        el("td", {}, d.group), el("td", {}, FORMAT[d.kind] || d.kind), el("td", { class: "muted wrap" }, d.description),
        el("td", { title: HOW[d.size_kind] || "", class: "size" }, sizeText(d)),
        el("td", {}, el("a", { class: "btn small primary", href: d.url, download: "" }, "Download"),
          d.view_url ? el("a", { class: "btn small", href: d.view_url, target: "_blank" }, "Open") : null))));
      document.getElementById("downloads-empty").hidden = data.downloads.length > 0;
    } catch (err) { toast(err.message, true); }
    try {
      const info = await apiJSON(`/api/job/${encodeURIComponent(jobId)}/image`);
      document.getElementById("downloads-unit").textContent =
        `Sizes, volumes and meshes are in ${unitLabel(info) === "voxels" ? "voxel units" : unitLabel(info)} (voxel ${info.voxel_size.map((v) => +v.toPrecision(4)).join(" × ")} ${unitLabel(info)}).`;
      voxelWarning(document.getElementById("downloads-warning"), info, jobId);
    } catch (err) { if (err.status !== 404) toast(err.message, true); }
  }
  load();
})();
