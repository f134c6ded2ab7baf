"""Schemathesis against the app's own OpenAPI document, through Flask's WSGI app.

Every operation of ``GET /api/openapi.json`` gets a bounded number of generated requests
(positive and negative); every check schemathesis has must pass: no 5xx, status codes,
content types, headers and bodies as documented, and bad input refused. The data folder
holds one converted job (an image with a pyramid) so that requests which happen to use
its id reach real data as well as the 404 paths.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from ml4paleo.omezarr import build_pyramid, create_image
from ml4paleo.workspace import JobPaths
from webapp import create_app

#: generated requests per operation (and phase); the whole module stays well under 60 s
MAX_EXAMPLES = 8


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
    return app


# the schema is loaded at collection (schemathesis' lazy fixture loader does not work with
# pytest 9), so the data folder is made here and removed after the module's tests
_DATA = Path(tempfile.mkdtemp(prefix="m4p-fuzz-"))
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", _app(_DATA))


@pytest.fixture(scope="module", autouse=True)
def _remove_data():
    yield
    shutil.rmtree(_DATA, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_openapi_fuzz(case):
    case.call_and_validate()
