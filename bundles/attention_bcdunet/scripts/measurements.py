"""Cardiothoracic ratio of a predicted label map for ``measurements.csv`` (README, "Inference contract").

Label values: 0 background, 1 lungs, 2 heart. The ratio is the widest horizontal extent of the heart divided by
the widest horizontal extent of the lung fields' outer borders (per image row, from the leftmost to the rightmost
lung pixel, so it spans both lungs and the mediastinum between them), the usual surrogate of the maximal
internal thoracic diameter in segmentation-based cardiomegaly screening. Widths are in pixels of the image as
given, so the ratio is only meaningful for posterior-anterior views at their own aspect ratio.
"""

from __future__ import annotations

import math

import numpy as np

LUNG_LABEL = 1
HEART_LABEL = 2


def max_row_extent(mask: np.ndarray) -> int:
    """Largest ``last - first + 1`` column span of the set pixels over the rows of a boolean mask (0 if empty)."""
    occupied = mask.any(axis=1)
    if not occupied.any():
        return 0
    first = mask.argmax(axis=1)
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    return int((last - first + 1)[occupied].max())


def measure_cardiothoracic(label_map: np.ndarray) -> dict[str, float]:
    """Heart width, thoracic (outer lung) width, both in pixels, and their ratio (NaN without lungs or heart)."""
    heart_width = max_row_extent(label_map == HEART_LABEL)
    thorax_width = max_row_extent(label_map == LUNG_LABEL)
    ratio = heart_width / thorax_width if heart_width and thorax_width else math.nan
    return {"heart_width_px": heart_width, "thorax_width_px": thorax_width, "cardiothoracic_ratio": ratio}
