"""Per-dataset choice of configuration and feature pruning (ml4paleo.segmentation.selection)."""

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from ml4paleo.features import FeatureSettings, feature_names, halo_for
from ml4paleo.phantom import make_phantom, painted_slices, scribble_labels
from ml4paleo.segmentation import Model, TrainSettings, predict_box, train
from ml4paleo.segmentation.boxes import features_for_box
from ml4paleo.segmentation.selection import STRUCTURE

SHAPE = (32, 64, 64)


def coherence_volume(shape=SHAPE, seed=0):
    """Two classes made of the same fibres (same mean, variance, gradient and Hessian
    statistics per voxel): class 1's fibres all run along x, class 0's along x, y or z in
    random cells of 4 voxels. Only an orientation measure integrated over a neighbourhood
    (the structure tensor with an outer scale of a few voxels) tells them apart."""
    rng = np.random.default_rng(seed)

    def noise(sigma):
        f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
        return (f - f.mean()) / f.std()

    truth = (noise(8) > 0.3).astype(np.uint8)
    fields = [noise([6.0 if a == ax else 1.0 for a in range(3)]) for ax in range(3)]
    cell = 4
    idx = np.ix_(*[np.arange(n) // cell for n in shape])
    orient = rng.integers(0, 3, size=[math.ceil(n / cell) for n in shape])[idx]
    w = [ndi.gaussian_filter((orient == k).astype(np.float32), 1.0) for k in range(3)]
    incoh = sum(wk * f for wk, f in zip(w, fields, strict=True)) / np.sqrt(sum(wk * wk for wk in w))
    img = np.where(truth == 1, fields[2], incoh) + rng.normal(0, 0.2, shape).astype(np.float32)
    return np.clip(img * 6000 + 30000, 0, 65535).astype(np.uint16), truth


def mean_dice(truth, pred, n):
    return float(np.mean([2 * ((truth == c) & (pred == c)).sum() / ((truth == c).sum() + (pred == c).sum())
                          for c in range(n)]))


@pytest.fixture(scope="module")
def texture():
    scan, truth = coherence_volume()
    labels = scribble_labels(truth, 4, seed=2)  # brush strokes on 4 slices, as a user labels
    return scan, truth, labels


FAST = dict(n_trees=(16, 16), max_per_class=3000, n_jobs=2, select_budget=600.0)


def test_per_dataset_choice_picks_the_structure_tensor_where_default_features_fail(texture):
    scan, truth, labels = texture
    whole = tuple(slice(0, n) for n in SHAPE)
    chosen = train(scan, labels, classes=["incoherent", "coherent"], settings=TrainSettings(**FAST))
    default = train(scan, labels, classes=["incoherent", "coherent"],
                    settings=TrainSettings(**FAST).fixed())
    sel = chosen.meta["selection"]
    scores = {c["name"]: c["score"] for c in sel["candidates"]}
    assert list(scores) == ["full, one stage", "structure, two stages", "default, two stages"]
    assert all(isinstance(s, float) for s in scores.values())
    # the structure tensor is what separates the classes: chosen, and scored far higher
    assert sel["chosen"] != "default, two stages"
    assert "structure" in chosen.feature_settings.families
    assert any(n.startswith("structure") for n in feature_names(chosen.feature_settings))
    assert scores[sel["chosen"]] >= scores["default, two stages"] + 0.1
    # the chosen model's held-out score is at least the default configuration's
    assert chosen.meta["metrics"]["score"] >= scores["default, two stages"] - 0.005
    # and on the whole volume (mostly voxels no label covers) it succeeds where default fails
    d_default = mean_dice(truth, predict_box(scan, whole, default).argmax(0), 2)
    d_chosen = mean_dice(truth, predict_box(scan, whole, chosen).argmax(0), 2)
    assert d_default < 0.75
    assert d_chosen > 0.77 and d_chosen > d_default + 0.08


def test_selection_is_recorded_and_round_trips(tmp_path, texture):
    scan, _, labels = texture
    ts = TrainSettings(**{**FAST, "two_stage": False})
    model = train(scan, labels, settings=ts)
    sel = model.meta["selection"]
    assert [c["two_stage"] for c in sel["candidates"]] == [False]
    assert model.context is None and sel["chosen"] in {c["name"] for c in sel["candidates"]}
    back = Model.load(model.save(tmp_path / "m"))
    assert back.meta["selection"] == sel
    assert back.feature_settings == model.feature_settings
    box = (slice(0, 8), slice(0, 64), slice(0, 64))
    np.testing.assert_array_equal(predict_box(scan, box, back), predict_box(scan, box, model))


def test_the_time_budget_skips_candidates_but_scores_the_default(texture):
    scan, _, labels = texture
    model = train(scan, labels, settings=TrainSettings(**{**FAST, "select_budget": 0.0}))
    cands = model.meta["selection"]["candidates"]
    assert "score" in cands[0] and cands[0]["name"] == "full, one stage"
    assert len(cands) == 3 and all(c.get("skipped") == "time budget" for c in cands[1:])
    assert model.meta["selection"]["chosen"] == "full, one stage"


def test_one_annotated_plane_trains_the_default_without_cross_validation():
    scan, truth = make_phantom((24, 40, 40), seed=1)
    model = train(scan, painted_slices(truth, [12]), settings=TrainSettings(**FAST))
    assert model.meta["selection"]["method"].startswith("none")
    assert model.meta["selection"]["chosen"] == "full, one stage"
    assert len(model.forests) == 1 and "structure" in model.feature_settings.families


@pytest.mark.parametrize("two_stage", [False, True])
def test_dropping_unused_channels_predicts_exactly_the_same(two_stage):
    scan, truth = make_phantom((24, 48, 48), seed=4)
    labels = scribble_labels(truth, 3, seed=1)
    ts = TrainSettings(n_trees=(3, 3), min_trees=1, max_depth=3, n_jobs=1, two_stage=two_stage,
                       select=False, prune=False)
    full = train(scan, labels, settings=ts)
    pruned = full.without_unused_channels()
    n_full, n_kept = len(feature_names(full.feature_settings)), len(feature_names(pruned.feature_settings))
    assert n_kept < n_full  # 3 trees of depth 3 cannot use every channel
    assert pruned.meta["unused_channels_dropped"] == {"from": n_full, "to": n_kept}
    assert all(np.all(np.asarray(h1) <= np.asarray(h0)) for h1, h0 in [(pruned.halo, full.halo)])
    box = tuple(slice(0, n) for n in scan.shape)
    for kw in ({"cascade": ()}, {}):
        np.testing.assert_array_equal(predict_box(scan, box, pruned, **kw),
                                      predict_box(scan, box, full, **kw))
    # the pruned settings compute exactly the kept channels, with the full set's values
    kept = feature_names(pruned.feature_settings)
    sub = features_for_box(scan, box, pruned.feature_settings, None)[0]
    every = features_for_box(scan, box, full.feature_settings, None)[0]
    names = feature_names(full.feature_settings)
    assert sub.shape[0] == len(kept)
    np.testing.assert_array_equal(sub, every[[names.index(n) for n in kept]])
    # training with prune=True gives that model
    again = train(scan, labels, settings=TrainSettings(**{**ts.__dict__, "prune": True}))
    assert feature_names(again.feature_settings) == kept


def test_importance_pruning_retrains_on_the_kept_channels_and_computes_only_them():
    scan, truth = make_phantom((32, 64, 64), seed=2)
    labels = painted_slices(truth, 4)
    whole = tuple(slice(0, n) for n in scan.shape)
    strict = train(scan, labels, settings=TrainSettings(**{**FAST, "prune_fraction": 1.0}))
    p = strict.meta["selection"]["pruning"]
    assert p["from"] > p["to"] > 0 and isinstance(p["score"], float)
    best = max(c["score"] for c in strict.meta["selection"]["candidates"] if "score" in c)
    # kept only when it scores as well (within the tolerance)
    assert (p["kept"] == "pruned") == (p["score"] >= best - p["tolerance"])
    # a tolerance that accepts any pruned set: the model computes only the kept channels
    model = train(scan, labels, settings=TrainSettings(**{**FAST, "prune_fraction": 1.0,
                                                          "prune_tolerance": 1.0}))
    q = model.meta["selection"]["pruning"]
    assert q["kept"] == "pruned" and q["to"] == p["to"]
    kept = feature_names(model.feature_settings)
    assert len(kept) <= q["to"] < q["from"]
    assert model.forests[0].n_features == len(kept)
    assert round(model.meta["metrics"]["score"], 4) == q["score"]
    pred = predict_box(scan, whole, model).argmax(0)
    assert mean_dice(truth, pred, 3) > 0.6  # still a working model on fewer channels
    # a held-out score at or above prune_saturated cannot judge a pruned set: nothing pruned
    blind = train(scan, labels, settings=TrainSettings(**{**FAST, "prune_fraction": 1.0,
                                                          "prune_tolerance": 1.0,
                                                          "prune_saturated": 0.0}))
    b = blind.meta["selection"]["pruning"]
    assert b["kept"].startswith("all (held-out score") and "score" not in b
    assert len(feature_names(blind.feature_settings)) > q["to"]


def test_structure_candidate_channels_contain_the_default_ones():
    assert set(feature_names(FeatureSettings())) < set(feature_names(STRUCTURE))
    # a default channel's values do not depend on the structure settings around it
    scan, _ = make_phantom((20, 32, 32), seed=0)
    box = tuple(slice(0, n) for n in scan.shape)
    a = features_for_box(scan, box, FeatureSettings(), None)[0]
    b = features_for_box(scan, box, STRUCTURE.with_channels(feature_names(FeatureSettings())), None)[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)
    assert halo_for(STRUCTURE.with_channels(feature_names(FeatureSettings()))) == halo_for(FeatureSettings())


def test_cli_train_selects_by_default_and_no_select_turns_it_off(tmp_path, texture):
    from click.testing import CliRunner

    from ml4paleo.cli import main

    scan, _, labels = texture
    np.save(tmp_path / "scan.npy", scan)
    np.save(tmp_path / "labels.npy", labels)
    args = ["train", str(tmp_path / "scan.npy"), str(tmp_path / "labels.npy"), "--trees", "8",
            "--quiet"]
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "auto")])
    assert res.exit_code == 0, res.output
    auto = Model.load(tmp_path / "auto")
    assert f"chosen: {auto.meta['selection']['chosen']}" in res.output
    assert any(n.startswith("structure") for n in feature_names(auto.feature_settings))
    res = CliRunner().invoke(main, [*args, "--no-select", "-o", str(tmp_path / "fixed")])
    assert res.exit_code == 0, res.output
    fixed = Model.load(tmp_path / "fixed")
    assert "selection" not in fixed.meta and fixed.feature_settings == FeatureSettings()
    assert fixed.context is not None


def test_model_listing_shows_the_choice(tmp_path, texture):
    from ml4paleo.workspace import ModelRegistry

    scan, _, labels = texture
    reg = ModelRegistry(tmp_path / "job")
    model = train(scan, labels, settings=TrainSettings(**{**FAST, "two_stage": False}))
    mid = reg.save(model, source={"kind": "train"})
    plain = reg.save(train(scan, labels, settings=TrainSettings(**FAST).fixed()))
    entry = {e["id"]: e for e in reg.list()}
    sel = entry[mid]["selection"]
    assert sel["chosen"] == model.meta["selection"]["chosen"]
    assert [c["score"] for c in sel["candidates"]] == [c["score"] for c in
                                                         model.meta["selection"]["candidates"]]
    assert entry[plain]["selection"] is None


def test_one_stage_training_computes_labelled_planes_tile_by_tile():
    import tracemalloc

    from ml4paleo.io import open_any
    from ml4paleo.segmentation.training import gather, labelled_voxels

    scan, truth = make_phantom((24, 192, 192), seed=6)
    labels = painted_slices(truth, 2)
    arr = open_any(scan)
    coords, vals, _ = labelled_voxels(labels)
    y = (vals - 1).astype(np.int64)
    fs = FeatureSettings()
    tracemalloc.start()
    tiled = gather(arr, coords, y, fs, None, 3, plane_tile=48)
    kept, peak = tracemalloc.get_traced_memory()
    transient_tiled = peak - kept  # what the features took beyond the rows kept
    tracemalloc.stop()
    # the same rows from the 3-D features of each whole plane box
    tracemalloc.start()
    ref = np.empty_like(tiled.X)
    for z in np.unique(coords[:, 0]):
        rows = np.flatnonzero(coords[:, 0] == z)
        box = (slice(int(z), int(z) + 1), slice(0, 192), slice(0, 192))
        Xb = features_for_box(arr, box, fs, None)[0]
        ref[rows] = Xb[:, coords[rows, 1] * 192 + coords[rows, 2]].T
        del Xb
    kept, peak = tracemalloc.get_traced_memory()
    transient_whole = peak - kept
    tracemalloc.stop()
    scale = np.abs(ref).max(axis=0)
    assert np.all(np.abs(tiled.X - ref) <= 5e-4 * scale + 1e-3)
    assert transient_tiled < 0.5 * transient_whole  # bounded by a tile, not by the plane


def test_large_slices_train_one_stage_within_the_memory_cap(texture):
    scan, _, labels = texture
    model = train(scan, labels, settings=TrainSettings(**{**FAST, "context_max_bytes": 1.0}))
    assert model.context is None and len(model.forests) == 1
    why = model.meta["train_settings"]["one_stage_because"]
    assert why["context_bytes"] > 1.0
    assert all(not c["two_stage"] for c in model.meta["selection"]["candidates"])


def test_the_default_stays_unless_beaten_by_the_margin(texture):
    scan, _, labels = texture
    model = train(scan, labels, settings=TrainSettings(**{**FAST, "select_margin": 1.0}))
    sel = model.meta["selection"]
    assert sel["chosen"] == "full, one stage" and sel["margin"] == 1.0
    assert max(c["score"] for c in sel["candidates"]) > sel["candidates"][0]["score"]


def test_a_later_candidate_replaces_the_first_when_it_wins_by_the_margin(texture):
    """The mechanism, not the order: with the former default (no structure tensor) first,
    the structure tensor still wins on the texture it alone separates."""
    from ml4paleo.io import open_any
    from ml4paleo.segmentation.context import ContextSettings
    from ml4paleo.segmentation.selection import Candidate, choose
    from ml4paleo.segmentation.training import balanced_sample, gather, labelled_voxels

    scan, _, labels = texture
    ts = TrainSettings(**FAST)
    coords, vals, border = labelled_voxels(labels)
    pick = balanced_sample(vals, border, ts.max_per_class, ts.border_weight, ts.seed)
    data = gather(open_any(scan), coords[pick], (vals[pick] - 1).astype(np.int64), STRUCTURE,
                  ContextSettings(ts.context_sigmas), 2)
    classes = [{"name": "incoherent"}, {"name": "coherent"}]
    cands = [Candidate("default, two stages", FeatureSettings(), True),
             Candidate("structure, one stage", STRUCTURE, False)]
    sel = choose(data, cands, ts, classes)
    first, second = (c["score"] for c in sel.report["candidates"])
    assert second > first + ts.select_margin
    assert sel.candidate.name == "structure, one stage"
    # the same scores with a margin larger than the gain keep the first
    kept = choose(data, cands, TrainSettings(**{**FAST, "select_margin": second - first + 0.01}),
                  classes)
    assert kept.candidate.name == "default, two stages"


def test_progress_moves_during_the_choice(texture):
    scan, _, labels = texture
    calls = []
    train(scan, labels, settings=TrainSettings(**FAST), progress=lambda d, t: calls.append((d, t)))
    totals = {t for _, t in calls}
    assert len(totals) == 1
    total = totals.pop()
    done = [d for d, _ in calls]
    n_boxes = 4  # strokes on 4 slices
    # every box, each of the 3 candidates, the pruning, then the fitting
    assert total == n_boxes + 3 + 1 + 1
    assert done == list(range(1, total + 1))


def test_context_regions_that_overlap_share_one_pass_with_the_same_values():
    """Painted planes a few voxels apart: one filter-bank pass over their context regions'
    bounding box gives each plane's rows and coarse context features exactly as a pass over
    its own region does (and is taken only where it reads no more than separate passes)."""
    from ml4paleo.io import open_any
    from ml4paleo.segmentation.context import ContextSettings, context_plan
    from ml4paleo.segmentation.training import gather, labelled_voxels, merge_regions

    scan, truth = make_phantom((40, 48, 56), seed=3)
    labels = np.zeros_like(truth)
    for z in (5, 12, 33):  # 5 and 12 overlap; 33 is far
        labels[z] = truth[z] + 1
    labels[20, 10:30, 5:40] = truth[20, 10:30, 5:40] + 1  # a smaller box in between
    arr = open_any(scan)
    coords, vals, _ = labelled_voxels(labels)
    y = (vals - 1).astype(np.int64)
    fs, ctx = FeatureSettings(scales=(1.0, 3.0)), ContextSettings((0.0, 1.0))
    data = gather(arr, coords, y, fs, ctx, 3)
    regions = [cb.plan.region for cb in data.boxes]
    merged = merge_regions(regions, fs)
    assert len(merged) < len(regions)  # some pass was shared
    assert [i for _, idx in merged for i in idx] == sorted(range(len(regions)),
                                                           key=lambda i: regions[i][0].start)
    for cb in data.boxes:
        plan = context_plan(cb.box, arr.shape, ctx, fs)
        Xb, Xc = features_for_box(arr, plan.region, fs, None, plan.coarse, plan.inner(cb.box))
        assert np.array_equal(data.X[cb.members], Xb[:, cb.flat].T)
        assert np.array_equal(cb.coarse, Xc)
    # a cap below one region's estimate keeps every region on its own
    assert len(merge_regions(regions, fs, max_bytes=1.0)) == len(regions)
    # passes split into tiles of rows (reads bounded) give the same values, also with
    # scales on the coarse grid (tiles at odd and even rows)
    from ml4paleo.segmentation.boxes import _row_tiles, features_for_parts

    coarse_fs = FeatureSettings(scales=(1.0, 3.0), coarse_from=3.0)
    for settings in (fs, coarse_fs):
        box = (slice(2, 30), slice(0, 48), slice(0, 56))
        parts = [((slice(3, 4), slice(0, 48), slice(0, 56)),
                  (slice(0, 28, 2), slice(1, 48, 2), slice(0, 56, 2))),
                 ((slice(20, 22), slice(7, 40), slice(5, 50)), None)]
        whole = features_for_parts(arr, box, settings, None, parts)
        h = halo_for(settings, None)
        cap = (28 + 2 * h[0]) * (56 + 2 * h[2]) * (17 + 2 * h[1])  # tiles of ~17 rows
        assert len(_row_tiles(box, h, cap)) >= 3
        for (a, ac), (b, bc) in zip(whole, features_for_parts(arr, box, settings, None, parts,
                                                              max_read=cap), strict=True):
            assert np.array_equal(a, b)
            assert (ac is None and bc is None) or np.array_equal(ac, bc)
