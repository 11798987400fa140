"""Figures of a benchmark run (``python -m benchmarks benchmark``): training curves, per-case Dice, worst cases.

Everything is read back from the files the bundle runs wrote (TensorBoard events, ``metrics_per_case.csv``,
``<stem>_seg.png``), so the figures can be redrawn from a finished run without training again.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bundle_runs import BUNDLES_DIR, read_bundle_yaml, scored_cases

LOG = logging.getLogger("benchmarks.plots")
WORST_PER_BUNDLE = 3


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scalar_series(event_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar tag in the TensorBoard event files of ``event_dir``: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, tuple[list[int], list[float]]] = {}
    for event_file in sorted(event_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            steps, values = series.setdefault(tag, ([], []))
            for event in accumulator.Scalars(tag):
                steps.append(event.step)
                values.append(event.value)
    return series


def training_curves(records: Sequence[Mapping[str, Any]], out_file: Path) -> Path | None:
    """Training loss per iteration and validation metrics per epoch, one line per bundle."""
    curves = {r["bundle"]: scalar_series(Path(r["run_dir"]) / "train") for r in records if r.get("run_dir")}
    curves = {bundle: series for bundle, series in curves.items() if series}
    if not curves:
        return None
    plt = _pyplot()
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for bundle, series in curves.items():
        for tag, (steps, values) in series.items():
            if "loss" in tag.lower():
                loss_axis.plot(steps, values, label=f"{bundle}: {tag}", linewidth=1)
            elif "dice" in tag.lower() and "val" in tag.lower():
                metric_axis.plot(steps, values, marker="o", label=f"{bundle}: {tag}")
    loss_axis.set(title="training loss", xlabel="iteration", yscale="log")
    metric_axis.set(title="validation", xlabel="epoch", ylim=(0, 1))
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_file, dpi=110)
    plt.close(figure)
    return out_file


def per_case_rows(record: Mapping[str, Any]) -> list[dict[str, str]]:
    path = Path(record.get("run_dir", "")) / "eval" / "metrics_per_case.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def dice_columns(rows: Sequence[Mapping[str, str]]) -> list[str]:
    return [column for column in (rows[0] if rows else {}) if column.endswith("_dice")]


def dice_boxplots(records: Sequence[Mapping[str, Any]], out_file: Path) -> Path | None:
    """Per-case Dice of every bundle and structure as box plots with the individual cases as dots."""
    groups: list[tuple[str, list[float]]] = []
    for record in records:
        rows = per_case_rows(record)
        for column in dice_columns(rows):
            groups.append((f"{record['bundle']}\n{column[: -len('_dice')]}", [float(r[column]) for r in rows]))
    if not groups:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(groups)), 4.5))
    axis.boxplot([values for _, values in groups], showfliers=False)
    jitter = np.random.default_rng(0)
    for position, (_, values) in enumerate(groups, start=1):
        axis.scatter(position + jitter.uniform(-0.12, 0.12, len(values)), values, s=8, alpha=0.6, color="tab:blue")
    axis.set_xticks(range(1, len(groups) + 1), [name for name, _ in groups], fontsize=8)
    axis.set(ylabel="Dice per case", title="per-case Dice (held-out cases)", ylim=(min(0.0, axis.get_ylim()[0]), 1.02))
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_file, dpi=110)
    plt.close(figure)
    return out_file


def _reference_label_map(bundle_dir: Path, entry: Mapping[str, Any]) -> np.ndarray:
    from cxrseg.transforms import LoadLabelMapd

    classes = read_bundle_yaml(bundle_dir, "train.yaml")["label_classes"]
    label = LoadLabelMapd(keys="label", classes=classes)({"label": entry["label"]})["label"]
    return np.asarray(label)[0]


def worst_cases(records: Sequence[Mapping[str, Any]], out_file: Path, count: int = WORST_PER_BUNDLE) -> Path | None:
    """A sheet of each bundle's ``count`` lowest mean-Dice cases: reference outlines green, prediction red."""
    from PIL import Image

    panels = []
    for record in records:
        rows, run_dir = per_case_rows(record), Path(record.get("run_dir", ""))
        columns = dice_columns(rows)
        if not columns:
            continue
        entries = {e["case"]: e for e in scored_cases(record["dataset"], [row["case"] for row in rows])}
        ranked = sorted(rows, key=lambda r: np.mean([float(r[c]) for c in columns]))
        chosen = [r for r in ranked if (run_dir / "inference_out" / f"{r['case']}_seg.png").is_file()][:count]
        for row in chosen:
            entry = entries.get(row["case"])
            if entry is None:
                continue
            segmentation = run_dir / "inference_out" / f"{row['case']}_seg.png"
            with Image.open(entry["image"]) as image, Image.open(segmentation) as seg:
                pixels, prediction = np.asarray(image.convert("L")), np.asarray(seg)
            reference = _reference_label_map(BUNDLES_DIR / record["bundle"], entry)
            dice = ", ".join(f"{c[: -len('_dice')]} {float(row[c]):.2f}" for c in columns)
            panels.append((f"{record['bundle']} {row['case']}\n{dice}", pixels, reference, prediction))
    if not panels:
        return None
    plt = _pyplot()
    columns_count = min(len(panels), WORST_PER_BUNDLE)
    rows_count = -(-len(panels) // columns_count)
    figure, axes = plt.subplots(rows_count, columns_count, figsize=(4 * columns_count, 4.3 * rows_count), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (title, pixels, reference, prediction) in zip(axes.ravel(), panels, strict=False):
        axis.imshow(pixels, cmap="gray")
        for value in range(1, int(max(reference.max(), prediction.max())) + 1):
            if (reference == value).any():
                axis.contour(reference == value, levels=[0.5], colors="lime", linewidths=1)
            if (prediction == value).any():
                axis.contour(prediction == value, levels=[0.5], colors="red", linewidths=1, linestyles="dashed")
        axis.set_title(title, fontsize=8)
    figure.suptitle("worst cases: reference green, prediction red dashed", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    figure.savefig(out_file, dpi=100)
    plt.close(figure)
    return out_file


def draw_all(records: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Draw every figure that the records have data for into ``out_dir``; a figure that fails is logged, not fatal."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, draw in (
        ("training_curves.png", training_curves),
        ("dice_boxplots.png", dice_boxplots),
        ("worst_cases.png", worst_cases),
    ):
        try:
            path = draw(records, out_dir / name)
        except Exception as error:  # a figure must never cost the benchmark's numbers
            LOG.error("could not draw %s: %s: %s", name, type(error).__name__, error)
            continue
        if path is not None:
            drawn.append(path)
    return drawn
