"""How the KL term of the variational encoder reaches the loss through MONAI's engines.

The training inferer asks the network for ``(logits, kl)`` and hands the trainer a structured prediction
``{"logits": ..., "kl": ...}``; the loss takes that dictionary, and the trainer's post-processing keeps only
the logits for the metrics. Evaluation and inference use a plain ``SimpleInferer`` and see logits only.
Nothing is stored on the network or in a global between the forward pass and the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

LOGITS = "logits"
KL = "kl"


class ELBOInferer(Inferer):
    """Training inferer returning ``{"logits": (B, C, H, W), "kl": (B,)}``."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        logits, kl = network(inputs, *args, return_kl=True, **kwargs)
        return {LOGITS: logits, KL: kl}


def logits_of(pred: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """The segmentation logits of a structured prediction (or the prediction itself when it is plain)."""
    return pred[LOGITS] if isinstance(pred, Mapping) else pred


class ELBOLoss(nn.Module):
    """Binary cross-entropy of the segmentation plus ``kl_weight`` times the batch mean of KL[q(z|x) || N(0, I)].

    This is Eq. (3) of the paper as the reference code computes it: pixel-mean BCE plus the KL summed over
    the latent dimensions and averaged over the batch. A plain tensor prediction (the baseline without
    an ``ELBOInferer``) gets the BCE alone.
    """

    def __init__(self, kl_weight: float = 1.0) -> None:
        super().__init__()
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be non-negative, got {kl_weight}")
        self.kl_weight = kl_weight
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, pred: Mapping[str, torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits_of(pred)
        if logits.shape != target.shape:
            raise ValueError(f"prediction {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        loss = self.bce(logits, target.to(logits.dtype))
        if isinstance(pred, Mapping) and self.kl_weight > 0:
            loss = loss + self.kl_weight * pred[KL].mean()
        return loss
