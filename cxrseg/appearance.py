"""Augmentation for what other hospitals' radiographs look like: field of view, exposure, detector, markers.

Models trained on one archive fail on another in predictable ways (issue 11's worst cases): a wider field of
view (neck, shoulders and upper abdomen in the picture) with small, off-centre or tilted lungs; grey,
low-contrast exposures; noise and blur of other detectors; burned-in text and lead markers; black or white
borders from collimation and padding. :func:`hospital_augmentation` draws each of these with MONAI's own
transforms where they exist; the two MONAI lacks, burned-in marks and borders, are defined here.

Every bundle lists the chain once in its ``train.yaml`` (``hospital_augmentation``), between the cached
deterministic preprocessing and the bundle's intensity normalisation, so that the normalisation a bundle
uses at inference is what learns to undo the exposure changes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityFixedMeand,
    RandZoomd,
)
from PIL import Image, ImageDraw, ImageFont

MARK_CHARACTERS = "LRPAST0123456789"
SIDES = ("top", "bottom", "left", "right")


class RandBurnedInMarksd(RandomizableTransform, MapTransform):
    """Burn text and lead markers into the image, as scanners and technologists do: one to ``max_marks``
    short strings or filled rectangles near the image's edges, as bright as the brightest tissue or as dark
    as air. Labels are left alone: a marker never changes what is lung.

    Images are channel-first ``(1, rows, cols)`` in any intensity range.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.3,
        max_marks: int = 3,
        height: Sequence[float] = (0.03, 0.08),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if max_marks < 1:
            raise ValueError(f"max_marks must be at least 1, got {max_marks}")
        self.max_marks = max_marks
        self.height = (float(height[0]), float(height[1]))

    def _mark(self, rows: int, cols: int) -> np.ndarray:
        """A boolean ``(rows, cols)`` stencil with one mark: a string of 1-4 characters or a block."""
        size = max(4, round(self.R.uniform(*self.height) * rows))
        top = int(self.R.choice([self.R.randint(0, max(1, rows // 6)), self.R.randint(rows * 5 // 6, rows)]))
        left = int(self.R.randint(0, max(1, cols - size)))
        stencil = Image.new("L", (cols, rows), 0)
        draw = ImageDraw.Draw(stencil)
        if self.R.uniform() < 0.7:
            text = "".join(self.R.choice(list(MARK_CHARACTERS), size=self.R.randint(1, 5)))
            draw.text((left, min(top, rows - size)), text, fill=255, font=ImageFont.load_default(size=size))
        else:
            draw.rectangle((left, top, left + size, min(rows - 1, top + size // 2)), fill=255)
        return np.asarray(stencil) > 0

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]).clone()
            rows, cols = image.shape[-2:]
            stencil = np.zeros((rows, cols), dtype=bool)
            for _ in range(self.R.randint(1, self.max_marks + 1)):
                stencil |= self._mark(rows, cols)
            value = image.max() if self.R.uniform() < 0.8 else image.min()
            image[..., torch.from_numpy(stencil)] = value
            d[key] = image
        return d


class RandBorderd(RandomizableTransform, MapTransform):
    """Black or white bands along one to four sides, ``width`` of the side each: collimation, padding to a
    square and scanned-film edges. The label keeps the lung that a band hides, as block masking does: the
    model is asked for the anatomy, not for what is visible."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.3,
        width: Sequence[float] = (0.02, 0.08),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.width = (float(width[0]), float(width[1]))

    @staticmethod
    def band(side: str, width: int, rows: int, cols: int) -> tuple[slice, slice]:
        """(row, col) slices of a band of ``width`` pixels along ``side``."""
        return {
            "top": (slice(0, width), slice(None)),
            "bottom": (slice(rows - width, rows), slice(None)),
            "left": (slice(None), slice(0, width)),
            "right": (slice(None), slice(cols - width, cols)),
        }[side]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        sides = self.R.choice(SIDES, size=self.R.randint(1, len(SIDES) + 1), replace=False)
        fractions = [self.R.uniform(*self.width) for _ in sides]
        white = self.R.uniform() < 0.3
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]).clone()
            rows, cols = image.shape[-2:]
            value = image.max() if white else image.min()
            for side, fraction in zip(sides, fractions, strict=True):
                extent = rows if side in ("top", "bottom") else cols
                row_slice, col_slice = self.band(side, max(1, round(fraction * extent)), rows, cols)
                image[..., row_slice, col_slice] = value
            d[key] = image
        return d


def exact_nearest(mode: str) -> str:
    """PyTorch's ``interpolate`` "nearest" samples half a pixel off the centres that "bilinear" and "area"
    use, so a zoomed label would drift from its image; "nearest-exact" samples the same centres."""
    return "nearest-exact" if mode == "nearest" else mode


def hospital_augmentation(
    keys: Sequence[str] = ("image", "label"),
    modes: Sequence[str] = ("bilinear", "nearest"),
    image_size: Sequence[int] = (256, 256),
    prob: float = 0.5,
    zoom_out: float = 0.35,
    zoom_in: float = 0.15,
    shift: float = 0.1,
    rotate: float = 0.17,
    replicate_keys: Sequence[str] = (),
) -> list[MapTransform]:
    """The chain of appearance changes, on channel-first images scaled to [0, 1] and their label maps.

    Field of view: scale by ``1 - zoom_out`` to ``1 + zoom_in`` (lungs that fill about 75 % of a JSRT image's
    height then fill 45-85 %), shift by up to ``shift`` of each side, rotate by up to ``rotate`` radians (10
    degrees), empty space padded black. Exposure: contrast squeezed to as little as 40 % about the mean (grey
    radiographs) or stretched, gamma 0.6-1.6. Detector: Gaussian noise and blur. Then burned-in marks and
    borders. Each step has probability ``prob`` (marks and borders ``prob / 2``). ``replicate_keys`` (e.g. loss
    weight maps) are padded with their edge values instead of zeros, so that the new border still counts.
    """
    image_key = keys[0]
    zoom_padding = ["edge" if key in replicate_keys else "constant" for key in keys]
    affine_padding = ["border" if key in replicate_keys else "zeros" for key in keys]
    return [
        RandZoomd(
            keys=list(keys),
            prob=prob,
            min_zoom=1.0 - zoom_out,
            max_zoom=1.0 + zoom_in,
            mode=[exact_nearest(mode) for mode in modes],
            padding_mode=zoom_padding,
            keep_size=True,
        ),
        RandAffined(
            keys=list(keys),
            prob=prob,
            rotate_range=rotate,
            translate_range=[shift * side for side in image_size],
            mode=list(modes),
            padding_mode=affine_padding,
        ),
        RandScaleIntensityFixedMeand(keys=image_key, prob=prob, factors=(-0.6, 0.3)),
        RandAdjustContrastd(keys=image_key, prob=prob, gamma=(0.6, 1.6)),
        RandGaussianNoised(keys=image_key, prob=prob / 2, std=0.03),
        RandGaussianSmoothd(keys=image_key, prob=prob / 2, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
        RandBurnedInMarksd(keys=image_key, prob=prob / 2),
        RandBorderd(keys=image_key, prob=prob / 2),
    ]
