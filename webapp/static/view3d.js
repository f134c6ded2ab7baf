// 3D view: the meshes of a segmentation (three.js: rotate, zoom, per-label visibility and
// colour) and the volume + segmentation (NiiVue, from a downsampled NIfTI preview).
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { STLLoader } from "three/addons/loaders/STLLoader.js";
import { OBJLoader } from "three/addons/loaders/OBJLoader.js";
import { PLYLoader } from "three/addons/loaders/PLYLoader.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

const { el, apiJSON, toast, classColor } = window.ml4p;
const jobId = window.ml4p.jobId;
const base = `/api/job/${encodeURIComponent(jobId)}`;
const $ = (id) => document.getElementById(id);
const PREFERENCE = ["glb", "stl", "ply", "obj"];
const state = { meshes: 0, volume: false, errors: [] };
window.ml4p3d = state;

// ---------------------------------------------------------------- meshes (three.js)
const stage = $("mesh-stage");
const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(window.devicePixelRatio || 1);
stage.append(renderer.domElement);
const scene = new THREE.Scene();
scene.background = new THREE.Color(0x1f2430);
const camera = new THREE.PerspectiveCamera(40, 1, 0.01, 1e7);
const controls = new OrbitControls(camera, renderer.domElement);
controls.enableDamping = true;
scene.add(new THREE.HemisphereLight(0xffffff, 0x445566, 1.6));
const sun = new THREE.DirectionalLight(0xffffff, 1.8);
camera.add(sun); sun.position.set(1, 1, 2); scene.add(camera);
const group = new THREE.Group();
scene.add(group);

function resize() {
  const r = stage.getBoundingClientRect();
  renderer.setSize(Math.max(1, r.width), Math.max(1, r.height), false);
  camera.aspect = Math.max(1, r.width) / Math.max(1, r.height);
  camera.updateProjectionMatrix();
}
new ResizeObserver(resize).observe(stage);
(function loop() { requestAnimationFrame(loop); controls.update(); renderer.render(scene, camera); })();

function frame() {
  const box = new THREE.Box3().setFromObject(group);
  if (box.isEmpty()) return;
  const size = box.getSize(new THREE.Vector3()).length();
  const center = box.getCenter(new THREE.Vector3());
  controls.target.copy(center);
  camera.near = size / 1000; camera.far = size * 100; camera.updateProjectionMatrix();
  camera.position.copy(center).add(new THREE.Vector3(0.6, -0.9, 0.7).normalize().multiplyScalar(size * 1.3));
  camera.up.set(0, 0, 1);
  controls.update();
}

function loadMesh(url, format) {
  return new Promise((resolve, reject) => {
    const done = (obj) => resolve(obj);
    if (format === "stl") new STLLoader().load(url, (g) => done(new THREE.Mesh(g)), undefined, reject);
    else if (format === "ply") new PLYLoader().load(url, (g) => { g.computeVertexNormals(); done(new THREE.Mesh(g)); }, undefined, reject);
    else if (format === "obj") new OBJLoader().load(url, done, undefined, reject);
    else new GLTFLoader().load(url, (gltf) => {
      // an ml4paleo GLB holds metres under a y-up root node (glTF's rules); shown here in
      // the scan's own unit and z-up frame, like the STL/PLY/OBJ of the same segmentation
      const root = gltf.scene.children[0];
      const meta = root && root.userData ? root.userData.ml4paleo : null;
      if (meta) {
        root.quaternion.identity();
        root.scale.setScalar(meta.scale_to_source_unit || 1);
      }
      done(gltf.scene);
    }, undefined, reject);
  });
}

function labelNumber(stem) {
  const m = String(stem).match(/(\d+)$/);
  return m ? parseInt(m[1], 10) : 1;
}

// the measure run's meshes coloured by local thickness (GET /api/job/<id>/measure)
let thickness = null;
async function loadThickness(segEntry) {
  thickness = null;
  if (segEntry && segEntry.morphometry) {
    try {
      const res = await apiJSON(`${base}/measure?segmentation_id=${encodeURIComponent(segEntry.id)}`);
      if (res.meshes && res.meshes.length && res.legend) thickness = res;
    } catch (err) { if (err.status !== 404) toast(err.message, true); }
  }
  $("mesh-thickness").hidden = !thickness;
  if (!thickness) { $("mesh-thickness-show").checked = false; return; }
  const lg = thickness.legend;
  $("mesh-thickness-bar").style.background = `linear-gradient(to right, ${lg.colors.join(", ")})`;
  $("mesh-thickness-ticks").replaceChildren(...lg.ticks.map((t) => el("span", {}, String(+t.toPrecision(3)))));
  $("mesh-thickness-unit").textContent = `local thickness (${lg.unit || "voxel"})`;
}

async function showMeshes(segEntry) {
  group.clear();
  state.meshes = 0;
  const byThickness = !!(thickness && $("mesh-thickness-show").checked);
  $("mesh-thickness-legend").hidden = !byThickness;
  const byLabel = new Map();
  const source = byThickness ? thickness.meshes.filter((m) => m.format === "ply") : segEntry.meshes;
  for (const m of source) {
    const prev = byLabel.get(m.label);
    if (!prev || PREFERENCE.indexOf(m.format) < PREFERENCE.indexOf(prev.format)) byLabel.set(m.label, m);
  }
  $("mesh-empty").hidden = byLabel.size > 0;
  const classes = segEntry.classes || [];
  const items = [];
  let triangles = 0;
  for (const [label, m] of byLabel) {
    const k = labelNumber(label);
    const color = classColor(classes, k);
    const material = new THREE.MeshStandardMaterial({ color: byThickness ? "#ffffff" : color, vertexColors: byThickness,
      roughness: 0.55, metalness: 0.05, side: THREE.DoubleSide });
    const url = byThickness ? m.url : `${base}/segmentation/${encodeURIComponent(segEntry.id)}/obj/${encodeURIComponent(m.file)}`;
    try {
      const obj = await loadMesh(url, m.format);
      obj.traverse((o) => {
        if (o.isMesh) {
          o.material = material;
          if (!o.geometry.attributes.normal) o.geometry.computeVertexNormals();
          triangles += (o.geometry.index ? o.geometry.index.count : o.geometry.attributes.position.count) / 3;
        }
      });
      group.add(obj);
      state.meshes += 1;
      const name = (classes[k] && classes[k].name) || `label ${label}`;
      const vis = el("input", { type: "checkbox", checked: true, "aria-label": `show ${name}` });
      vis.addEventListener("change", () => { obj.visible = vis.checked; });
      const col = el("input", { type: "color", value: color, "aria-label": `colour of ${name}` });
      col.addEventListener("input", () => material.color.set(col.value));
      items.push(el("li", { dataset: { label } }, vis, col, name, el("span", { class: "muted small" }, ` ${m.format.toUpperCase()}`)));
    } catch (err) {
      state.errors.push(String(err && err.message || err));
      toast(`Could not load mesh ${m.file}`, true);
    }
  }
  $("mesh-list").replaceChildren(...items);
  $("mesh-info").textContent = state.meshes ? `${state.meshes} mesh${state.meshes > 1 ? "es" : ""}, ${Math.round(triangles).toLocaleString()} triangles` : "";
  frame();
  stage.dataset.loaded = String(state.meshes);
  stage.dataset.coloring = byThickness ? "thickness" : "class";
}

// ---------------------------------------------------------------- volume (NiiVue)
let nv = null, niivue = null;
async function showVolume(out) {
  if (!out.image.exists) { $("vol-empty").hidden = false; return; }
  if (!niivue) niivue = await import("niivue");
  const canvas = $("vol-canvas");
  if (!nv) {
    nv = new niivue.Niivue({ backColor: [0.12, 0.14, 0.19, 1], show3Dcrosshair: false, isColorbar: false });
    await nv.attachToCanvas(canvas);
  }
  const volumes = [{ url: `${base}/preview/image.nii.gz`, name: "image.nii.gz", colormap: "gray" }];
  const segId = $("vol-seg-select").value;
  if (segId) {
    volumes.push({ url: `${base}/segmentation/${encodeURIComponent(segId)}/preview.nii.gz`, name: "labels.nii.gz",
      colormap: "warm", opacity: +$("vol-opacity").value / 100, cal_min: 0.5, cal_max: 4 });
  }
  await nv.loadVolumes(volumes);
  applyView();
  state.volume = true;
  canvas.dataset.loaded = "true";
  const v = nv.volumes[0];
  $("vol-info").textContent = v ? `preview ${v.dims.slice(1, 4).join(" × ")} voxels` : "";
}

function applyView() {
  if (!nv) return;
  const T = niivue.SLICE_TYPE;
  nv.setSliceType($("vol-view").value === "render" ? T.RENDER : T.MULTIPLANAR);
}

// ---------------------------------------------------------------- page wiring
async function init() {
  let out;
  try { out = await apiJSON(`${base}/outputs`); } catch (err) { toast(err.message, true); return; }
  const withMeshes = out.segmentations.filter((s) => s.meshes.length);
  $("mesh-seg-select").replaceChildren(...withMeshes.map((s) => el("option", { value: s.id }, s.name || s.id)));
  const current = () => withMeshes.find((s) => s.id === $("mesh-seg-select").value);
  $("mesh-seg-select").addEventListener("change", async () => { await loadThickness(current()); showMeshes(current()); });
  $("mesh-thickness-show").addEventListener("change", () => showMeshes(current()));
  $("mesh-reset").addEventListener("click", frame);
  const withLabels = out.segmentations.filter((s) => s.labels);
  $("vol-seg-select").append(...withLabels.map((s) => el("option", { value: s.id }, s.name || s.id)));
  try {  // meshes are in the image's physical unit (or voxels when it is unknown)
    const info = await apiJSON(`${base}/image`);
    $("unit-info").textContent = `Coordinates in ${window.ml4p.unitLabel(info)}.`;
    window.ml4p.voxelWarning($("view3d-warning"), info, jobId);
  } catch (err) { /* not converted yet: the tabs say so */ }
  if (withLabels.length) $("vol-seg-select").value = withLabels[withLabels.length - 1].id;

  let volumeStarted = false;
  document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", async () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
    $("tab-meshes").hidden = tab.dataset.tab !== "meshes";
    $("tab-volume").hidden = tab.dataset.tab !== "volume";
    if (tab.dataset.tab === "volume" && !volumeStarted) {
      volumeStarted = true;
      try { await showVolume(out); } catch (err) { state.errors.push(String(err)); toast(`Volume viewer: ${err.message || err}`, true); }
    }
    resize();
  }));
  $("vol-view").addEventListener("change", applyView);
  $("vol-seg-select").addEventListener("change", () => showVolume(out).catch((e) => toast(String(e), true)));
  $("vol-opacity").addEventListener("input", () => {
    if (nv && nv.volumes.length > 1) nv.setOpacity(1, +$("vol-opacity").value / 100);
  });
  if (withMeshes.length) {
    $("mesh-seg-select").value = withMeshes[withMeshes.length - 1].id;
    await loadThickness(withMeshes[withMeshes.length - 1]);
    await showMeshes(withMeshes[withMeshes.length - 1]);
  } else {
    stage.dataset.loaded = "0";
    if (out.image.exists && !withMeshes.length) $("mesh-empty").textContent = "No meshes yet. The Volume tab shows the scan.";
  }
}
init();
