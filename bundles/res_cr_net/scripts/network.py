"""Res-CR-Net (Abdallah et al. 2020; Abdulah et al. 2021): a fully convolutional network without pooling.

Every feature map keeps the input's rows and columns, so the network accepts any input size. The layout
follows Fig. 1 of the papers and the authors' Keras code: one STEM block, ``n - 1`` CONV RES blocks of three
parallel separable atrous branches, ``m`` LSTM RES blocks scanning rows and columns with bidirectional
ConvLSTMs, and a 1x1 projection to the classes. The network returns the projection's output as logits; the
paper's final softmax is applied by the loss and by the post-processing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cxrseg.nets import BiConvLSTM

LEAKY_SLOPE = 0.1


def leaky_relu(inplace: bool = False) -> nn.LeakyReLU:
    """The activation used throughout Res-CR-Net (slope 0.1, as in the authors' code).

    ``inplace`` where the input is a fresh batch-norm or convolution output that nothing else reads: their
    backward passes need their inputs, not their outputs, and a leaky ReLU with a positive slope can be
    differentiated from its own output, so overwriting saves one feature map per activation in training.
    """
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=inplace)


class SeparableConv2d(nn.Sequential):
    """Depthwise then pointwise convolution, as Keras' ``SeparableConv2D`` (depth multiplier 1, one bias).

    Padding keeps the spatial size for the given dilation; the bias sits on the pointwise part only, so the
    parameter count matches the Keras layer: ``k * k * in + in * out + out``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.Conv2d(in_channels, out_channels, 1),
        )


class AtrousBranch(nn.Sequential):
    """One residual branch: separable atrous conv, batch norm, activation, separable atrous conv."""

    def __init__(self, in_channels: int, filters: int, kernel_size: int, dilation: int) -> None:
        super().__init__(
            SeparableConv2d(in_channels, filters, kernel_size, dilation),
            nn.BatchNorm2d(filters),
            leaky_relu(inplace=True),
            SeparableConv2d(filters, filters, kernel_size, dilation),
        )


class ConvResBlock(nn.Module):
    """Parallel atrous branches, concatenated and added to a 1x1 convolution shortcut, then spatial dropout.

    ``pre_activation`` batch-normalises and activates the block input before the branches (CONV RES block);
    the STEM block has none, since its input is the image. The shortcut always sees the raw block input.
    """

    def __init__(
        self,
        in_channels: int,
        filters: int = 16,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        dilations: Sequence[int] = (1, 3, 5),
        pre_activation: bool = True,
        dropout: float = 0.05,
    ) -> None:
        super().__init__()
        if len(kernel_sizes) != len(dilations):
            raise ValueError(f"one dilation per kernel size needed, got {list(kernel_sizes)} and {list(dilations)}")
        out_channels = filters * len(kernel_sizes)
        self.pre_activation = (
            nn.Sequential(nn.BatchNorm2d(in_channels), leaky_relu(inplace=True)) if pre_activation else nn.Identity()
        )
        self.branches = nn.ModuleList(
            AtrousBranch(in_channels, filters, kernel, dilation)
            for kernel, dilation in zip(kernel_sizes, dilations, strict=True)
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.pre_activation(x)
        residual = torch.cat([branch(activated) for branch in self.branches], dim=1)
        return self.dropout(residual + self.shortcut(x))


class LSTMResBlock(nn.Module):
    """Project to the classes, scan rows and columns with bidirectional ConvLSTMs, add both scans back.

    The row scan treats each image row as a time step (a map one pixel high, ``(1, k)`` kernel) and runs
    from top to bottom and back; the column scan does the same on the map turned by 90 degrees. Each step
    therefore sees everything above and below (left and right) of it, which is the CRF-like refinement the
    paper credits the block with.
    """

    def __init__(self, in_channels: int, num_classes: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Conv2d(in_channels, num_classes, 1), leaky_relu())
        self.row_scan = BiConvLSTM(num_classes, num_classes, (1, kernel_size), merge="sum")
        self.column_scan = BiConvLSTM(num_classes, num_classes, (1, kernel_size), merge="sum")
        self.out_channels = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        rows = projected.permute(0, 2, 1, 3).unsqueeze(3)  # (batch, rows = time, classes, 1, cols)
        row_states = self.row_scan(rows).squeeze(3).permute(0, 2, 1, 3)
        columns = projected.permute(0, 3, 1, 2).unsqueeze(3)  # (batch, cols = time, classes, 1, rows)
        column_states = self.column_scan(columns).squeeze(3).permute(0, 2, 3, 1)
        return projected + row_states + column_states


class ResCRNet(nn.Module):
    """Res-CR-Net with ``1 + conv_blocks`` convolutional levels and ``lstm_blocks`` LSTM RES blocks.

    The default (3 input channels, 2 classes, 5 CONV RES blocks, no LSTM RES block) has 58,667 trainable
    parameters, 0.8 % below the 59,165 the paper reports; see the model card for why 5 and not 4 blocks.
    Without LSTM RES blocks the last step is the 1x1 projection with activation of the authors' code; with
    them, the first LSTM RES block's own projection takes its place.

    ``checkpoint_levels`` trades compute for memory in training: each convolutional level's activations are
    recomputed in the backward pass instead of kept (``torch.utils.checkpoint``), since at full resolution
    without pooling they are what fills the memory. The dropout masks are reproduced exactly; batch-norm
    running statistics see each batch twice (momentum 0.1 acts like 0.19), which only changes the
    statistics used at evaluation slightly. Evaluation and exports are unaffected.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        conv_blocks: int = 5,
        lstm_blocks: int = 0,
        filters: int = 16,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        dilations: Sequence[int] = (1, 3, 5),
        dropout: float = 0.05,
        lstm_kernel_size: int = 3,
        checkpoint_levels: bool = False,
    ) -> None:
        super().__init__()
        self.checkpoint_levels = checkpoint_levels
        if conv_blocks < 0 or lstm_blocks < 0:
            raise ValueError(f"block counts must be non-negative, got {conv_blocks} conv and {lstm_blocks} LSTM blocks")
        levels = [ConvResBlock(in_channels, filters, kernel_sizes, dilations, pre_activation=False, dropout=dropout)]
        for _ in range(conv_blocks):
            levels.append(ConvResBlock(levels[-1].out_channels, filters, kernel_sizes, dilations, True, dropout))
        self.conv_levels = nn.Sequential(*levels)
        width = levels[-1].out_channels
        if lstm_blocks == 0:
            self.head = nn.Sequential(nn.Conv2d(width, num_classes, 1), leaky_relu())
        else:
            widths = [width] + [num_classes] * (lstm_blocks - 1)
            self.head = nn.Sequential(*(LSTMResBlock(w, num_classes, lstm_kernel_size) for w in widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (batch, in_channels, rows, cols) to class logits (batch, num_classes, rows, cols)."""
        if not torch.jit.is_scripting() and self.checkpoint_levels and self.training and torch.is_grad_enabled():
            for level in self.conv_levels:
                x = checkpoint(level, x, use_reentrant=False)
            return self.head(x)
        return self.head(self.conv_levels(x))
