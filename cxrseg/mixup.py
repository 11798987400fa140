"""Mixup (Zhang et al., ICLR 2018) for segmentation, as a ``prepare_batch`` of MONAI's ``SupervisedTrainer``.

Each sample of a batch is mixed with a randomly chosen other sample of the same batch: image
``x = lam * x1 + (1 - lam) * x2`` and one-hot mask ``y = lam * y1 + (1 - lam) * y2``, with ``lam ~ Beta(delta, delta)``
drawn per sample (Maga 2021 mixes the image-mask pairs of JSRT this way; Eaton-Rosen et al. 2018 for brain MRI).
Doing it on the batch, after the data loader, needs no change to datasets, transforms or the trainer: a config
passes ``prepare_batch: {_target_: scripts.cxrseg.mixup.MixupPrepareBatch, num_classes: ..., delta: 0.2}``.
The permutation and ``lam`` come from torch's global generator, which ``monai.utils.set_determinism`` seeds, and are
drawn on the CPU so a seed gives the same mixing on every device.

The loss then receives soft one-hot targets of ``num_classes`` channels (also when ``delta`` is 0, so that one
configuration serves both), and the trainer's post-processing must take the label's argmax, not its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import PrepareBatch, default_prepare_batch
from monai.networks import one_hot

__all__ = ["MixupPrepareBatch", "mark_unannotated", "mixup", "partner_indices", "to_one_hot"]


def to_one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float one-hot ``(batch, num_classes, ...)`` from a ``(batch, 1, ...)`` label map; a label that already has
    ``num_classes`` channels is returned as float unchanged."""
    if label.shape[1] == num_classes and num_classes > 1:
        return label.float()
    if label.shape[1] != 1:
        raise ValueError(
            f"label must have 1 channel (a label map) or {num_classes} (one-hot), got shape {list(label.shape)}"
        )
    if label.numel() and int(label.max()) >= num_classes:
        raise ValueError(f"label value {int(label.max())} is not below num_classes={num_classes}")
    return one_hot(label, num_classes=num_classes, dtype=torch.float32)


def partner_indices(batch_size: int) -> torch.Tensor:
    """A random partner for every sample, never itself: consecutive members of a random cyclic order.

    A plain permutation would leave fixed points (half of all batches of two would not be mixed at all).
    """
    if batch_size < 2:
        return torch.arange(batch_size)
    order = torch.randperm(batch_size)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def mixup(
    image: torch.Tensor, target: torch.Tensor, delta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix every sample with its partner; returns the mixed image and target, ``lam`` and the partner indices.

    ``target`` must be one-hot (or soft) so that its convex combination is a valid soft label. ``delta`` 0 (or a
    batch of one) leaves the batch unchanged with ``lam`` 1.
    """
    if delta < 0:
        raise ValueError(f"mixup delta must be >= 0 (0 switches mixup off), got {delta}")
    batch_size = image.shape[0]
    partner = partner_indices(batch_size)
    if delta == 0 or batch_size < 2:
        return image, target, torch.ones(batch_size), partner
    concentration = torch.tensor(float(delta))
    lam = torch.distributions.Beta(concentration, concentration).sample((batch_size,))
    shape = (batch_size,) + (1,) * (image.dim() - 1)
    weight = lam.to(device=image.device, dtype=image.dtype).reshape(shape)
    target_weight = lam.to(device=target.device, dtype=target.dtype).reshape(shape)
    partner_on_device = partner.to(image.device)
    mixed_image = weight * image + (1 - weight) * image[partner_on_device]
    mixed_target = target_weight * target + (1 - target_weight) * target[partner_on_device]
    return mixed_image, mixed_target, lam, partner


class MixupPrepareBatch(PrepareBatch):
    """``prepare_batch`` for ``SupervisedTrainer``: moves the batch to the device as MONAI's default does, turns the
    label into a one-hot of ``num_classes`` channels and applies :func:`mixup` with ``lam ~ Beta(delta, delta)``.

    Args:
        num_classes: channels of the one-hot target (background included).
        delta: Beta concentration; 0 switches mixing off (targets are still one-hot). Maga (2021) found 0.2 best
            for 10 and 20 training images.
        annotated_key: batch key of the ``(batch, num_classes)`` booleans of ``LoadLabelMapd(annotated_key=...)``.
            The target channels of classes a case does not annotate become NaN, "unknown"; mixing keeps them
            NaN (a mixture with an unknown heart has an unknown heart), and a loss that marginalises unknown
            classes (``FocalTverskyLoss``) reads them so.
    """

    def __init__(self, num_classes: int, delta: float = 0.2, annotated_key: str | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background and one class), got {num_classes}")
        if delta < 0:
            raise ValueError(f"mixup delta must be >= 0 (0 switches mixup off), got {delta}")
        self.num_classes = num_classes
        self.delta = float(delta)
        self.annotated_key = annotated_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if label is None:
            raise ValueError("mixup needs a label in every training batch, got a batch without 'label'")
        target = to_one_hot(label, self.num_classes)
        if self.annotated_key is not None and self.annotated_key in batchdata:
            target = mark_unannotated(target, torch.as_tensor(batchdata[self.annotated_key]))
        mixed_image, mixed_target, _, _ = mixup(image, target, self.delta)
        return mixed_image, mixed_target


def mark_unannotated(target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """One-hot ``target`` with the channels of classes a case does not annotate set to NaN (unknown)."""
    if annotated.shape != target.shape[:2]:
        raise ValueError(f"annotated flags {list(annotated.shape)} do not match target {list(target.shape[:2])}")
    unknown = ~annotated.to(device=target.device, dtype=torch.bool)
    shape = tuple(unknown.shape) + (1,) * (target.dim() - 2)
    return target.masked_fill(unknown.reshape(shape), float("nan"))
