// Validate a glTF / GLB file with the Khronos glTF validator (npm "gltf-validator",
// installed by scripts/vendor.sh as a devDependency of webapp/). Prints the validator's
// JSON report on stdout. Usage: NODE_PATH=webapp/node_modules node validate_gltf.js FILE
"use strict";
const fs = require("fs");
const validator = require("gltf-validator");

const file = process.argv[2];
const bytes = new Uint8Array(fs.readFileSync(file));
validator
  .validateBytes(bytes, { uri: file, maxIssues: 100 })
  .then((report) => {
    process.stdout.write(JSON.stringify(report));
  })
  .catch((error) => {
    process.stderr.write(String(error) + "\n");
    process.exit(2);
  });
