"""Per-case segmentation metrics with defined values on empty masks, and the evaluation report writer.

MONAI's metrics return NaN or raise on empty masks; a CXR collection meets them constantly (a case without
opacity, a failed prediction), so the rules are fixed here once:

- both masks empty: Dice 1, IoU 1, HD95 0 (nothing to find, nothing found);
- exactly one empty: Dice 0, IoU 0, HD95 NaN (undefined; counted as ``hd95_undefined`` in the summary);
- for cases whose reference is empty, the summary also gives the false-positive fraction (predicted area
  over image area), because Dice/IoU of 0 or 1 says little there.
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
from monai.metrics import compute_hausdorff_distance

from .data import SOURCE_KEY
from .inference import to_label_map

logger = logging.getLogger(__name__)
METRICS = ("dice", "iou", "precision", "recall", "accuracy", "hd95")


def hd95(pred: np.ndarray, reference: np.ndarray) -> float:
    """95th-percentile Hausdorff distance in pixels between two non-empty boolean masks."""
    as_batch = [torch.from_numpy(np.ascontiguousarray(m))[None, None] for m in (pred, reference)]
    return float(compute_hausdorff_distance(as_batch[0], as_batch[1], percentile=95.0).item())


def dice(pred: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks, 1 when both are empty. Validation during training needs this alone: HD95 costs
    a distance transform per mask, far more than the network's forward pass at small sizes."""
    pred, reference = pred.astype(bool), reference.astype(bool)
    total = float(np.count_nonzero(pred) + np.count_nonzero(reference))
    return 2 * float(np.count_nonzero(pred & reference)) / total if total else 1.0


def binary_metrics(pred: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision, recall, pixel accuracy and HD95 of one boolean mask against its reference."""
    pred, reference = pred.astype(bool), reference.astype(bool)
    true_pos = float(np.count_nonzero(pred & reference))
    pred_area, ref_area = float(np.count_nonzero(pred)), float(np.count_nonzero(reference))
    accuracy = float(np.count_nonzero(pred == reference)) / pred.size
    if pred_area == 0 and ref_area == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "accuracy": accuracy, "hd95": 0.0}
    union = pred_area + ref_area - true_pos
    return {
        "dice": dice(pred, reference),
        "iou": true_pos / union,
        "precision": true_pos / pred_area if pred_area else 0.0,
        "recall": true_pos / ref_area if ref_area else 0.0,
        "accuracy": accuracy,
        "hd95": hd95(pred, reference) if pred_area and ref_area else math.nan,
    }


def spill_below(pred: np.ndarray, reference: np.ndarray, margin: float = 0.03) -> float:
    """Share of the predicted structure lying more than ``margin`` of the image's height below the reference's
    lowest row: for lungs, what runs below the diaphragm into the abdomen, which Dice barely sees on a
    radiograph that shows the upper abdomen (AP portable views) and which then reads as lung area or opacity."""
    predicted = int(pred.sum())
    rows = np.flatnonzero(reference.any(axis=1))
    if predicted == 0 or rows.size == 0:
        return 0.0
    floor = rows[-1] + 1 + round(margin * reference.shape[0])
    return float(pred[floor:].sum() / predicted)


def case_metrics(pred: np.ndarray, reference: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
    """Metrics of every non-background label of two label maps, as ``<label>_<metric>`` columns, plus the
    reference and predicted areas (needed to group cases with and without a structure)."""
    if pred.shape != reference.shape:
        raise ValueError(f"prediction {pred.shape} and reference {reference.shape} differ in size")
    row: dict[str, float] = {}
    for value, name in enumerate(label_names):
        if value == 0:
            continue
        pred_mask, ref_mask = pred == value, reference == value
        row |= {f"{name}_{metric}": score for metric, score in binary_metrics(pred_mask, ref_mask).items()}
        row[f"{name}_ref_area_px"] = int(ref_mask.sum())
        row[f"{name}_pred_area_px"] = int(pred_mask.sum())
    return row


def _stats(values: Sequence[float], worst: str) -> dict[str, float | int | None]:
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if finite.size == 0:
        return {"n": 0, "mean": None, "sd": None, "worst": None}
    return {
        "n": int(finite.size),
        "mean": float(finite.mean()),
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "worst": float(finite.min() if worst == "min" else finite.max()),
    }


def summarize(rows: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> dict[str, Any]:
    """Mean, sd and worst case per label and metric: over all cases, over cases whose reference has the
    label, and the false-positive fraction over cases whose reference lacks it."""
    summary: dict[str, Any] = {"cases": len(rows), "labels": {}}
    for name in label_names[1:]:
        present = [r for r in rows if r[f"{name}_ref_area_px"] > 0]
        absent = [r for r in rows if r[f"{name}_ref_area_px"] == 0]
        per_label: dict[str, Any] = {}
        for group, members in (("all", rows), ("reference_present", present)):
            per_label[group] = {
                metric: _stats([r[f"{name}_{metric}"] for r in members], "max" if metric == "hd95" else "min")
                for metric in METRICS
            }
            per_label[group]["hd95_undefined"] = sum(math.isnan(r[f"{name}_hd95"]) for r in members)
        per_label["reference_absent"] = {
            "cases": len(absent),
            "false_positive_fraction": _stats([r[f"{name}_pred_area_px"] / r["pixels"] for r in absent], "max"),
        }
        summary["labels"][name] = per_label
    means = [summary["labels"][n]["all"]["dice"]["mean"] for n in label_names[1:]]
    summary["mean_dice"] = (
        float(np.mean([m for m in means if m is not None])) if any(m is not None for m in means) else None
    )
    return summary


class MetricsWriter:
    """Ignite handler for ``evaluate.yaml``: per-case metrics to ``metrics_per_case.csv`` and the summary to
    ``metrics_summary.json`` (see :func:`summarize`).

    It reads ``pred`` and ``label`` of each decollated output item after the evaluator's post-processing;
    both should be label maps (or one-hot / score channels) at the resolution to evaluate, normally the
    input's own size after ``Invertd``.
    """

    def __init__(self, output_dir: str | Path, label_names: Sequence[str], prefix: str = "metrics") -> None:
        self.output_dir = Path(output_dir)
        self.label_names = list(label_names)
        self.prefix = prefix
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    @staticmethod
    def _case_name(item: Mapping[str, Any], batch_item: Mapping[str, Any] | None) -> str:
        if batch_item is not None and batch_item.get("case"):
            return str(batch_item["case"])
        meta = getattr(item.get("image", item.get("pred")), "meta", {}) or {}
        return Path(str(meta.get("filename_or_obj", "?"))).stem

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [None] * len(output)
        for item, batch_item in zip(output, batch, strict=True):
            pred, reference = to_label_map(item["pred"]), to_label_map(item["label"])
            row: dict[str, Any] = {
                "case": self._case_name(item, batch_item),
                SOURCE_KEY: (batch_item or {}).get(SOURCE_KEY, ""),
                "pixels": int(reference.size),
            }
            self.rows.append(row | case_metrics(pred, reference, self.label_names))

    def _write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        per_case = self.output_dir / f"{self.prefix}_per_case.csv"
        with open(per_case, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.rows[0]) if self.rows else ["case"])
            writer.writeheader()
            writer.writerows(self.rows)
        summary = summarize(self.rows, self.label_names)
        sources = sorted({row[SOURCE_KEY] for row in self.rows if row[SOURCE_KEY]})
        if len(sources) > 1:
            summary["sources"] = {
                source: summarize([r for r in self.rows if r[SOURCE_KEY] == source], self.label_names)
                for source in sources
            }
        (self.output_dir / f"{self.prefix}_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        logger.info(
            "evaluation of %d cases: mean Dice %s; written to %s", len(self.rows), summary["mean_dice"], per_case
        )


class PerSourceDice:
    """Validation handler: mean Dice per source (hospital) and label, as ``engine.state.metrics`` entries
    ``val_dice/<source>`` (mean over labels) and ``val_dice/<source>/<label>``.

    A model trained on several hospitals can gain on the largest while losing on the others; the pooled key
    metric hides that, so every validation also reports each source. Only labels the reference contains are
    scored (a source without heart masks gets no heart score), as MONAI's ``MeanDice`` does with
    ``ignore_empty``. Attach it before ``StatsHandler`` and ``TensorBoardStatsHandler`` (list it first among
    the evaluator's handlers) so that they log its entries.
    """

    def __init__(self, label_names: Sequence[str], prefix: str = "val_dice") -> None:
        self.label_names = list(label_names)
        self.prefix = prefix
        self.scores: dict[tuple[str, str], list[float]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.scores.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [{}] * len(output)
        for item, batch_item in zip(output, batch, strict=True):
            source = str((batch_item or {}).get(SOURCE_KEY) or "all")
            pred, reference = to_label_map(item["pred"]), to_label_map(item["label"])
            for value, name in enumerate(self.label_names[1:], start=1):
                if (reference == value).any():
                    score = dice(pred == value, reference == value)
                    self.scores.setdefault((source, name), []).append(score)

    def _publish(self, engine: Engine) -> None:
        for source in sorted({source for source, _ in self.scores}):
            per_label = {name: float(np.mean(v)) for (s, name), v in self.scores.items() if s == source}
            for name, score in per_label.items():
                engine.state.metrics[f"{self.prefix}/{source}/{name}"] = score
            engine.state.metrics[f"{self.prefix}/{source}"] = float(np.mean(list(per_label.values())))
