"""Severity of lung opacity: the label map of the pipeline, opacity % per lung and zone, overlays, and how
well opacity % predicts ICU admission and death.

Label map (metadata ``channel_def``): 0 background, 1 opacity inside the lung, 2 lung without opacity; the
lung field is labels 1 and 2 together. Opacity is 1 as in the training target and the evaluation maps, so
one value means opacity everywhere in the bundle. Left and right are the patient's (patient's right = image left).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from PIL import Image, ImageDraw

from .cxrseg.io import read_radiograph, save_png
from .cxrseg.lungs import lung_sides
from .cxrseg.overlay import OVERLAY_COMPRESS_LEVEL, draw_overlay

OPACITY, CLEAR_LUNG = 1, 2
ZONES = ("upper", "middle", "lower")


class OpacityLabelMapd(MapTransform):
    """Turn the binary opacity prediction in ``keys`` into the label map 0/1/2 (module docstring) using the lung field
    ``lung_key`` (both at the same size): opacity counts only inside the lung, as the network was trained."""

    def __init__(self, keys: KeysCollection, lung_key: str = "lung") -> None:
        super().__init__(keys)
        self.lung_key = lung_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        lung = torch.as_tensor(d[self.lung_key]) > 0
        for key in self.key_iterator(d):
            opacity = (torch.as_tensor(d[key]) > 0) & lung
            d[key] = torch.where(opacity, OPACITY, torch.where(lung, CLEAR_LUNG, 0)).to(torch.uint8)
        return d


def lung_zones(side: np.ndarray) -> dict[str, np.ndarray]:
    """Upper, middle and lower thirds of one lung's vertical extent, as radiologists zone a lung for scoring."""
    rows = np.nonzero(side.any(axis=1))[0]
    if rows.size == 0:
        return {zone: np.zeros_like(side) for zone in ZONES}
    bounds = np.linspace(rows[0], rows[-1] + 1, len(ZONES) + 1)
    row_index = np.arange(side.shape[0])[:, None]
    zone_bounds = zip(ZONES, bounds[:-1], bounds[1:], strict=True)
    return {zone: side & (row_index >= low) & (row_index < high) for zone, low, high in zone_bounds}


def percent(part: np.ndarray, whole: np.ndarray) -> float:
    """Opacity percentage of a region; NaN where the region is empty (no lung found there)."""
    area = int(whole.sum())
    return 100.0 * int((part & whole).sum()) / area if area else math.nan


def measure_opacity(label_map: np.ndarray) -> dict[str, float]:
    """Severity figures of one label map for ``measurements.csv``: lung and opacity areas, opacity % of the
    whole lung field, of each lung, and of each lung's upper/middle/lower zone."""
    lung = label_map > 0
    opacity = label_map == OPACITY
    row: dict[str, float] = {
        "lung_area_px": int(lung.sum()),
        "opacity_area_px": int(opacity.sum()),
        "opacity_pct": percent(opacity, lung),
    }
    for side, side_mask in lung_sides(lung).items():
        row[f"{side}_lung_area_px"] = int(side_mask.sum())
        row[f"{side}_lung_opacity_pct"] = percent(opacity, side_mask)
        for zone, zone_mask in lung_zones(side_mask).items():
            row[f"{side}_{zone}_opacity_pct"] = percent(opacity, zone_mask)
    return row


def overlay(image: np.ndarray, label_map: np.ndarray) -> Image.Image:
    """RGB picture of the radiograph with the lungs outlined in green and opacity filled in translucent red."""
    return draw_overlay(image, fills=[(label_map == OPACITY, (255, 0, 0))], outlines=[(label_map > 0, (0, 255, 0))])


def save_overlay(item: Mapping[str, Any], label_map: np.ndarray, output_dir: Path, stem: str) -> None:
    """``save_extras`` of the inference writer: ``<stem>_overlay.png`` from the original radiograph."""
    image = read_radiograph(item["source"])
    save_png(overlay(image, label_map), Path(output_dir) / f"{stem}_overlay.png", OVERLAY_COMPRESS_LEVEL)


def roc_points(scores: Sequence[float], positive: Sequence[bool]) -> list[tuple[float, float]]:
    """(false-positive rate, true-positive rate) of every threshold on ``scores``, from (0, 0) to (1, 1); tied
    scores move together, so the curve has a diagonal step there as the AUC counts them."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    true_pos, false_pos = np.cumsum(positive)[last_of_tie], np.cumsum(~positive)[last_of_tie]
    rates = [(fp / (~positive).sum(), tp / positive.sum()) for tp, fp in zip(true_pos, false_pos, strict=True)]
    points = [(0.0, 0.0), *rates]
    return [(float(x), float(y)) for x, y in points]


def draw_roc(points: Sequence[tuple[float, float]], title: str, size: int = 320) -> Image.Image:
    """A plain ROC plot (PIL; matplotlib is not a dependency): curve, chance diagonal, title with the AUC."""
    margin = 40
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    span = size - 2 * margin

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return margin + x * span, size - margin - y * span

    draw.rectangle([to_pixel(0, 1), to_pixel(1, 0)], outline="black")
    draw.line([to_pixel(0, 0), to_pixel(1, 1)], fill=(160, 160, 160))
    draw.line([to_pixel(x, y) for x, y in points], fill=(200, 0, 0), width=2)
    draw.text((margin, 10), title, fill="black")
    draw.text((size // 2 - 50, size - margin + 12), "false-positive rate", fill="black")
    draw.text((4, margin - 14), "TPR", fill="black")
    return image


def read_outcomes(metadata_csv: str | Path) -> dict[str, dict[str, bool]]:
    """Per case, the known outcomes: ``icu`` (``went_icu`` Y/N) and ``death`` (``survival`` N = died, Y =
    survived). Empty or other values are unknown and left out rather than counted as negatives."""
    known = {"Y": True, "N": False}
    outcomes: dict[str, dict[str, bool]] = {}
    with open(metadata_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            case: dict[str, bool] = {}
            if row.get("went_icu", "").strip().upper() in known:
                case["icu"] = known[row["went_icu"].strip().upper()]
            if row.get("survival", "").strip().upper() in known:
                case["death"] = not known[row["survival"].strip().upper()]
            outcomes[row["case"]] = case
    return outcomes
