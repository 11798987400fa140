"""The shared opacity augmentations (cxrseg/augment.py): Strauss point process, diffuse-noise field, block masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrseg.augment import HALVES, RandBlockMaskd, RandStraussNoised, draw_disks, sample_strauss, strauss_field

SHAPE = (80, 64)


def close_pairs(points: np.ndarray, radius: float) -> int:
    distance = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1))
    return int(np.count_nonzero(np.triu(distance < radius, k=1)))


def realisations(gamma: float, runs: int = 300, radius: float = 10.0) -> list[np.ndarray]:
    rng = np.random.RandomState(0)
    return [
        sample_strauss(rng, SHAPE, mean_count=12, gamma=gamma, interaction_radius=radius, steps=200)
        for _ in range(runs)
    ]


def test_strauss_without_interaction_is_poisson_with_the_mean_count() -> None:
    counts = [len(points) for points in realisations(gamma=1.0)]
    assert np.mean(counts) == pytest.approx(12, rel=0.1)
    # Poisson: variance equals the mean
    assert np.var(counts) == pytest.approx(12, rel=0.3)


def test_strauss_points_lie_inside_the_window() -> None:
    points = np.concatenate(realisations(gamma=0.5, runs=50))
    assert points.min() >= 0 and (points[:, 0] < SHAPE[0]).all() and (points[:, 1] < SHAPE[1]).all()


def test_hard_core_strauss_never_has_close_pairs() -> None:
    assert all(close_pairs(points, 10.0) == 0 for points in realisations(gamma=0.0, runs=100))


def test_inhibition_reduces_close_pairs_and_count() -> None:
    free, inhibited = realisations(gamma=1.0), realisations(gamma=0.2)
    assert np.mean([close_pairs(p, 10.0) for p in inhibited]) < 0.5 * np.mean([close_pairs(p, 10.0) for p in free])
    assert np.mean([len(p) for p in inhibited]) < np.mean([len(p) for p in free])


@pytest.mark.parametrize("kwargs", [{"gamma": 1.5}, {"gamma": -0.1}, {"mean_count": 0}, {"steps": -1}])
def test_strauss_rejects_invalid_parameters(kwargs: dict) -> None:
    arguments = {"mean_count": 12, "gamma": 0.5, "interaction_radius": 5.0, "steps": 10} | kwargs
    with pytest.raises(ValueError):
        sample_strauss(np.random.RandomState(0), SHAPE, **arguments)


def test_draw_disks_matches_the_lattice_count_and_unites_overlaps() -> None:
    one = draw_disks((20, 20), np.array([[10.0, 10.0]]), np.array([3.0]))
    # lattice points with dx^2 + dy^2 <= 9: 1 + 4*3 (axes) + 4*4 (off-axis with |dx|,|dy| in 1..2) = 29
    assert one.sum() == 29
    twice = draw_disks((20, 20), np.array([[10.0, 10.0], [10.0, 10.0]]), np.array([3.0, 3.0]))
    np.testing.assert_array_equal(twice, one)
    assert draw_disks((20, 20), np.zeros((0, 2)), np.zeros(0)).sum() == 0


def test_strauss_field_is_smooth_normalised_and_reproducible() -> None:
    field = strauss_field(np.random.RandomState(3), (640, 512))
    assert field.shape == (640, 512) and field.dtype == torch.float32
    assert float(field.min()) >= 0 and float(field.max()) == pytest.approx(1.0, abs=0.01)
    # smooth: neighbouring pixels of the upsampled field differ little
    assert float(field.diff(dim=0).abs().max()) < 0.1
    torch.testing.assert_close(field, strauss_field(np.random.RandomState(3), (640, 512)))
    assert not torch.equal(field, strauss_field(np.random.RandomState(4), (640, 512)))


def image() -> torch.Tensor:
    return torch.linspace(0, 1, 64 * 48).reshape(1, 64, 48)


def test_strauss_noise_brightens_and_saturates_at_the_image_maximum() -> None:
    transform = RandStraussNoised(keys="image", prob=1.0)
    transform.set_random_state(seed=1)
    original = image()
    noisy = transform({"image": original})["image"]
    assert (noisy >= original - 1e-6).all() and float(noisy.max()) <= float(original.max()) + 1e-6
    assert float((noisy - original).sum()) > 1.0


def test_strauss_noise_is_seeded_and_respects_its_probability() -> None:
    first, second = (RandStraussNoised(keys="image", prob=1.0) for _ in range(2))
    first.set_random_state(seed=5)
    second.set_random_state(seed=5)
    torch.testing.assert_close(first({"image": image()})["image"], second({"image": image()})["image"])
    untouched = RandStraussNoised(keys="image", prob=0.0)({"image": image()})["image"]
    torch.testing.assert_close(untouched, image())


def test_block_mask_fills_exactly_one_half_with_a_bright_value() -> None:
    transform = RandBlockMaskd(keys="image", prob=1.0, fill_quantile=0.95)
    seen = set()
    for seed in range(20):
        transform.set_random_state(seed=seed)
        original = image()
        masked = transform({"image": original})["image"]
        rows, cols = RandBlockMaskd.half_slices(transform._half, 64, 48)
        hidden = torch.zeros(1, 64, 48, dtype=torch.bool)
        hidden[..., rows, cols] = True
        assert torch.allclose(masked[hidden], torch.quantile(original.flatten(), 0.95))
        torch.testing.assert_close(masked[~hidden], original[~hidden])
        assert int(hidden.sum()) == 64 * 48 // 2
        seen.add(transform._half)
    assert seen == set(HALVES)


def test_block_mask_with_probability_zero_leaves_the_image() -> None:
    torch.testing.assert_close(RandBlockMaskd(keys="image", prob=0.0)({"image": image()})["image"], image())
    with pytest.raises(ValueError):
        RandBlockMaskd(keys="image", fill_quantile=1.5)
