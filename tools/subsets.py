"""Subsets of a prepared dataset for listing in a training mix more often than the rest of it."""

from __future__ import annotations

import csv
from pathlib import Path

from benchmarks.abdomen import abdomen_in_view
from cxrseg.data import metadata_rows

TRAINING_SPLITS = ("training", "validation")


def abdomen_subset(out: str, source: str = "../shared/data/covid_qu_ex", floor: float = 0.7) -> None:
    """Write ``out/<source's folder name>``: links to ``source``'s training radiographs (its training and validation
    splits, never its test split) whose reference lungs end above ``floor`` of the height, i.e. that show the
    upper abdomen, with their masks and ``metadata.csv`` rows. Keeping the source's name keeps its split rule and
    lung convention. Listed in ``dataset_dir`` beside the source, it raises their share of the draws (res_cr_net
    0.9: the lung field stops at the diaphragm)."""
    source_dir = Path(source)
    subset_dir = Path(out) / source_dir.name
    cases = abdomen_in_view(source_dir, floor, TRAINING_SPLITS)
    for entry in cases:
        for original in [entry["image"], *entry["label"].values()]:
            _link(Path(original), subset_dir / Path(original).relative_to(source_dir))
    rows = metadata_rows(source_dir)
    chosen = {entry["case"] for entry in cases}
    kept = [row for case, row in rows.items() if case in chosen]
    if kept:
        with open(subset_dir / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(kept[0]))
            writer.writeheader()
            writer.writerows(kept)
    print(f"{len(cases)} training radiographs of {source_dir.name} with the abdomen in view linked in {subset_dir}")


def _link(original: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(original.resolve())
