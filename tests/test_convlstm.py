"""Behaviour of the shared ConvLSTM: shapes, one step computed by hand, directions, gradients, TorchScript."""

import math

import pytest
import torch

from cxrseg.nets import BiConvLSTM, ConvLSTM, ConvLSTMCell


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def test_cell_single_step_matches_hand_computation() -> None:
    """kernel 1, one input and one hidden channel: gates are affine in (x, h), so the step is computable by hand."""
    cell = ConvLSTMCell(in_channels=1, hidden_channels=1, kernel_size=1)
    x_weights = [1.0, 2.0, 0.5, -1.0]  # input, forget, candidate, output gates
    h_weights = [0.5, -0.5, 1.0, 2.0]
    biases = [0.1, 0.2, -0.3, 0.0]
    with torch.no_grad():
        gate_weights = [[xw, hw] for xw, hw in zip(x_weights, h_weights, strict=True)]
        cell.gates.weight.copy_(torch.tensor(gate_weights).view(4, 2, 1, 1))
        cell.gates.bias.copy_(torch.tensor(biases))
    x_value, h_value, c_value = 0.8, -0.4, 0.5
    x = torch.full((1, 1, 2, 3), x_value)
    state = (torch.full((1, 1, 2, 3), h_value), torch.full((1, 1, 2, 3), c_value))

    hidden, cell_state = cell(x, state)

    pre = [xw * x_value + hw * h_value + b for xw, hw, b in zip(x_weights, h_weights, biases, strict=True)]
    expected_c = _sigmoid(pre[1]) * c_value + _sigmoid(pre[0]) * math.tanh(pre[2])
    expected_h = _sigmoid(pre[3]) * math.tanh(expected_c)
    assert torch.allclose(cell_state, torch.full_like(cell_state, expected_c), atol=1e-6)
    assert torch.allclose(hidden, torch.full_like(hidden, expected_h), atol=1e-6)


@pytest.mark.parametrize("kernel_size", [2, (1, 4), (3, 3, 3)])
def test_cell_rejects_kernels_that_change_the_size(kernel_size) -> None:
    with pytest.raises(ValueError, match="odd"):
        ConvLSTMCell(2, 4, kernel_size=kernel_size)


def test_row_kernel_sees_only_its_own_row() -> None:
    """A (1, 3) kernel mixes neighbouring columns but never rows: changing one row leaves the others' states alone."""
    torch.manual_seed(0)
    lstm = ConvLSTM(2, 3, kernel_size=(1, 3))
    assert lstm.cell.gates.weight.shape == (12, 5, 1, 3)
    sequence = torch.randn(1, 3, 2, 4, 6)
    changed = sequence.clone()
    changed[:, :, :, 1] += 1.0
    difference = (lstm(sequence) - lstm(changed)).abs().sum(dim=(0, 1, 2, 4))
    assert difference[1] > 0 and torch.all(difference[[0, 2, 3]] == 0)


def test_convlstm_shapes_and_first_step_is_cell_from_zero_state() -> None:
    torch.manual_seed(0)
    lstm = ConvLSTM(in_channels=3, hidden_channels=5)
    sequence = torch.randn(2, 4, 3, 7, 9)
    outputs = lstm(sequence)
    assert outputs.shape == (2, 4, 5, 7, 9)
    first_hidden, _ = lstm.cell(sequence[:, 0], lstm.cell.initial_state(sequence[:, 0]))
    assert torch.allclose(outputs[:, 0], first_hidden)


def test_convlstm_rejects_non_sequence_input() -> None:
    with pytest.raises(ValueError, match="batch, time, channels, rows, cols"):
        ConvLSTM(3, 5)(torch.randn(2, 3, 7, 9))


def test_reverse_is_forward_run_on_reversed_sequence() -> None:
    torch.manual_seed(0)
    forward_lstm = ConvLSTM(2, 3)
    backward_lstm = ConvLSTM(2, 3, reverse=True)
    backward_lstm.load_state_dict(forward_lstm.state_dict())
    sequence = torch.randn(1, 5, 2, 6, 6)
    expected = forward_lstm(sequence.flip(1)).flip(1)
    assert torch.allclose(backward_lstm(sequence), expected, atol=1e-6)
    assert not torch.allclose(forward_lstm(sequence), expected, atol=1e-3)


@pytest.mark.parametrize("merge, channels", [("sum", 3), ("concat", 6)])
def test_bidirectional_merges_forward_and_reversed_runs(merge: str, channels: int) -> None:
    torch.manual_seed(0)
    bidirectional = BiConvLSTM(2, 3, merge=merge)
    sequence = torch.randn(2, 4, 2, 5, 6)
    forward_states = bidirectional.forward_lstm(sequence)
    backward_states = ConvLSTM(2, 3)
    backward_states.load_state_dict(bidirectional.backward_lstm.state_dict())
    backward_states = backward_states(sequence.flip(1)).flip(1)

    outputs = bidirectional(sequence)

    assert outputs.shape == (2, 4, channels, 5, 6) and bidirectional.out_channels == channels
    expected = forward_states + backward_states if merge == "sum" else torch.cat([forward_states, backward_states], 2)
    assert torch.allclose(outputs, expected, atol=1e-6)


def test_bidirectional_rejects_unknown_merge() -> None:
    with pytest.raises(ValueError, match="merge"):
        BiConvLSTM(2, 3, merge="mean")


def test_gradient_reaches_every_parameter_and_the_first_time_step() -> None:
    """The last output must depend on the first input through the recurrence, both directions trained."""
    torch.manual_seed(0)
    bidirectional = BiConvLSTM(2, 3)
    sequence = torch.randn(1, 4, 2, 5, 5, requires_grad=True)
    bidirectional(sequence)[:, -1].sum().backward()
    assert sequence.grad is not None and sequence.grad[:, 0].abs().sum() > 0
    for name, parameter in bidirectional.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_scripted_and_traced_match_eager(merge: str) -> None:
    torch.manual_seed(0)
    bidirectional = BiConvLSTM(2, 3, merge=merge).eval()
    sequence = torch.randn(2, 4, 2, 5, 6)
    expected = bidirectional(sequence)
    scripted = torch.jit.script(bidirectional)
    assert torch.allclose(scripted(sequence), expected, atol=1e-6)
    longer = torch.randn(1, 6, 2, 4, 4)
    assert torch.allclose(scripted(longer), bidirectional(longer), atol=1e-6)
    traced = torch.jit.trace(bidirectional, sequence)
    assert torch.allclose(traced(sequence), expected, atol=1e-6)
