"""A second look at the lungs: the network run again on the crop around the lungs its first answer found.

The lung networks see a whole radiograph squashed to a small input (res_cr_net 128 x 144, lung_vae 256 x 256).
Where the lungs fill only part of the frame (AP portable and ICU radiographs with the neck, shoulders and abdomen
in view) they get few of those pixels and their borders blur. Run again on the lungs' bounding box, squashed to
the same input and normalised as a whole radiograph is in training, the lungs fill the input as they do in the
training radiographs. The crop is taken from the preprocessed image at a finer grid than the network's input
(the configs' ``lung_crop_grid``), so that it is not an enlargement of the network's coarse input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer
from scipy import ndimage

from .bundle import as_flag

# the grid the crop is taken from, in multiples of the network's input size
CROP_GRID_SCALE = 2
Box = tuple[slice, slice]


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor without MONAI's metadata, which resampling by hand would make stale."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def lung_crop_grid(image_size: Sequence[int], lung_crop: bool | str) -> list[int]:
    """The size the preprocessing brings an image to: finer than the network's input where the lungs are cropped
    from it, the input size itself where they are not (the single pass of earlier versions)."""
    return [CROP_GRID_SCALE * int(size) if as_flag(lung_crop) else int(size) for size in image_size]


def resized(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(B, C, H, W)`` images at ``size``: area averaging to shrink (as the preprocessing shrinks), bilinear to
    enlarge."""
    shrinking = all(new <= old for new, old in zip(size, images.shape[2:], strict=True))
    if shrinking:
        return F.interpolate(images, size=tuple(size), mode="area")
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)


def lung_box(
    output: torch.Tensor, kind: Literal["softmax", "sigmoid"], lung_labels: Sequence[int], margin: float
) -> Box | None:
    """The bounding box, widened by ``margin`` of its height and width each side, of the two largest lung
    components in one network ``output`` ``(C, H, W)``; None where it has no lung pixel.

    ``softmax``: class scores, lung where the argmax is one of ``lung_labels``; ``sigmoid``: channel 0 is the
    lung logit. Only the two largest components count, so a spill (a blob under the diaphragm) that the anatomy
    filter removes later does not widen the box.
    """
    scores = output.detach().float().cpu()
    lung = (scores[0] > 0) if kind == "sigmoid" else torch.isin(scores.argmax(0), torch.tensor(list(lung_labels)))
    components, count = ndimage.label(lung.numpy())
    if count == 0:
        return None
    sizes = ndimage.sum_labels(np.ones(components.shape), components, index=np.arange(1, count + 1))
    kept = np.isin(components, np.argsort(sizes)[::-1][:2] + 1)
    rows, cols = np.nonzero(kept)
    height, width = components.shape
    row_pad = round(margin * (rows.max() - rows.min() + 1))
    col_pad = round(margin * (cols.max() - cols.min() + 1))
    return (
        slice(max(0, rows.min() - row_pad), min(height, rows.max() + row_pad + 1)),
        slice(max(0, cols.min() - col_pad), min(width, cols.max() + col_pad + 1)),
    )


def widened_to_aspect(box: Box, aspect: float, shape: Sequence[int]) -> Box:
    """``box`` widened about its centre along its short side to ``aspect`` (height / width), within an image of
    ``shape``: squashed to the network's input, the crop then keeps its proportions (lung_vae trains on
    radiographs resized with their aspect ratio)."""
    rows, cols = box
    height, width = rows.stop - rows.start, cols.stop - cols.start
    target_height, target_width = max(height, round(width * aspect)), max(width, round(height / aspect))

    def centred(span: slice, length: int, limit: int) -> slice:
        start = max(0, min(limit - length, (span.start + span.stop - length) // 2))
        return slice(start, min(limit, start + length))

    return centred(rows, target_height, shape[0]), centred(cols, target_width, shape[1])


class LungCropInferer(Inferer):
    """The network's answer for the whole image, replaced inside the lungs' bounding box by its answer for that box.

    Inputs are ``(B, C, H, W)`` preprocessed but not normalised, at :func:`lung_crop_grid`; each pass squashes
    its image to ``spatial_size``, applies ``normalisation`` (the bundle's own dictionary transforms on key
    ``image``, per item) and brings the output back to its image's grid bilinearly. The output is at the inputs'
    grid, so the post-processing that inverts the preprocessing is unchanged. The network runs twice per image;
    an image where the first pass finds no lung keeps the first answer.

    Args:
        spatial_size: the network's input size (the weights' ``image_size``); None for one pass on the input
            as it is (res_cr_net's native mode, a fully convolutional network at its own scale).
        normalisation: dictionary transforms on ``{"image": (C, H, W)}`` after resizing (histogram
            equalisation, CLAHE, channel repeats), as in training; None for none.
        output: ``softmax`` (class scores) or ``sigmoid`` (channel 0 the lung logit), as ``label_map_steps``.
        lung_labels: the label values of lung, for ``softmax`` outputs.
        margin: the box's widening each side, as a fraction of its height and width.
        inferer: the inferer of each pass (lung_vae's latent sampling); SimpleInferer by default.
        lung_crop: false for the first pass alone (a flag from the command line may arrive as a string).
        keep_aspect_ratio: widen the box to ``spatial_size``'s proportions (:func:`widened_to_aspect`).
    """

    def __init__(
        self,
        spatial_size: Sequence[int] | None,
        normalisation: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        output: Literal["softmax", "sigmoid"] = "softmax",
        lung_labels: Sequence[int] = (1,),
        margin: float = 0.1,
        inferer: Inferer | None = None,
        lung_crop: bool | str = True,
        keep_aspect_ratio: bool = False,
    ) -> None:
        super().__init__()
        if output not in ("softmax", "sigmoid"):
            raise ValueError(f"output must be 'softmax' or 'sigmoid', got {output!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.spatial_size = None if spatial_size is None else [int(size) for size in spatial_size]
        self.normalisation = normalisation
        self.output = output
        self.lung_labels = list(lung_labels)
        self.margin = margin
        self.inferer = inferer or SimpleInferer()
        self.lung_crop = as_flag(lung_crop) and self.spatial_size is not None
        self.keep_aspect_ratio = keep_aspect_ratio

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalisation is None:
            return images
        return torch.stack([torch.as_tensor(self.normalisation({"image": image})["image"]) for image in images])

    def answer(
        self, images: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """One pass: the network's output for ``images`` ``(B, C, H, W)`` at their own grid."""
        size = images.shape[2:] if self.spatial_size is None else self.spatial_size
        inputs = self._normalised(resized(images, size)).to(images.device)
        return resized(_plain(self.inferer(inputs, network, *args, **kwargs)), images.shape[2:])

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        images = _plain(inputs)
        whole = self.answer(images, network, *args, **kwargs)
        if not self.lung_crop:
            return whole
        for index in range(images.shape[0]):
            box = lung_box(whole[index], self.output, self.lung_labels, self.margin)
            if box is not None and self.keep_aspect_ratio:
                box = widened_to_aspect(box, self.spatial_size[0] / self.spatial_size[1], images.shape[2:])
            if box is not None:
                crop = images[index : index + 1, :, box[0], box[1]]
                whole[index, :, box[0], box[1]] = self.answer(crop, network, *args, **kwargs)[0]
        return whole
