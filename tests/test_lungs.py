"""The collection's one rule for the patient's right and left lung (cxrseg/lungs.py)."""

from __future__ import annotations

import numpy as np

from cxrseg.lungs import lung_sides, midline_column


def test_separate_lungs_of_unequal_width_split_in_the_gap() -> None:
    """A wide right lung (image left) and a narrow left one: the split is in the gap, not at the centre of the
    lung field's extent (column 47)."""
    lung = np.zeros((40, 100), bool)
    lung[:, 5:55] = True
    lung[:, 65:90] = True
    assert 55 <= midline_column(lung) < 65
    sides = lung_sides(lung)
    assert sides["right"].sum() == 40 * 50 and sides["left"].sum() == 40 * 25


def test_lungs_merged_across_the_mediastinum_split_at_the_narrowest_column() -> None:
    """One connected field, thinnest at column 12 (a 1-pixel bridge): right = columns 4..11, left = 12..17."""
    lung = np.zeros((10, 20), bool)
    lung[2:8, 4:18] = True
    lung[3:8, 12] = False
    sides = lung_sides(lung)
    assert midline_column(lung) == 12
    assert sides["right"].sum() == 6 * 8 and sides["left"].sum() == 6 * 6 - 5


def test_empty_field_has_two_empty_lungs() -> None:
    sides = lung_sides(np.zeros((8, 8), bool))
    assert set(sides) == {"right", "left"} and not sides["right"].any() and not sides["left"].any()
