"""LabelSet: colours, ignore/unknown ids, dynamic ids, CSV and dict round trips, errors."""

import numpy as np
import pytest

from sdcpc_core.classes import CITYSCAPES, LabelSet


def test_colorize_known_ignore_and_uint16_ids():
    labels = np.array([[0, 18, 255]], np.uint8)
    rgb = CITYSCAPES.colorize(labels)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert rgb[0, 0].tolist() == [128, 64, 128] and rgb[0, 1].tolist() == [119, 11, 32]
    assert rgb[0, 2].tolist() == [0, 0, 0]  # ignore id: black
    assert CITYSCAPES.colorize(np.array([[13, 65535]], np.uint16))[0].tolist() == [[0, 0, 142], [0, 0, 0]]


def test_dynamic_ids_from_names_and_mask():
    assert [CITYSCAPES.names[i] for i in CITYSCAPES.dynamic] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    only_people = CITYSCAPES.with_dynamic(["person"])
    mask = only_people.dynamic_mask(np.array([[11, 13, 0]]))
    assert mask.tolist() == [[True, False, False]]
    with pytest.raises(ValueError, match="unknown class names.*known classes"):
        CITYSCAPES.with_dynamic(["unicorn"])


def test_csv_and_dict_round_trip():
    rows = CITYSCAPES.to_csv().splitlines()
    assert rows[0] == "id,name,red,green,blue,dynamic" and rows[12] == "11,person,220,20,60,1"
    assert LabelSet.from_dict(CITYSCAPES.to_dict()) == CITYSCAPES
    assert CITYSCAPES.with_dynamic(["car"]) != CITYSCAPES


def test_invalid_palette_and_dynamic_ids():
    with pytest.raises(ValueError, match="one RGB colour per class name"):
        LabelSet(("a", "b"), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        LabelSet(("a", "b"), np.zeros((2, 3)), dynamic=(5,))
