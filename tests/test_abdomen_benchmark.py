"""``python -m benchmarks abdomen``: which radiographs show the abdomen, and how a lung field below it is scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.abdomen import abdomen, abdomen_in_view, reference_lungs, summary
from cxrseg.data import load_split


def _lowest_lung_row_share(entry: dict) -> float:
    lungs = reference_lungs(entry)
    return (np.flatnonzero(lungs.any(axis=1))[-1] + 1) / lungs.shape[0]


def test_cases_with_the_abdomen_in_view_are_those_whose_lungs_end_above_the_floor(phantom_dir: Path) -> None:
    held_out = load_split(phantom_dir, "test")
    floor = float(np.median([_lowest_lung_row_share(entry) for entry in held_out]))

    chosen = {entry["case"] for entry in abdomen_in_view(phantom_dir, floor)}

    assert 0 < len(chosen) < len(held_out)
    for entry in held_out:
        assert (entry["case"] in chosen) == (_lowest_lung_row_share(entry) <= floor)


def test_the_summary_counts_the_cases_that_spill_more_than_five_percent() -> None:
    scores = {
        "a": {"spill": 0.0, "dice": 0.9},
        "b": {"spill": 0.04, "dice": 0.8},
        "c": {"spill": 0.20, "dice": 0.7},
    }

    result = summary(scores)

    assert result == pytest.approx(
        {"cases": 3, "mean_spill": 0.08, "notable": 1, "worst_spill": 0.20, "mean_dice": 0.8}
    )


def test_a_bundle_is_scored_through_its_own_inference(
    phantom_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    abdomen(out=str(tmp_path), source=str(phantom_dir), bundles=["res_cr_net"], floor=1.0)

    results = json.loads((tmp_path / "abdomen.json").read_text(encoding="utf-8"))["res_cr_net"]
    assert set(results["cases"]) == {entry["case"] for entry in load_split(phantom_dir, "test")}
    assert all(0.0 <= case["spill"] <= 1.0 and 0.0 <= case["dice"] <= 1.0 for case in results["cases"].values())
    assert "| res_cr_net | " in capsys.readouterr().out
