"""What a benchmark run of one bundle uses: the budget's schedule and the bundle's own facts.

Facts about a bundle come from the bundle itself, so a new bundle needs no change here: the dataset it is
scored on and the cases its weights never trained on from ``metadata.json``'s ``held_out`` (a custom key,
beside the Model Zoo's) and its lung stage from ``inference.yaml``'s ``lung_bundle_dir``. The settings any
weights were trained with (``image_size`` and the others that define the network) travel in the settings file
beside them (``models/model.json``, ``cxrseg/settings.py``), which the benchmark reads as the last config file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bundle_runs import SHARED_DATA, parse_bundle_config, read_bundle_yaml, read_metadata
from cxrseg.settings import settings_path

LARGE_SIDE = 2048
# every evaluate.yaml names the split it scores with this id
SPLIT_ID = "eval_split"
FOLD_KEYS = ("num_folds", "fold")


@dataclass(frozen=True)
class Budget:
    """A named training budget: overrides of the bundle's schedule (``None`` keeps the bundle's value)."""

    description: str
    train: bool = True
    epochs: int | None = None
    image_side: int | None = None
    train_size: int | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    val_interval: int | None = None

    def overrides(self) -> dict[str, Any]:
        values = {
            "epochs": self.epochs,
            "image_size": None if self.image_side is None else [self.image_side, self.image_side],
            "train_size": self.train_size,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "val_interval": self.val_interval,
        }
        return {key: value for key, value in values.items() if value is not None}


BUDGETS = {
    "quick": Budget(
        "CPU smoke run: 128x128 inputs, 24 training cases, 2 epochs, batch 4, no loader workers",
        epochs=2,
        image_side=128,
        train_size=24,
        batch_size=4,
        num_workers=0,
        val_interval=2,
    ),
    "paper": Budget("the paper's settings (bundle defaults: epochs, size, batch), for a GPU"),
    "shipped": Budget(
        "no training: the shipped models/model.pt of each bundle at the settings recorded beside it (model.json)",
        train=False,
    ),
}


def held_out(bundle_dir: Path, shipped_weights: bool) -> dict[str, Any]:
    """The cases a bundle's weights never trained on, from metadata ``held_out``: ``dataset``, ``split`` and,
    where the weights come from cross-validation, ``num_folds`` and ``fold``.

    ``shipped_weights``: for ``models/model.pt``, whose recipe may differ from ``train.yaml``'s defaults (its
    ``held_out.shipped_weights`` says how); otherwise for weights trained with those defaults.
    """
    facts = read_metadata(bundle_dir).get("held_out")
    if not facts:
        raise ValueError(f"{bundle_dir.name}: metadata.json has no held_out (which cases to score on)")
    cases = {key: facts[key] for key in ("dataset", "split", "extra_datasets") if key in facts}
    if shipped_weights:
        cases |= facts.get("shipped_weights", {})
    return cases


def held_out_overrides(cases: Mapping[str, Any]) -> dict[str, Any]:
    """Config overrides that make ``evaluate.yaml`` score the cases of :func:`held_out`, with metadata
    ``held_out.extra_datasets`` (config id -> shared dataset names, e.g. opacity_unet's clear lungs) as paths and
    ``held_out.shipped_weights.overrides`` (how the shipped recipe differs from ``train.yaml``'s defaults where
    evaluation must follow it, e.g. opacity_unet's lung field from the lung bundle) as they are."""
    extra = {
        config_id: [str(SHARED_DATA / name) for name in names]
        for config_id, names in cases.get("extra_datasets", {}).items()
    }
    folds = {key: cases[key] for key in FOLD_KEYS if key in cases}
    return {SPLIT_ID: cases["split"], **folds, **extra, **cases.get("overrides", {})}


def held_out_name(cases: Mapping[str, Any]) -> str:
    """How the report names the evaluated cases: the split, or the fold where folds are used."""
    return f"fold {cases['fold']} of {cases['num_folds']}" if "num_folds" in cases else cases["split"]


def dataset_of(bundle_dir: Path, dataset_dir: str | None) -> Path:
    """The prepared dataset a bundle is benchmarked on: ``dataset_dir`` if given, else the shared copy of the
    dataset its metadata names."""
    path = Path(dataset_dir) if dataset_dir is not None else SHARED_DATA / held_out(bundle_dir, False)["dataset"]
    if not (path / "images").is_dir():
        raise FileNotFoundError(f"{path}: not a prepared dataset (no images/); pass --dataset_dir")
    return path.resolve()


def shipped_settings(bundle_dir: Path) -> dict[str, Any]:
    """Overrides for evaluating the shipped ``models/model.pt`` through ``train.yaml`` + ``evaluate.yaml`` at the
    settings it was trained with: none where its settings file records them (read as the last config file), else
    the ``image_size`` its ``inference.yaml`` states (checkouts from before the settings files, which
    ``python -m benchmarks compare_inference`` also runs)."""
    if settings_path(bundle_dir / "models" / "model.pt").is_file():
        return {}
    return {"image_size": read_bundle_yaml(bundle_dir, "inference.yaml")["image_size"]}


def lung_stage_bundle(bundle_dir: Path) -> Path | None:
    """The lung bundle a two-stage bundle runs first (its ``inference.yaml`` default ``lung_bundle_dir``);
    None for a one-stage bundle (no ``lung_ckpt_path`` in its inference)."""
    if "lung_ckpt_path" not in read_bundle_yaml(bundle_dir, "inference.yaml"):
        return None
    return Path(parse_bundle_config(bundle_dir, "inference.yaml").get_parsed_content("lung_bundle_dir")).resolve()


def shipped_lung_weights(bundle_dir: Path) -> Path | None:
    """The shipped weights of a two-stage bundle's lung stage; None for a one-stage bundle."""
    lung_bundle = lung_stage_bundle(bundle_dir)
    return None if lung_bundle is None else lung_bundle / "models" / "model.pt"


def lung_stage_overrides(bundle_dir: Path, lung_weights: Path | None) -> dict[str, Any]:
    """Overrides naming the lung model of a two-stage bundle (the lung bundle segments the lung field first; its
    network and input follow the settings file of ``lung_weights``, which the lung stage reads); empty for one-stage
    bundles."""
    lung_bundle = lung_stage_bundle(bundle_dir)
    if lung_bundle is None:
        return {}
    if lung_weights is None:
        raise FileNotFoundError(f"{bundle_dir.name} needs trained {lung_bundle.name} weights for its lung stage")
    return {"lung_bundle_dir": lung_bundle, "lung_ckpt_path": lung_weights}
