"""Weighted Tanimoto loss with complement (Abdulah et al. 2021, section 1.3; Diakogiannis et al. 2020).

MONAI's Tversky and Dice losses have no complement term and no per-pixel weights, so the loss is written here.
"""

from __future__ import annotations

import torch
from monai.networks import one_hot
from torch import nn


def tanimoto(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, smooth: float) -> torch.Tensor:
    """T = (sum w p y + s) / (sum w (p^2 + y^2 - p y) + s), summed over every element of the inputs."""
    intersection = (weight * prediction * target).sum()
    denominator = (weight * (prediction * prediction + target * target - prediction * target)).sum()
    return (intersection + smooth) / (denominator + smooth)


class WeightedTanimotoLoss(nn.Module):
    """``1 - (T(p, y) + T(1 - p, 1 - y)) / 2`` with per-pixel weights, as in the authors' code.

    ``target`` is ``(batch, 1, rows, cols)`` label values, or ``(batch, 2, rows, cols)`` with the pixel weights
    (``ContourWeightd``) in the second channel: a SupervisedTrainer hands the loss only the prediction and the
    label, so the weights travel with the label. Without weights every pixel weighs 1. Like the authors' code,
    the sums run over the whole batch and all classes at once, giving one coefficient per batch; the complement
    term keeps the gradient informative where a class is nearly absent. ``input`` holds logits (``softmax=True``)
    or probabilities.
    """

    def __init__(self, smooth: float = 1.0, softmax: bool = True) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be non-negative, got {smooth}")
        self.smooth = smooth
        self.softmax = softmax

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] not in (1, 2) or target.shape[2:] != input.shape[2:] or target.shape[0] != input.shape[0]:
            raise ValueError(
                f"target must be (batch, 1 or 2, *spatial) matching input {list(input.shape)}, got {list(target.shape)}"
            )
        prediction = torch.softmax(input, dim=1) if self.softmax else input
        labels = one_hot(target[:, :1].round().long(), num_classes=input.shape[1], dtype=prediction.dtype)
        weight = target[:, 1:2].to(prediction.dtype) if target.shape[1] == 2 else torch.ones_like(labels[:, :1])
        overlap = tanimoto(prediction, labels, weight, self.smooth)
        complement_overlap = tanimoto(1 - prediction, 1 - labels, weight, self.smooth)
        return 1 - (overlap + complement_overlap) / 2
