"""MONAI dictionary transforms the bundles share and MONAI does not have."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Resize
from monai.utils import TraceKeys, ensure_tuple_rep

from .io import RadiographError, read_radiograph


def build_label_map(masks: Sequence[np.ndarray | None], shape: tuple[int, int]) -> np.ndarray:
    """Label map from per-class boolean masks: class ``i + 1`` where mask ``i`` is set, later classes winning.

    "Later wins" is the one overlap rule of the collection (e.g. heart over lung at the SCR borders), used
    alike for training targets and evaluation references.
    """
    label = np.zeros(shape, dtype=np.uint8)
    for index, mask in enumerate(masks, start=1):
        if mask is not None:
            label[mask] = index
    return label


class LoadLabelMapd(MapTransform):
    """Read the structure masks of a datalist entry and build one ``(1, rows, cols)`` uint8 label map.

    ``data[key]`` is the entry's ``{"structure": path}`` dictionary. ``classes`` lists, per label value
    1, 2, ..., the structures united into that class (e.g. ``[["left_lung", "right_lung", "lungs"], ["heart"]]``);
    structures an entry lacks are skipped, so one config serves datasets with separate or joint lung masks.
    When the image is already loaded, every mask must have its size.

    With ``annotated_key``, the entry also gets a boolean vector ``(1 + len(classes),)`` saying which label
    values its masks define: background always, class ``i`` when the entry has a mask of any of its
    structures. A hospital without heart masks then says "heart unknown", not "heart absent", and a loss that
    marginalises unknown classes (attention_bcdunet's) can learn lungs from it without learning "no heart".
    """

    def __init__(
        self,
        keys: KeysCollection,
        classes: Sequence[Sequence[str]],
        image_key: str = "image",
        annotated_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.classes = [list(structures) for structures in classes]
        self.image_key = image_key
        self.annotated_key = annotated_key

    def _class_mask(self, paths: Mapping[str, str], structures: Sequence[str], shape: tuple[int, int] | None):
        mask = None
        for structure in structures:
            if structure not in paths:
                continue
            pixels = read_radiograph(paths[structure])
            if shape is not None and pixels.shape != shape:
                raise RadiographError(
                    paths[structure],
                    f"mask is {pixels.shape[0]}x{pixels.shape[1]} but the image is {shape[0]}x{shape[1]}",
                )
            shape = pixels.shape
            mask = pixels > pixels.max() / 2 if mask is None else mask | (pixels > pixels.max() / 2)
        return mask, shape

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        image = d.get(self.image_key)
        image_shape = tuple(image.shape[-2:]) if isinstance(image, (np.ndarray, torch.Tensor)) else None
        for key in self.key_iterator(d):
            paths = d[key]
            if not isinstance(paths, Mapping):
                raise TypeError(f"LoadLabelMapd expects {key!r} to map structure names to mask paths, got {paths!r}")
            shape = image_shape
            masks = []
            for structures in self.classes:
                mask, shape = self._class_mask(paths, structures, shape)
                masks.append(mask)
            if shape is None:
                raise RadiographError(str(d.get(self.image_key, "?")), f"no mask for any of the classes {self.classes}")
            label = build_label_map(masks, shape)
            d[key] = MetaTensor(torch.from_numpy(label[None]), meta={"filename_or_obj": str(d.get(self.image_key))})
            if self.annotated_key is not None:
                annotated = [True] + [any(s in paths for s in structures) for structures in self.classes]
                d[self.annotated_key] = torch.tensor(annotated)
        return d


def fit_size(shape: Sequence[int], box: Sequence[int]) -> tuple[int, int]:
    """Largest size with the aspect ratio of ``shape`` that fits inside ``box`` (both ``(rows, cols)``)."""
    scale = min(box[0] / shape[0], box[1] / shape[1])
    return max(1, min(box[0], round(shape[0] * scale))), max(1, min(box[1], round(shape[1] * scale)))


class FitResized(MapTransform, InvertibleTransform):
    """Resize keeping the aspect ratio so the image fits inside ``spatial_size``; invertible with ``Invertd``.

    MONAI's ``Resized`` either squashes to a fixed size or scales the longest side; a radiograph of any
    shape must fit a ``(rows, cols)`` box without distortion, then be padded (``SpatialPadd``) to it.
    Interpolating keys that shrink are averaged over the area each output pixel covers ("area" mode), which
    is anti-aliased and takes a few milliseconds for a 2048 x 2048 radiograph, where MONAI's Gaussian
    ``anti_aliasing`` takes most of a second; keys that grow use ``mode``. Nearest-neighbour (label) keys
    are never smoothed. ``keep_aspect_ratio=False`` fills the box instead (the opacity bundle's lung crop,
    squashed to a square as in its paper) with the same area-or-``mode`` rule.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        mode: str | Sequence[str] = "bilinear",
        keep_aspect_ratio: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.keep_aspect_ratio = keep_aspect_ratio
        self._resizer = Resize(spatial_size=self.spatial_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            shape = tuple(d[key].shape[-2:])
            size = fit_size(shape, self.spatial_size) if self.keep_aspect_ratio else self.spatial_size
            shrinks = size[0] < shape[0] and size[1] < shape[1]
            interpolating = mode not in ("nearest", "nearest-exact")
            d[key] = Resize(spatial_size=size, mode="area" if shrinks and interpolating else mode)(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Back to the input's size; what was shrunk by area averaging is enlarged with the key's ``mode``
        (area would enlarge blockwise), unless ``Invertd`` asked for nearest neighbours."""
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            trace = self._resizer.pop_transform(d[key], check=False)
            if trace[TraceKeys.EXTRA_INFO]["mode"] == "area":
                trace = {**trace, TraceKeys.EXTRA_INFO: {**trace[TraceKeys.EXTRA_INFO], "mode": mode}}
            d[key] = self._resizer.inverse_transform(d[key], trace)
        return d
