"""Post-processing of a chest radiograph's label map with what anatomy implies, shared by every bundle.

A posterior-anterior radiograph shows at most two lungs, one each side of the mediastinum, and one heart; none
of them has holes, and no lung lies at the top or bottom edge of the image or out at its sides. A network
that scores pixels one by one knows none of this: it can mark a "lung" on a shoulder or leave a hole where
an opacity hides the lung. :class:`AnatomyFilterd` removes what cannot be anatomy from a label map at the
network's resolution (cheap there), before the label map is brought back to the radiograph's size.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import FillHoles, KeepLargestConnectedComponent, MapTransform
from skimage.measure import label as connected_components
from skimage.measure import regionprops

from .lungs import midline_column


def plausible_lungs(
    lung: np.ndarray, vertical_margin: float = 0.1, lateral_margin: float = 0.1, min_relative_area: float = 0.05
) -> np.ndarray:
    """The part of a boolean lung field that can be lung: at most one connected component each side of the
    midline (both, where the two lungs touch across the mediastinum and form one component).

    A component is dropped when its centroid lies in the top or bottom ``vertical_margin`` of the rows or the
    outer ``lateral_margin`` of the columns each side (shoulders, the abdomen, the arms), or when it has less
    than ``min_relative_area`` of the largest component's area (specks). The rest are split at the midline
    (:func:`cxrseg.lungs.midline_column`, the rule the measurements use, its gap taken nearest the image's centre
    column), and each side keeps, of the components not lying outside another one centred on that side, row by
    row (:func:`lies_outside`), the one with the most pixels on that side: a blob beside a lung goes, and a lung
    missing on one side leaves that side empty.
    """
    lung = np.asarray(lung, dtype=bool)
    components = connected_components(lung, connectivity=2)
    regions = regionprops(components)
    rows, cols = lung.shape
    largest = max((region.area for region in regions), default=0)
    candidates = [
        region
        for region in regions
        if vertical_margin * rows <= region.centroid[0] < (1 - vertical_margin) * rows
        and lateral_margin * cols <= region.centroid[1] < (1 - lateral_margin) * cols
        and region.area >= min_relative_area * largest
    ]
    field = np.isin(components, [region.label for region in candidates])
    if not field.any():
        return field
    midline = midline_column(field, centre=(cols - 1) / 2)
    masks = {region.label: components == region.label for region in candidates}
    kept = set()
    for side, outwards in ((components[:, :midline], -1), (components[:, midline:], 1)):
        present = [label for label in masks if (side == label).any()]
        centred = [
            region.label
            for region in candidates
            if region.label in present and (region.centroid[1] < midline) == (outwards < 0)
        ]
        inner = [
            label
            for label in present
            if not any(lies_outside(masks[label], masks[other], outwards) for other in centred)
        ]
        if inner:
            kept.add(max(inner, key=lambda label: int((side == label).sum())))
    return np.isin(components, sorted(kept))


def lies_outside(mask: np.ndarray, other: np.ndarray, outwards: int) -> bool:
    """Whether the component ``mask`` lies beyond the component ``other`` (boolean masks of one image), which
    has at least half its area, in the direction ``outwards`` (-1: towards the image's left edge, 1: its right
    edge) in every row both hold, and they share at least half of ``mask``'s rows. Outside a lung at its own
    height there is chest wall, arm and the air beside the chest, which a network that has learned "dark and
    smooth is lung" can call lung (seen on Montgomery: the air between arm and chest, nearly as large as the
    lung, chosen over it). Row by row, not by bounding box, so that it holds on a tilted radiograph. The
    conditions keep a sliver between the lungs, or a blob in the abdomen beside a lung's lower tip, from pushing
    a whole lung out."""
    rows = mask.any(axis=1)
    shared = rows & other.any(axis=1)
    if 2 * int(shared.sum()) < int(rows.sum()) or 2 * int(other.sum()) < int(mask.sum()):
        return False
    last_column = mask.shape[1] - 1
    if outwards < 0:
        return bool(np.all(last_column - mask[shared, ::-1].argmax(axis=1) < other[shared].argmax(axis=1)))
    return bool(np.all(mask[shared].argmax(axis=1) > last_column - other[shared, ::-1].argmax(axis=1)))


class AnatomyFilterd(MapTransform):
    """Remove from a ``(1, rows, cols)`` label map what cannot be lung or heart; keep everything else as it is.

    Args:
        keys: label maps (label values, not scores or one-hot): ``pred`` after the argmax or threshold, or a
            copy of it where the scores go on to :class:`ScoresWithinLabelsd`; at the network's resolution
            (before ``Invertd``), where this takes a millisecond or two.
        lung_labels: label values that are lung (united into one lung field for the rules of
            :func:`plausible_lungs`); removed lung pixels become background.
        heart_label: label value of the heart, of which only the largest connected component is kept; ``None``
            for bundles without a heart.
        fill_holes: fill background enclosed by a lung or by the heart with that label (only background: a
            heart enclosed by lung stays heart).
        vertical_margin, lateral_margin, min_relative_area: see :func:`plausible_lungs`.

    The result keeps the input's type and metadata (a ``MetaTensor`` keeps the operations ``Invertd`` undoes).
    """

    def __init__(
        self,
        keys: KeysCollection,
        lung_labels: Sequence[int],
        heart_label: int | None = None,
        fill_holes: bool = True,
        vertical_margin: float = 0.1,
        lateral_margin: float = 0.1,
        min_relative_area: float = 0.05,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lung_labels = [int(value) for value in lung_labels]
        self.heart_label = heart_label
        self.fill_holes = fill_holes
        self.margins = {
            "vertical_margin": vertical_margin,
            "lateral_margin": lateral_margin,
            "min_relative_area": min_relative_area,
        }
        self._largest_heart = (
            None
            if heart_label is None
            else KeepLargestConnectedComponent(applied_labels=[heart_label], is_onehot=False, connectivity=2)
        )
        self._fill = FillHoles(applied_labels=[1])

    def _filled(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` with its enclosed holes filled (MONAI's ``FillHoles`` on the binary mask)."""
        return np.asarray(self._fill(mask[None].astype(np.uint8)))[0] > 0

    def filter(self, label_map: np.ndarray) -> np.ndarray:
        """The filtered copy of a ``(rows, cols)`` integer label map."""
        result = label_map.copy()
        lung = np.isin(result, self.lung_labels)
        result[lung & ~plausible_lungs(lung, **self.margins)] = 0
        if self._largest_heart is not None:
            result = np.asarray(self._largest_heart(result[None]))[0]
        if self.fill_holes:
            for value in self.lung_labels + ([] if self.heart_label is None else [self.heart_label]):
                result[self._filled(result == value) & (result == 0)] = value
        return result

    def __call__(self, data: Mapping[Hashable, torch.Tensor | np.ndarray]) -> dict[Hashable, torch.Tensor | np.ndarray]:
        d = dict(data)
        for key in self.key_iterator(d):
            original = d[key]
            array = original.detach().cpu().numpy() if isinstance(original, torch.Tensor) else np.asarray(original)
            if array.ndim != 3 or array.shape[0] != 1:
                raise ValueError(f"AnatomyFilterd expects a (1, rows, cols) label map in {key!r}, got {array.shape}")
            filtered = self.filter(np.rint(array[0]).astype(np.int64))[None]
            if isinstance(original, torch.Tensor):
                d[key] = original.clone()
                d[key].copy_(torch.as_tensor(filtered, dtype=original.dtype))
            else:
                d[key] = filtered.astype(array.dtype)
        return d


class ScoresWithinLabelsd(MapTransform):
    """Zero each class's score wherever the label map at network resolution has no pixel of that class within
    one pixel, so that scores brought to the input's size (bilinear ``Invertd``) and argmaxed there draw the
    borders between the network's pixels without undoing the post-processing.

    Taking the argmax at network resolution and enlarging the label map with nearest neighbours puts every
    border on the network's pixel grid (steps of 8 pixels for 256 rows of a 2048-row radiograph); argmaxing
    bilinear scores at the input's size puts it where the scores cross, which raised lung Dice by 0.001-0.002
    on the sources larger than the network. Running the anatomy filter at the input's size instead costs most
    of a second per 2048 x 2048 radiograph; confining the scores keeps it at network resolution: a border moves
    by at most a network pixel, a removed region stays removed and a filled hole stays filled.

    Args:
        keys: class scores (probabilities, one channel per label value) at network resolution.
        label_key: the post-processed ``(1, rows, cols)`` label map of the same image at the same resolution.
    """

    def __init__(self, keys: KeysCollection, label_key: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        label_map = torch.as_tensor(d[self.label_key]).long()
        for key in self.key_iterator(d):
            scores = d[key]
            if label_map.shape != (1, *scores.shape[1:]):
                raise ValueError(
                    f"ScoresWithinLabelsd expects a (1, rows, cols) label map in {self.label_key!r} matching the "
                    f"scores {tuple(scores.shape)} in {key!r}, got {tuple(label_map.shape)}"
                )
            one_hot = torch.nn.functional.one_hot(label_map[0], scores.shape[0]).permute(2, 0, 1).float()
            nearby = torch.nn.functional.max_pool2d(one_hot[None], kernel_size=3, stride=1, padding=1)[0]
            d[key] = scores * nearby.to(scores.device, scores.dtype)
        return d


class ChannelArgmaxd(MapTransform):
    """The label map of ``(classes, rows, cols)`` scores, as ``AsDiscreted(argmax=True)`` makes it (the first
    highest channel, the scores' dtype, metadata kept), at a tenth of its time on CPU: ``torch.max``'s indices
    take 40 ms for 3 x 2048 x 2048 scores where ``torch.argmax`` across channels takes 300 ms, which made the
    argmax at the input's size (after :class:`ScoresWithinLabelsd`) most of an inference's time."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key].max(dim=0, keepdim=True).indices.to(d[key].dtype)
        return d
