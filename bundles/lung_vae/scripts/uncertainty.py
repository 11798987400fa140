"""Per-pixel uncertainty at inference from stochastic samples of z (``uncertainty_samples`` in inference.yaml).

With N > 0 samples the inferer returns two channels: the logit of the mean lung probability over the samples
(segmented as usual) and the standard deviation of the probability, which the writer saves beside the mask
as ``<stem>_uncertainty.png``. With N = 0 it is a plain forward pass with z at the posterior mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from PIL import Image
from torch import nn

from .cxrseg.io import save_png

UNCERTAINTY_KEY = "uncertainty"
# the largest possible standard deviation of a probability is 0.5; it maps to 255
UNCERTAINTY_SCALE = 510.0


def _core(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


class LatentSamplingInferer(Inferer):
    """``num_samples`` forward passes with z drawn from q(z|x): ``(B, 2, H, W)`` of mean-probability logit
    and probability standard deviation; ``num_samples = 0`` gives the network's plain logits."""

    def __init__(self, num_samples: int = 0) -> None:
        super().__init__()
        if num_samples < 0 or num_samples == 1:
            raise ValueError(f"uncertainty needs 0 (off) or at least 2 samples of z, got {num_samples}")
        self.num_samples = num_samples

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.num_samples == 0:
            return network(inputs, *args, **kwargs)
        core = _core(network)
        if not getattr(core, "variational", False):
            raise ValueError("uncertainty_samples > 0 needs the variational model (variational: true)")
        core.sample_latent = True
        try:
            probabilities = torch.stack(
                [torch.sigmoid(network(inputs, *args, **kwargs)) for _ in range(self.num_samples)]
            )
        finally:
            core.sample_latent = False
        mean = probabilities.mean(dim=0).clamp(1e-6, 1 - 1e-6)
        return torch.cat((torch.logit(mean), probabilities.std(dim=0)), dim=1)


def save_uncertainty(item: Mapping[str, Any], label_map: np.ndarray, output_dir: Path, stem: str) -> None:
    """Write the item's uncertainty map (probability sd, at the input size) as an 8-bit PNG, 255 = sd 0.5."""
    uncertainty = item[UNCERTAINTY_KEY]
    array = uncertainty.detach().cpu().numpy() if isinstance(uncertainty, torch.Tensor) else np.asarray(uncertainty)
    array = np.squeeze(array)
    if array.shape != label_map.shape:
        raise ValueError(f"uncertainty map {array.shape} does not match the label map {label_map.shape}")
    pixels = np.clip(np.rint(array * UNCERTAINTY_SCALE), 0, 255).astype(np.uint8)
    save_png(Image.fromarray(pixels), Path(output_dir) / f"{stem}_uncertainty.png")
