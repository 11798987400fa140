"""The patient's right and left lung in a lung field, told apart by one rule for the whole collection.

Networks of this collection segment "lung" as one class, so the sides are separated afterwards, for the lung
areas in ``measurements.csv`` and the opacity severity per lung. Left and right are the patient's: in a
posterior-anterior radiograph in standard display the patient's right lung is on the image's left.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SIDES = ("right", "left")
# the mediastinum is looked for in the central part of the lung field's width, leaving this fraction each side
MEDIASTINUM_MARGIN = 0.2


def midline_column(lung: np.ndarray) -> int:
    """Column separating the two lungs of a non-empty boolean lung field: the column with the fewest lung pixels
    in the central 60 % of the field's width (the mediastinum), nearest the centre among equals.

    It falls in the gap between two separate lungs whatever their widths (a wide right lung, a shifted heart),
    and still gives a sensible split where the lungs touch across the mediastinum, where a rule based on
    connected components would see one lung.
    """
    columns = np.nonzero(lung.any(axis=0))[0]
    first, last = int(columns[0]), int(columns[-1])
    margin = int((last - first) * MEDIASTINUM_MARGIN)
    middle = np.arange(first + margin, last - margin + 1)
    profile = lung[:, middle].sum(axis=0)
    candidates = middle[profile == profile.min()]
    centre = (first + last) / 2
    return int(candidates[np.argmin(np.abs(candidates - centre))])


def lung_sides(lung: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks ``{"right": ..., "left": ...}`` of the patient's right lung (image left of the midline
    column) and left lung; both empty for an empty field."""
    lung = np.asarray(lung, dtype=bool)
    if not lung.any():
        return {side: np.zeros_like(lung) for side in SIDES}
    columns = np.arange(lung.shape[1])[None, :]
    midline = midline_column(lung)
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
