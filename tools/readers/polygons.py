"""Polygon annotations (V7 Darwin, LabelMe) rasterised into structure masks, and label names mapped to structures.

Policy for vertices outside the image: annotation tools let annotators drag a vertex a little past the border,
so a vertex at most :data:`OUTSIDE_TOLERANCE` of the image side outside is clipped to the image with a warning.
A vertex farther out means the coordinates belong to another image size (or another image), so the whole
case is rejected with the file, the label and the vertex in the message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from skimage.draw import polygon as polygon_pixels

from cxrseg.io import RadiographError

from .base import structure_name

LOG = logging.getLogger(__name__)
OUTSIDE_TOLERANCE = 0.05
DROP_NAMES = ("", "none", "null")

DEFAULT_LABELS = {
    "lung": "lungs",
    "lungs": "lungs",
    "left_lung": "left_lung",
    "right_lung": "right_lung",
    "heart": "heart",
    "left_clavicle": "left_clavicle",
    "right_clavicle": "right_clavicle",
    "ground_glass": "ggo",
    "ground_glass_opacity": "ggo",
    "ggo": "ggo",
    "consolidation": "consolidation",
    "cardiomediastinum": "cardiomediastinum",
    "ignore": "ignore",
}


def label_mapping(labels: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """The default label-to-structure mapping updated with the user's; keys are normalised.

    ``None`` (or ``"null"``/``"none"``/``""``, as a command line may pass it) drops a label.
    """
    mapping: dict[str, str | None] = dict(DEFAULT_LABELS)
    for label, structure in (labels or {}).items():
        name = structure_name(str(structure)) if structure is not None else ""
        mapping[structure_name(label)] = None if name in DROP_NAMES else name
    return mapping


def structure_of(label: str, mapping: Mapping[str, str | None]) -> str | None:
    """Structure of an annotation label: the mapping's, else the normalised label (``"Ignore"`` -> ``ignore``)."""
    key = structure_name(label)
    return mapping[key] if key in mapping else key or None


def _checked_vertices(points: np.ndarray, shape: tuple[int, int], source: Path, label: str) -> np.ndarray:
    """Clip vertices slightly outside the image (warning), reject the case for vertices far outside."""
    rows, cols = shape
    low = np.array([-0.5, -0.5])
    high = np.array([cols - 0.5, rows - 0.5])
    excess = np.maximum(low - points, points - high) / np.array([cols, rows])
    worst = int(np.argmax(excess.max(axis=1)))
    if excess[worst].max() > OUTSIDE_TOLERANCE:
        x, y = points[worst]
        raise RadiographError(
            source,
            f"polygon {label!r} has a vertex at (x={x:.1f}, y={y:.1f}), more than {OUTSIDE_TOLERANCE:.0%} outside the "
            f"{cols}x{rows} image; the annotation does not belong to this image size",
        )
    if excess.max() > 0:
        LOG.warning("%s: polygon %r has vertices just outside the %dx%d image; clipped", source, label, cols, rows)
    return np.clip(points, [0, 0], [cols - 1, rows - 1])


def rasterize(
    paths: Sequence[Sequence[Sequence[float]]], shape: tuple[int, int], source: Path, label: str
) -> np.ndarray:
    """Boolean mask of one annotation made of one or more closed paths of ``(x, y)`` vertices (pixel centres).

    Paths combine with the even-odd rule, as Darwin complex polygons do: a path inside another is a hole, and
    disjoint paths (two lungs in one annotation) simply add up. Paths with fewer than 3 vertices are skipped.
    """
    mask = np.zeros(shape, dtype=bool)
    for path in paths:
        points = np.asarray(path, dtype=np.float64).reshape(-1, 2)
        if len(points) < 3:
            LOG.warning("%s: polygon %r has a path of %d vertices; ignored", source, label, len(points))
            continue
        if not np.isfinite(points).all():
            raise RadiographError(source, f"polygon {label!r} has a non-numeric or infinite coordinate")
        points = _checked_vertices(points, shape, source, label)
        rr, cc = polygon_pixels(points[:, 1], points[:, 0], shape=shape)
        path_mask = np.zeros(shape, dtype=bool)
        path_mask[rr, cc] = True
        mask ^= path_mask
    return mask


def add_mask(masks: dict[str, np.ndarray], structure: str, mask: np.ndarray) -> None:
    """Unite a mask into its structure: several annotations of one label form one structure mask."""
    masks[structure] = masks[structure] | mask if structure in masks else mask
