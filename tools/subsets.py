"""Subsets of a prepared dataset for listing in a training mix more often than the rest of it."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from benchmarks.abdomen import abdomen_in_view
from cxrseg.data import metadata_rows

TRAINING_SPLITS = ("training", "validation")


def abdomen_subset(out: str, source: str = "../shared/data/covid_qu_ex", floor: float = 0.7) -> None:
    """Write ``out/<source's folder name>``: links to ``source``'s training radiographs (its training and validation
    splits, never its test split) whose reference lungs end above ``floor`` of the height, i.e. that show the
    upper abdomen, with their masks and ``metadata.csv`` rows. Keeping the source's name keeps its split rule and
    lung convention. Listed in ``dataset_dir`` beside the source, it raises their share of the draws (res_cr_net
    0.9: the lung field stops at the diaphragm). A subset written there before is replaced, never added to."""
    source_dir = Path(source)
    subset_dir = Path(out) / source_dir.name
    _replaceable_subset_dir(subset_dir, source_dir)
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


def _replaceable_subset_dir(subset_dir: Path, source_dir: Path) -> None:
    """Clear an earlier subset at ``subset_dir`` so that no case of another ``floor`` stays linked; refuse a folder
    that is, holds or lies in the source, or that holds anything this command does not write (its links, folders
    and ``metadata.csv``), rather than delete it."""
    if not subset_dir.exists() and not subset_dir.is_symlink():
        return
    target, original = subset_dir.resolve(), source_dir.resolve()
    if subset_dir.is_symlink() or target == original or original in target.parents or target in original.parents:
        raise ValueError(f"{subset_dir}: refusing to write a subset of {source_dir} there (the source or a link)")
    foreign = [
        path
        for path in subset_dir.rglob("*")
        if not (path.is_symlink() or path.is_dir() or path == subset_dir / "metadata.csv")
    ]
    if foreign:
        raise ValueError(f"{subset_dir}: not a subset this command wrote (holds {foreign[0]}); choose another OUT")
    shutil.rmtree(subset_dir)


def _link(original: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(original.resolve())
