"""Opacity-like augmentations of Selvan et al. (2020): block masking and Strauss-process diffuse noise.

Both are MONAI dictionary transforms drawing from their own ``RandomState`` (``self.R``), so MONAI's
``set_determinism`` / ``set_random_state`` make them reproducible, and any bundle can list them in a config.

Diffuse noise is the union of disks centred on a realisation of a Strauss point process, blurred and added to
the image until it saturates, like patchy opacity. It is generated on the fly, so it must be cheap: the
process is sampled and the disks drawn on a grid ``downsample`` times coarser than the image (the field is
smooth, so nothing is lost), blurred there, and only the smooth field is upsampled (see ``tools/bench_strauss.py``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage

HALVES = ("top", "bottom", "left", "right")


def sample_strauss(
    rng: np.random.RandomState,
    shape: Sequence[float],
    mean_count: float,
    gamma: float,
    interaction_radius: float,
    steps: int,
) -> np.ndarray:
    """Points ``(n, 2)`` (row, col) of a Strauss process on the rectangle ``[0, shape[0]) x [0, shape[1])``.

    The density is proportional to ``beta**n * gamma**s`` with ``s`` the number of point pairs closer than
    ``interaction_radius``; ``beta = mean_count / area`` (the Poisson intensity the process reduces to at
    ``gamma = 1``) and ``gamma`` in [0, 1] inhibits close pairs (0: hard core). It is sampled by a
    birth-death Metropolis-Hastings chain of ``steps`` proposals from the empty pattern (Geyer and Moller
    1994): a birth at a uniform location is accepted with probability ``min(1, beta*area/(n+1) * gamma**t)``,
    the death of a uniformly chosen point with ``min(1, n/(beta*area) * gamma**-t)``, ``t`` being the number
    of neighbours within the interaction radius of the point born or removed.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"Strauss inhibition gamma must lie in [0, 1], got {gamma}")
    if mean_count <= 0 or interaction_radius < 0 or steps < 0:
        raise ValueError(
            f"need mean_count > 0, interaction_radius >= 0 and steps >= 0, got "
            f"{mean_count}, {interaction_radius}, {steps}"
        )
    rows, cols = float(shape[0]), float(shape[1])
    beta_area = float(mean_count)
    radius2 = interaction_radius * interaction_radius
    points = np.empty((steps + 1, 2))
    count = 0
    draws = rng.random_sample((steps, 4))
    for is_birth, u, v, accept in draws:
        if is_birth < 0.5 or count == 0:
            candidate = (u * rows, v * cols)
            near = int(np.count_nonzero(((points[:count] - candidate) ** 2).sum(axis=1) < radius2)) if count else 0
            # accept < beta*area/(n+1) * gamma**t, written without dividing by gamma
            if accept * (count + 1) < beta_area * gamma**near:
                points[count] = candidate
                count += 1
        else:
            index = min(int(u * count), count - 1)
            others = np.delete(points[:count], index, axis=0)
            near = int(np.count_nonzero(((others - points[index]) ** 2).sum(axis=1) < radius2))
            # accept < n/(beta*area) * gamma**-t  <=>  accept * beta*area * gamma**t < n (gamma may be 0)
            if accept * beta_area * gamma**near < count:
                points[index] = points[count - 1]
                count -= 1
    return points[:count].copy()


def draw_disks(shape: Sequence[int], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Union of disks as a float ``shape`` image, all disks at once by broadcasting (no Python loop)."""
    if len(centres) == 0:
        return np.zeros(tuple(shape), dtype=np.float32)
    row = np.arange(shape[0], dtype=np.float32)[None, :, None]
    col = np.arange(shape[1], dtype=np.float32)[None, None, :]
    distance2 = (row - centres[:, 0, None, None]) ** 2 + (col - centres[:, 1, None, None]) ** 2
    return (distance2 <= (radii**2)[:, None, None]).any(axis=0).astype(np.float32)


def strauss_field(
    rng: np.random.RandomState,
    shape: Sequence[int],
    mean_count: float = 12.0,
    gamma: float = 0.3,
    interaction_radius: float = 0.1,
    disk_radius: Sequence[float] = (0.02, 0.08),
    smoothing: float = 0.02,
    downsample: int = 8,
    steps: int | None = None,
) -> torch.Tensor:
    """Smooth diffuse-noise field ``(rows, cols)`` in [0, 1] (maximum 1 unless no disk was drawn).

    Lengths (``interaction_radius``, ``disk_radius`` range, Gaussian ``smoothing``) are fractions of the
    image height, so the noise looks alike at any resolution. ``steps`` defaults to 10 proposals per
    expected point, enough for the chain to forget its empty start at these intensities.
    """
    rows, cols = int(shape[0]), int(shape[1])
    coarse = (max(1, math.ceil(rows / downsample)), max(1, math.ceil(cols / downsample)))
    scale = coarse[0] / rows
    steps = int(10 * mean_count) if steps is None else steps
    centres = sample_strauss(rng, coarse, mean_count, gamma, interaction_radius * rows * scale, steps)
    radii = rng.uniform(disk_radius[0], disk_radius[1], size=len(centres)) * rows * scale
    field = ndimage.gaussian_filter(draw_disks(coarse, centres, radii), smoothing * rows * scale)
    peak = float(field.max())
    if peak > 0:
        field /= peak
    upsampled = F.interpolate(
        torch.from_numpy(field)[None, None], size=(rows, cols), mode="bilinear", align_corners=False
    )
    return upsampled[0, 0]


class RandStraussNoised(RandomizableTransform, MapTransform):
    """Add Strauss-process diffuse noise (:func:`strauss_field`) to channel-first images, saturating at the
    image maximum like dense opacity; the amplitude is drawn from ``amplitude`` times the image range."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.9,
        mean_count: float = 12.0,
        gamma: float = 0.3,
        interaction_radius: float = 0.1,
        disk_radius: Sequence[float] = (0.02, 0.08),
        smoothing: float = 0.02,
        amplitude: Sequence[float] = (0.5, 1.0),
        downsample: int = 8,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.field_args = {
            "mean_count": mean_count,
            "gamma": gamma,
            "interaction_radius": interaction_radius,
            "disk_radius": tuple(disk_radius),
            "smoothing": smoothing,
            "downsample": downsample,
        }
        self.amplitude = (float(amplitude[0]), float(amplitude[1]))
        self._field: torch.Tensor | None = None
        self._amplitude = 0.0

    def randomize(self, shape: Sequence[int]) -> None:
        super().randomize(None)
        if self._do_transform:
            self._field = strauss_field(self.R, shape, **self.field_args)
            self._amplitude = self.R.uniform(*self.amplitude)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = self.first_key(d)
        if first == []:
            return d
        self.randomize(d[first].shape[-2:])
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            low, high = image.min(), image.max()
            noise = self._field.to(image.device, image.dtype) * self._amplitude * (high - low)
            d[key] = torch.minimum(image + noise, high)
        return d


class RandBlockMaskd(RandomizableTransform, MapTransform):
    """Hide one half of the image (top, bottom, left or right, uniformly) under a bright, tissue-like value:
    the ``fill_quantile`` quantile of the image's intensities, i.e. as dense as bone or mediastinum."""

    def __init__(
        self, keys: KeysCollection, prob: float = 0.9, fill_quantile: float = 0.95, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if not 0.0 <= fill_quantile <= 1.0:
            raise ValueError(f"fill_quantile must lie in [0, 1], got {fill_quantile}")
        self.fill_quantile = fill_quantile
        self._half = HALVES[0]

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self._half = HALVES[self.R.randint(len(HALVES))]

    @staticmethod
    def half_slices(half: str, rows: int, cols: int) -> tuple[slice, slice]:
        """(row, col) slices of the named half; odd sizes give the middle line to the masked half."""
        return {
            "top": (slice(0, (rows + 1) // 2), slice(None)),
            "bottom": (slice(rows // 2, None), slice(None)),
            "left": (slice(None), slice(0, (cols + 1) // 2)),
            "right": (slice(None), slice(cols // 2, None)),
        }[half]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]).clone()
            fill = torch.quantile(image.float().flatten(), self.fill_quantile).to(image.dtype)
            rows, cols = self.half_slices(self._half, image.shape[-2], image.shape[-1])
            image[..., rows, cols] = fill
            d[key] = image
        return d
