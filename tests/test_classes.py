"""ml4paleo.classes: one rule for class lists, colours and label values."""

from __future__ import annotations

import pytest

from ml4paleo.classes import (
    MAX_CLASSES,
    PALETTE,
    ClassError,
    class_list,
    ngff_colors,
    ngff_properties,
    validate_classes,
)


def test_validate_normalises_names_and_colours():
    out = validate_classes([" matrix ", {"name": "Bone", "color": "#FF0000"}])
    assert out == [{"name": "matrix", "color": PALETTE[0]}, {"name": "Bone", "color": "#ff0000"}]


@pytest.mark.parametrize("bad", [
    "abc", [], [{"name": ""}], [{"name": "a"}, {"name": "A"}], [{"name": "a", "color": "red"}],
    [{"name": "x" * 65}], [f"c{i}" for i in range(MAX_CLASSES + 1)], [3],
])
def test_validate_refuses(bad):
    with pytest.raises(ClassError):
        validate_classes(bad)


def test_limits_follow_the_8_bit_annotation_encoding():
    assert MAX_CLASSES == 254  # values 1..254 = classes 0..253; 0 unlabelled, 255 erase
    assert len(validate_classes([f"c{i}" for i in range(MAX_CLASSES)])) == MAX_CLASSES
    with pytest.raises(ClassError):
        validate_classes(["only"], min_count=2)


def test_class_list_fills_defaults_and_ngff_metadata():
    classes = class_list([{"name": "matrix"}], 3)
    assert [c["name"] for c in classes] == ["matrix", "class 1", "class 2"]
    colors = ngff_colors(classes)
    assert colors[0]["rgba"][3] == 0 and colors[1]["rgba"][3] == 255
    assert [c["label-value"] for c in colors] == [0, 1, 2]
    assert [p["class"] for p in ngff_properties(classes)] == ["matrix", "class 1", "class 2"]
