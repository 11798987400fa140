"""Convolutional LSTM (Shi et al., 2015) over sequences of feature maps.

Two bundles need it: Res-CR-Net scans the rows and columns of a feature map with bidirectional
ConvLSTMs, and the attention BCDU-Net fuses skip and decoder features with one. MONAI has no
ConvLSTM, so it lives here once. Sequences are tensors shaped (batch, time, channels, rows, cols);
time steps are looped explicitly so the modules script with ``torch.jit.script`` and trace alike.
"""

import torch
from torch import nn

__all__ = ["ConvLSTMCell", "ConvLSTM", "BiConvLSTM"]

KernelSize = int | tuple[int, int]


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step: the four gates come from a single convolution over ``[x, h]``.

    Gate order in the convolution's output channels is input, forget, cell candidate, output, so a
    test (or a checkpoint converter) can address each gate as a contiguous block of ``hidden_channels``.
    The convolution is zero-padded to keep the spatial size. ``kernel_size`` may be a (rows, cols) pair, so a
    sequence of image rows (each a map one pixel high) can use a (1, k) kernel instead of wasting weights on padding.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: KernelSize = 3) -> None:
        super().__init__()
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(kernel) != 2 or any(k % 2 != 1 for k in kernel):
            raise ValueError(f"kernel_size must be odd (one or two sizes) to keep the spatial size, got {kernel_size}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            in_channels + hidden_channels, 4 * hidden_channels, kernel, padding=(kernel[0] // 2, kernel[1] // 2)
        )

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero hidden and cell states matching a step input ``x`` (batch, channels, rows, cols)."""
        zeros = x.new_zeros((x.shape[0], self.hidden_channels, x.shape[2], x.shape[3]))
        return zeros, zeros

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance one step from ``state = (h, c)``; returns the new ``(h, c)``."""
        hidden, cell = state
        gates = self.gates(torch.cat([x, hidden], dim=1))
        input_gate, forget_gate, candidate, output_gate = torch.chunk(gates, 4, dim=1)
        cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
        hidden = torch.sigmoid(output_gate) * torch.tanh(cell)
        return hidden, cell


class ConvLSTM(nn.Module):
    """A ConvLSTMCell unrolled over time from zero state, returning every hidden state.

    ``reverse=True`` scans from the last step to the first and returns the hidden states in the
    original time order, which is what a bidirectional layer needs to merge the two directions.
    """

    def __init__(
        self, in_channels: int, hidden_channels: int, kernel_size: KernelSize = 3, reverse: bool = False
    ) -> None:
        super().__init__()
        self.cell = ConvLSTMCell(in_channels, hidden_channels, kernel_size)
        self.reverse = reverse

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """Map (batch, time, in_channels, rows, cols) to (batch, time, hidden_channels, rows, cols)."""
        if sequence.dim() != 5:
            raise ValueError(f"expected (batch, time, channels, rows, cols), got shape {list(sequence.shape)}")
        steps = sequence.shape[1]
        state = self.cell.initial_state(sequence[:, 0])
        outputs = [state[0] for _ in range(steps)]
        for step in range(steps):
            time_index = steps - 1 - step if self.reverse else step
            state = self.cell(sequence[:, time_index], state)
            outputs[time_index] = state[0]
        return torch.stack(outputs, dim=1)


class BiConvLSTM(nn.Module):
    """Forward and backward ConvLSTMs over the same sequence, merged per time step.

    ``merge="sum"`` keeps ``hidden_channels`` outputs (Res-CR-Net); ``merge="concat"`` gives
    ``2 * hidden_channels``, forward first (BCDU-Net).
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: KernelSize = 3, merge: str = "sum") -> None:
        super().__init__()
        if merge not in ("sum", "concat"):
            raise ValueError(f"merge must be 'sum' or 'concat', got {merge!r}")
        self.forward_lstm = ConvLSTM(in_channels, hidden_channels, kernel_size, reverse=False)
        self.backward_lstm = ConvLSTM(in_channels, hidden_channels, kernel_size, reverse=True)
        self.merge = merge
        self.out_channels = hidden_channels if merge == "sum" else 2 * hidden_channels

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """Map (batch, time, in_channels, rows, cols) to (batch, time, out_channels, rows, cols)."""
        forward_states = self.forward_lstm(sequence)
        backward_states = self.backward_lstm(sequence)
        if self.merge == "sum":
            return forward_states + backward_states
        return torch.cat([forward_states, backward_states], dim=2)
