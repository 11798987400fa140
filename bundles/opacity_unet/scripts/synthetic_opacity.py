"""Synthetic opacity painted into clear lungs: a pretraining task closer to opacity than lung segmentation.

Only 54 radiographs here carry opacity masks, but about 540 normal radiographs carry lung masks. Painting
random hazy and dense regions into their lungs, with the painted region as the target, gives the whole network
(decoder included) unlimited examples of "lung brighter than it should be" before it sees real opacity; the
fine-tune on real cases then corrects what the generator gets wrong. The regions follow COVID-19 pneumonia's
usual layout loosely: patchy, often peripheral and basal, from faint ground glass to dense consolidation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type
from scipy import ndimage


def opacity_region(
    lungs: np.ndarray,
    coverage: float,
    smoothness: float,
    basal_bias: float,
    peripheral_bias: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A patchy region covering about ``coverage`` of ``lungs`` (a 2D boolean mask).

    Smoothed white noise (Gaussian of ``smoothness`` times the image height) makes the patches; a ramp towards
    the bottom (``basal_bias``) and towards the lateral edges (``peripheral_bias``), in units of the noise's
    standard deviation, tilts where they fall. The region is the field's top ``coverage`` quantile inside the
    lungs, so it never leaves them.
    """
    rows, cols = lungs.shape
    field = ndimage.gaussian_filter(rng.standard_normal(lungs.shape), smoothness * rows)
    field /= field.std() + 1e-12
    row_ramp = np.linspace(-1.0, 1.0, rows)[:, None]
    col_ramp = np.abs(np.linspace(-1.0, 1.0, cols))[None, :]
    field = field + basal_bias * row_ramp + peripheral_bias * col_ramp
    inside = field[lungs]
    if inside.size == 0 or coverage <= 0.0:
        return np.zeros_like(lungs)
    return lungs & (field >= np.quantile(inside, 1.0 - coverage))


def paint_opacity(image: np.ndarray, region: np.ndarray, lungs: np.ndarray, density: float, edge: float) -> np.ndarray:
    """``image`` (values in [0, 1]) blended towards white by ``density`` inside ``region``, the blend fading over
    a Gaussian of ``edge`` pixels but never leaving ``lungs``; partial densities keep the vessels visible, as
    ground glass does."""
    alpha = density * np.clip(ndimage.gaussian_filter(region.astype(float), edge), 0.0, 1.0) * lungs
    return image + alpha * (1.0 - image)


class RandSyntheticOpacityd(RandomizableTransform, MapTransform):
    """With probability ``prob``, paint a random opacity into the lung field ``lung_key`` of the ``keys``
    image and add the painted region to ``label_key`` (the target); otherwise leave the clear lung as it is.

    Parameters are drawn per call from the ranges given: ``coverage`` (share of the lung), ``density`` (0: no
    change, 1: white), ``smoothness`` (patch size as a share of the height), ``basal_bias`` and
    ``peripheral_bias`` (see :func:`opacity_region`). Runs on channel-first images after the lung crop.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        lung_key: str = "lung",
        prob: float = 0.8,
        coverage: tuple[float, float] = (0.03, 0.6),
        density: tuple[float, float] = (0.15, 0.7),
        smoothness: tuple[float, float] = (0.02, 0.08),
        basal_bias: tuple[float, float] = (0.0, 1.5),
        peripheral_bias: tuple[float, float] = (0.0, 1.5),
        edge: float = 1.5,
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_key = label_key
        self.lung_key = lung_key
        self.ranges = {
            "coverage": coverage,
            "density": density,
            "smoothness": smoothness,
            "basal_bias": basal_bias,
            "peripheral_bias": peripheral_bias,
        }
        self.edge = edge
        self.drawn: dict[str, float] = {}

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self.drawn = {name: float(self.R.uniform(*bounds)) for name, bounds in self.ranges.items()}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        lungs = np.asarray(d[self.lung_key].detach().cpu())[0] > 0
        region = opacity_region(
            lungs,
            self.drawn["coverage"],
            self.drawn["smoothness"],
            self.drawn["basal_bias"],
            self.drawn["peripheral_bias"],
            np.random.default_rng(self.R.randint(2**31)),
        )
        for key in self.key_iterator(d):
            image = np.asarray(d[key].detach().cpu())
            painted = np.stack([paint_opacity(c, region, lungs, self.drawn["density"], self.edge) for c in image])
            d[key] = convert_to_dst_type(painted, dst=d[key], dtype=d[key].dtype)[0]
        label = d[self.label_key]
        d[self.label_key] = torch.maximum(label, torch.as_tensor(region[None], dtype=label.dtype))
        return d
