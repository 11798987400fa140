"""The opacity network: MONAI's ``FlexibleUNet`` with a ResNet18 encoder, made exportable.

MONAI's ResNet builds its parameter-free (type A) shortcuts as ``functools.partial`` of a method that appends
zero channels to ``out.data``. That breaks both TorchScript paths: scripting cannot compile a ``partial``, and
tracing records ``out.data`` as a constant, so a traced network silently reuses the trace input's shortcut
for every later input (a max difference of about 0.3 in the logits of the trained model). It also keeps
gradients out of the shortcut in training. :class:`ZeroPadShortcut` computes the same values as an ordinary
module; it has no parameters, so state dicts are unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from torch import nn


class ZeroPadShortcut(nn.Module):
    """Type-A ResNet shortcut: the input subsampled by ``stride`` with zero channels appended up to ``planes``."""

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        subsampled = x[:, :, :: self.stride, :: self.stride]
        zeros = subsampled.new_zeros(
            (subsampled.shape[0], self.planes - subsampled.shape[1], subsampled.shape[2], subsampled.shape[3])
        )
        return torch.cat([subsampled, zeros], dim=1)


def opacity_unet(**flexible_unet_args: Any) -> FlexibleUNet:
    """``FlexibleUNet(**flexible_unet_args)`` with every partial shortcut replaced by :class:`ZeroPadShortcut`."""
    network = FlexibleUNet(**flexible_unet_args)
    for block in network.modules():
        if isinstance(block, (ResNetBlock, ResNetBottleneck)) and isinstance(block.downsample, partial):
            if block.downsample.keywords.get("spatial_dims", 2) != 2:
                raise ValueError("ZeroPadShortcut is written for 2-D networks")
            block.downsample = ZeroPadShortcut(block.downsample.keywords["planes"], block.downsample.keywords["stride"])
    return network
