"""Datalists for prepared datasets: which cases exist, and how they split into training, validation and test.

A prepared dataset is ``images/<case>.png`` plus ``masks/<structure>/<case>.png`` (README, "Prepared dataset
layout"). Its ``datalist.json`` fixes the split; where a folder has none (a read-only shared copy, say), the
same deterministic split is derived from the layout, so every bundle and benchmark sees the same cases.
Splits are made over patients, never over images, so no patient is in two splits.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .io import SUPPORTED_SUFFIXES
from .sources import LUNG_CONVENTION_KEY, SPLIT_BY_SOURCE, convention_of

SPLITS = ("training", "validation", "test")
ALL_CASES = "all"
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
DATALIST_NAME = "datalist.json"
# datalist key naming the dataset (hospital) an entry comes from
SOURCE_KEY = "source"
PATIENT_COLUMNS = ("patientid", "patient_id", "patient")
# a source kept in its redistributor's split: its "train" cases train (a seeded share of them validates, for
# checkpoint selection) and its "val" / "test" cases are the held-out test split, never used to pick weights
SOURCE_SPLIT_COLUMN = "source_split"
SOURCE_SPLIT_TRAINING = "train"
SOURCE_SPLIT_VALIDATION_SHARE = 0.05
# metadata column "<structure>_annotated" = "no": the case's mask of that structure, if any, is not a label
ANNOTATED_SUFFIX = "_annotated"


def discover_cases(dataset_dir: str | Path) -> list[dict]:
    """List the cases of a prepared dataset as datalist entries with paths relative to ``dataset_dir``."""
    root = Path(dataset_dir)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{root}: not a prepared dataset (no images/ folder)")
    structure_dirs = sorted(p for p in (root / "masks").glob("*") if p.is_dir())
    entries = []
    for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES):
        labels = {}
        for structure_dir in structure_dirs:
            mask = structure_dir / f"{image.stem}.png"
            if mask.is_file():
                labels[structure_dir.name] = str(mask.relative_to(root))
        entries.append({"case": image.stem, "image": str(image.relative_to(root)), "label": labels})
    if not entries:
        raise FileNotFoundError(f"{image_dir}: no images")
    return entries


def patients_from_metadata(dataset_dir: str | Path) -> dict[str, str]:
    """Map case id to patient id from ``metadata.csv`` when it has a patient column; else an empty map."""
    rows = list(metadata_rows(dataset_dir).values())
    column = next((c for c in PATIENT_COLUMNS if rows and c in rows[0]), None)
    if column is None:
        return {}
    return {row["case"]: row[column] for row in rows if row.get(column)}


def _shuffled_patients(cases: Sequence[dict], patient_of: Mapping[str, str], seed: int) -> list[str]:
    patients = sorted({patient_of.get(c["case"], c["case"]) for c in cases})
    order = np.random.default_rng(seed).permutation(len(patients))
    return [patients[i] for i in order]


def split_cases(
    cases: Sequence[dict],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    patient_of: Mapping[str, str] | None = None,
) -> dict[str, list[dict]]:
    """Split cases into training/validation/test by patient, with the given fractions of patients."""
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    patient_of = patient_of or {}
    patients = _shuffled_patients(cases, patient_of, seed)
    bounds = np.round(np.cumsum(fractions) * len(patients)).astype(int)
    split_of_patient = {p: SPLITS[int(np.searchsorted(bounds, i, side="right"))] for i, p in enumerate(patients)}
    result: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for case in cases:
        result[split_of_patient[patient_of.get(case["case"], case["case"])]].append(case)
    return result


def fold_cases(
    cases: Sequence[dict], num_folds: int, fold: int, seed: int = 0, patient_of: Mapping[str, str] | None = None
) -> dict[str, list[dict]]:
    """Cross-validation by patient: fold ``fold`` of ``num_folds`` is the validation set, the rest is training."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
    patient_of = patient_of or {}
    patients = _shuffled_patients(cases, patient_of, seed)
    held_out = set(patients[fold::num_folds])
    result: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for case in cases:
        held = patient_of.get(case["case"], case["case"]) in held_out
        result["validation" if held else "training"].append(case)
    return result


def source_split_cases(
    cases: Sequence[dict],
    rows: Mapping[str, Mapping[str, str]],
    seed: int = 0,
    validation_share: float = SOURCE_SPLIT_VALIDATION_SHARE,
) -> dict[str, list[dict]]:
    """Split by the redistributor's ``source_split`` column, for a source without patient ids.

    Its held-out part becomes ``test``; ``validation`` is a seeded share of its training part, which may hold
    other images of a training patient, so it only selects checkpoints and is never reported as held out.
    """
    missing = [c["case"] for c in cases if not rows.get(c["case"], {}).get(SOURCE_SPLIT_COLUMN, "").strip()]
    if missing:
        raise ValueError(f"{len(missing)} cases have no {SOURCE_SPLIT_COLUMN} in metadata.csv, e.g. {missing[0]}")
    training = [c for c in cases if rows[c["case"]][SOURCE_SPLIT_COLUMN].strip() == SOURCE_SPLIT_TRAINING]
    held_out = [c for c in cases if rows[c["case"]][SOURCE_SPLIT_COLUMN].strip() != SOURCE_SPLIT_TRAINING]
    order = np.random.default_rng(seed).permutation(len(training))
    validating = {int(i) for i in order[: round(validation_share * len(training))]}
    return {
        "training": [c for i, c in enumerate(training) if i not in validating],
        "validation": [c for i, c in enumerate(training) if i in validating],
        "test": held_out,
    }


def without_unannotated(entry: dict, row: Mapping[str, str]) -> dict:
    """The entry without the labels its metadata row marks as not annotated (``<structure>_annotated = no``).

    A mask file may exist for such a case, empty, because its finding was never drawn: training must not read
    that as "no finding" (e.g. pneumonia whose opacity nobody outlined).
    """
    dropped = {
        column.removesuffix(ANNOTATED_SUFFIX)
        for column, value in row.items()
        if column.endswith(ANNOTATED_SUFFIX) and str(value).strip().lower() == "no"
    }
    if not dropped & set(entry.get("label", {})):
        return entry
    return entry | {"label": {name: path for name, path in entry["label"].items() if name not in dropped}}


def write_datalist(
    dataset_dir: str | Path,
    out_file: str | Path | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    patient_of: Mapping[str, str] | None = None,
) -> Path:
    """Write the datalist of a prepared dataset (default ``<dataset_dir>/datalist.json``) and return its path.

    Paths in the file are relative to ``dataset_dir`` so the folder can move. Patient ids come from
    ``patient_of`` or, by default, from ``metadata.csv``.
    """
    root = Path(dataset_dir)
    patient_of = patients_from_metadata(root) if patient_of is None else patient_of
    splits = split_cases(discover_cases(root), fractions, seed, patient_of)
    out = Path(out_file) if out_file is not None else root / DATALIST_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(splits, indent=1) + "\n", encoding="utf-8")
    return out


def absolute_entry(entry: dict, root: str | Path) -> dict:
    """A datalist entry with its paths relative to the dataset folder ``root`` made absolute."""
    root = Path(root)
    absolute = dict(entry)
    absolute["image"] = str(root / entry["image"])
    absolute["label"] = {name: str(root / path) for name, path in entry.get("label", {}).items()}
    return absolute


def _subset(entries: list[dict], limit: int | None, seed: int) -> list[dict]:
    """The first ``limit`` entries of a seeded permutation: nested (10 ⊂ 20 ⊂ all) for a fixed seed."""
    if limit is None or limit >= len(entries):
        return entries
    order = np.random.default_rng(seed).permutation(len(entries))[:limit]
    return [entries[i] for i in sorted(order)]


def load_split(
    dataset_dir: str | Path | Sequence[str | Path],
    split: str,
    limit: int | None = None,
    datalist: str | Path | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    num_folds: int | None = None,
    fold: int = 0,
    exclude: Mapping[str, Sequence[str]] | None = None,
    draw_seed: int = 0,
) -> list[dict]:
    """Entries of one split with absolute paths, for ``train#dataset#data`` and friends.

    ``dataset_dir`` is one prepared dataset or a list of them (several hospitals trained as one). Each source
    is split on its own, by patient, and every entry is tagged with ``source`` (the folder's name), so that
    validation can report each hospital separately. The split comes from ``datalist`` (or
    ``<dataset_dir>/datalist.json``) when present, otherwise it is derived from the layout with ``fractions``
    and ``seed`` (or, with ``num_folds``, cross-validation fold ``fold``); ``split="all"`` takes every case of
    the source, e.g. to score a hospital that training never saw. ``limit`` keeps a deterministic subset of
    the pooled entries, e.g. for few-shot training; ``draw_seed`` picks which (another draw of the same
    training split: ``seed`` moves patients between the splits, so figures held out under one seed are trained
    on under another). ``exclude`` drops cases by their ``metadata.csv`` row, e.g.
    ``{"tb": ["1"]}`` keeps the normal radiographs of a tuberculosis dataset; it is applied after splitting, so
    the patients' folds do not depend on it, and a source without that column loses no case.
    """
    if split not in SPLITS + (ALL_CASES,):
        raise ValueError(f"split must be one of {SPLITS + (ALL_CASES,)}, got {split!r}")
    sources = [dataset_dir] if isinstance(dataset_dir, (str, Path)) else list(dataset_dir)
    if not sources:
        raise ValueError("dataset_dir is an empty list: name at least one prepared dataset")
    if datalist is not None and len(sources) > 1:
        raise ValueError("datalist names one file, so it needs one dataset_dir, got several")
    entries = []
    for source in sources:
        kept = _source_split(Path(source), split, datalist, fractions, seed, num_folds, fold)
        if exclude:
            rows = metadata_rows(source)
            kept = [entry for entry in kept if not _excluded(entry, rows, exclude)]
        entries += kept
    return _subset(entries, limit, draw_seed)


def metadata_rows(dataset_dir: str | Path) -> dict[str, dict[str, str]]:
    """``metadata.csv`` of a prepared dataset as ``{case: row}``; empty when the dataset has none."""
    metadata = Path(dataset_dir) / "metadata.csv"
    if not metadata.is_file():
        return {}
    with open(metadata, newline="", encoding="utf-8") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def _excluded(entry: dict, rows: Mapping[str, Mapping[str, str]], exclude: Mapping[str, Sequence[str]]) -> bool:
    row = rows.get(entry["case"], {})
    return any(row.get(column, "").strip() in {str(v) for v in values} for column, values in exclude.items())


def mixture_weights(first: Sequence[dict], second: Sequence[dict], second_share: float) -> list[float]:
    """Sampling weights for ``first + second`` so that a draw comes from ``second`` with probability
    ``second_share`` however many entries each list holds (e.g. a third of the batches' cases from 540 clear
    lungs, two thirds from 47 cases with opacity); for ``torch.utils.data.WeightedRandomSampler``."""
    if not 0.0 <= second_share < 1.0:
        raise ValueError(f"second_share must be in [0, 1), got {second_share}")
    if not first:
        raise ValueError("mixture_weights needs at least one entry in the first list")
    if not second:
        return [1.0 / len(first)] * len(first)
    return [(1.0 - second_share) / len(first)] * len(first) + [second_share / len(second)] * len(second)


def _source_split(
    root: Path,
    split: str,
    datalist: str | Path | None,
    fractions: Sequence[float],
    seed: int,
    num_folds: int | None,
    fold: int,
) -> list[dict]:
    """One source's entries of ``split``, absolute and tagged with the source's name."""
    datalist_file = Path(datalist) if datalist is not None else root / DATALIST_NAME
    name = source_name(root)
    convention = convention_of(name)
    rows = metadata_rows(root)
    if split == ALL_CASES:
        cases = discover_cases(root)
    else:
        if num_folds is None and datalist_file.is_file():
            splits = json.loads(datalist_file.read_text(encoding="utf-8"))
        elif num_folds is not None:
            splits = fold_cases(discover_cases(root), num_folds, fold, seed, patients_from_metadata(root))
        elif convention.split == SPLIT_BY_SOURCE:
            splits = source_split_cases(discover_cases(root), rows, seed)
        else:
            splits = split_cases(discover_cases(root), fractions, seed, patients_from_metadata(root))
        cases = splits.get(split, [])
    tags = {SOURCE_KEY: name, LUNG_CONVENTION_KEY: convention.lungs}
    return [absolute_entry(without_unannotated(entry, rows.get(entry["case"], {})), root) | tags for entry in cases]


def source_name(dataset_dir: str | Path) -> str:
    """The name a dataset is reported under: its folder's name (``.../shared/data/montgomery`` -> montgomery)."""
    return Path(dataset_dir).resolve().name
