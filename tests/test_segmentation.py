"""Tests for ml4paleo.segmentation on the fossil phantom."""

import json

import numpy as np
import pytest

from ml4paleo import omezarr
from ml4paleo.phantom import make_phantom, painted_slices, scribble_labels
from ml4paleo.segmentation import (
    ERASE,
    InteractiveSession,
    LabelStore,
    Model,
    TrainSettings,
    postprocess_labels,
    predict_box,
    predict_slice,
    segment,
    train,
)

SHAPE = (40, 80, 80)
FAST = TrainSettings(n_trees=(12, 16), max_per_class=4000, n_jobs=2, two_stage=True)


def dice(truth, pred, c):
    t, p = truth == c, pred == c
    return 2 * (t & p).sum() / (t.sum() + p.sum())


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, seed=3)


@pytest.fixture(scope="module")
def stroke_model(phantom):
    image, truth = phantom
    labels = scribble_labels(truth, 4, seed=2)
    return train(image, labels, classes=["matrix", "bone", "tooth"], settings=FAST)


def test_phantom_is_reproducible_and_has_all_classes():
    a, t = make_phantom((24, 32, 32), seed=5)
    b, u = make_phantom((24, 32, 32), seed=5)
    assert a.dtype == np.uint16 and np.array_equal(a, b) and np.array_equal(t, u)
    assert set(np.unique(t)) == {0, 1, 2}
    # the classes overlap in intensity (noise, grains, cupping): thresholding is not enough
    assert a[t == 0].max() > a[t == 1].mean()


def test_strokes_on_four_slices_segment_well(phantom, stroke_model):
    image, truth = phantom
    p = predict_box(image, tuple(slice(0, n) for n in SHAPE), stroke_model)
    pred = p.argmax(0)
    assert stroke_model.context is not None and len(stroke_model.forests) == 2
    assert dice(truth, pred, 0) > 0.93
    assert dice(truth, pred, 1) > 0.6
    assert dice(truth, pred, 2) > 0.5
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-4)


def test_painted_slices_segment_well(phantom):
    image, truth = phantom
    labels = painted_slices(truth, 3)
    model = train(image, labels, settings=TrainSettings(n_trees=(24, 0), n_jobs=2, two_stage=False))
    assert model.context is None and 16 <= model.forests[0].n_trees <= 24
    pred = predict_box(image, tuple(slice(0, n) for n in SHAPE), model).argmax(0)
    assert dice(truth, pred, 1) > 0.7
    assert dice(truth, pred, 2) > 0.6
    m = model.meta["metrics"]
    assert 0.5 < m["accuracy"] <= 1.0 and set(m["dice"]) == {"background", "class 1", "class 2"}


def test_model_save_load_round_trip(tmp_path, phantom, stroke_model):
    image, _ = phantom
    stroke_model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["classes"][1]["name"] == "bone" and meta["format"].startswith("ml4paleo")
    loaded = Model.load(tmp_path / "m")
    box = (slice(10, 14), slice(0, 80), slice(0, 80))
    np.testing.assert_array_equal(predict_box(image, box, stroke_model), predict_box(image, box, loaded))
    # a tampered file is refused with a clear error, not executed
    data = dict(np.load(tmp_path / "m" / "forest.npz"))
    data["s0_left"][0] = 10**6
    np.savez(tmp_path / "m" / "forest.npz", **data)
    with pytest.raises(ValueError, match="invalid model"):
        Model.load(tmp_path / "m")


def test_blockwise_segment_equals_whole_volume_and_resumes(tmp_path, phantom, stroke_model):
    image, _ = phantom
    src = omezarr.create_image(tmp_path / "img.ome.zarr", SHAPE, np.uint16, chunks=32,
                               voxel_size=(1.0, 1.0, 1.0))
    src.array[:] = image
    whole = predict_box(image, tuple(slice(0, n) for n in SHAPE), stroke_model).argmax(0)
    out = segment(src, stroke_model, tmp_path / "seg.ome.zarr", chunk_size=32, executor="serial",
                  probabilities=True)
    got = np.asarray(out.array[:])
    assert out.dtype == np.uint8 and "image-label" in out.attrs
    assert (got == whole).mean() >= 0.99999
    probs = omezarr.open_image(tmp_path / "seg.ome.zarr_probabilities").array
    assert probs.shape == (3, *SHAPE) and np.asarray(probs[:, 5, 5, 5]).sum() in range(250, 260)
    # resumable: a marked block is skipped; interrupted run finishes the rest identically
    work = tmp_path / ".seg2.ome.zarr.work"
    calls = []
    try:
        segment(src, stroke_model, tmp_path / "seg2.ome.zarr", chunk_size=32, executor="serial",
                progress=lambda d, t: calls.append(d) or (d == 3 and (_ for _ in ()).throw(KeyboardInterrupt)))
    except KeyboardInterrupt:
        pass
    assert len(list((work / "done_predict").iterdir())) == 3
    out2 = segment(src, stroke_model, tmp_path / "seg2.ome.zarr", chunk_size=32, executor="serial")
    assert np.array_equal(np.asarray(out2.array[:]), got)
    assert not work.exists()


@pytest.mark.slow
def test_dask_local_cluster_gives_identical_output(tmp_path, phantom, stroke_model):
    from dask.distributed import Client, LocalCluster

    image, _ = phantom
    sub = image[:24, :48, :48]
    src = omezarr.create_image(tmp_path / "img.ome.zarr", sub.shape, np.uint16, chunks=24)
    src.array[:] = sub
    ref = segment(src, stroke_model, tmp_path / "a.ome.zarr", chunk_size=24, executor="serial")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        with Client(cl) as client:
            got = segment(str(src.path), stroke_model, tmp_path / "b.ome.zarr", chunk_size=24,
                          executor=client)
    assert np.array_equal(np.asarray(ref.array[:]), np.asarray(got.array[:]))


def test_postprocess_removes_small_objects_and_fills_holes():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:12, 2:12, 2:12] = 1
    lab[6, 6, 6] = 0  # a hole
    lab[15:17, 15:17, 15:17] = 1  # a small object (8 voxels)
    out = postprocess_labels(lab, min_size=20, fill_holes=True)
    assert out[6, 6, 6] == 1 and out[15:17, 15:17, 15:17].sum() == 0
    assert out[2:12, 2:12, 2:12].all()


def test_label_store_semantics(tmp_path):
    store = LabelStore.create(tmp_path / "ann", (10, 12, 14), classes=["rock", "bone", "tooth"])
    lab = np.zeros((12, 14), np.uint8)
    lab[2:4, 2:5] = 2  # class 1 (bone)
    lab[8, 8] = 1  # class 0 (background)
    entry = store.write_slice(0, 3, lab)
    assert entry["counts"] == {"rock": 1, "bone": 6}
    patch = np.zeros((12, 14), np.uint8)
    patch[2, 2] = ERASE
    patch[9, 9] = 3
    store.write_slice(0, 3, patch, merge=True)
    got = store.read_slice(0, 3)
    assert got[2, 2] == 0 and got[9, 9] == 3 and got[3, 3] == 2 and got[8, 8] == 1
    store.add_polygons(1, 5, [{"label": 1, "points": [[0, 0], [0, 5], [5, 5], [5, 0]]}])
    assert store.read_slice(1, 5)[1:4, 1:4].min() == 2
    assert [(s["axis"], s["index"]) for s in store.annotated_slices()] == [(0, 3), (1, 5)]
    store.clear_slice(0, 3)
    assert [(s["axis"], s["index"]) for s in store.annotated_slices()] == [(1, 5)]
    assert store.count_by_class()["bone"] > 0
    assert [r["action"] for r in store.log_entries()][-1] == "clear_slice"
    with pytest.raises(ValueError, match="shape"):
        store.write_slice(0, 1, np.zeros((3, 3), np.uint8))
    with pytest.raises(IndexError):
        store.read_slice(2, 14)
    reopened = LabelStore(tmp_path / "ann")
    assert reopened.classes[2]["name"] == "tooth"


def test_interactive_session_loop(tmp_path, phantom):
    image, truth = phantom
    store = LabelStore.create(tmp_path / "ann", SHAPE, classes=["matrix", "bone", "tooth"])
    strokes = scribble_labels(truth, [20], seed=1)
    store.write_slice(0, 20, strokes[20])
    session = InteractiveSession(image, store)
    model = session.retrain()
    labels2d, probs = session.predict_slice(0, 20)
    assert labels2d.shape == (80, 80) and probs.shape[0] == len(model.classes)
    assert dice(truth[20], labels2d, 1) > 0.5
    unc = session.uncertainty_slice(0, 20)
    assert unc.shape == (80, 80) and 0 <= unc.min() and unc.max() <= 1
    assert session.suggest_slice(0) not in (19, 20, 21)
    # the one-slice API of a saved model agrees with the session's model
    l2, p2 = predict_slice(model, image, 0, 20)
    np.testing.assert_allclose(p2, probs, atol=1e-5)


def test_forest_cascade_early_exit_is_per_row():
    from sklearn.ensemble import RandomForestClassifier

    from ml4paleo.model_io import Forest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=3000) > 0).astype(int)
    rf = RandomForestClassifier(40, random_state=0).fit(X, y)
    f = Forest.from_sklearn(rf, [0, 1], 2)
    full = f.predict_proba(X)
    np.testing.assert_allclose(full, rf.predict_proba(X), atol=1e-5)
    first8 = Forest.from_sklearn(rf, [0, 1], 2)
    first8._trees, first8._values = first8._trees[:8], first8._values[:8]
    p8 = first8.predict_proba(X)
    got = f.predict_proba(X, cascade=(8,), confidence=0.97, chunk=1000)
    early = p8.max(axis=1) >= 0.97
    assert 0 < early.sum() < len(X)  # some rows end early, some go on
    np.testing.assert_allclose(got[early], p8[early], atol=1e-6)
    np.testing.assert_allclose(got[~early], full[~early], atol=1e-6)
    # each row's answer depends on that row only (blockwise == whole volume)
    alone = np.concatenate([f.predict_proba(X[i : i + 7], cascade=(8,)) for i in range(0, 70, 7)])
    np.testing.assert_array_equal(alone, got[:70])
