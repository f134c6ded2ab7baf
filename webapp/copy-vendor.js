// Copy the third-party browser files the web app needs from node_modules into
// static/vendor (gitignored). Run by scripts/vendor.sh after `npm install`.
// Everything is served by ml4paleo itself: no CDN.
"use strict";
const fs = require("fs");
const path = require("path");

const here = __dirname;
const modules = path.join(here, "node_modules");
const vendor = path.join(here, "static", "vendor");

// [source under node_modules, destination under static/vendor]
const FILES = [
  ["three/build/three.module.js", "three/three.module.js"],
  ["three/build/three.core.js", "three/three.core.js"],
  ["three/examples/jsm/controls/OrbitControls.js", "three/addons/controls/OrbitControls.js"],
  ["three/examples/jsm/loaders/STLLoader.js", "three/addons/loaders/STLLoader.js"],
  ["three/examples/jsm/loaders/OBJLoader.js", "three/addons/loaders/OBJLoader.js"],
  ["three/examples/jsm/loaders/PLYLoader.js", "three/addons/loaders/PLYLoader.js"],
  ["three/examples/jsm/loaders/GLTFLoader.js", "three/addons/loaders/GLTFLoader.js"],
  ["three/examples/jsm/utils/BufferGeometryUtils.js", "three/addons/utils/BufferGeometryUtils.js"],
  ["three/examples/jsm/utils/SkeletonUtils.js", "three/addons/utils/SkeletonUtils.js"],
  ["three/LICENSE", "three/LICENSE"],
  ["@niivue/niivue/LICENSE", "niivue/LICENSE"],
];

function copy(src, dst) {
  const from = path.join(modules, src);
  const to = path.join(vendor, dst);
  if (!fs.existsSync(from)) {
    throw new Error(`${from}: missing; run npm install in webapp/`);
  }
  fs.mkdirSync(path.dirname(to), { recursive: true });
  fs.copyFileSync(from, to);
}

async function main() {
  for (const [src, dst] of FILES) {
    if (src.endsWith("LICENSE") && !fs.existsSync(path.join(modules, src))) continue;
    copy(src, dst);
  }
  // NiiVue's self-contained bundle ships as a URL-encoded ES module string; decode it
  // into a plain module file so the page imports it without data: URLs.
  const bundle = path.join(modules, "@niivue/niivue/build/index.min.js");
  const mod = await import(require("url").pathToFileURL(bundle).href);
  const out = path.join(vendor, "niivue", "niivue.js");
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, decodeURIComponent(mod.esm));
  console.log(`vendor files copied to ${path.relative(process.cwd(), vendor)}`);
}

main().catch((err) => {
  console.error(`copy-vendor: ${err.message}`);
  process.exit(1);
});
