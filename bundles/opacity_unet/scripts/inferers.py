"""The opacity network's inferer: its answer for the lung crop averaged with its answer for the mirror image.

MONAI's ``TestTimeAugmentation`` draws random transforms per sample and inverts each through a dataset; a network
trained with horizontal flips needs only its mirror image, so this is a plain ``Inferer`` that the configs put
where ``SimpleInferer`` was, in evaluation and inference alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer


class FlipAveragingInferer(Inferer):
    """The mean of the network's output for the batch and, flipped back, for its mirror image.

    A network trained with random flips has learnt both orientations, and its two answers disagree most where it
    is least sure (faint opacity at the edge of a region); their mean is the answer of both, at twice the
    network's time. The output stays what the network returns (logits), so the post-processing after it
    (activation, threshold) is unchanged.

    Args:
        spatial_axes: the axes of the input batch to flip; the default ``(-1,)`` mirrors the columns of a
            ``(batch, channels, rows, cols)`` radiograph (left and right).
    """

    def __init__(self, spatial_axes: Sequence[int] = (-1,)) -> None:
        super().__init__()
        self.spatial_axes = list(spatial_axes)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        direct = network(inputs, *args, **kwargs)
        mirrored = network(torch.flip(inputs, self.spatial_axes), *args, **kwargs)
        return (direct + torch.flip(mirrored, self.spatial_axes)) / 2
