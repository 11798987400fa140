"""``python -m tools robustness``: fixed hospital shifts that move masks with the anatomy and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.robustness import SHIFTS, robustness, shifted_case, write_shifted_dataset
from cxrseg.data import discover_cases
from cxrseg.io import read_radiograph

GEOMETRIC = ("wide field of view", "tilted, off-centre")
INTENSITY = ("grey", "noise and blur", "marks and borders")


def _dice(first: np.ndarray, second: np.ndarray) -> float:
    return 2 * np.logical_and(first, second).sum() / (first.sum() + second.sum())


def _lung_picture() -> tuple[np.ndarray, np.ndarray]:
    """A 256 x 256 picture whose bright part is exactly its mask: two lung-sized blocks off the centre."""
    mask = np.zeros((256, 256), dtype=np.uint8)
    mask[50:200, 40:110] = 255
    mask[60:190, 150:220] = 255
    image = np.where(mask > 0, 220, 30).astype(np.uint8)
    return image, mask


@pytest.mark.parametrize("shift", GEOMETRIC)
def test_geometric_shifts_move_the_mask_with_the_image(shift: str) -> None:
    image, mask = _lung_picture()

    pixels, moved = shifted_case(shift, image, {"lungs": mask})

    assert _dice(pixels > 125, moved["lungs"] > 0) > 0.97
    assert _dice(moved["lungs"] > 0, mask > 0) < 0.85


def test_wide_field_of_view_shrinks_the_lungs_to_the_stated_share() -> None:
    image, mask = _lung_picture()

    _, moved = shifted_case("wide field of view", image, {"lungs": mask})

    rows = np.flatnonzero((moved["lungs"] > 0).any(axis=1))
    assert (rows[-1] - rows[0] + 1) / 150 == pytest.approx(0.65, abs=0.02)


@pytest.mark.parametrize("shift", INTENSITY)
def test_intensity_shifts_leave_the_mask_alone_and_change_the_image(shift: str) -> None:
    image, mask = _lung_picture()

    pixels, moved = shifted_case(shift, image, {"lungs": mask})

    assert np.array_equal(moved["lungs"], mask)
    assert (pixels != image).mean() > 0.002


def test_grey_squeezes_the_contrast_to_about_a_third() -> None:
    image, mask = _lung_picture()

    pixels, _ = shifted_case("grey", image, {"lungs": mask})

    lung, outside = pixels[mask > 0].mean(), pixels[mask == 0].mean()
    assert 0.2 < (lung - outside) / (220 - 30) < 0.4


def test_as_is_copies_and_every_shift_is_the_same_on_every_run() -> None:
    image, mask = _lung_picture()

    pixels, moved = shifted_case("as is", image, {"lungs": mask})
    assert np.array_equal(pixels, image) and np.array_equal(moved["lungs"], mask)
    for shift in SHIFTS:
        assert np.array_equal(shifted_case(shift, image, {"lungs": mask})[0], shifted_case(shift, image, {})[0])


def test_an_unknown_shift_is_refused_with_the_choices() -> None:
    image, mask = _lung_picture()
    with pytest.raises(ValueError, match="unknown shift 'foggy'.*grey"):
        shifted_case("foggy", image, {"lungs": mask})


def test_a_shifted_copy_is_a_prepared_dataset_with_the_same_cases(phantom_dir: Path, tmp_path: Path) -> None:
    target = write_shifted_dataset(phantom_dir, "tilted, off-centre", tmp_path / "tilted", limit=3)

    original, shifted = discover_cases(phantom_dir)[:3], discover_cases(target)
    assert [entry["case"] for entry in shifted] == [entry["case"] for entry in original]
    assert [sorted(entry["label"]) for entry in shifted] == [sorted(entry["label"]) for entry in original]
    first = shifted[0]
    assert read_radiograph(target / first["image"]).shape == read_radiograph(phantom_dir / first["image"]).shape


def test_robustness_scores_a_bundle_on_a_shifted_copy(
    phantom_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    robustness(out=str(tmp_path), source=str(phantom_dir), bundles=["res_cr_net"], shifts=["as is", "grey"], limit=2)

    scores = json.loads((tmp_path / "robustness.json").read_text(encoding="utf-8"))
    assert set(scores["res_cr_net"]) == {"as is", "grey"}
    assert all(0 <= score["worst"] <= score["mean"] <= 1 for score in scores["res_cr_net"].values())
    assert "| grey | " in capsys.readouterr().out
