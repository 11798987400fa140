"""``python -m tools average_weights``: the mean of fine-tunes' weights, from state dicts or checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tools.average_weights import average_weights, mean_state_dict


def test_floats_are_averaged_and_counters_come_from_the_first(tmp_path: Path) -> None:
    first = {"conv.weight": torch.tensor([1.0, 2.0]), "norm.num_batches_tracked": torch.tensor(7)}
    second = {"conv.weight": torch.tensor([3.0, 6.0]), "norm.num_batches_tracked": torch.tensor(9)}
    torch.save(first, tmp_path / "model.pt")
    torch.save({"model": second, "optimizer": {"state": {}}}, tmp_path / "checkpoint_epoch=3.pt")

    average_weights(
        str(tmp_path / "soup" / "model.pt"), str(tmp_path / "model.pt"), str(tmp_path / "checkpoint_epoch=3.pt")
    )

    soup = torch.load(tmp_path / "soup" / "model.pt", weights_only=True)
    assert torch.equal(soup["conv.weight"], torch.tensor([2.0, 4.0]))
    assert soup["norm.num_batches_tracked"].item() == 7


def test_half_precision_weights_stay_half_precision() -> None:
    soup = mean_state_dict(
        [{"w": torch.tensor([1.0], dtype=torch.float16)}, {"w": torch.tensor([2.0], dtype=torch.float16)}]
    )
    assert soup["w"].dtype == torch.float16 and soup["w"].item() == 1.5


def test_weights_of_different_networks_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "b.pt")
    with pytest.raises(SystemExit) as stopped:
        average_weights(str(tmp_path / "soup.pt"), str(tmp_path / "a.pt"), str(tmp_path / "b.pt"))
    assert stopped.value.code == 1
    assert "shapes differ at ['w']" in capsys.readouterr().out
    assert not (tmp_path / "soup.pt").exists()
