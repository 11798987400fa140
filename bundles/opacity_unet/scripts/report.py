"""Evaluation of opacity % as a severity figure: agreement of predicted with reference opacity % and ROC-AUC
of opacity % for ICU admission and death, as in Tang et al. (2020), section 2.7.

Outcomes are per patient but scored per image, as in the paper; unknown outcomes are left out and the counts
of positives and negatives are reported with every AUC (they are small in the development data).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import compute_roc_auc
from scipy import stats

from .cxrseg.inference import to_label_map
from .severity import draw_roc, read_outcomes, roc_points

logger = logging.getLogger(__name__)
OUTCOMES = {"icu": "ICU admission", "death": "death"}
SCORES = ("pred_opacity_pct", "ref_opacity_pct")


def opacity_pct(opacity: np.ndarray, lung: np.ndarray) -> float:
    """Opacity inside the lung as % of the lung area (NaN without lung)."""
    lung = lung.astype(bool)
    return 100.0 * float((opacity.astype(bool) & lung).sum()) / lung.sum() if lung.any() else math.nan


def correlation(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """Pearson and Spearman correlation and mean absolute difference of predicted vs reference opacity %."""
    pairs = np.array([(r["pred_opacity_pct"], r["ref_opacity_pct"]) for r in rows], dtype=float).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    result: dict[str, float | int | None] = {"n": len(pairs), "pearson_r": None, "spearman_rho": None}
    result["mean_abs_diff_pct"] = float(np.abs(pairs[:, 0] - pairs[:, 1]).mean()) if len(pairs) else None
    if len(pairs) >= 3 and np.ptp(pairs[:, 0]) > 0 and np.ptp(pairs[:, 1]) > 0:
        result["pearson_r"] = float(stats.pearsonr(pairs[:, 0], pairs[:, 1])[0])
        result["spearman_rho"] = float(stats.spearmanr(pairs[:, 0], pairs[:, 1])[0])
    return result


def outcome_auc(
    rows: Sequence[Mapping[str, Any]], outcomes: Mapping[str, Mapping[str, bool]], outcome: str, score: str,
) -> tuple[dict[str, Any], list[tuple[float, float]] | None]:
    """ROC-AUC of ``score`` for ``outcome`` over the cases whose outcome is known, with the counts, and the
    ROC points (None when one class is missing and the AUC is undefined)."""
    known = [(r[score], outcomes[r["case"]][outcome]) for r in rows
             if outcome in outcomes.get(r["case"], {}) and math.isfinite(r[score])]
    positives = sum(label for _, label in known)
    result: dict[str, Any] = {"positives": positives, "negatives": len(known) - positives, "auc": None}
    if positives == 0 or positives == len(known):
        return result, None
    scores, labels = torch.tensor([s for s, _ in known]), torch.tensor([float(label) for _, label in known])
    result["auc"] = float(compute_roc_auc(scores, labels))
    return result, roc_points([s for s, _ in known], [label for _, label in known])


def write_severity_report(
    rows: Sequence[Mapping[str, Any]], output_dir: str | Path, metadata_csv: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``severity_per_case.csv``, ``severity_summary.json`` and ``roc_<outcome>.png`` (from predicted
    opacity %); returns the summary. Without a metadata file only the correlation is reported."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "severity_per_case.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "ref_opacity_pct", "pred_opacity_pct"])
        writer.writeheader()
        writer.writerows(rows)
    absent = [r["pred_opacity_pct"] for r in rows if r["ref_opacity_pct"] == 0 and math.isfinite(r["pred_opacity_pct"])]
    summary: dict[str, Any] = {
        "cases": len(rows),
        "correlation": correlation(rows),
        # cases without reference opacity: Dice and IoU are 0 or 1 there, the false-positive area says more
        "reference_absent": {
            "cases": len(absent),
            "mean_false_positive_pct_of_lung": float(np.mean(absent)) if absent else None,
            "max_false_positive_pct_of_lung": float(np.max(absent)) if absent else None,
        },
        "roc_auc": {},
    }
    if metadata_csv is not None and Path(metadata_csv).is_file():
        outcomes = read_outcomes(metadata_csv)
        for outcome, title in OUTCOMES.items():
            summary["roc_auc"][outcome] = {}
            for score in SCORES:
                result, points = outcome_auc(rows, outcomes, outcome, score)
                summary["roc_auc"][outcome][score] = result
                if points is not None and score == "pred_opacity_pct":
                    counts = f"({result['positives']}+ / {result['negatives']}-)"
                    curve = draw_roc(points, f"{title}: AUC {result['auc']:.2f} {counts}")
                    curve.save(output_dir / f"roc_{outcome}.png")
    (output_dir / "severity_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


class SeverityReport:
    """Ignite handler for ``evaluate.yaml``: opacity % per case from ``pred`` and ``label`` (binary opacity
    maps after post-processing) over the lung field ``lung_key`` of the batch, then :func:`write_severity_report`.
    """

    def __init__(
        self, output_dir: str | Path, metadata_csv: str | Path | None = None, lung_key: str = "lung_full"
    ) -> None:
        self.output_dir, self.metadata_csv, self.lung_key = Path(output_dir), metadata_csv, lung_key
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        for item, batch_item in zip(engine.state.output, engine.state.batch):
            lung = to_label_map(batch_item[self.lung_key]) > 0
            self.rows.append({
                "case": str(batch_item.get("case", len(self.rows))),
                "ref_opacity_pct": opacity_pct(to_label_map(item["label"]) > 0, lung),
                "pred_opacity_pct": opacity_pct(to_label_map(item["pred"]) > 0, lung),
            })

    def _write(self, engine: Engine) -> None:
        summary = write_severity_report(self.rows, self.output_dir, self.metadata_csv)
        logger.info(
            "opacity %% of %d cases: %s; ROC-AUC %s", len(self.rows), summary["correlation"], summary["roc_auc"]
        )
