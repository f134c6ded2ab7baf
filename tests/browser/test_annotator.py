"""The annotation studio in headless Chromium against the real app and runners.

Draw strokes of two classes with the mouse, see the prediction overlay, undo a stroke,
reload and find the annotation (and an unsubmitted draft) still there, then queue the
whole-volume segmentation and the meshing (real runner processes) and follow the result
into the viewers. Screenshots: ``test-artifacts/annotator-*.png``.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from ml4paleo.annotate import decode_label_mask
from ml4paleo.phantom import make_phantom

from .conftest import shot

pytestmark = pytest.mark.browser

Z = 16
Z2 = 24


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((32, 128, 128), seed=3)


def _longest_run(mask2d: np.ndarray) -> tuple[int, int, int]:
    """(row, x0, x1) of the longest horizontal run of True pixels."""
    best = (0, 0, 0)
    for r, row in enumerate(mask2d):
        x = 0
        while x < row.size:
            if row[x]:
                x1 = x
                while x1 < row.size and row[x1]:
                    x1 += 1
                if x1 - x > best[2] - best[1]:
                    best = (r, x, x1)
                x = x1
            x += 1
    return best


def _to_page(page, x: float, y: float) -> tuple[float, float]:
    return page.evaluate(
        """([x, y]) => { const S = window.ml4paleoAnnotator;
            const r = document.getElementById('ann-canvas').getBoundingClientRect();
            return [r.left + S.view.tx + x * S.view.scale,
                    r.top + S.view.ty + y * S.view.scale * S.aspect]; }""",
        [x + 0.5, y + 0.5],
    )


def _stroke(page, row: int, x0: int, x1: int) -> None:
    a = _to_page(page, x0, row)
    b = _to_page(page, x1 - 1, row)
    page.mouse.move(*a)
    page.mouse.down()
    for t in np.linspace(0, 1, 8)[1:]:
        page.mouse.move(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)
    page.mouse.up()


def _labels_in_page(page) -> np.ndarray:
    return np.array(page.evaluate("Array.from(window.ml4paleoAnnotator.labels)"), np.uint8)


def _server_labels(live_server, job_id: str, index: int = Z) -> np.ndarray:
    r = requests.get(f"{live_server.url}/api/job/{job_id}/annotate/labels",
                     params={"axis": "z", "index": index}, timeout=30)
    return decode_label_mask(r.json()["labels"])


def _wait_saved(page) -> None:
    page.wait_for_function(
        "() => !window.ml4paleoAnnotator.dirty && !window.ml4paleoAnnotator.inflight",
        timeout=60_000)


def test_annotate_retrain_undo_reload_segment_mesh(page, live_server, phantom):
    image, truth = phantom
    job_id = live_server.seed_job("annotator test", image, voxel_size=(2.0, 1.0, 1.0))
    page.goto(f"/job/{job_id}/annotate#axis=z&index={Z}")
    page.wait_for_selector(f"#ann-viewport[data-loaded='z:{Z}']")
    assert page.locator("text=Keyboard shortcuts").is_visible()

    # brush 3 px; background stroke (class 1 = key "1") over an empty row
    page.fill("#ann-brush", "3")
    page.dispatch_event("#ann-brush", "input")
    page.keyboard.press("1")
    bg = truth[Z] == 0
    bg[:8] = bg[-8:] = False  # away from the edges, where the stroke is easy to see
    bg_row, bg0, bg1 = _longest_run(bg)
    _stroke(page, bg_row, bg0 + 5, min(bg1 - 5, bg0 + 60))
    # structure strokes (class 2 = key "2") along the two longest runs of bone
    page.keyboard.press("2")
    fg = truth[Z] > 0
    row1, a1, b1 = _longest_run(fg)
    _stroke(page, row1, a1, b1)
    page.wait_for_selector("#ann-viewport[data-prediction]", timeout=60_000)
    _wait_saved(page)
    shot(page, "annotator-1-two-classes-with-prediction")
    labels = _labels_in_page(page).reshape(128, 128)
    assert (labels == 1).sum() > 20 and (labels == 2).sum() >= 5
    np.testing.assert_array_equal(_server_labels(live_server, job_id), labels)
    # the prediction overlay follows the truth more than chance
    assert page.evaluate("window.ml4paleoAnnotator.predImg !== null")
    info = page.locator("#ann-model-info").inner_text()
    assert "Model v" in info

    # a third stroke, then undo it: page and server go back to the two strokes
    fg2 = fg.copy()
    fg2[max(0, row1 - 3): row1 + 4] = False
    row2, a2, b2 = _longest_run(fg2)
    _stroke(page, row2, a2, b2)
    _wait_saved(page)
    with_third = _labels_in_page(page).reshape(128, 128)
    assert (with_third == 2).sum() > (labels == 2).sum()
    page.keyboard.press("Control+z")
    _wait_saved(page)
    np.testing.assert_array_equal(_labels_in_page(page).reshape(128, 128), labels)
    np.testing.assert_array_equal(_server_labels(live_server, job_id), labels)
    page.keyboard.press("u")  # uncertainty overlay on
    page.wait_for_timeout(300)
    shot(page, "annotator-2-after-undo-uncertainty")
    page.keyboard.press("u")

    # reload: the annotation is still there
    page.reload()
    page.wait_for_selector(f"#ann-viewport[data-loaded='z:{Z}']")
    np.testing.assert_array_equal(_labels_in_page(page).reshape(128, 128), labels)
    page.wait_for_selector("#ann-viewport[data-prediction]", timeout=60_000)

    # a stroke that never reached the server survives a reload as a draft
    page.uncheck("#ann-autotrain")
    page.keyboard.press("1")
    _stroke(page, bg_row + 2 if bg_row + 2 < 128 else bg_row - 2, bg0 + 5, bg0 + 30)
    page.wait_for_timeout(400)  # the localStorage draft is written after 150 ms
    drafted = _labels_in_page(page).reshape(128, 128)
    assert (drafted == 1).sum() > (labels == 1).sum()
    page.reload()
    page.wait_for_selector(f"#ann-viewport[data-loaded='z:{Z}']")
    np.testing.assert_array_equal(_labels_in_page(page).reshape(128, 128), drafted)
    _wait_saved(page)  # the restored draft is submitted
    np.testing.assert_array_equal(_server_labels(live_server, job_id), drafted)

    # polygon, fill and eraser on another slice
    page.check("#ann-autotrain")
    page.fill("#ann-index", str(Z2 + 1))  # the page numbers slices from 1
    page.dispatch_event("#ann-index", "change")
    page.wait_for_selector(f"#ann-viewport[data-loaded='z:{Z2}']")
    page.keyboard.press("l")
    page.keyboard.press("1")
    for x, y in ((4, 4), (30, 4), (30, 20), (4, 20)):
        page.mouse.click(*_to_page(page, x, y))
    page.keyboard.press("Enter")
    poly = _labels_in_page(page).reshape(128, 128)
    assert 300 < (poly == 1).sum() < 600 and poly[10, 15] == 1 and poly[40, 40] == 0
    page.keyboard.press("f")
    page.keyboard.press("2")
    fr, fa, fb = _longest_run(truth[Z2] > 0)
    page.mouse.click(*_to_page(page, (fa + fb) // 2, fr))
    filled = _labels_in_page(page).reshape(128, 128)
    assert (filled == 2).sum() > 10
    page.keyboard.press("e")
    _stroke(page, 12, 2, 34)  # erase a band through the polygon
    erased = _labels_in_page(page).reshape(128, 128)
    assert (erased == 1).sum() < (poly == 1).sum() and erased[12, 15] == 0
    page.wait_for_selector("#ann-viewport[data-prediction]", timeout=60_000)
    _wait_saved(page)
    np.testing.assert_array_equal(_server_labels(live_server, job_id, Z2), erased)
    shot(page, "annotator-3-polygon-fill-eraser")
    page.keyboard.press("b")

    # suggest a slice, navigate along y and back
    page.click("#ann-suggest")
    page.wait_for_function("() => document.getElementById('ann-suggest-info').textContent.length > 0")
    page.select_option("#ann-axis", "y")
    page.wait_for_selector("#ann-viewport[data-loaded='y:64'][data-prediction]", timeout=60_000)
    shot(page, "annotator-4-y-plane")
    page.select_option("#ann-axis", "z")  # back to the middle z slice, Z
    page.wait_for_selector(f"#ann-viewport[data-loaded='z:{Z}']")

    # segment the whole volume: the runner trains + segments, the viewer opens
    page.click("#ann-segment")
    page.wait_for_url(f"**/job/{job_id}/view**", timeout=240_000)
    record = live_server.store.get(job_id)
    assert record["status"] == "segmented", record
    assert record["segmentations"]
    page.wait_for_timeout(1500)
    shot(page, "annotator-5-segmentation-in-viewer")

    # make meshes from the annotator: the 3D view opens
    page.goto(f"/job/{job_id}/annotate")
    page.wait_for_selector("#ann-viewport[data-loaded]")
    page.click("#ann-mesh")
    page.wait_for_url(f"**/job/{job_id}/3d**", timeout=240_000)
    record = live_server.store.get(job_id)
    assert record["status"] == "meshed", record
    page.wait_for_timeout(1500)
    shot(page, "annotator-6-meshes-in-3d")

    # gallery and models pages show the work
    page.goto(f"/job/{job_id}/annotations")
    page.wait_for_selector(f".ann-card[data-axis='z'][data-index='{Z}'] img")
    shot(page, "annotator-7-gallery")
    page.goto(f"/job/{job_id}/models")
    page.wait_for_selector("#mod-table tbody tr")
    page.wait_for_selector("#mod-chart svg")  # two annotated planes: held-out metrics exist
    # the model trained by the segment step chose its configuration on these labels
    note = page.text_content("#mod-table tbody tr .selection")
    assert note and note.startswith("configuration: "), note
    shot(page, "annotator-8-models")
    assert not page.js_errors, page.js_errors


def test_a_new_class_takes_its_colour_from_the_server_palette(page, live_server, phantom):
    from ml4paleo.classes import PALETTE

    image, _ = phantom
    job_id = live_server.seed_job("palette test", image[:16, :64, :64])
    page.goto(f"/job/{job_id}/annotate")
    page.wait_for_selector("#ann-viewport[data-loaded]")
    assert page.evaluate("window.ml4paleoAnnotator.palette") == list(PALETTE)
    for k, name in ((2, "dense"), (3, "crack")):
        page.fill("#ann-new-class", name)
        page.click("#ann-add-class")
        page.wait_for_function(f"() => window.ml4paleoAnnotator.classes.length === {k + 1}")
        page.wait_for_function(
            f"() => document.querySelectorAll('#ann-classes li').length === {k + 1}")
    classes = requests.get(f"{live_server.url}/api/job/{job_id}/annotate/classes",
                           timeout=30).json()["classes"]
    assert [c["name"] for c in classes][2:] == ["dense", "crack"]
    assert [c["color"] for c in classes][2:] == [PALETTE[2], PALETTE[3]]
    shown = page.evaluate(
        "Array.from(document.querySelectorAll('#ann-classes input[type=color]')).map(e => e.value)")
    assert shown[2:] == [PALETTE[2], PALETTE[3]]
    assert not page.js_errors, page.js_errors
