// Chunked, resumable uploads to /api/upload (Dropzone-style fields, byte offsets),
// folder traversal for drag-and-drop, and source-type detection. window.ml4pUpload.
"use strict";
(function () {
  // chunk size in bytes; settable (window.ml4pUpload.chunkSize) before an upload starts
  const DEFAULT_CHUNK = 8 * 1024 * 1024;
  const MAX_TRIES = 6;

  // Files of a drop: plain files, whole folders (recursively) and zips.
  async function filesFromDrop(dataTransfer) {
    const items = Array.from(dataTransfer.items || []);
    const entries = items.map((it) => (it.webkitGetAsEntry ? it.webkitGetAsEntry() : null));
    if (!entries.some((e) => e)) {
      return Array.from(dataTransfer.files || []).map((f) => ({ file: f, path: f.name }));
    }
    const out = [];
    async function walk(entry, prefix) {
      if (!entry) return;
      if (entry.isFile) {
        const file = await new Promise((res, rej) => entry.file(res, rej));
        out.push({ file, path: prefix + file.name });
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        let batch;
        do { // readEntries returns at most ~100 entries per call
          batch = await new Promise((res, rej) => reader.readEntries(res, rej));
          for (const child of batch) await walk(child, prefix + entry.name + "/");
        } while (batch.length);
      }
    }
    for (const e of entries) await walk(e, "");
    return out;
  }

  function filesFromInput(input) {
    return Array.from(input.files).map((f) => ({ file: f, path: f.webkitRelativePath || f.name }));
  }

  // Hidden files (.DS_Store, ._x, Thumbs.db) are not part of a scan.
  function keep(entry) {
    const parts = entry.path.split("/");
    return !parts.some((p) => p.startsWith(".")) && !/^(thumbs\.db|desktop\.ini)$/i.test(parts[parts.length - 1]);
  }

  async function isDicom(file) {
    if (file.size < 132) return false;
    const buf = new Uint8Array(await file.slice(128, 132).arrayBuffer());
    return String.fromCharCode(...buf) === "DICM";
  }

  async function detectSourceType(entries) {
    const names = entries.map((e) => e.path.toLowerCase());
    const has = (re) => names.some((n) => re.test(n));
    if (has(/\.nii(\.gz)?$/)) return "nifti";
    if (has(/\.npy$/)) return "npy";
    if (has(/\.dcm$|\.ima$/)) return "dicom";
    if (has(/\.zarr\//) || has(/\.zarray$|zarr\.json$/)) return "zarr";
    if (names.length === 1 && /\.(tif|tiff)$/.test(names[0])) return "tiff";
    const first = entries.find((e) => !/\.(png|jpe?g|tiff?|bmp|zip|txt|csv|json)$/i.test(e.path));
    if (first && (await isDicom(first.file))) return "dicom";
    if (names.length === 1 && /\.zip$/.test(names[0])) return "image_stack";
    return "image_stack";
  }

  // Upload name: the relative path (folders kept; the server sanitises it).
  function uploadName(path) {
    return path.split("/").filter(Boolean).join("/");
  }

  // What the job will receive, sent with POST /api/job/new so an unfinished upload can be
  // listed and resumed from another page (GET /api/uploads).
  function manifest(entries) {
    return entries.map((e) => ({ path: uploadName(e.path), size: e.file.size, last_modified: e.file.lastModified || null }));
  }

  // Does a selection hold the files an unfinished upload announced (same names and sizes,
  // and modification times when both know them)? Returns the entries in upload order, or
  // null with `why` set on the result of a mismatch.
  function matchUpload(entries, upload) {
    const byName = new Map(entries.map((e) => [uploadName(e.path), e]));
    const out = [];
    for (const f of upload.files || []) {
      const e = byName.get(f.given || f.path);
      if (!e) return { entries: null, why: `${f.given || f.path} is missing` };
      if (e.file.size !== f.size) return { entries: null, why: `${f.given || f.path} has another size` };
      if (f.last_modified && e.file.lastModified && Math.abs(e.file.lastModified - f.last_modified) > 2000) {
        return { entries: null, why: `${f.given || f.path} was changed since` };
      }
      out.push(e);
    }
    if (!out.length) return { entries: null, why: "the upload lists no files" };
    return { entries: out, why: null };
  }

  // The first file's header (or all of a small file) for POST /api/probe: what voxel size
  // the scan records, to fill in the form before uploading.
  async function probe(entries) {
    const first = entries.find((e) => !/\.(txt|csv|json|md)$/i.test(e.path)) || entries[0];
    if (!first) return null;
    const fd = new FormData();
    fd.append("file", first.file.slice(0, Math.min(first.file.size, 16 * 1024 * 1024)), first.path.split("/").pop());
    const r = await ml4p.api("/api/probe", { method: "POST", body: fd });
    if (!r.ok) return null;
    return r.json();
  }

  class Uploader {
    constructor(jobId, entries, onProgress) {
      this.chunk = window.ml4pUpload.chunkSize || DEFAULT_CHUNK;
      this.jobId = jobId;
      this.entries = entries;
      this.onProgress = onProgress || (() => {});
      this.total = entries.reduce((s, e) => s + e.file.size, 0);
      this.doneBytes = 0;
      this.paused = false;
      this.running = false;  // bytes are on their way (the page warns before it is left)
      this.xhr = null;
    }

    async serverOffset(name) {
      const url = `/api/upload/status?job_id=${encodeURIComponent(this.jobId)}&filename=${encodeURIComponent(name)}`;
      try {
        const r = await ml4p.api(url);
        if (!r.ok) return 0;
        const d = await r.json();
        return Number(d.received_bytes) || 0;
      } catch (e) {
        return 0;
      }
    }

    sendChunk(entry, name, index, count, offset, blob, base) {
      return new Promise((resolve, reject) => {
        const fd = new FormData();
        fd.append("dzuuid", `${this.jobId}-${name}`);
        fd.append("dzchunkindex", String(index));
        fd.append("dzchunkbyteoffset", String(offset));
        fd.append("dztotalchunkcount", String(count));
        fd.append("dztotalfilesize", String(entry.file.size));
        fd.append("dzchunksize", String(this.chunk));
        fd.append("job_id", this.jobId);
        fd.append("fullPath", name);
        fd.append("file", blob, name.split("/").pop());
        const xhr = new XMLHttpRequest();
        this.xhr = xhr;
        xhr.open("POST", "/api/upload");
        ml4p.headers().forEach((v, k) => xhr.setRequestHeader(k, v));
        xhr.setRequestHeader("X-Job-ID", this.jobId);
        xhr.upload.onprogress = (ev) => this.onProgress(base + ev.loaded, this.total, name);
        xhr.onload = () => {
          if (xhr.status >= 200 && xhr.status < 300) return resolve();
          let msg = `HTTP ${xhr.status}`;
          try { msg = JSON.parse(xhr.responseText).error || msg; } catch (e) { /* not JSON */ }
          const err = new Error(msg); err.status = xhr.status; reject(err);
        };
        xhr.onerror = () => reject(new Error("network error"));
        xhr.onabort = () => { const e = new Error("paused"); e.paused = true; reject(e); };
        xhr.send(fd);
      });
    }

    async uploadFile(entry, before) {
      const name = uploadName(entry.path);
      const size = entry.file.size;
      const count = Math.max(1, Math.ceil(size / this.chunk));
      let offset = Math.min(await this.serverOffset(name), size);
      offset -= offset % this.chunk; // resume at a chunk boundary the server has in full
      let tries = 0;
      if (size === 0) offset = -1; // still send one empty chunk
      while (offset < size) {
        if (this.paused) { const e = new Error("paused"); e.paused = true; throw e; }
        const start = Math.max(0, offset);
        const index = Math.floor(start / this.chunk);
        const blob = entry.file.slice(start, Math.min(size, start + this.chunk));
        try {
          await this.sendChunk(entry, name, index, count, start, blob, before + start);
          offset = start + blob.size;
          if (size === 0) break;
          tries = 0;
          this.onProgress(before + offset, this.total, name);
        } catch (err) {
          if (err.paused || (err.status && err.status < 500 && err.status !== 408 && err.status !== 429)) throw err;
          if (++tries >= MAX_TRIES) throw err;
          await new Promise((r) => setTimeout(r, Math.min(8000, 500 * 2 ** tries)));
          const server = await this.serverOffset(name); // ask where to carry on
          offset = Math.min(server - (server % this.chunk), size);
          if (size === 0) offset = -1;
        }
      }
    }

    async run() {
      this.paused = false;
      this.running = true;
      try {
        let before = 0;
        for (const entry of this.entries) {
          await this.uploadFile(entry, before);
          before += entry.file.size;
        }
        this.onProgress(this.total, this.total, "");
        return await ml4p.apiJSON("/api/job/status/upload-complete", { json: { job_id: this.jobId } });
      } finally {
        this.running = false;
      }
    }

    pause() {
      this.paused = true;
      if (this.xhr) this.xhr.abort();
    }
  }

  window.ml4pUpload = { filesFromDrop, filesFromInput, keep, detectSourceType, Uploader, uploadName,
    manifest, matchUpload, probe, chunkSize: DEFAULT_CHUNK };
})();
