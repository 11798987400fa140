"""The same seed gives the same phantoms, the same splits and, on a CPU, the same trained weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLES_DIR, bundle_names

from benchmarks.bundle_runs import monai_run

SMALLEST_BUNDLE = "res_cr_net"
RUN_TIMEOUT_S = 900


def folder_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file below ``root``, by relative path."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_gives_identical_phantom_datasets(tmp_path: Path) -> None:
    from cxrseg.phantoms import generate_dataset

    first = folder_digest(generate_dataset(tmp_path / "a", count=4, size=64, seed=11))
    second = folder_digest(generate_dataset(tmp_path / "b", count=4, size=64, seed=11))
    other = folder_digest(generate_dataset(tmp_path / "c", count=4, size=64, seed=12))
    assert first == second
    assert len(first) > 4
    images = [name for name in first if name.startswith("images/")]
    assert all(first[name] != other[name] for name in images)


def test_same_seed_gives_identical_phantom_arrays() -> None:
    from cxrseg.phantoms import generate_phantom

    image_a, masks_a, _ = generate_phantom(np.random.default_rng(5), 64, opacity=True)
    image_b, masks_b, _ = generate_phantom(np.random.default_rng(5), 64, opacity=True)
    assert np.array_equal(image_a, image_b)
    assert masks_a.keys() == masks_b.keys() and all(np.array_equal(masks_a[k], masks_b[k]) for k in masks_a)


def test_derived_split_is_reproducible_and_seed_dependent(phantom_dir: Path, tmp_path: Path) -> None:
    from cxrseg.data import load_split, write_datalist

    derived = {split: load_split(phantom_dir, split, datalist=tmp_path / "none.json") for split in ("training", "test")}
    again = {split: load_split(phantom_dir, split, datalist=tmp_path / "none.json") for split in ("training", "test")}
    assert derived == again
    first = write_datalist(phantom_dir, tmp_path / "one.json", seed=4).read_bytes()
    assert first == write_datalist(phantom_dir, tmp_path / "two.json", seed=4).read_bytes()
    assert first != write_datalist(phantom_dir, tmp_path / "three.json", seed=5).read_bytes()
    assert load_split(phantom_dir, "training", limit=3) == load_split(phantom_dir, "training", limit=3)


@pytest.mark.realdata
def test_jsrt_split_is_fixed(jsrt_dir: Path) -> None:
    """Every bundle and the benchmark see the same JSRT cases: 70/15/15 of 200, disjoint, the same every time."""
    from cxrseg.data import load_split

    splits = {split: [e["case"] for e in load_split(jsrt_dir, split)] for split in ("training", "validation", "test")}
    assert [len(cases) for cases in splits.values()] == [140, 30, 30]
    assert len(set().union(*splits.values())) == 200
    assert splits == {split: [e["case"] for e in load_split(jsrt_dir, split)] for split in splits}


def train_once(bundle: str, dataset_dir: Path, run_dir: Path) -> dict:
    """One epoch at 64x64 on 4 phantoms; the epoch checkpoint (model, optimizer and trainer states)."""
    from cxrseg.training import latest_checkpoint

    overrides = {
        "bundle_root": BUNDLES_DIR / bundle,
        "dataset_dir": dataset_dir,
        "output_dir": run_dir / "logs",
        "ckpt_dir": run_dir / "models",
        "epochs": 1,
        "image_size": [64, 64],
        "train_size": 4,
        "batch_size": 2,
        "num_workers": 0,
        "val_interval": 1,
    }
    result = monai_run([BUNDLES_DIR / bundle / "configs" / "train.yaml"], overrides, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    checkpoint = latest_checkpoint(run_dir / "models")
    assert checkpoint is not None, f"no checkpoint_*.pt in {run_dir / 'models'}"
    return torch.load(checkpoint, map_location="cpu", weights_only=False)


@pytest.mark.parametrize(
    "bundle", [pytest.param(b, marks=[] if b == SMALLEST_BUNDLE else [pytest.mark.slow]) for b in bundle_names()]
)
def test_two_seeded_cpu_runs_give_identical_weights(bundle: str, phantom_dir: Path, tmp_path: Path) -> None:
    first = train_once(bundle, phantom_dir, tmp_path / "first")
    second = train_once(bundle, phantom_dir, tmp_path / "second")
    assert first["trainer"]["iteration"] == 2, "two batches of two were to be trained"
    assert first["optimizer"]["state"], "the optimizer took no step: a run that trains nothing is trivially repeatable"
    assert first["model"].keys() == second["model"].keys()
    different = [key for key in first["model"] if not torch.equal(first["model"][key], second["model"][key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
