"""Lung areas of a predicted label map for ``measurements.csv`` (README, "Inference contract").

The network segments lung against the rest; the two lungs are told apart by the collection's rule
(``cxrseg/lungs.py``: split at the mediastinum, image left = patient's right lung in a PA view).
"""

from __future__ import annotations

import numpy as np

from .cxrseg.lungs import lung_sides

LUNG_LABEL = 1


def measure_lungs(label_map: np.ndarray) -> dict[str, float]:
    """Area in pixels of the patient's right lung, left lung and both."""
    sides = lung_sides(label_map == LUNG_LABEL)
    right_area, left_area = int(sides["right"].sum()), int(sides["left"].sum())
    return {"right_lung_area_px": right_area, "left_lung_area_px": left_area,
            "total_lung_area_px": right_area + left_area}
