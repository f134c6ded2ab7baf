"""The annotator on large slices: tile previews per pyramid level, memory bounded in bytes,
label planes written by changed chunks, several jobs at once."""

from __future__ import annotations

import io
import threading
import time
import tracemalloc

import numpy as np
import pytest
import zarr
from PIL import Image

from ml4paleo.annotate import JobAnnotator, SessionPool, encode_rle
from ml4paleo.features import plane_features
from ml4paleo.phantom import TiledPhantom
from ml4paleo.segmentation import ByteCache, LabelStore
from webapp import create_app

SHAPE = (12, 640, 704)  # planes of 640 x 704: coarse level 1 (320 x 352), 3 x 3 tiles at level 0
Z = 6


@pytest.fixture(scope="module")
def phantom():
    return TiledPhantom(SHAPE, tile=(16, 128, 128), seed=2)


def _job(store, phantom, name="big"):
    jid = store.create(name, "npy")["id"]
    phantom.write_image(store.job_dir(jid) / "image.ome.zarr", chunks=(12, 128, 128))
    store.update(jid, lambda r: r.update(status="converted"))
    return jid


def _strokes(truth2d: np.ndarray, step: int = 37) -> np.ndarray:
    """Thin strokes every ``step`` rows: each class where the truth says so (0 = unlabelled)."""
    lab = np.zeros(truth2d.shape, np.uint8)
    rows = slice(5, None, step)
    lab[rows] = np.where(truth2d[rows] > 0, 2, 1)
    lab[rows, ::3] = 0
    return lab


@pytest.fixture
def env(tmp_path, phantom):
    app = create_app(data_dir=tmp_path)
    store = app.extensions["ml4paleo_store"]
    jid = _job(store, phantom)
    return app, app.test_client(), store, jid


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_label_planes_write_only_changed_chunks_and_read_back_exactly(tmp_path):
    shape = (10, 150, 170)  # edge chunks on every axis (chunks of 64)
    store = LabelStore.create(tmp_path / "ann", shape, classes=["a", "b", "c"])
    folder = tmp_path / "ann" / "labels.zarr"
    rng = np.random.default_rng(0)
    ref = np.zeros(shape, np.uint8)
    for axis, index in ((0, 3), (1, 149), (2, 0), (0, 9), (1, 40)):
        plane = [n for a, n in enumerate(shape) if a != axis]
        lab = np.zeros(plane, np.uint8)
        r, c = rng.integers(0, plane[0], 40), rng.integers(0, plane[1], 40)
        lab[r, c] = rng.integers(1, 4, 40)
        store.write_slice(axis, index, lab)
        sl = [slice(None)] * 3
        sl[axis] = index
        ref[tuple(sl)] = lab
        np.testing.assert_array_equal(store.read_slice(axis, index), lab)
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(folder), mode="r")[:]), ref)
    # a stroke more rewrites only the chunk it touches
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.startswith(".")}
    lab = store.read_slice(0, 3)
    lab[100, 160] = 2  # chunk (0, 1, 2)
    store.write_slice(0, 3, lab)
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.startswith(".")}
    assert {k for k in after if after[k] != before.get(k)} == {"0.1.2"}
    # merge and erase, then clearing
    store.write_slice(0, 3, np.where(np.arange(170)[None] < 5, 255, 0).astype(np.uint8).repeat(150, 0),
                      merge=True)
    assert not store.read_slice(0, 3)[:, :5].any() and store.read_slice(0, 3)[100, 160] == 2
    store.clear_slice(0, 3)
    assert not store.read_slice(0, 3).any()
    assert np.asarray(zarr.open_array(str(folder), mode="r")[3]).sum() == 0



def test_first_overlay_is_the_coarse_level_and_tiles_refine_it(env, phantom):
    app, c, store, jid = env
    truth = phantom.plane_truth(0, Z)
    labels = _strokes(truth)
    r = c.post(f"/api/job/{jid}/annotate/labels",
               json={"axis": "z", "index": Z, "mask": encode_rle(labels)})
    assert r.status_code == 200, r.get_json()
    prev = r.get_json()["preview"]
    assert prev["level"] == 1 and prev["tile"] == 256
    assert prev["levels"][:3] == [[640, 704], [320, 352], [160, 176]]
    assert set(prev["timing"]) == {"retrain_s", "predict_s", "total_s"}
    coarse = _png(__import__("base64").b64decode(prev["overlay"].split(",", 1)[1]))
    assert coarse.shape == (320, 352, 4)
    bone = truth[::2, ::2] > 0
    fg = coarse[..., 3] > 0
    # a real prediction (thin struts are lost at half resolution: recall ~0.5, few false
    # positives ~0.04 on this phantom)
    assert fg[bone].mean() > 0.4 and fg[~bone].mean() < 0.1

    # a full-resolution tile equals the level-0 forest run on features computed directly
    v = prev["version"]
    r = c.get(f"/api/job/{jid}/annotate/tile?axis=z&index={Z}&level=0&ty=1&tx=2&v={v}")
    assert r.status_code == 200 and r.mimetype == "image/png"
    assert r.headers["X-Version"] == v and "max-age" in r.headers["Cache-Control"]
    tile = _png(r.data)
    assert tile.shape == (256, 704 - 512, 4)  # the last column of tiles is narrower
    ann = app.extensions["ml4paleo_annotators"].peek(jid)
    session = ann.session
    model = session.retrain(level=0)
    f = plane_features(ann.volume, 0, Z, slice(256, 512), slice(512, 704),
                       session.feature_settings, session.voxel_size)
    p = model.forests[0].predict_proba(f.reshape(f.shape[0], -1).T, cascade=session.cascade)
    expected = np.argmax(p, axis=1).reshape(256, 192)
    np.testing.assert_array_equal(tile[..., 3] > 0, expected > 0)
    # finer is closer to the truth than coarse, on this tile
    t_truth = truth[256:512, 512:704] > 0
    coarse_up = np.repeat(np.repeat(fg, 2, 0), 2, 1)[256:512, 512:704]
    assert ((tile[..., 3] > 0) == t_truth).mean() >= (coarse_up == t_truth).mean() - 0.01
    # a stale version still answers (the current prediction) but is not cacheable
    r = c.get(f"/api/job/{jid}/annotate/tile?axis=z&index={Z}&level=0&ty=1&tx=2&v=old")
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    r = c.get(f"/api/job/{jid}/annotate/tile?axis=z&index={Z}&level=0&ty=0&tx=0&kind=uncertainty")
    assert r.status_code == 200 and _png(r.data).shape == (256, 256, 4)
    # the coarse image level for the page
    r = c.get(f"/api/job/{jid}/annotate/slice?axis=z&index={Z}&format=raw&level=1")
    assert r.headers["X-Shape"] == "320,352"
    info = c.get(f"/api/job/{jid}/annotate/info").get_json()
    assert info["levels"][1] == [6, 320, 352] and info["tile"] == 256


def test_tile_requests_are_checked(env, phantom):
    app, c, store, jid = env
    url = f"/api/job/{jid}/annotate/tile?axis=z&index={Z}"
    r = c.get(url + "&level=0&ty=0&tx=0")
    assert r.status_code == 409 and "two classes" in r.get_json()["error"]
    c.post(f"/api/job/{jid}/annotate/labels", json={"axis": "z", "index": Z, "preview": False,
                                                     "mask": encode_rle(_strokes(phantom.plane_truth(0, Z)))})
    for q, code in (("&level=0&ty=3&tx=0", 404), ("&level=9&ty=0&tx=0", 404),
                    ("&level=0&ty=0&tx=0&kind=rgb", 400), ("&level=0&ty=-1&tx=0", 400),
                    ("&level=x&ty=0&tx=0", 400), ("&ty=0&tx=0", 400), ("&level=0&ty=0&tx=0", 200)):
        r = c.get(url + q)
        assert r.status_code == code, (q, r.data[:200])
        if code != 200:
            assert "error" in r.get_json()


def test_training_rows_hold_only_labelled_pixels(tmp_path, phantom):
    from ml4paleo.jobs import JobStore

    store = JobStore(tmp_path)
    jid = _job(store, phantom)
    ann = JobAnnotator(store.job_dir(jid), store=store)
    labels = _strokes(phantom.plane_truth(0, Z))
    ann.submit(0, Z, encode_rle(labels), preview=False)
    session = ann.session
    model = ann.retrain(level=0)
    assert model is not None and model.meta["level"] == 0
    # the session counts its forest's arrays (what the pool bounds besides the cache)
    nodes = sum(len(f.to_arrays("")["left"]) for f in model.forests)
    assert nodes > 0 and session.nbytes >= nodes * (3 * 4 + 8)  # left/right/feature + threshold
    keys = [k for k in list(session.cache._items) if k[0] == session.owner]
    assert [k[1:] for k in keys] == [("rows", 0, Z, 0)]  # nothing but the rows
    stamp, rr, cc, X, y, border = session.cache.get(keys[0])
    assert X.shape == (int((labels > 0).sum()), 26)
    np.testing.assert_array_equal(y, labels[rr, cc].astype(np.int64) - 1)
    # features of the labelled pixels only: far less than a whole plane's F x H x W
    whole_plane = 26 * 640 * 704 * 4
    assert session.cache.owner_bytes(session.owner) < 0.05 * whole_plane
    # rows equal the features of those pixels computed directly
    f = plane_features(ann.volume, 0, Z, settings=session.feature_settings)
    np.testing.assert_array_equal(X, f[:, rr, cc].T)
    # one more stroke: only the cell it touches is computed, the other rows are reused
    computed = []
    real = session._region_features
    session._region_features = lambda *a: computed.append(a[3:]) or real(*a)
    more = labels.copy()
    more[300:303, 400:410] = 2  # inside the cell of rows 256..320, columns 384..448
    ann.submit(0, Z, encode_rle(more), preview=False)
    model2 = ann.retrain(level=0)
    assert model2 is not model
    assert computed == [(slice(256, 320), slice(384, 448))]
    stamp2, rr2, cc2, X2, _, _ = session.cache.get(keys[0])
    assert stamp2 != stamp and len(rr2) == int((more > 0).sum()) > len(rr)
    np.testing.assert_array_equal(X2, f[:, rr2, cc2].T)
    ann.close()
    assert session.cache.owner_bytes(session.owner) == 0 and session.nbytes == 0


def test_the_feature_cache_is_bounded_in_bytes_and_evicts(tmp_path, phantom):
    from ml4paleo.jobs import JobStore

    store = JobStore(tmp_path)
    jid = _job(store, phantom)
    tile_bytes = 26 * 256 * 256 * 4
    cache = ByteCache(int(2.5 * tile_bytes))
    ann = JobAnnotator(store.job_dir(jid), store=store, cache=cache)
    session = ann.session
    first = session.tile_features(0, Z, 0, 0, 0).copy()
    for ty, tx in session.grid(0, 0):
        session.tile_features(0, Z, 0, ty, tx)
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) <= 4 and cache.stats()["evictions"] == 9 - len(cache)  # 9 tiles
    assert (session.owner, "tile", 0, Z, 0, 0, 0) not in cache  # the oldest went first
    np.testing.assert_array_equal(session.tile_features(0, Z, 0, 0, 0), first)  # recomputed


def test_session_pool_drops_the_least_recently_used_beyond_its_bytes():
    class Obj:
        def __init__(self, n):
            self.nbytes, self.closed = n, False

        def close(self):
            self.closed = True

    pool = SessionPool(max_size=10, max_bytes=100)
    a = pool.get("a", lambda: Obj(60))
    b = pool.get("b", lambda: Obj(30))
    assert "a" in pool and "b" in pool and pool.nbytes == 90
    c = pool.get("c", lambda: Obj(30))  # 120 > 100: a (least recent) goes
    assert "a" not in pool and a.closed and not b.closed and pool.nbytes == 60
    b.nbytes = 95  # objects grow (models fitted): trimmed on the next access
    pool.get("c", lambda: None)
    assert "b" not in pool and b.closed and "c" in pool and not c.closed
    big = pool.get("d", lambda: Obj(500))  # the most recent always stays
    assert "d" in pool and "c" not in pool and not big.closed


def test_memory_stays_bounded_with_three_jobs_under_a_small_budget(tmp_path):
    budget = 48 * 1024**2
    app = create_app(data_dir=tmp_path, annotate_cache_bytes=budget,
                     annotate_session_bytes=8 * 1024**2, annotate_sessions=2)
    c = app.test_client()
    store = app.extensions["ml4paleo_store"]
    big = TiledPhantom((8, 1024, 1024), tile=(16, 128, 128), seed=5)
    jobs = [_job(store, big, f"job {k}") for k in range(3)]
    labels = _strokes(big.plane_truth(0, 4), step=61)

    def work(jid):
        r = c.post(f"/api/job/{jid}/annotate/labels",
                   json={"axis": "z", "index": 4, "mask": encode_rle(labels)})
        assert r.status_code == 200 and r.get_json()["preview"]["level"] == 1
        for ty, tx in ((0, 0), (2, 3), (3, 2)):
            r = c.get(f"/api/job/{jid}/annotate/tile?axis=z&index=4&level=0&ty={ty}&tx={tx}")
            assert r.status_code == 200
        cache = app.extensions["ml4paleo_annotate_cache"]
        assert cache.nbytes <= budget

    work(jobs[0])  # imports, first fits: not what is measured
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        base = tracemalloc.get_traced_memory()[0]
        for jid in jobs[1:] + jobs[:1]:
            work(jid)
        held, peak = (m - base for m in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    cache = app.extensions["ml4paleo_annotate_cache"]
    pool = app.extensions["ml4paleo_annotators"]
    assert len(pool) <= 2 and cache.stats()["evictions"] > 0
    # what stays is the cache (<= its budget), the open annotators' forests and labels:
    # three jobs of 1024^2 planes do not add up beyond the budget plus a little
    assert held < budget + 40 * 1024**2, held / 1024**2
    assert peak < budget + 200 * 1024**2, peak / 1024**2


def test_one_job_at_work_does_not_hold_up_another(tmp_path, phantom):
    app = create_app(data_dir=tmp_path)
    c = app.test_client()
    store = app.extensions["ml4paleo_store"]
    a, b = _job(store, phantom, "a"), _job(store, phantom, "b")
    labels = encode_rle(_strokes(phantom.plane_truth(0, Z)))
    for jid in (a, b):
        assert c.post(f"/api/job/{jid}/annotate/labels",
                      json={"axis": "z", "index": Z, "mask": labels, "preview": False}).status_code == 200
    ann_a = app.extensions["ml4paleo_annotators"].peek(a)
    release = threading.Event()
    held = threading.Event()

    def busy():  # a long submission of job a holds its lock
        with ann_a.lock:
            held.set()
            release.wait(60)

    t = threading.Thread(target=busy)
    t.start()
    held.wait(10)
    try:
        t0 = time.perf_counter()
        for jid in (b, a):  # job b answers, and so do job a's tiles (no job lock for them)
            r = app.test_client().get(f"/api/job/{jid}/annotate/tile?axis=z&index={Z}&level=1&ty=0&tx=0")
            assert r.status_code == 200
        r = app.test_client().get(f"/api/job/{b}/annotate/info")
        assert r.status_code == 200
        assert time.perf_counter() - t0 < 50
        assert t.is_alive()  # all that while job a's lock was held
    finally:
        release.set()
        t.join()


def test_opening_a_plane_loads_the_training_library_once(tmp_path, phantom, monkeypatch):
    from ml4paleo.jobs import JobStore
    from ml4paleo.segmentation import interactive

    calls = []
    real = interactive.fit_stage
    monkeypatch.setattr(interactive, "_warmed", set())
    monkeypatch.setattr(interactive, "fit_stage", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    store = JobStore(tmp_path)
    jid = _job(store, phantom)
    ann = JobAnnotator(store.job_dir(jid), store=store)
    session = ann.session
    session.prefetch(0, Z)
    session.prefetch(0, Z + 1)
    assert calls == [8]  # one tiny fit, on the first plane opened only
    li = session.level_plane(0, Z + 1, 1)  # the plane on the coarse level (z halved too)
    assert (session.owner, "tile", 0, li, 1, 0, 0) in session.cache  # features too
    ann.close()
