"""The second look at the lungs (cxrseg/inferers.py): which box is cropped, what the network sees in each pass, and
what the output keeps of each."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, shared_dataset
from monai.transforms import Compose, HistogramNormalized

from benchmarks.compare_inference import evaluate
from benchmarks.robustness import ALL_CASES, write_shifted_dataset
from cxrseg.inferers import LungCropInferer, lung_box, lung_crop_grid, widened_to_aspect

SIZE = (16, 16)


def softmax_scores(lung: torch.Tensor) -> torch.Tensor:
    """Two-class scores ``(2, H, W)`` whose argmax is ``lung``."""
    return torch.stack((1.0 - lung.float(), lung.float()))


def test_box_covers_the_two_largest_lungs_widened_by_the_margin() -> None:
    lung = torch.zeros(40, 40, dtype=torch.bool)
    lung[10:30, 5:15] = True  # right lung, 20 x 10
    lung[10:30, 20:30] = True  # left lung
    lung[35:37, 35:37] = True  # a spill below the diaphragm: not the two largest
    rows, cols = lung_box(softmax_scores(lung), "softmax", [1], margin=0.1)
    assert (rows.start, rows.stop) == (8, 32)  # 20 rows, 2 each side
    assert (cols.start, cols.stop) == (3, 32)  # 25 columns, 2 each side (2.5 rounded to even)


def test_box_stays_inside_the_image_and_reads_sigmoid_logits() -> None:
    logits = torch.full((1, 20, 20), -3.0)
    logits[0, 0:15, 2:18] = 3.0
    rows, cols = lung_box(logits, "sigmoid", [1], margin=0.5)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 20, 0, 20)


def test_no_lung_gives_no_box() -> None:
    assert lung_box(softmax_scores(torch.zeros(8, 8, dtype=torch.bool)), "softmax", [1], 0.1) is None


class BrightIsLung(torch.nn.Module):
    """Lung where the input is above 0.5; records every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        lung = images[:, :1] - 0.5
        return torch.cat((-lung, lung), dim=1)


def wide_frame() -> torch.Tensor:
    """A ``(1, 1, 64, 64)`` image, dark, with bright "lungs" in rows 16-39 and columns 20-43."""
    image = torch.zeros(1, 1, 64, 64)
    image[:, :, 16:40, 20:44] = 0.9
    return image


def test_second_pass_sees_the_lung_box_at_the_network_size() -> None:
    network = BrightIsLung()
    output = LungCropInferer(SIZE, margin=0.25)(wide_frame(), network)
    assert output.shape == (1, 2, 64, 64)
    assert [tuple(seen.shape) for seen in network.seen] == [(1, 1, *SIZE), (1, 1, *SIZE)]
    # the box is rows 10-45 and columns 14-49 of the 64 x 64 grid: the lungs fill 24/36 of the second input
    second = network.seen[1][0, 0]
    assert (second > 0.5).float().mean().item() == pytest.approx((24 / 36) ** 2, abs=0.1)
    assert (network.seen[0][0, 0] > 0.5).float().mean().item() == pytest.approx((24 / 64) ** 2, abs=0.05)


def test_outside_the_box_the_first_answer_stays() -> None:
    image = wide_frame()
    crop = LungCropInferer(SIZE, margin=0.25)
    whole = crop.answer(image, BrightIsLung())
    output = crop(image, BrightIsLung())
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[10:46, 14:50] = False
    assert torch.equal(output[0, :, outside], whole[0, :, outside])
    assert not torch.equal(output[0, :, ~outside], whole[0, :, ~outside])


def test_each_pass_is_normalised_on_its_own() -> None:
    network = BrightIsLung()
    normalisation = Compose([HistogramNormalized(keys="image", num_bins=256, min=0.0, max=1.0)])
    LungCropInferer(SIZE, normalisation=normalisation, margin=0.25)(wide_frame() * 0.4, network)
    # a dim image stretched to 0..1 in both passes, so the bright lungs pass the network's 0.5
    assert all(seen.max().item() == pytest.approx(1.0) for seen in network.seen)


@pytest.mark.parametrize("lung_crop", [False, "false"])
def test_switched_off_it_is_one_pass_at_the_network_size(lung_crop: bool | str) -> None:
    network = BrightIsLung()
    image = wide_frame()
    output = LungCropInferer(SIZE, lung_crop=lung_crop)(image, network)
    assert len(network.seen) == 1
    assert torch.equal(output, LungCropInferer(SIZE).answer(image, BrightIsLung()))
    assert lung_crop_grid([128, 144], lung_crop) == [128, 144]
    assert lung_crop_grid([128, 144], True) == [256, 288]


def test_without_a_network_size_the_input_goes_in_as_it_is() -> None:
    network = BrightIsLung()
    image = wide_frame()[:, :, :48]
    output = LungCropInferer(None)(image, network)
    assert len(network.seen) == 1 and torch.equal(network.seen[0], image)
    assert output.shape == (1, 2, 48, 64)


def test_an_image_without_lungs_keeps_the_first_answer() -> None:
    network = BrightIsLung()
    LungCropInferer(SIZE)(torch.zeros(1, 1, 64, 64), network)
    assert len(network.seen) == 1


def test_box_widened_to_the_network_aspect_stays_in_the_image() -> None:
    rows, cols = widened_to_aspect((slice(10, 30), slice(5, 45)), 1.0, (64, 64))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 40, 5, 45)
    rows, cols = widened_to_aspect((slice(20, 40), slice(30, 40)), 1.0, (64, 64))
    assert (rows.stop - rows.start, cols.stop - cols.start) == (20, 20) and (cols.start, cols.stop) == (25, 45)


def per_case_dice(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics_per_case.csv", newline="", encoding="utf-8") as handle:
        return [float(row["lung_dice"]) for row in csv.DictReader(handle)]


@pytest.mark.realdata
@pytest.mark.slow
def test_second_look_recovers_small_lungs_in_a_wide_frame(tmp_path: Path) -> None:
    """res_cr_net's shipped weights on 12 Montgomery radiographs shrunk to 65 % (lungs half the frame's height):
    the second look raised all of them (0.932 -> 0.957 mean; 136 of all 138 up, none down by 0.01)."""
    wide = write_shifted_dataset(shared_dataset("montgomery"), "wide field of view", tmp_path / "wide", limit=12)
    dice = {}
    for name, crop in (("one_pass", False), ("second_look", True)):
        evaluate(REPO_ROOT, "res_cr_net", wide, tmp_path / name, ALL_CASES | {"lung_crop": crop})
        dice[name] = per_case_dice(tmp_path / name)
    one_pass, second_look = dice["one_pass"], dice["second_look"]
    assert sum(second_look) / 12 > sum(one_pass) / 12 + 0.015
    assert all(after > before - 0.01 for before, after in zip(one_pass, second_look, strict=True))
