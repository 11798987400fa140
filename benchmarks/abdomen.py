"""Lung below the diaphragm: the lung bundles on real radiographs whose field of view shows the upper abdomen.

AP portable and ICU radiographs often include the abdomen; a lung field that runs below the hemidiaphragms
inflates the lung area and hands opacity_unet abdomen to read as opacity, while Dice barely notices. COVID-QU-Ex's
val split (never trained on) holds many such radiographs: the cases whose reference lungs end above ``floor``
(70 %) of the image height (174 of its 790). Each bundle's own ``inference.yaml`` runs on them as a user runs
it; per case, the share of the predicted lung field more than 3 % of the height below the reference's lowest row
(:func:`cxrseg.evaluation.spill_below`) and the lung Dice at the image's size::

    python -m benchmarks abdomen --out /tmp/cxrseg-abdomen
    python -m benchmarks abdomen --bundles "['res_cr_net']" --weights "{'res_cr_net': 'RUN/models'}"
    python -m benchmarks abdomen --bundles "['lung_vae']" --overrides "{'lung_crop': False}"
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.bundle_runs import BUNDLES_DIR, SHARED_DATA, monai_run, output_tail, read_bundle_yaml
from cxrseg.data import load_split
from cxrseg.evaluation import binary_metrics, spill_below
from cxrseg.settings import settings_config_files
from cxrseg.transforms import LoadLabelMapd

LUNG_BUNDLES = ("lung_vae", "attention_bcdunet", "res_cr_net")
LUNG_LABEL = 1
LUNG_STRUCTURES = ("left_lung", "right_lung", "lungs")
# a spill above this share of the field is a case to look at
NOTABLE_SPILL = 0.05


def reference_lungs(entry: Mapping[str, Any]) -> np.ndarray:
    """The case's reference lung field as booleans: its joint ``lungs`` mask or its left and right lungs."""
    loaded = LoadLabelMapd("label", classes=[LUNG_STRUCTURES])({"label": entry["label"]})
    return np.asarray(loaded["label"])[0] == LUNG_LABEL


def abdomen_in_view(dataset_dir: Path, floor: float = 0.7, splits: Sequence[str] = ("test",)) -> list[dict]:
    """The cases of ``dataset_dir``'s ``splits`` (held out by default) whose reference lungs end above ``floor`` of
    the image height: what lies below them down to the edge is abdomen."""
    cases = []
    for entry in (entry for split in splits for entry in load_split(dataset_dir, split)):
        lungs = reference_lungs(entry)
        rows = np.flatnonzero(lungs.any(axis=1))
        if rows.size and rows[-1] + 1 <= floor * lungs.shape[0]:
            cases.append(entry)
    return cases


def link_inputs(cases: Sequence[Mapping[str, Any]], folder: Path) -> Path:
    """A folder of links to the cases' radiographs, each named after its case (the output's ``<case>_seg.png``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in cases:
        link = folder / f"{entry['case']}{Path(entry['image']).suffix}"
        if not link.exists():
            link.symlink_to(Path(entry["image"]).resolve())
    return folder


def infer(bundle: str, inputs: Path, run_dir: Path, weights: str | None, overrides: Mapping[str, Any]) -> None:
    """The bundle's ``inference.yaml`` on ``inputs`` into ``run_dir`` (candidate ``weights``: a folder holding
    ``model.pt`` and ``model.json``), the lung-field check off where the bundle has one, so that every field is
    written and scored."""
    bundle_dir = BUNDLES_DIR / bundle
    configs: list[str | Path] = [bundle_dir / "configs" / "inference.yaml"]
    settings: dict[str, Any] = {
        "bundle_root": bundle_dir,
        "dataset_dir": inputs,
        "output_dir": run_dir,
        "num_workers": 0,
    }
    if "check_lung_field" in read_bundle_yaml(bundle_dir, "inference.yaml"):
        settings["check_lung_field"] = False
    if weights is not None:
        ckpt = Path(weights) / "model.pt"
        configs = list(settings_config_files(configs, ckpt))
        settings["ckpt_path"] = ckpt
    result = monai_run(configs, settings | dict(overrides), log_file=run_dir / "inference.log")
    if result.returncode != 0:
        raise RuntimeError(f"{bundle} inference failed:\n{output_tail(result)}")


def score(cases: Sequence[Mapping[str, Any]], run_dir: Path) -> dict[str, dict[str, float]]:
    """Spill below the diaphragm and lung Dice per case, from the written label maps."""
    scores = {}
    for entry in cases:
        predicted = np.asarray(Image.open(run_dir / f"{entry['case']}_seg.png")) == LUNG_LABEL
        reference = reference_lungs(entry)
        scores[entry["case"]] = {
            "spill": spill_below(predicted, reference),
            "dice": binary_metrics(predicted, reference)["dice"],
        }
    return scores


def summary(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean and worst spill, how many cases spill more than :data:`NOTABLE_SPILL`, mean lung Dice."""
    spill = np.array([case["spill"] for case in scores.values()])
    dice = np.array([case["dice"] for case in scores.values()])
    return {
        "cases": len(scores),
        "mean_spill": float(spill.mean()),
        "notable": int((spill > NOTABLE_SPILL).sum()),
        "worst_spill": float(spill.max()),
        "mean_dice": float(dice.mean()),
    }


def abdomen(
    out: str = "/tmp/cxrseg-abdomen",
    source: str = "covid_qu_ex",
    bundles: Sequence[str] = LUNG_BUNDLES,
    floor: float = 0.7,
    weights: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Share of each bundle's lung field below the diaphragm on ``source``'s held-out radiographs with the
    abdomen in view: a markdown table on stdout, ``abdomen.json`` (per case) in ``out``. ``weights``: bundle ->
    folder of candidate weights; ``overrides``: inference ids for every bundle, e.g. ``{'lung_crop': False}``."""
    source_dir = Path(source) if Path(source).is_dir() else SHARED_DATA / source
    out_dir = Path(out)
    cases = abdomen_in_view(source_dir, floor)
    inputs = link_inputs(cases, out_dir / "inputs")
    results = {}
    for bundle in bundles:
        run_dir = out_dir / "runs" / bundle
        infer(bundle, inputs, run_dir, (weights or {}).get(bundle), overrides or {})
        per_case = score(cases, run_dir)
        results[bundle] = {"summary": summary(per_case), "cases": per_case}
    (out_dir / "abdomen.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"{source_dir.name}, held-out cases with the lungs ending above {floor:.0%} of the height: {len(cases)}\n")
    print(f"| bundle | lung below the diaphragm: mean | over {NOTABLE_SPILL:.0%} | worst | lung Dice |")
    print("|---|---|---|---|---|")
    for bundle in bundles:
        s = results[bundle]["summary"]
        print(f"| {bundle} | {s['mean_spill']:.1%} | {s['notable']} | {s['worst_spill']:.0%} | {s['mean_dice']:.3f} |")
