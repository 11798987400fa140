"""Bundle-specific transforms: the paper's hole-filling closing, and a lobar opacifier used only for evaluation."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage
from skimage.morphology import closing, disk


def _with_values(original: torch.Tensor | np.ndarray, values: np.ndarray) -> torch.Tensor | np.ndarray:
    """``values`` in the container of ``original``: a clone keeps a MetaTensor's metadata and applied
    operations, which ``Invertd`` needs later."""
    if isinstance(original, torch.Tensor):
        result = original.clone()
        result.copy_(torch.as_tensor(values, dtype=original.dtype))
        return result
    return values.astype(original.dtype)


class BinaryClosingd(MapTransform):
    """Binary closing of each channel with a disk, filling the small holes left in a lung mask.

    The paper closes with a disk of radius 10 px at 640 rows; ``radius`` is in pixels of the image it is
    applied to, so configs scale it with ``image_size``. The image border counts as background, which keeps
    closing from gluing a lung to the edge.
    """

    def __init__(self, keys: KeysCollection, radius: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if radius < 0:
            raise ValueError(f"radius must be non-negative, got {radius}")
        self.footprint = disk(radius)
        self.radius = radius

    def _close(self, mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask.astype(bool), self.radius)
        closed = closing(padded, self.footprint)
        return closed[self.radius : closed.shape[0] - self.radius, self.radius : closed.shape[1] - self.radius]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            array = d[key].detach().cpu().numpy() if isinstance(d[key], torch.Tensor) else np.asarray(d[key])
            closed = np.stack([self._close(channel > 0.5) for channel in array])
            d[key] = _with_values(d[key], closed)
        return d


def lobar_opacity(
    image: np.ndarray,
    lungs: np.ndarray,
    fractions: tuple[float, float] = (0.6, 0.4),
    density: float = 0.9,
    blur: float = 0.015,
) -> np.ndarray:
    """Opacify the lower part of each lung like a lobar consolidation, deterministically.

    The lower ``fractions[0]`` of the patient's right lung (image left) and ``fractions[1]`` of the left
    lung, measured over each lung's row extent, are blended towards ``density`` times the image maximum
    with a boundary softened by a Gaussian of ``blur`` times the image height. The region follows the lung
    outline and is dense and contiguous, unlike the disk clusters of the Strauss training noise, so it tests
    generalisation to opacity rather than to the augmentation itself.
    """
    rows, cols = lungs.shape
    region = np.zeros(lungs.shape, dtype=float)
    halves = (np.arange(cols) < cols / 2, np.arange(cols) >= cols / 2)
    for side, fraction in zip(halves, fractions, strict=True):
        lung = lungs & side[None, :]
        lung_rows = np.flatnonzero(lung.any(axis=1))
        if lung_rows.size == 0 or fraction <= 0:
            continue
        top = lung_rows[-1] - fraction * (lung_rows[-1] - lung_rows[0])
        region += lung & (np.arange(rows) >= top)[:, None]
    alpha = np.clip(ndimage.gaussian_filter(region, blur * rows), 0.0, 1.0)
    target = density * float(image.max())
    return image + alpha * (target - image) * (target > image)


class LobarOpacityd(MapTransform):
    """Evaluation-only: :func:`lobar_opacity` of ``keys`` images, placed by the reference lung mask
    ``mask_key`` (values > 0), to score segmentation of opacified lungs against the clean reference."""

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "label",
        fractions: tuple[float, float] = (0.6, 0.4),
        density: float = 0.9,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.fractions = (float(fractions[0]), float(fractions[1]))
        self.density = density

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        mask = d[self.mask_key]
        lungs = (mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask))[0] > 0
        for key in self.key_iterator(d):
            image = d[key].detach().cpu().numpy() if isinstance(d[key], torch.Tensor) else np.asarray(d[key])
            opacified = np.stack([lobar_opacity(channel, lungs, self.fractions, self.density) for channel in image])
            d[key] = _with_values(d[key], opacified)
        return d
