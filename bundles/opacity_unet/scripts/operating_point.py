"""The sigmoid threshold that turns opacity scores into the opacity mask, chosen by nested cross-validation.

A network trained with clear lungs in half of its draws is cautious: at 0.5 it calls almost nothing on a normal
lung opaque and misses the faint edge of ground glass. The threshold trades IoU on opacity against false alarms
on clear lungs, so it is chosen rather than assumed: among the thresholds evaluated, the highest mean IoU on
the cases with opacity whose clear lungs' mean predicted opacity % stays within ``max_clear_pct`` (the higher
threshold on a tie). Each fold's threshold is chosen on the other folds' held-out cases, so the pooled report
scores every case at a threshold that it did not help choose; the threshold for weights trained on all folds
is then chosen on every fold's held-out cases.

Layout: ``FOLD_DIR/threshold_<T>/severity_per_case.csv``, from ``evaluate.yaml`` run with
``--opacity_threshold T --output_dir FOLD_DIR/threshold_<T>`` (docs/README.md, "Training").
usage (from the bundle folder): python -m scripts.operating_point OUT_DIR FOLD_DIR ... [--max_clear_pct 2]
(env METADATA_CSV, SEVERITY_CSV as for ``python -m scripts.report``)
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import read_radiologist_scores, read_severity_rows, severity_summary, write_severity_report

THRESHOLD_PREFIX = "threshold_"
Rows = list[dict[str, Any]]


def read_fold(fold_dir: str | Path) -> dict[float, Rows]:
    """The per-case rows of one fold's held-out cases at every threshold evaluated, keyed by threshold."""
    runs = sorted(Path(fold_dir).glob(f"{THRESHOLD_PREFIX}*/severity_per_case.csv"))
    if not runs:
        raise FileNotFoundError(f"{fold_dir}: no {THRESHOLD_PREFIX}<T>/severity_per_case.csv (module docstring)")
    return {float(run.parent.name.removeprefix(THRESHOLD_PREFIX)): read_severity_rows(run) for run in runs}


def common_thresholds(folds: Sequence[Mapping[float, Rows]]) -> list[float]:
    """The thresholds evaluated on every fold, ascending: only those can be pooled across folds."""
    return sorted(set.intersection(*(set(fold) for fold in folds)))


def pooled(folds: Sequence[Mapping[float, Rows]], threshold: float) -> Rows:
    """The rows of all ``folds`` at ``threshold``."""
    return [row for fold in folds for row in fold[threshold]]


def iou_and_false_alarm(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """Mean IoU over the cases with opacity, and the clear lungs' mean predicted opacity % (NaN where none), as
    the severity report defines both."""
    summary, _ = severity_summary(rows)
    iou, false_alarm = summary["with_opacity"]["iou"]["mean"], summary["clear_lungs"]["pred_opacity_pct"]["mean"]
    return (math.nan if iou is None else iou, math.nan if false_alarm is None else false_alarm)


def choose_threshold(rows_by_threshold: Mapping[float, Sequence[Mapping[str, Any]]], max_clear_pct: float) -> float:
    """The threshold of highest mean IoU among those whose clear lungs stay within ``max_clear_pct`` (the higher
    threshold on a tie); the one with the fewest false alarms when none does."""
    scores = {threshold: iou_and_false_alarm(rows) for threshold, rows in rows_by_threshold.items()}
    within = [t for t, (_, false_alarm) in scores.items() if not false_alarm > max_clear_pct]
    if not within:
        return min(scores, key=lambda t: (scores[t][1], -t))
    return max(within, key=lambda t: (scores[t][0], t))


def nested_thresholds(folds: Sequence[Mapping[float, Rows]], max_clear_pct: float) -> list[float]:
    """For each fold, the threshold chosen on the pooled held-out cases of all the other folds."""
    chosen = []
    for held_out in range(len(folds)):
        others = [fold for index, fold in enumerate(folds) if index != held_out]
        chosen.append(choose_threshold({t: pooled(others, t) for t in common_thresholds(folds)}, max_clear_pct))
    return chosen


def threshold_table(
    folds: Sequence[Mapping[float, Rows]], radiologist_scores: Mapping[str, Mapping[str, float]] | None
) -> list[dict[str, Any]]:
    """Per threshold, pooled over the folds: IoU and Dice on cases with opacity, clear lungs' predicted opacity %
    (mean, p95), and Spearman with the radiologists, so a model card can show the whole trade-off."""
    table = []
    for threshold in common_thresholds(folds):
        summary, _ = severity_summary(pooled(folds, threshold), None, radiologist_scores)
        table.append(
            {
                "threshold": threshold,
                "iou": summary["with_opacity"]["iou"]["mean"],
                "dice": summary["with_opacity"]["dice"]["mean"],
                "clear_pct_mean": summary["clear_lungs"]["pred_opacity_pct"]["mean"],
                "clear_pct_p95": summary["clear_lungs"]["pred_opacity_pct"]["p95"],
                "spearman": {
                    name: agreement["pred_opacity_pct"]["spearman_rho"]
                    for name, agreement in summary["radiologists"].items()
                },
            }
        )
    return table


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("fold_dirs", nargs="+", type=Path)
    parser.add_argument("--max_clear_pct", type=float, default=2.0)
    args = parser.parse_args(argv)
    if len(args.fold_dirs) < 2:
        raise SystemExit("a nested choice needs at least two folds: each fold's threshold is chosen on the others")
    folds = [read_fold(fold_dir) for fold_dir in args.fold_dirs]
    per_fold = nested_thresholds(folds, args.max_clear_pct)
    severity_csv, metadata_csv = os.environ.get("SEVERITY_CSV"), os.environ.get("METADATA_CSV")
    radiologist_scores = read_radiologist_scores(severity_csv) if severity_csv else None
    held_out_rows = [row for fold, threshold in zip(folds, per_fold, strict=True) for row in fold[threshold]]
    write_severity_report(held_out_rows, args.output_dir, metadata_csv, severity_csv)
    all_folds = {t: pooled(folds, t) for t in common_thresholds(folds)}
    result = {
        "max_clear_pct": args.max_clear_pct,
        "per_fold": per_fold,
        "all_folds": choose_threshold(all_folds, args.max_clear_pct),
        "table": threshold_table(folds, radiologist_scores),
    }
    (args.output_dir / "operating_point.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
