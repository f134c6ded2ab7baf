"""Schemathesis against the app's own OpenAPI document, through Flask's WSGI app.

Every operation of ``GET /api/openapi.json`` gets a bounded number of generated requests
(positive and negative); every check schemathesis has must pass: no 5xx, status codes,
content types, headers and bodies as documented, and bad input refused. The data folder
holds one converted job (an image with a pyramid); every valid request naming a job is
sent again with that job's id, so the routes answer with real data as well as with 404s.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ml4paleo.formats import build_pyramid, create_image
from ml4paleo.workspace import JobPaths
from webapp import create_app

#: generated requests per operation (and phase); the whole module stays under 60 s
MAX_EXAMPLES = 5
#: operations whose valid bodies JSON Schema cannot describe: for them a schema-valid
#: request may be refused with 400 (every other check still applies, the 400 included)
CONTENT_RULES = {
    ("POST", "/api/job/{job_id}/annotate/labels"):
        "mask: a class-index PNG data URL or an rle/raw/zlib array of the plane's shape",
    ("POST", "/api/job/{job_id}/annotate/classes"): "class names unique, colours valid",
    ("PUT", "/api/job/{job_id}/annotate/classes"): "class names unique, colours valid",
    ("POST", "/api/annotate/{job_id}/data/submit"): "image and mask: PNG data URLs",
    ("POST", "/api/annotate/{job_id}/data/predict"): "sample_metadata: a cut-out of the volume",
    ("POST", "/api/job/{job_id}/segment"): "train: false needs a model_id",
    ("POST", "/api/job/{job_id}/start"): "train: false needs a model_id",
    ("POST", "/api/job/{job_id}/measure"): "roi_box ranges non-empty and inside the image, "
                                           "measures known names, values classes present",
    ("POST", "/api/job/{job_id}/voxel-size"): "unit: a length unit; sizes finite",
    ("POST", "/api/probe"): "file: a scan's first bytes with a readable name",
}


def _app(data: Path):
    app = create_app(data_dir=data, max_upload_bytes=64 * 1024)
    app.config["TESTING"] = True
    store = app.extensions["ml4paleo_store"]
    rec = store.create("fuzzed scan", "npy")
    z, y, x = np.mgrid[0:16, 0:32, 0:32]
    img = create_image(JobPaths(store.job_dir(rec["id"])).image, (16, 32, 32), np.uint16,
                       chunks=16, voxel_size=(1.0, 1.0, 1.0), unit="micrometer")
    img.array[:] = ((x * 7 + y * 3 + z * 11) % 1000).astype(np.uint16)
    build_pyramid(img)
    store.update(rec["id"], lambda r: r.update(
        status="converted", metadata={"shape": [16, 32, 32], "dtype": "uint16"}))
    app.config["FUZZ_JOB_ID"] = rec["id"]
    return app


# the schema is loaded at collection (schemathesis' lazy fixture loader does not work with
# pytest 9), so the data folder is made here and removed when the session ends
_DATA = Path(tempfile.mkdtemp(prefix="m4p-fuzz-"))
atexit.register(shutil.rmtree, _DATA, ignore_errors=True)
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", _app(_DATA))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_openapi_fuzz(case):
    excluded = ([positive_data_acceptance]
                if (case.method.upper(), case.path) in CONTENT_RULES else None)
    case.call_and_validate(excluded_checks=excluded)
    # a generated job id is (almost) never a job: a valid request is sent again for the
    # converted job, so its data routes answer with data as documented (not deleting it)
    params = case.path_parameters or {}
    if ("job_id" in params and case.meta is not None
            and case.meta.generation.mode == GenerationMode.POSITIVE
            and case.method.upper() != "DELETE" and not case.path.endswith("/delete")):
        case.path_parameters = {**params, "job_id": schema.app.config["FUZZ_JOB_ID"]}
        case.call_and_validate(excluded_checks=excluded)
