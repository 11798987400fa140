"""Attention BCDU-Net (Maga 2021): MONAI's Attention U-Net whose attention gates merge the gating signal and the
skip features with a bidirectional ConvLSTM instead of an addition.

The network is built from MONAI's ``AttentionUnet`` blocks (``ConvBlock``, ``UpConv``, ``AttentionLayer``,
``AttentionBlock``) with two changes, because MONAI's ``AttentionLayer`` hands its gate the decoder features
after the transposed convolution, already on the skip's grid, which leaves nothing to resample:

- :class:`GatedAttentionLayer` gives the gate the coarse decoder features ``g`` (one level down), as in Oktay et
  al.'s Figure 2, so that the resampling of the paper (``downsample`` W_x(x) to g's grid, the official
  implementation, or ``upsample`` W_g(g) to x's grid, the common variant) can be chosen;
- :class:`ConvLSTMAttentionBlock` is MONAI's ``AttentionBlock`` with that resampling and a pluggable merge of
  ``W_g(g)`` and ``W_x(x)``: :class:`BiConvLSTMMerge` (the paper) or :class:`AdditionMerge` (Attention U-Net,
  kept for the ablation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.convolutions import Convolution
from monai.networks.layers.factories import Norm
from monai.networks.nets.attentionunet import AttentionBlock, AttentionLayer, ConvBlock
from torch import nn

from .cxrseg.nets import BiConvLSTM

GATES = ("bconvlstm", "add")
RESAMPLINGS = ("downsample", "upsample")


class AdditionMerge(nn.Module):
    """The Attention U-Net's merge of the gate's two inputs: a tensor addition."""

    def forward(self, gating: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return gating + skip


class BiConvLSTMMerge(nn.Module):
    """Merge by a bidirectional ConvLSTM over the two-step sequence ``[W_g(g), W_x(x)]`` (in that order).

    As in BCDU-Net's Keras ``Bidirectional(ConvLSTM2D(return_sequences=False), merge_mode="concat")``, the output
    is each direction's final hidden state (forward after ``W_x(x)``, backward after ``W_g(g)``) concatenated, with
    ``channels // 2`` hidden channels per direction, so it has the ``channels`` the gate's ``psi`` expects.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if channels < 2 or channels % 2:
            raise ValueError(f"the BiConvLSTM merge needs an even number of channels (>= 2), got {channels}")
        self.hidden_channels = channels // 2
        self.lstm = BiConvLSTM(channels, self.hidden_channels, kernel_size=kernel_size, merge="concat")

    def forward(self, gating: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        states = self.lstm(torch.stack([gating, skip], dim=1))
        forward_last = states[:, -1, : self.hidden_channels]
        backward_last = states[:, 0, self.hidden_channels :]
        return torch.cat([forward_last, backward_last], dim=1)


class ConvLSTMAttentionBlock(AttentionBlock):
    """MONAI's ``AttentionBlock`` (W_g, W_x, ReLU, psi, sigmoid, multiply with x) with a chosen merge and resampling.

    ``g`` is the gating signal on the coarser grid, ``x`` the skip features. ``resample="downsample"`` replaces
    the 1x1 ``W_x`` with a 2x2 convolution of stride 2 (the official Attention U-Net) and upsamples the attention
    coefficients bilinearly to x's grid; ``"upsample"`` upsamples ``W_g(g)`` bilinearly to x's grid instead.
    """

    def __init__(
        self,
        f_int: int,
        f_g: int,
        f_l: int,
        gate: str = "bconvlstm",
        resample: str = "downsample",
        lstm_kernel_size: int = 3,
    ) -> None:
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if resample not in RESAMPLINGS:
            raise ValueError(f"resample must be one of {RESAMPLINGS}, got {resample!r}")
        super().__init__(spatial_dims=2, f_int=f_int, f_g=f_g, f_l=f_l)
        if resample == "downsample":
            self.W_x = nn.Sequential(
                Convolution(2, f_l, f_int, kernel_size=2, strides=2, padding=0, conv_only=True),
                Norm[Norm.BATCH, 2](f_int),
            )
        self.resample = resample
        self.merge = BiConvLSTMMerge(f_int, lstm_kernel_size) if gate == "bconvlstm" else AdditionMerge()

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gating = self.W_g(g)
        skip = self.W_x(x)
        if self.resample == "upsample":
            gating = F.interpolate(gating, size=skip.shape[2:], mode="bilinear", align_corners=False)
        coefficients = self.psi(self.relu(self.merge(gating, skip)))
        if self.resample == "downsample":
            coefficients = F.interpolate(coefficients, size=x.shape[2:], mode="bilinear", align_corners=False)
        return x * coefficients


class GatedAttentionLayer(AttentionLayer):
    """MONAI's ``AttentionLayer`` (upconv, gate, merge convolution) whose gate sees the coarse decoder output."""

    def __init__(
        self, in_channels: int, out_channels: int, submodule: nn.Module, gate: nn.Module, up_kernel_size: int = 3
    ) -> None:
        super().__init__(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            submodule=submodule,
            up_kernel_size=up_kernel_size,
            strides=2,
        )
        self.attention = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lower = self.submodule(x)
        from_lower = self.upconv(lower)
        attended = self.attention(g=lower, x=x)
        return self.merge(torch.cat((attended, from_lower), dim=1))


class AttentionBCDUNet(nn.Module):
    """Attention U-Net with ``len(channels) - 1`` downsampling steps and configurable attention gates.

    Laid out like MONAI's ``AttentionUnet`` (``model = Sequential(head, encoder-decoder, 1x1 output conv)``), with
    stride-2 ``ConvBlock`` encoders. Inputs must have sides divisible by ``2 ** (len(channels) - 1)`` (16 for the
    paper's four downsampling steps). The output is class logits; the softmax is in the loss and the argmax in
    the post-processing.

    Args:
        in_channels: image channels (1, grayscale).
        out_channels: classes including background (3: background, lungs, heart).
        channels: feature channels per level, top first.
        gate: ``"bconvlstm"`` (the paper) or ``"add"`` (Attention U-Net).
        resample: ``"downsample"`` (W_x(x) to g's grid) or ``"upsample"`` (W_g(g) to x's grid).
        lstm_kernel_size: ConvLSTM kernel size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        gate: str = "bconvlstm",
        resample: str = "downsample",
        lstm_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels needs at least two levels, got {list(channels)}")
        self.channels = tuple(int(c) for c in channels)
        self.size_multiple = 2 ** (len(self.channels) - 1)
        self.gate = gate
        self.resample = resample
        self.lstm_kernel_size = lstm_kernel_size
        head = ConvBlock(spatial_dims=2, in_channels=in_channels, out_channels=self.channels[0])
        output = Convolution(2, self.channels[0], out_channels, kernel_size=1, padding=0, conv_only=True)
        self.model = nn.Sequential(head, self._level(self.channels), output)

    def _level(self, channels: Sequence[int]) -> GatedAttentionLayer:
        """One encoder-decoder level: a stride-2 ConvBlock down to ``channels[1]``, the levels below, and back up."""
        encoder = ConvBlock(spatial_dims=2, in_channels=channels[0], out_channels=channels[1], strides=2)
        submodule = nn.Sequential(encoder, self._level(channels[1:])) if len(channels) > 2 else encoder
        gate = ConvLSTMAttentionBlock(
            f_int=max(2, channels[0] // 2),
            f_g=channels[1],
            f_l=channels[0],
            gate=self.gate,
            resample=self.resample,
            lstm_kernel_size=self.lstm_kernel_size,
        )
        return GatedAttentionLayer(channels[0], channels[1], submodule, gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] % self.size_multiple != 0 or x.shape[3] % self.size_multiple != 0:
            raise ValueError(
                f"input of {x.shape[2]}x{x.shape[3]} pixels: both sides must be multiples of {self.size_multiple}"
            )
        return self.model(x)
