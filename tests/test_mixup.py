"""Mixup as a prepare_batch: one-hot targets, pairing, convex combinations by hand, Beta(delta, delta) shape,
seeding through MONAI, and soft targets reaching the loss inside a real SupervisedTrainer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism

from cxrseg.mixup import MixupPrepareBatch, mixup, partner_indices, to_one_hot


def test_label_map_becomes_float_one_hot() -> None:
    label = torch.tensor([[[[0, 1], [2, 1]]]])
    expected = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]]])
    assert torch.equal(to_one_hot(label, 3), expected)
    assert torch.equal(to_one_hot(expected, 3), expected)


def test_one_hot_rejects_wrong_channels_and_labels_beyond_the_classes() -> None:
    with pytest.raises(ValueError, match="1 channel"):
        to_one_hot(torch.zeros(1, 2, 4, 4), 3)
    with pytest.raises(ValueError, match="not below num_classes=3"):
        to_one_hot(torch.full((1, 1, 4, 4), 3), 3)


@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_every_sample_gets_another_sample_as_partner(batch_size: int) -> None:
    torch.manual_seed(0)
    for _ in range(20):
        partner = partner_indices(batch_size)
        assert sorted(partner.tolist()) == list(range(batch_size))
        assert all(partner[i] != i for i in range(batch_size))


def test_mixed_pair_is_the_convex_combination_by_hand() -> None:
    """Two constant images 0 and 1 with one-hot targets of class 1 and class 2: each mixed sample is
    lam * own + (1 - lam) * partner's, with the partner swapped and lam returned."""
    torch.manual_seed(3)
    image = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    target = to_one_hot(torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)]).long(), 3)
    mixed_image, mixed_target, lam, partner = mixup(image, target, delta=0.4)
    assert partner.tolist() == [1, 0]
    assert torch.allclose(mixed_image[0], torch.full((1, 2, 2), 1 - lam[0].item()))
    assert torch.allclose(mixed_image[1], torch.full((1, 2, 2), lam[1].item()))
    assert torch.allclose(mixed_target[0, :, 0, 0], torch.tensor([0.0, lam[0].item(), 1 - lam[0].item()]))
    assert torch.allclose(mixed_target.sum(dim=1), torch.ones(2, 2, 2))
    assert not torch.equal(lam[0], lam[1])


def test_small_delta_keeps_samples_near_the_originals() -> None:
    """Beta(0.2, 0.2) puts most lam near 0 or 1 (the paper's remark), Beta(50, 50) near 0.5."""
    torch.manual_seed(0)
    image, target = torch.rand(4000, 1, 1, 1), to_one_hot(torch.zeros(4000, 1, 1, 1).long(), 2)
    lam_small = mixup(image, target, delta=0.2)[2]
    lam_large = mixup(image, target, delta=50.0)[2]
    assert ((lam_small < 0.1) | (lam_small > 0.9)).float().mean() > 0.6
    assert ((lam_large > 0.4) & (lam_large < 0.6)).float().mean() > 0.8
    assert abs(lam_small.mean().item() - 0.5) < 0.05


def test_delta_zero_and_single_sample_batches_are_not_mixed() -> None:
    image, target = torch.rand(3, 1, 4, 4), to_one_hot(torch.randint(0, 3, (3, 1, 4, 4)), 3)
    mixed_image, mixed_target, lam, _ = mixup(image, target, delta=0.0)
    assert torch.equal(mixed_image, image) and torch.equal(mixed_target, target) and torch.equal(lam, torch.ones(3))
    mixed_image, _, _, _ = mixup(image[:1], target[:1], delta=0.2)
    assert torch.equal(mixed_image, image[:1])
    with pytest.raises(ValueError, match="delta must be >= 0"):
        mixup(image, target, delta=-0.1)


def test_set_determinism_fixes_the_mixing() -> None:
    batch = {"image": torch.rand(4, 1, 8, 8), "label": torch.randint(0, 3, (4, 1, 8, 8))}
    prepare = MixupPrepareBatch(num_classes=3, delta=0.2)
    runs = []
    for seed in (5, 5, 6):
        set_determinism(seed=seed)
        runs.append(prepare(batch))
    set_determinism(seed=None)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])


def test_prepare_batch_rejects_missing_labels_and_bad_settings() -> None:
    with pytest.raises(ValueError, match="without 'label'"):
        MixupPrepareBatch(num_classes=3)({"image": torch.rand(2, 1, 4, 4)})
    with pytest.raises(ValueError, match="num_classes"):
        MixupPrepareBatch(num_classes=1)
    with pytest.raises(ValueError, match="delta"):
        MixupPrepareBatch(num_classes=3, delta=-1)


def recording_mse_loss(targets: list[torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A loss that keeps a copy of every target it is given, so a test can see what the trainer passed it."""

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        targets.append(target.detach().clone())
        return torch.nn.functional.mse_loss(pred.softmax(1), target)

    return loss


def test_trainer_loss_receives_soft_one_hot_targets() -> None:
    """Plugged into SupervisedTrainer, the loss sees (batch, classes, ...) targets that sum to 1 per pixel and
    hold non-integer values; with delta 0 they are the plain one-hot labels."""
    data = [{"image": torch.rand(1, 8, 8), "label": torch.randint(0, 3, (1, 8, 8))} for _ in range(8)]
    for delta, expect_soft in ((0.2, True), (0.0, False)):
        targets: list[torch.Tensor] = []
        loss = recording_mse_loss(targets)
        network = torch.nn.Conv2d(1, 3, 1)
        torch.manual_seed(0)
        trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=torch.utils.data.DataLoader(data, batch_size=4),
            network=network,
            optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
            loss_function=loss,
            prepare_batch=MixupPrepareBatch(num_classes=3, delta=delta),
        )
        trainer.run()
        stacked = torch.cat(targets)
        assert stacked.shape == (8, 3, 8, 8)
        assert torch.allclose(stacked.sum(dim=1), torch.ones(8, 8, 8))
        fractional = ((stacked > 1e-6) & (stacked < 1 - 1e-6)).any().item()
        assert fractional == expect_soft
        if not expect_soft:
            labels = torch.cat([d["label"] for d in data]).numpy()
            np.testing.assert_array_equal(stacked.argmax(1).numpy(), labels)
