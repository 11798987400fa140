"""Lung measurements of a predicted label map for ``measurements.csv`` (README, "Inference contract").

The network segments lung versus non-lung; the two lungs are told apart by the collection's rule
(``cxrseg/lungs.py``: split at the mediastinum, image left = patient's right lung in a PA view).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .cxrseg.lungs import lung_sides

LUNG_LABEL = 1


def measure_lungs(label_map: np.ndarray) -> dict[str, float]:
    """Area in pixels of the patient's right and left lung, the left/right area ratio and the number of lung
    components (2 expected; more flags fragments, 1 a merged or missing lung). The total lung area is the
    writer's ``area_px_lung`` column."""
    lungs = label_map == LUNG_LABEL
    sides = lung_sides(lungs)
    right_area, left_area = int(sides["right"].sum()), int(sides["left"].sum())
    _, count = ndimage.label(lungs, structure=np.ones((3, 3)))
    return {
        "right_lung_area_px": right_area,
        "left_lung_area_px": left_area,
        "left_to_right_area_ratio": left_area / right_area if right_area else float("nan"),
        "lung_components": count,
    }
