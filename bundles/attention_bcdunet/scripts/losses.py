"""Focal Tversky loss (Abraham and Khan, ISBI 2019) in the multiclass form of Maga (2021).

``FTL = sum_c (1 - TI_c) ** (1 / gamma)`` with the Tversky index
``TI_c = (sum p g + eps) / (sum p g + alpha * sum (1 - p) g + beta * sum p (1 - g) + eps)``: ``alpha`` weighs false
negatives, ``beta`` false positives (the paper's notation; MONAI's ``TverskyLoss`` names them the other way round,
``alpha`` for false positives). The Tversky indices come from MONAI's ``TverskyLoss``, whose products ``p g``,
``(1 - p) g`` and ``p (1 - g)`` are the paper's and are as valid for the soft targets of mixup as for hard ones.

Partial labels: a hospital that annotates lungs but not the heart must not teach "heart = background". Target
channels that are NaN (``MixupPrepareBatch(annotated_key=...)``) mark classes a case does not annotate, and
:func:`marginalise_unannotated` merges them into background for that case: the network is asked only whether a
pixel is one of the annotated classes or "something else", so its heart is neither rewarded nor punished there.
"""

from __future__ import annotations

import torch
from monai.losses import TverskyLoss
from torch.nn.modules.loss import _Loss

from .cxrseg.mixup import to_one_hot


class FocalTverskyLoss(_Loss):
    """Sum over classes of ``(1 - TI_c) ** (1 / gamma)``; targets may be a label map or (soft) one-hot.

    Args:
        alpha: weight of false negatives (paper: 0.6).
        beta: weight of false positives (paper: 0.4).
        gamma: focal parameter; the exponent is ``1 / gamma`` (paper: gamma = 0.675, exponent about 1.48).
        smooth: the paper's epsilon, added to numerator and denominator.
        include_background: whether the background class is one of the summed classes (the paper sums all).
        softmax: apply a softmax to the network's logits first.
        batch: pool the sums over the whole batch (the Keras losses flatten the batch); otherwise each image
            gets its own index and the per-image losses are averaged.
    """

    def __init__(
        self,
        alpha: float = 0.6,
        beta: float = 0.4,
        gamma: float = 0.675,
        smooth: float = 1.0,
        include_background: bool = True,
        softmax: bool = True,
        batch: bool = True,
    ) -> None:
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        self.gamma = float(gamma)
        self.softmax = softmax
        self.tversky = TverskyLoss(
            include_background=include_background,
            softmax=False,
            alpha=beta,
            beta=alpha,
            smooth_nr=smooth,
            smooth_dr=smooth,
            batch=batch,
            reduction="none",
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input``: logits (batch, classes, rows, cols), or probabilities without ``softmax``; ``target``: label
        map (batch, 1, ...) or (soft) one-hot whose NaN channels are classes the case does not annotate."""
        probabilities = torch.softmax(input, dim=1) if self.softmax else input
        probabilities, target = marginalise_unannotated(probabilities, to_one_hot(target, input.shape[1]))
        one_minus_index = self.tversky(probabilities, target)
        return (one_minus_index.clamp_min(0) ** (1.0 / self.gamma)).sum(dim=-1).mean()


def marginalise_unannotated(probabilities: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the classes a case does not annotate (NaN target channels) into its background.

    For such a case, background becomes "background or any unannotated class": its probability is the sum of
    theirs, its target is 1 minus the annotated foreground targets (so soft mixup targets stay consistent), and
    the unannotated channels are zero in both, so they add nothing to that class's true positives, false
    positives or false negatives. Cases that annotate every class pass unchanged. Channel 0 is background.
    """
    unannotated = torch.isnan(target).flatten(2).any(dim=2)
    if not unannotated.any():
        return probabilities, target
    if unannotated[:, 0].any():
        raise ValueError("the background channel of a target cannot be unannotated")
    shape = tuple(unannotated.shape) + (1,) * (target.dim() - 2)
    known = (~unannotated).to(probabilities.dtype).reshape(shape)
    target = torch.nan_to_num(target, nan=0.0) * known
    probabilities_kept = probabilities * known
    background_probability = probabilities[:, :1] + (probabilities - probabilities_kept)[:, 1:].sum(1, keepdim=True)
    background_target = 1.0 - target[:, 1:].sum(1, keepdim=True)
    return (
        torch.cat([background_probability, probabilities_kept[:, 1:]], dim=1),
        torch.cat([background_target, target[:, 1:]], dim=1),
    )
