"""Metrics on hand-computed masks, the empty-mask rules, and the three-way summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrseg.evaluation import binary_metrics, case_metrics, dice, spill_below, summarize


def square(top: int, left: int, size: int, shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_overlapping_squares_hand_computed() -> None:
    # 4x4 squares shifted by one column: overlap 12, areas 16 + 16, union 20.
    scores = binary_metrics(square(2, 2, 4), square(2, 3, 4))
    assert scores["dice"] == pytest.approx(24 / 32)
    assert scores["iou"] == pytest.approx(12 / 20)
    assert scores["precision"] == pytest.approx(12 / 16) and scores["recall"] == pytest.approx(12 / 16)
    assert scores["accuracy"] == pytest.approx(1 - 8 / 400)
    assert scores["hd95"] == pytest.approx(1.0)


def test_validation_dice_alone_matches_the_full_metrics() -> None:
    """Training's validation computes Dice without HD95; it must give the evaluation's figure, empty masks included."""
    empty = np.zeros((20, 20), bool)
    assert dice(square(2, 2, 4), square(2, 3, 4)) == pytest.approx(24 / 32)
    assert dice(empty, empty) == 1.0 and dice(square(2, 2, 4), empty) == 0.0
    assert dice(square(0, 0, 5), square(3, 3, 6)) == binary_metrics(square(0, 0, 5), square(3, 3, 6))["dice"]


def test_hd95_of_distant_squares() -> None:
    assert binary_metrics(square(0, 0, 2), square(0, 10, 2))["hd95"] == pytest.approx(10.0)


def test_both_empty_is_perfect() -> None:
    empty = np.zeros((20, 20), bool)
    assert binary_metrics(empty, empty) == {
        "dice": 1.0,
        "iou": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "accuracy": 1.0,
        "hd95": 0.0,
    }


@pytest.mark.parametrize("pred_empty", [True, False])
def test_one_empty_scores_zero_and_hd95_undefined(pred_empty: bool) -> None:
    empty, full = np.zeros((20, 20), bool), square(5, 5, 5)
    scores = binary_metrics(empty, full) if pred_empty else binary_metrics(full, empty)
    assert scores["dice"] == 0.0 and scores["iou"] == 0.0 and math.isnan(scores["hd95"])


def test_case_metrics_per_label_and_summary_groups() -> None:
    names = ["background", "lungs", "opacity"]
    reference = np.zeros((20, 20), np.uint8)
    reference[square(0, 0, 10)] = 1
    with_opacity = reference.copy()
    with_opacity[square(2, 2, 4)] = 2
    pred_false_positive = reference.copy()
    pred_false_positive[square(12, 12, 2)] = 2
    rows = [
        {"case": "a", "pixels": 400} | case_metrics(with_opacity, with_opacity, names),
        {"case": "b", "pixels": 400} | case_metrics(pred_false_positive, reference, names),
    ]
    summary = summarize(rows, names)
    opacity = summary["labels"]["opacity"]
    assert opacity["all"]["dice"]["mean"] == pytest.approx(0.5)
    assert opacity["reference_present"]["dice"]["mean"] == pytest.approx(1.0)
    assert opacity["reference_absent"]["cases"] == 1
    assert opacity["reference_absent"]["false_positive_fraction"]["mean"] == pytest.approx(4 / 400)
    assert opacity["all"]["hd95_undefined"] == 1


def test_spill_below_counts_what_runs_past_the_reference_floor() -> None:
    """A lung field that runs 4 rows into the abdomen of a 100-row image: the rows within the 3-row margin are
    tolerated, the last one counts; nothing predicted or nothing referenced spills nothing."""
    reference = np.zeros((100, 10), bool)
    reference[20:60, 2:8] = True  # lowest reference row 59, so rows from 63 on count
    pred = reference.copy()
    pred[60:64, 2:8] = True  # rows 60-62 within the margin, row 63 beyond it
    assert spill_below(pred, reference, margin=0.03) == pytest.approx(6 / pred.sum())
    assert spill_below(reference, reference) == 0.0
    assert spill_below(np.zeros_like(pred), reference) == 0.0 == spill_below(pred, np.zeros_like(pred))
