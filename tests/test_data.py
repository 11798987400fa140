"""Datalists: discovery from the prepared layout, patient-level splits, folds and nested subsets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrseg.data import SOURCE_KEY, discover_cases, load_split, mixture_weights, split_cases, write_datalist


def make_dataset(root: Path, cases: int = 20, patients: int | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks" / "lungs").mkdir(parents=True)
    rows = []
    for i in range(cases):
        case = f"case{i:03d}"
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "images" / f"{case}.png")
        if i % 4:
            Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / "lungs" / f"{case}.png")
        rows.append({"case": case, "patientid": f"p{i % patients}" if patients else case})
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "patientid"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_discover_lists_masks_that_exist(tmp_path: Path) -> None:
    cases = discover_cases(make_dataset(tmp_path / "d"))
    assert len(cases) == 20
    assert cases[0]["label"] == {} and cases[1]["label"] == {"lungs": "masks/lungs/case001.png"}


def test_split_keeps_patients_together(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", cases=40, patients=9)
    patient = {f"case{i:03d}": f"p{i % 9}" for i in range(40)}
    splits = {s: load_split(root, s) for s in ("training", "validation", "test")}
    seen = [{patient[e["case"]] for e in entries} for entries in splits.values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sum(len(v) for v in splits.values()) == 40


def test_split_fractions_and_determinism() -> None:
    cases = [{"case": f"c{i}"} for i in range(100)]
    first, again = split_cases(cases, seed=3), split_cases(cases, seed=3)
    assert [len(first[s]) for s in ("training", "validation", "test")] == [70, 15, 15]
    assert first == again and first != split_cases(cases, seed=4)
    with pytest.raises(ValueError, match="fractions"):
        split_cases(cases, fractions=(0.5, 0.2, 0.2))


def test_folds_partition_the_patients(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", cases=30, patients=12)
    held_out = [{e["case"] for e in load_split(root, "validation", num_folds=3, fold=f)} for f in range(3)]
    assert set().union(*held_out) == {f"case{i:03d}" for i in range(30)}
    assert sum(len(h) for h in held_out) == 30


def test_written_datalist_is_used_and_relative(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d")
    datalist = json.loads(write_datalist(root).read_text())
    assert not Path(datalist["training"][0]["image"]).is_absolute()
    entry = load_split(root, "training")[0]
    assert Path(entry["image"]).is_file()


def test_limit_gives_nested_subsets(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", cases=60)
    small, larger = load_split(root, "training", limit=5), load_split(root, "training", limit=10)
    assert len(small) == 5 and {e["case"] for e in small} <= {e["case"] for e in larger}


def test_another_draw_comes_from_the_same_training_split(tmp_path: Path) -> None:
    """A second draw of ``limit`` cases (``draw_seed``) is other cases of the same training split: drawing again
    must not move test patients into training, as changing the split's ``seed`` does."""
    root = make_dataset(tmp_path / "d", cases=60)
    training = {e["case"] for e in load_split(root, "training")}
    first, second = ({e["case"] for e in load_split(root, "training", limit=12, draw_seed=k)} for k in (0, 1))
    assert first != second and first | second <= training
    assert {e["case"] for e in load_split(root, "training", seed=1)} - training, "the split's seed moves patients"


@pytest.mark.realdata
def test_jsrt_split_covers_all_cases(jsrt_dir: Path) -> None:
    cases = [e["case"] for s in ("training", "validation", "test") for e in load_split(jsrt_dir, s)]
    assert len(cases) == len(set(cases)) == 200
    assert set(load_split(jsrt_dir, "validation")[0]["label"]) >= {"left_lung", "right_lung", "heart"}


def test_several_sources_are_split_each_by_patient_and_tagged(tmp_path: Path) -> None:
    """Two hospitals as one training set: each is split on its own (the same cases as alone), every entry
    names its source, and "all" takes a whole hospital (the leave-one-source-out test set)."""
    first = make_dataset(tmp_path / "first", cases=20, patients=10)
    second = make_dataset(tmp_path / "second", cases=12)
    for split in ("training", "validation", "test"):
        pooled = load_split([first, second], split)
        alone = load_split(first, split) + load_split(second, split)
        assert [e["image"] for e in pooled] == [e["image"] for e in alone]
        assert {e[SOURCE_KEY] for e in pooled} <= {"first", "second"}
        assert all(e[SOURCE_KEY] == Path(e["image"]).parents[1].name for e in pooled)
    assert len(load_split([second], "all")) == 12
    with pytest.raises(ValueError, match="empty list"):
        load_split([], "training")
    with pytest.raises(ValueError, match="split must be one of"):
        load_split(first, "train")


def test_a_source_listed_twice_is_drawn_twice_as_often(tmp_path: Path) -> None:
    """Repeating a source in ``dataset_dir`` is how a training oversamples it (lung_vae 0.4: covid_opacity four
    times): its split is the same each time, so the repeat adds draws, never other cases."""
    first = make_dataset(tmp_path / "first", cases=20, patients=10)
    second = make_dataset(tmp_path / "second", cases=12)
    once = load_split([first, second], "training")
    twice = load_split([first, second, second], "training")
    from_second = [e for e in once if e["source"] == "second"]
    assert from_second and twice == once + from_second


def test_exclude_drops_cases_by_metadata_after_the_split(tmp_path: Path) -> None:
    """Normal radiographs of a tuberculosis dataset: ``exclude={"tb": ["1"]}`` drops the TB cases from each split
    without moving any other case to another split; a source without a ``tb`` column loses nothing."""
    root = make_dataset(tmp_path / "tb", cases=20)
    with open(root / "metadata.csv", "w", newline="") as handle:
        handle.write("case,patientid,tb\n" + "".join(f"case{i:03d},case{i:03d},{i % 2}\n" for i in range(20)))
    no_column = make_dataset(tmp_path / "plain", cases=8)
    for split in ("training", "validation", "test", "all"):
        kept = load_split([root, no_column], split, exclude={"tb": ["1"]})
        everything = load_split([root, no_column], split)
        assert [e for e in everything if not (e[SOURCE_KEY] == "tb" and int(e["case"][-3:]) % 2)] == kept
    assert len(load_split(root, "all", exclude={"tb": [1]})) == 10


def test_mixture_weights_give_each_list_its_share() -> None:
    """Three opacity cases and six clear lungs with a clear share of 1/3: each list's weights sum to its share,
    equal within a list; without clear lungs every draw is an opacity case."""
    weights = mixture_weights([{}] * 3, [{}] * 6, second_share=1 / 3)
    assert weights[:3] == [pytest.approx(2 / 9)] * 3 and weights[3:] == [pytest.approx(1 / 18)] * 6
    assert mixture_weights([{}] * 4, [], 0.5) == [0.25] * 4
    with pytest.raises(ValueError, match="second_share"):
        mixture_weights([{}], [{}], 1.0)


def make_source_split_dataset(root: Path, splits: list[str], annotated: list[str]) -> Path:
    """A dataset named like covid_qu_ex: no patient ids, a redistributor's split and an ``opacity_annotated``
    column, with an (empty) opacity mask for every case, as a careless export would write."""
    make_dataset(root, cases=len(splits))
    (root / "masks" / "opacity").mkdir()
    for i in range(len(splits)):
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / "opacity" / f"case{i:03d}.png")
    with open(root / "metadata.csv", "w", newline="") as handle:
        handle.write("case,source_split,opacity_annotated\n")
        handle.writelines(f"case{i:03d},{s},{a}\n" for i, (s, a) in enumerate(zip(splits, annotated, strict=True)))
    return root


def test_a_source_without_patient_ids_keeps_its_redistributors_split(tmp_path: Path) -> None:
    """covid_qu_ex: its "val" cases are the held-out test split (never used to pick weights), 5 % of its "train"
    cases validate and the rest train; every case lands in exactly one split."""
    splits = ["train"] * 40 + ["val"] * 10
    root = make_source_split_dataset(tmp_path / "covid_qu_ex", splits, ["yes"] * 50)
    cases = {s: [e["case"] for e in load_split(root, s)] for s in ("training", "validation", "test")}
    assert cases["test"] == [f"case{i:03d}" for i in range(40, 50)]
    assert len(cases["validation"]) == 2 and len(cases["training"]) == 38
    assert not set(cases["validation"]) & set(cases["training"])
    assert load_split(root, "training")[0]["lung_convention"] == "retrocardiac_excluded"


def test_a_missing_source_split_is_an_error_naming_the_case(tmp_path: Path) -> None:
    root = make_source_split_dataset(tmp_path / "covid_qu_ex", ["train", " "], ["yes", "yes"])
    with pytest.raises(ValueError, match="case001"):
        load_split(root, "training")


def test_findings_nobody_drew_are_not_labels(tmp_path: Path) -> None:
    """Pneumonia whose opacity was never outlined (``opacity_annotated = no``) trains lungs only: its empty opacity
    mask must not teach "clear lungs", while an annotated case keeps both labels."""
    root = make_source_split_dataset(tmp_path / "covid_qu_ex", ["train"] * 4, ["yes", "no", "yes", "no"])
    labels = {e["case"]: set(e["label"]) for e in load_split(root, "all")}
    # make_dataset draws lungs for every case but each fourth
    assert labels == {
        "case000": {"opacity"},
        "case001": {"lungs"},
        "case002": {"lungs", "opacity"},
        "case003": {"lungs"},
    }
