"""The patient's right and left lung in a lung field, told apart by one rule for the whole collection, and
whether a lung field is plausible at all.

Networks of this collection segment "lung" as one class, so the sides are separated afterwards, for the lung
areas in ``measurements.csv`` and the opacity severity per lung. Left and right are the patient's: in a
posterior-anterior radiograph in standard display the patient's right lung is on the image's left.

A measurement inside a lung field is only as good as the field, and a network gives some field for any input
(a blank image, a photograph, a radiograph it fails on). :func:`lung_field_problem` says when a field is not two
lungs, from its area, its position and its split at the mediastinum, so that a two-stage bundle reports the
image instead of scoring it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SIDES = ("right", "left")
# the mediastinum is looked for in the central part of the lung field's width, leaving this fraction each side
MEDIASTINUM_MARGIN = 0.2

# Limits of a plausible lung field, each with a margin outside the range measured (in the comments) on 1,148 of
# 1,150 fields: the reference lung masks of covid_opacity (59), JSRT (200), Montgomery (138) and Shenzhen (550),
# and lung_vae's fields of 203 of their radiographs (59, 64, 40, 40). The two others are rejected: a reference
# mask with one lung and a lung_vae field of 0.9 % of a white-out radiograph (bundles/opacity_unet/docs/README.md)
# lung field area / image area: 0.086 (Shenzhen) - 0.548 (a tightly cropped COVID-19 figure)
AREA_FRACTION = (0.04, 0.75)
# centroid of the lung field, as a fraction of the image's height: 0.25 - 0.60; and of its width: 0.38 - 0.60
CENTROID_ROW_FRACTION = (0.15, 0.75)
CENTROID_COL_FRACTION = (0.25, 0.75)
# lung pixels in the split column, as a fraction of the field's height: 0 between separate lungs, at most 0.18
# where the two lungs overlap in columns
MAX_NECK_FRACTION = 0.35
# the smaller side's share of the lung field: 0.093 (a collapsed lung in Shenzhen) - 0.5
MIN_SIDE_SHARE = 0.05
# the split column's position across the lung field's width: 0.44 - 0.58
SPLIT_POSITION = (0.3, 0.7)
# overlap (intersection over union) of the left lung with the right lung mirrored about the split column: 0.29 - 0.89
# on lung_vae's fields of 30 radiographs of each of JSRT, Montgomery, Shenzhen, covid_opacity and COVID-QU-Ex and
# res_cr_net's and attention_bcdunet's of 10 of each (issue 30); 0.03 - 0.06 where they found "lungs" in smooth noise
MIN_MIRROR_OVERLAP = 0.15


def midline_column(lung: np.ndarray, centre: float | None = None) -> int:
    """Column separating the two lungs of a non-empty boolean lung field: the column with the fewest lung pixels
    in the central 60 % of the field's width (the mediastinum), nearest ``centre`` among equals (by default the
    centre of the field's width).

    It falls in the gap between two separate lungs whatever their widths (a wide right lung, a shifted heart),
    and still gives a sensible split where the lungs touch across the mediastinum, where a rule based on
    connected components would see one lung. A field that may hold more than the lungs (a network's raw output
    with a "lung" in the dark air beside the chest) has several gaps; the caller that knows the image passes its
    centre, near which the mediastinum lies, rather than the centre of whatever the field spans.
    """
    columns = np.nonzero(lung.any(axis=0))[0]
    first, last = int(columns[0]), int(columns[-1])
    margin = int((last - first) * MEDIASTINUM_MARGIN)
    middle = np.arange(first + margin, last - margin + 1)
    profile = lung[:, middle].sum(axis=0)
    candidates = middle[profile == profile.min()]
    if centre is None:
        centre = (first + last) / 2
    return int(candidates[np.argmin(np.abs(candidates - centre))])


def lung_sides(lung: np.ndarray, midline: int | None = None) -> dict[str, np.ndarray]:
    """Boolean masks ``{"right": ..., "left": ...}`` of the patient's right lung (image left of the midline
    column) and left lung; both empty for an empty field. ``midline``: :func:`midline_column` of ``lung`` where
    the caller has it already."""
    lung = np.asarray(lung, dtype=bool)
    if not lung.any():
        return {side: np.zeros_like(lung) for side in SIDES}
    columns = np.arange(lung.shape[1])[None, :]
    midline = midline_column(lung) if midline is None else midline
    return {"right": lung & (columns < midline), "left": lung & (columns >= midline)}


def measure_lung_field(lung: np.ndarray) -> dict[str, float]:
    """The lung columns of ``measurements.csv``, one vocabulary for every lung bundle: area in pixels of the
    patient's right and left lung, the left/right area ratio (NaN without a right lung) and the number of lung
    components (2 expected; more flags fragments, 1 a merged or missing lung). The total lung area is the
    writer's ``area_px_<label>`` column, so it is not repeated here."""
    lung = np.asarray(lung, dtype=bool)
    sides = lung_sides(lung)
    right_area, left_area = int(sides["right"].sum()), int(sides["left"].sum())
    _, components = ndimage.label(lung, structure=np.ones((3, 3)))
    return {
        "right_lung_area_px": right_area,
        "left_lung_area_px": left_area,
        "left_to_right_area_ratio": left_area / right_area if right_area else float("nan"),
        "lung_components": int(components),
    }


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def _range(limits: tuple[float, float]) -> str:
    return f"{100 * limits[0]:g}-{100 * limits[1]:g} %"


def _extent(occupied: np.ndarray) -> tuple[int, int]:
    """First and one-past-last index of a non-empty boolean profile: a bounding box's side without labelling the
    field (regionprops's coordinate lists cost a tenth of a second at 2048 x 2048)."""
    indices = np.flatnonzero(occupied)
    return int(indices[0]), int(indices[-1]) + 1


def area_problem(lung: np.ndarray) -> str | None:
    """Why the lung field's area cannot be two lungs, or None: a few specks (a network that found nothing) or most
    of the image (a blank or inverted image taken wholly for lung) are not lungs, whatever their shape."""
    fraction = float(np.asarray(lung, dtype=bool).mean())
    if AREA_FRACTION[0] <= fraction <= AREA_FRACTION[1]:
        return None
    return f"it covers {_percent(fraction)} of the image; two lungs cover {_range(AREA_FRACTION)}"


def position_problem(lung: np.ndarray) -> str | None:
    """Why the lung field lies where no lungs lie, or None: the lungs of a frontal radiograph fill the middle of
    the image, so a field centred near an edge is a shoulder, the abdomen or a label, not the lungs."""
    rows, cols = np.nonzero(lung)
    row, col = rows.mean() / lung.shape[0], cols.mean() / lung.shape[1]
    rows_ok = CENTROID_ROW_FRACTION[0] <= row <= CENTROID_ROW_FRACTION[1]
    cols_ok = CENTROID_COL_FRACTION[0] <= col <= CENTROID_COL_FRACTION[1]
    if rows_ok and cols_ok:
        return None
    return (
        f"it is centred at {_percent(row)} of the image's height and {_percent(col)} of its width; lungs are "
        f"centred within {_range(CENTROID_ROW_FRACTION)} of the height and {_range(CENTROID_COL_FRACTION)} "
        "of the width"
    )


def mediastinum_problem(lung: np.ndarray) -> str | None:
    """Why the lung field does not split into a right and a left lung at the mediastinum, or None.

    The split is :func:`midline_column`'s, the one the measurements use. Two lungs leave a gap there (or touch
    across a narrow neck), each holds a real share of the field, and the gap lies near the field's middle; one
    region running across the mediastinum, or one lung alone, has a wide column of lung where the gap should be
    or nearly all the field on one side, and any figure per lung measured from it would be wrong.
    """
    lung = np.asarray(lung, dtype=bool)
    top, bottom = _extent(lung.any(axis=1))
    first, last = _extent(lung.any(axis=0))
    split = midline_column(lung)
    neck = float(lung[:, split].sum() / (bottom - top))
    if neck > MAX_NECK_FRACTION:
        return (
            f"it does not part into two lungs: lung fills {_percent(neck)} of its height in the column where "
            f"the lungs should part (at most {_percent(MAX_NECK_FRACTION)}), as in one region running across "
            "the mediastinum or one lung alone"
        )
    sides = lung_sides(lung, split)
    for side in SIDES:
        share = float(sides[side].sum() / lung.sum())
        if share < MIN_SIDE_SHARE:
            return (
                f"the patient's {side} lung has {_percent(share)} of the lung field (at least "
                f"{_percent(MIN_SIDE_SHARE)}): one lung is missing"
            )
    position = (split - first) / max(last - 1 - first, 1)
    if not SPLIT_POSITION[0] <= position <= SPLIT_POSITION[1]:
        return (
            f"the lungs part at {_percent(position)} of the lung field's width, not near its middle "
            f"({_range(SPLIT_POSITION)})"
        )
    return None


def symmetry_problem(lung: np.ndarray) -> str | None:
    """Why the two lungs are no mirror images of each other, or None: a chest is near-symmetric, so the left lung
    overlaps the right one mirrored at the mediastinum (diseased and rotated chests included), where two blobs a
    network took for lungs in a photograph or in noise lie at unrelated places and heights."""
    lung = np.asarray(lung, dtype=bool)
    split = midline_column(lung)
    sides = lung_sides(lung, split)
    columns = np.arange(lung.shape[1])
    mirrored_columns = 2 * split - 1 - columns
    inside = (mirrored_columns >= 0) & (mirrored_columns < lung.shape[1])
    mirrored = np.zeros_like(lung)
    mirrored[:, inside] = sides["right"][:, mirrored_columns[inside]]
    union = int((mirrored | sides["left"]).sum())
    overlap = float((mirrored & sides["left"]).sum() / union) if union else 0.0
    if overlap >= MIN_MIRROR_OVERLAP:
        return None
    return (
        f"its two sides are no mirror images: the left lung overlaps the mirrored right lung by {_percent(overlap)} "
        f"(at least {_percent(MIN_MIRROR_OVERLAP)})"
    )


def lung_field_problem(lung: np.ndarray) -> str | None:
    """Why a boolean ``(rows, cols)`` lung field of a frontal radiograph is not two plausible lungs (the first of
    :func:`area_problem`, :func:`position_problem`, :func:`mediastinum_problem` and :func:`symmetry_problem` to
    object), or None.

    The reason names the measured value and the accepted range, so that a row of ``measurements.csv`` says what
    was wrong with the image's lung field rather than only that it was rejected.
    """
    lung = np.asarray(lung, dtype=bool)
    for check in (area_problem, position_problem, mediastinum_problem, symmetry_problem):
        problem = check(lung)
        if problem is not None:
            return problem
    return None
