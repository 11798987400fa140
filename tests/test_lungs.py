"""The collection's one rule for the patient's right and left lung, and the plausibility of a lung field
(cxrseg/lungs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.draw import ellipse

from cxrseg.lungs import lung_field_problem, lung_sides, midline_column
from cxrseg.phantoms import generate_phantom


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


def test_among_equal_gaps_the_split_is_the_one_nearest_the_given_centre() -> None:
    """Three regions and two gaps (columns 20-29 and 60-69): by default the gap nearest the field's centre
    (column 39.5), given the image's centre the gap nearest it."""
    lung = np.zeros((10, 100), bool)
    lung[:, 0:20] = True
    lung[:, 30:60] = True
    lung[:, 70:80] = True
    assert midline_column(lung) == 29
    assert midline_column(lung, centre=64.5) == 64


def test_empty_field_has_two_empty_lungs() -> None:
    sides = lung_sides(np.zeros((8, 8), bool))
    assert set(sides) == {"right", "left"} and not sides["right"].any() and not sides["left"].any()


def two_lungs(
    shape: tuple[int, int] = (200, 200), centre_row: float = 0.45, centre_cols=(0.3, 0.7), size: float = 1.0
) -> np.ndarray:
    """Two elliptic lungs, 60 % of the image's height and 26 % of its width each at ``size`` 1 (about a quarter
    of the image in all), either side of the mediastinum."""
    lung = np.zeros(shape, bool)
    rows, cols = shape
    for centre_col in centre_cols:
        lung[ellipse(centre_row * rows, centre_col * cols, 0.3 * rows * size, 0.13 * cols * size, shape)] = True
    return lung


def test_two_lungs_are_plausible() -> None:
    assert lung_field_problem(two_lungs()) is None
    assert lung_field_problem(two_lungs((900, 700))) is None


def test_phantom_lungs_are_plausible() -> None:
    for seed in range(4):
        _, masks, _ = generate_phantom(np.random.default_rng(seed), size=128)
        assert lung_field_problem(masks["right_lung"] | masks["left_lung"]) is None


def test_lungs_touching_across_a_narrow_neck_are_plausible() -> None:
    """Lungs that touch across the mediastinum in a few rows are still two lungs, which lung_sides splits."""
    lung = two_lungs()
    lung[100:110, 60:140] = True
    assert lung_field_problem(lung) is None


def test_one_region_across_the_mediastinum_is_rejected() -> None:
    """The issue's field that ran across the mediastinum: the two lungs joined by lung over the whole heart, so
    that the column where they should part is lung in 90 rows of the field's 119 (75.6 %)."""
    lung = two_lungs()
    lung[50:140, 60:140] = True
    height = np.ptp(np.nonzero(lung.any(axis=1))[0]) + 1
    problem = lung_field_problem(lung)
    assert height == 119
    assert problem is not None and "does not part into two lungs" in problem and f"{100 * 90 / height:.1f} %" in problem


def test_one_lung_alone_is_rejected() -> None:
    lung = two_lungs()
    lung[:, 100:] = False
    problem = lung_field_problem(lung)
    assert problem is not None and "does not part into two lungs" in problem


def test_a_speck_for_the_second_lung_is_rejected() -> None:
    """A right lung and, for the left, a speck of 4 x 4 pixels: the left lung's share names the value."""
    lung = two_lungs()
    lung[:, 100:] = False
    lung[90:94, 150:154] = True
    problem = lung_field_problem(lung)
    assert problem is not None and f"patient's left lung has {100 * 16 / lung.sum():.1f} %" in problem


def test_a_split_far_from_the_field_middle_is_rejected() -> None:
    """A narrow right lung (columns 40-59, 21 % of the field) beside a wide left one (65-139): the lungs part at
    column 64, (64 - 40) / 99 = 24.2 % across the field, which is not where the mediastinum parts two lungs."""
    lung = np.zeros((200, 200), bool)
    lung[40:160, 40:60] = True
    lung[40:160, 65:140] = True
    problem = lung_field_problem(lung)
    assert midline_column(lung) == 64
    assert problem is not None and "the lungs part at 24.2 % of the lung field's width" in problem


@pytest.mark.parametrize("lung", [two_lungs(size=0.2), np.ones((100, 80), bool)], ids=["too small", "whole image"])
def test_area_out_of_range_names_the_measured_area(lung: np.ndarray) -> None:
    problem = lung_field_problem(lung)
    assert problem is not None and f"covers {100 * lung.mean():.1f} % of the image" in problem and "4-75 %" in problem


def test_lungs_of_a_tightly_cropped_radiograph_are_plausible() -> None:
    """Lungs filling most of the image (a radiograph cropped to the chest) are still lungs."""
    lung = two_lungs(size=1.6)
    assert 0.6 < lung.mean() < 0.75 and lung_field_problem(lung) is None


@pytest.mark.parametrize(
    ("centre_row", "centre_cols"),
    [(0.1, (0.08, 0.3)), (0.45, (0.6, 0.95)), (0.85, (0.3, 0.7))],
    ids=["top left", "right", "low"],
)
def test_off_centre_field_names_its_centre(centre_row: float, centre_cols: tuple[float, float]) -> None:
    lung = two_lungs((400, 400), centre_row, centre_cols, size=0.6)
    row, col = np.argwhere(lung).mean(axis=0) / 400
    problem = lung_field_problem(lung)
    assert problem is not None
    assert f"centred at {100 * row:.1f} % of the image's height and {100 * col:.1f} % of its width" in problem


@pytest.mark.realdata
def test_no_reference_lung_mask_of_covid_opacity_is_rejected_but_the_one_lung_annotation(covid_dir: Path) -> None:
    """The 59 development cases' reference lung fields are plausible, except covid-19-pneumonia-12, whose mask
    outlines only the patient's right lung (both lungs are visible on the radiograph; lung_vae finds both)."""
    problems = {}
    for path in sorted((covid_dir / "masks" / "lungs").glob("*.png")):
        mask = np.asarray(Image.open(path).convert("L"))
        problems[path.stem] = lung_field_problem(mask > mask.max() / 2)
    assert len(problems) == 59
    one_lung = problems.pop("covid-19-pneumonia-12")
    assert one_lung is not None and "does not part into two lungs" in one_lung
    assert {case: problem for case, problem in problems.items() if problem} == {}


def test_two_blobs_at_unrelated_places_are_no_lungs() -> None:
    """Issue 30: what a network takes for lungs in smooth noise (a small blob high on one side, a large one low on the
    other) passes area, position and mediastinum but is no mirror image; a mildly asymmetric chest still passes."""
    lung = np.zeros((200, 200), bool)
    lung[ellipse(55, 60, 25, 25, lung.shape)] = True
    lung[ellipse(130, 140, 45, 30, lung.shape)] = True
    problem = lung_field_problem(lung)
    assert problem is not None and "no mirror images" in problem, problem
    asymmetric = two_lungs()
    asymmetric[: 200 // 3, 100:] = False  # the left lung's apex missing
    assert lung_field_problem(asymmetric) is None
