"""Evaluation of opacity % as a severity figure (Tang et al. 2020, section 2.7), written so that false alarms
show: per case, predicted and reference opacity % with their absolute error and the overlap; per source
(hospital), the predicted opacity % of clear lungs (mean and 95th percentile); agreement with the
reference opacity % and with radiologists' severity scores (Spearman); ROC-AUC of opacity % for ICU admission
and death.

Outcomes are per patient but scored per image, as in the paper; unknown outcomes are left out and the counts
of positives and negatives are reported with every AUC (they are small in the development data). Folds of a
cross-validation pool into one report: ``python -m scripts.report OUT FOLD_DIR ...`` (from the bundle folder).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import compute_roc_auc
from scipy import stats

from .cxrseg.data import SOURCE_KEY
from .cxrseg.inference import to_label_map
from .severity import draw_roc, read_outcomes, roc_points

logger = logging.getLogger(__name__)
OUTCOMES = {"icu": "ICU admission", "death": "death"}
SCORES = ("pred_opacity_pct", "ref_opacity_pct")
PER_CASE_COLUMNS = ("case", SOURCE_KEY, "ref_opacity_pct", "pred_opacity_pct", "abs_error_pct", "dice", "iou")
# severity_scores.csv: the mean of three radiologists' extent (0-8) and opacity (0-6) scores per case
RADIOLOGIST_SCORES = ("geographic_extent_mean", "opacity_mean")


def opacity_pct(opacity: np.ndarray, lung: np.ndarray) -> float:
    """Opacity inside the lung as % of the lung area (NaN without lung)."""
    lung = lung.astype(bool)
    return 100.0 * float((opacity.astype(bool) & lung).sum()) / lung.sum() if lung.any() else math.nan


def overlap(pred: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of the opacity masks, NaN when the reference has none: there they are 0 or 1 and say
    less than the false-positive opacity % reported for clear lungs."""
    pred, reference = pred.astype(bool), reference.astype(bool)
    if not reference.any():
        return math.nan, math.nan
    both, either = float((pred & reference).sum()), float((pred | reference).sum())
    return 2 * both / (both + either), both / either


def case_row(case: str, source: str, pred: np.ndarray, reference: np.ndarray, lung: np.ndarray) -> dict[str, Any]:
    """One row of ``severity_per_case.csv`` from the binary opacity maps and the lung field of one case."""
    ref_pct, pred_pct = opacity_pct(reference, lung), opacity_pct(pred, lung)
    dice, iou = overlap(pred & lung, reference & lung)
    return {
        "case": case,
        SOURCE_KEY: source,
        "ref_opacity_pct": ref_pct,
        "pred_opacity_pct": pred_pct,
        "abs_error_pct": abs(pred_pct - ref_pct),
        "dice": dice,
        "iou": iou,
    }


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean, standard deviation, median, 95th percentile and maximum of the finite values."""
    array = _finite(values)
    if not array.size:
        return {"n": 0, "mean": None, "sd": None, "median": None, "p95": None, "max": None}
    return {
        "n": int(array.size),
        "mean": float(array.mean()),
        "sd": float(array.std()),
        "median": float(np.median(array)),
        "p95": float(np.percentile(array, 95)),
        "max": float(array.max()),
    }


def rank_correlation(first: Sequence[float], second: Sequence[float]) -> dict[str, float | int | None]:
    """Spearman's rho (and Pearson's r) over the pairs where both values are finite; None when undefined."""
    pairs = np.array(list(zip(first, second, strict=True)), dtype=float).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    result: dict[str, float | int | None] = {"n": len(pairs), "pearson_r": None, "spearman_rho": None}
    if len(pairs) >= 3 and np.ptp(pairs[:, 0]) > 0 and np.ptp(pairs[:, 1]) > 0:
        result["pearson_r"] = float(stats.pearsonr(pairs[:, 0], pairs[:, 1])[0])
        result["spearman_rho"] = float(stats.spearmanr(pairs[:, 0], pairs[:, 1])[0])
    return result


def correlation(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """Predicted vs reference opacity %: Pearson, Spearman and the mean absolute difference."""
    result = rank_correlation([r["pred_opacity_pct"] for r in rows], [r["ref_opacity_pct"] for r in rows])
    errors = _finite([r["pred_opacity_pct"] - r["ref_opacity_pct"] for r in rows])
    return result | {"mean_abs_diff_pct": float(np.abs(errors).mean()) if errors.size else None}


def read_radiologist_scores(severity_csv: str | Path) -> dict[str, dict[str, float]]:
    """``{case: {score: value}}`` from ``severity_scores.csv``; empty values are left out."""
    scores: dict[str, dict[str, float]] = {}
    with open(severity_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            scores[row["case"]] = {name: float(row[name]) for name in RADIOLOGIST_SCORES if row.get(name, "").strip()}
    return scores


def radiologist_agreement(
    rows: Sequence[Mapping[str, Any]],
    scores: Mapping[str, Mapping[str, float]],
) -> dict[str, dict[str, Any]]:
    """Spearman's rho of predicted opacity % with each radiologist score over the scored cases, beside the
    reference masks' own opacity % as the ceiling a perfect segmentation would reach."""
    scored = [r for r in rows if r["case"] in scores]
    agreement: dict[str, dict[str, Any]] = {}
    for name in RADIOLOGIST_SCORES:
        values = [scores[r["case"]].get(name, math.nan) for r in scored]
        agreement[name] = {score: rank_correlation([r[score] for r in scored], values) for score in SCORES}
    return agreement


def outcome_auc(
    rows: Sequence[Mapping[str, Any]],
    outcomes: Mapping[str, Mapping[str, bool]],
    outcome: str,
    score: str,
) -> tuple[dict[str, Any], list[tuple[float, float]] | None]:
    """ROC-AUC of ``score`` for ``outcome`` over the cases whose outcome is known, with the counts, and the
    ROC points (None when one class is missing and the AUC is undefined)."""
    known = [
        (r[score], outcomes[r["case"]][outcome])
        for r in rows
        if outcome in outcomes.get(r["case"], {}) and math.isfinite(r[score])
    ]
    positives = sum(label for _, label in known)
    result: dict[str, Any] = {"positives": positives, "negatives": len(known) - positives, "auc": None}
    if positives == 0 or positives == len(known):
        return result, None
    scores, labels = torch.tensor([s for s, _ in known]), torch.tensor([float(label) for _, label in known])
    result["auc"] = float(compute_roc_auc(scores, labels))
    return result, roc_points([s for s, _ in known], [label for _, label in known])


def source_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per source: predicted opacity % (mean, p95), absolute error of opacity %, IoU where opacity exists."""
    return {
        "cases": len(rows),
        "pred_opacity_pct": spread([r["pred_opacity_pct"] for r in rows]),
        "abs_error_pct": spread([r["abs_error_pct"] for r in rows]),
        "iou_with_opacity": spread([r["iou"] for r in rows]),
    }


def severity_summary(
    rows: Sequence[Mapping[str, Any]],
    outcomes: Mapping[str, Mapping[str, bool]] | None = None,
    radiologist_scores: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, list[tuple[float, float]]]]:
    """The figures of ``severity_summary.json`` and the ROC points of predicted opacity % per outcome.

    Clear lungs are the cases whose reference has no opacity (normal radiographs, and opacity-dataset cases
    without any): their predicted opacity % is the false alarm. Agreement with the reference opacity % is
    over the sources that have opacity somewhere, so that hundreds of normal radiographs (0 against 0) do
    not inflate it.
    """
    opacity_sources = {r[SOURCE_KEY] for r in rows if r["ref_opacity_pct"] > 0}
    clear = [r for r in rows if r["ref_opacity_pct"] == 0]
    with_opacity = [r for r in rows if r["ref_opacity_pct"] > 0]
    summary: dict[str, Any] = {
        "cases": len(rows),
        "with_opacity": {metric: spread([r[metric] for r in with_opacity]) for metric in ("dice", "iou")},
        "clear_lungs": {"pred_opacity_pct": spread([r["pred_opacity_pct"] for r in clear])},
        "abs_error_pct": spread([r["abs_error_pct"] for r in rows]),
        "correlation": correlation([r for r in rows if r[SOURCE_KEY] in opacity_sources]),
        "by_source": {
            source: source_summary([r for r in rows if r[SOURCE_KEY] == source])
            for source in sorted({r[SOURCE_KEY] for r in rows})
        },
        "radiologists": radiologist_agreement(rows, radiologist_scores) if radiologist_scores else {},
        "roc_auc": {},
    }
    curves: dict[str, list[tuple[float, float]]] = {}
    for outcome in OUTCOMES if outcomes is not None else ():
        summary["roc_auc"][outcome] = {}
        for score in SCORES:
            result, points = outcome_auc(rows, outcomes, outcome, score)
            summary["roc_auc"][outcome][score] = result
            if points is not None and score == "pred_opacity_pct":
                curves[outcome] = points
    return summary, curves


def write_severity_report(
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    metadata_csv: str | Path | None = None,
    severity_csv: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``severity_per_case.csv``, ``severity_summary.json`` and ``roc_<outcome>.png`` (from predicted
    opacity %); returns the summary. Outcomes need ``metadata_csv``, radiologist agreement ``severity_csv``;
    either is skipped when its file is absent."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "severity_per_case.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_CASE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    outcomes = read_outcomes(metadata_csv) if _is_file(metadata_csv) else None
    scores = read_radiologist_scores(severity_csv) if _is_file(severity_csv) else None
    summary, curves = severity_summary(rows, outcomes, scores)
    for outcome, points in curves.items():
        result = summary["roc_auc"][outcome]["pred_opacity_pct"]
        title = f"{OUTCOMES[outcome]}: AUC {result['auc']:.2f} ({result['positives']}+ / {result['negatives']}-)"
        draw_roc(points, title).save(output_dir / f"roc_{outcome}.png")
    (output_dir / "severity_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _is_file(path: str | Path | None) -> bool:
    return path is not None and Path(path).is_file()


def read_severity_rows(per_case_csv: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``severity_per_case.csv`` with the numbers as floats, for pooling folds."""
    with open(per_case_csv, newline="", encoding="utf-8") as handle:
        return [
            {key: value if key in ("case", SOURCE_KEY) else float(value) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


class SeverityReport:
    """Ignite handler for ``evaluate.yaml``: opacity % per case from ``pred`` and ``label`` (binary opacity
    maps after post-processing) over the lung field ``lung_key`` of the batch, then :func:`write_severity_report`.
    """

    def __init__(
        self,
        output_dir: str | Path,
        metadata_csv: str | Path | None = None,
        lung_key: str = "lung_full",
        severity_csv: str | Path | None = None,
    ) -> None:
        self.output_dir, self.metadata_csv, self.lung_key = Path(output_dir), metadata_csv, lung_key
        self.severity_csv = severity_csv
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        for item, batch_item in zip(engine.state.output, engine.state.batch, strict=True):
            self.rows.append(
                case_row(
                    str(batch_item.get("case", len(self.rows))),
                    str(batch_item.get(SOURCE_KEY, "")),
                    to_label_map(item["pred"]) > 0,
                    to_label_map(item["label"]) > 0,
                    to_label_map(batch_item[self.lung_key]) > 0,
                )
            )

    def _write(self, engine: Engine) -> None:
        summary = write_severity_report(self.rows, self.output_dir, self.metadata_csv, self.severity_csv)
        logger.info(
            "opacity of %d cases: IoU with opacity %s, clear lungs' opacity %% %s, radiologists %s",
            len(self.rows),
            summary["with_opacity"]["iou"],
            summary["clear_lungs"]["pred_opacity_pct"],
            summary["radiologists"],
        )


def pool_folds(
    output_dir: str | Path,
    fold_dirs: Sequence[str | Path],
    metadata_csv: str | Path | None = None,
    severity_csv: str | Path | None = None,
) -> dict[str, Any]:
    """One report over the held-out cases of every fold (each case is held out once in a cross-validation)."""
    rows = [row for fold_dir in fold_dirs for row in read_severity_rows(Path(fold_dir) / "severity_per_case.csv")]
    return write_severity_report(rows, output_dir, metadata_csv, severity_csv)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(
            "usage: python -m scripts.report OUT_DIR FOLD_DIR [FOLD_DIR ...]  "
            "(env METADATA_CSV, SEVERITY_CSV for outcomes and radiologist scores)"
        )
    import os

    pooled = pool_folds(sys.argv[1], sys.argv[2:], os.environ.get("METADATA_CSV"), os.environ.get("SEVERITY_CSV"))
    print(json.dumps(pooled, indent=1))
