"""Contour-aware pixel weights for the weighted Tanimoto loss (Abdulah et al. 2021, section 1.3).

The paper replaces "a step-shaped cutoff at the edges of the mask foreground with a raised border that
separates touching objects" (Falk et al. 2019, the U-Net weight map). Two terms do that here, both from
scipy's Euclidean distance transforms: a band of raised weight on both sides of every label border, and the
U-Net separation term ``exp(-(d1 + d2)^2 / (2 sigma^2))`` on background pixels between two objects. The
weights depend only on the label, so they are computed once, before the cache, and follow the label through
the random geometric transforms.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from scipy import ndimage


def distance_to_other_label(label: np.ndarray) -> np.ndarray:
    """Per pixel, the Euclidean distance to the nearest pixel of a different label (inf if there is none).

    For a pixel of label c that distance is the distance transform of ``label == c``, so the sum of those
    transforms over the labels present gives it for every pixel at once.
    """
    values = np.unique(label)
    if len(values) < 2:
        return np.full(label.shape, np.inf)
    return sum(ndimage.distance_transform_edt(label == value) for value in values)


def separation_term(label: np.ndarray, sigma: float) -> np.ndarray:
    """U-Net separation weight ``exp(-(d1 + d2)^2 / (2 sigma^2))`` on background, 0 elsewhere.

    ``d1`` and ``d2`` are the distances to the nearest and second-nearest object, an object being a connected
    component of one label value (8-connectivity), so both lungs count as two objects and the gap between
    them is raised the more the narrower it is.
    """
    distances = []
    for value in np.unique(label[label > 0]):
        components, count = ndimage.label(label == value, structure=np.ones((3, 3)))
        distances.extend(ndimage.distance_transform_edt(components != index) for index in range(1, count + 1))
    if len(distances) < 2:
        return np.zeros(label.shape)
    nearest_two = np.partition(np.stack(distances), 1, axis=0)[:2]
    return np.where(label == 0, np.exp(-(nearest_two.sum(axis=0) ** 2) / (2 * sigma**2)), 0.0)


def contour_weights(
    label: np.ndarray,
    band_width: float,
    border_weight: float = 2.0,
    separation_weight: float = 2.0,
    separation_sigma: float | None = None,
) -> np.ndarray:
    """Pixel weights of a (rows, cols) label map, scaled to mean 1.

    ``1 + border_weight`` within ``band_width`` pixels of a label border (both sides; the authors' code uses
    a band of about 1/30 of the short image side and border weight 2), plus ``separation_weight`` times the
    separation term with ``separation_sigma`` (default ``band_width``). The mean is scaled to 1, as in the
    authors' code, so the loss' smoothing constant keeps its meaning at any image size.
    """
    if label.ndim != 2:
        raise ValueError(f"contour_weights expects a (rows, cols) label map, got shape {label.shape}")
    if band_width < 0 or border_weight < 0 or separation_weight < 0:
        raise ValueError("band_width, border_weight and separation_weight must be non-negative")
    sigma = band_width if separation_sigma is None else separation_sigma
    weights = 1.0 + border_weight * (distance_to_other_label(label) <= band_width)
    if separation_weight > 0 and sigma > 0:
        weights = weights + separation_weight * separation_term(label, sigma)
    return (weights / weights.mean()).astype(np.float32)


class ContourWeightd(MapTransform):
    """Add ``weight_key``: the contour-aware weights of the ``(1, rows, cols)`` label map under ``keys``.

    The weight map is a float MetaTensor with the label's metadata, so spatial transforms treat it like the
    label (use bilinear interpolation for it).
    """

    def __init__(
        self,
        keys: KeysCollection,
        band_width: float,
        weight_key: str = "weight",
        border_weight: float = 2.0,
        separation_weight: float = 2.0,
        separation_sigma: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"ContourWeightd writes one weight map, so it takes one label key, got {self.keys}")
        self.weight_key = weight_key
        self.band_width = band_width
        self.border_weight = border_weight
        self.separation_weight = separation_weight
        self.separation_sigma = separation_sigma

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if label.ndim != 3 or label.shape[0] != 1:
                shape = tuple(label.shape)
                raise ValueError(f"ContourWeightd expects {key!r} as a (1, rows, cols) label map, got {shape}")
            label_map = np.asarray(label[0].detach().cpu() if isinstance(label, torch.Tensor) else label[0])
            weights = contour_weights(
                label_map.astype(np.int64),
                self.band_width,
                self.border_weight,
                self.separation_weight,
                self.separation_sigma,
            )
            d[self.weight_key] = convert_to_dst_type(weights[None], label, dtype=torch.float32)[0]
        return d
