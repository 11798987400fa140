"""CLAHE (contrast limited adaptive histogram equalization) as a MONAI dictionary transform.

Maga (2021) equalizes the radiographs with CLAHE after resizing them; MONAI has only global histogram
equalization, so scikit-image's ``exposure.equalize_adapthist`` is wrapped here, channel by channel.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from skimage import exposure


class CLAHEd(MapTransform):
    """Apply ``skimage.exposure.equalize_adapthist`` to each channel of ``(channels, rows, cols)`` images.

    The input must already lie in [0, 1] (e.g. after ``ScaleIntensityd``): scikit-image refuses floats outside
    [-1, 1] and would otherwise clip silently. The output is float32 in [0, 1] with the input's type and metadata.

    Args:
        keys: image keys.
        kernel_size: tile size in pixels (int or (rows, cols)); ``None`` is scikit-image's default, 1/8 of each side,
            so the equalization does not depend on the resolution.
        clip_limit: contrast limit in (0, 1]; higher gives more contrast.
        nbins: histogram bins.
    """

    def __init__(
        self,
        keys: KeysCollection,
        kernel_size: int | Sequence[int] | None = None,
        clip_limit: float = 0.01,
        nbins: int = 256,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.kernel_size = kernel_size
        self.clip_limit = clip_limit
        self.nbins = nbins

    def equalize(self, image: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """CLAHE of every channel of one image."""
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.ndim != 3:
            raise ValueError(f"CLAHEd expects (channels, rows, cols), got shape {list(array.shape)}")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"CLAHEd expects intensities in [0, 1] (scale them first), got [{low:g}, {high:g}]")
        equalized = np.stack(
            [
                exposure.equalize_adapthist(
                    channel.astype(np.float64),
                    kernel_size=self.kernel_size,
                    clip_limit=self.clip_limit,
                    nbins=self.nbins,
                )
                for channel in array
            ]
        ).astype(np.float32)
        if isinstance(image, torch.Tensor):
            return convert_to_dst_type(equalized, image, dtype=torch.float32)[0]
        return equalized

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.equalize(d[key])
        return d
