"""``python -m tools abdomen_subset``: the training radiographs that show the abdomen, as a dataset of links."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrseg.data import load_split
from tools.subsets import abdomen_subset

SIZE = 40


def _dataset_with_lungs_ending_at(root: Path, lowest_rows: list[int]) -> Path:
    """One case per entry of ``lowest_rows``: lungs from row 4 down to that row."""
    for folder in ("images", "masks/lungs"):
        (root / folder).mkdir(parents=True)
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "note"])
        writer.writeheader()
        for i, lowest in enumerate(lowest_rows):
            case = f"case{i:02d}"
            lungs = np.zeros((SIZE, SIZE), np.uint8)
            lungs[4:lowest, 8:32] = 255
            Image.fromarray(lungs).save(root / "masks" / "lungs" / f"{case}.png")
            Image.fromarray(np.full((SIZE, SIZE), i, np.uint8)).save(root / "images" / f"{case}.png")
            writer.writerow({"case": case, "note": f"row {lowest}"})
    return root


def test_only_training_radiographs_that_show_the_abdomen_are_linked(tmp_path: Path) -> None:
    source = _dataset_with_lungs_ending_at(tmp_path / "hospital", [20, 38] * 15)
    training = load_split(source, "training") + load_split(source, "validation")
    expected = {entry["case"] for entry in training if entry["case"][-2:] in {f"{i:02d}" for i in range(0, 30, 2)}}

    abdomen_subset(out=str(tmp_path / "subsets"), source=str(source), floor=0.7)

    subset = tmp_path / "subsets" / "hospital"
    linked = {path.stem for path in (subset / "images").iterdir()}
    assert linked == expected and expected
    assert not linked & {entry["case"] for entry in load_split(source, "test")}
    assert all(
        (subset / "masks" / "lungs" / f"{case}.png").resolve().parent == (source / "masks" / "lungs").resolve()
        for case in linked
    )
    with open(subset / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["case"] for row in rows} == linked and all(row["note"] == "row 20" for row in rows)


def test_a_second_run_leaves_no_case_of_the_first(tmp_path: Path) -> None:
    source = _dataset_with_lungs_ending_at(tmp_path / "hospital", [20, 30, 38] * 10)
    subset = tmp_path / "subsets" / "hospital"

    abdomen_subset(out=str(tmp_path / "subsets"), source=str(source), floor=0.8)
    first = {path.stem for path in (subset / "images").iterdir()}
    abdomen_subset(out=str(tmp_path / "subsets"), source=str(source), floor=0.6)
    second = {path.stem for path in (subset / "images").iterdir()}

    assert second and second < first
    with open(subset / "metadata.csv", newline="", encoding="utf-8") as handle:
        assert {row["case"] for row in csv.DictReader(handle)} == second


def test_the_source_and_foreign_folders_are_refused_untouched(tmp_path: Path) -> None:
    source = _dataset_with_lungs_ending_at(tmp_path / "hospital", [20, 38] * 5)
    before = sorted(path for path in source.rglob("*"))
    foreign = tmp_path / "elsewhere" / "hospital"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")

    with pytest.raises(ValueError, match="the source"):
        abdomen_subset(out=str(tmp_path), source=str(source))
    with pytest.raises(ValueError, match="notes.txt"):
        abdomen_subset(out=str(tmp_path / "elsewhere"), source=str(source))

    assert sorted(path for path in source.rglob("*")) == before and not any(p.is_symlink() for p in before)
    assert (foreign / "notes.txt").read_text() == "mine"
