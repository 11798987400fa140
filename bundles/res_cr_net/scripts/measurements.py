"""Lung measurements of a predicted label map for ``measurements.csv`` (README, "Inference contract").

The network segments lung against the rest; the two lungs are told apart and measured by the collection's
rule (``cxrseg/lungs.py``), so every lung bundle writes the same columns.
"""

from __future__ import annotations

import numpy as np

from .cxrseg.lungs import measure_lung_field

LUNG_LABEL = 1


def measure_lungs(label_map: np.ndarray) -> dict[str, float]:
    """Right and left lung areas in pixels, their ratio and the number of lung components."""
    return measure_lung_field(label_map == LUNG_LABEL)
