"""The benchmark's report: the Markdown tables it writes for README from the records of its runs."""

from __future__ import annotations

from tools.benchmark import BUDGETS, held_out_name, markdown


def stats(mean: float, sd: float = 0.1, worst: float = 0.0) -> dict:
    return {"n": 3, "mean": mean, "sd": sd, "worst": worst}


def group(dice: float) -> dict:
    return {"dice": stats(dice), "iou": stats(dice - 0.1), "hd95": stats(20.0, 5.0, 30.0), "hd95_undefined": 0}


def opacity_record() -> dict:
    """Three cases, one without opacity in the reference: Dice 0.4 over all, 0.6 over the two with opacity."""
    return {
        "bundle": "opacity_unet", "dataset": "/data/covid_opacity", "held_out": held_out_name(
            {"validate#dataset#data#split": "validation", "num_folds": 5, "fold": 1}),
        "metrics": {"cases": 3, "labels": {"opacity": {
            "all": group(0.4), "reference_present": group(0.6),
            "reference_absent": {"cases": 1, "false_positive_fraction": stats(0.05, 0.0, 0.05)},
        }}},
        "infer": {"parameters": 1234, "images_per_s": 2.0, "iteration_s_each": [1.0, 0.5, 0.3], "threads": 1,
                  "peak_rss_mb": 900.0, "device_name": "CPU test"},
    }


def test_cases_without_the_structure_are_reported_apart() -> None:
    table = markdown([opacity_record()], "shipped", "today")
    rows = [line for line in table.splitlines() if line.startswith("| opacity_unet | covid_opacity |")]
    assert rows[0].startswith("| opacity_unet | covid_opacity | fold 1 of 5 | opacity | 3 | 0.400 ± 0.100")
    assert "| opacity, cases with it | 2 | 0.600 ± 0.100" in rows[1]
    assert "| opacity, cases without it: predicted share of the image | 1 | 0.050 ± 0.000 (0.050)" in rows[2]
    assert BUDGETS["shipped"].description in table and "CPU test" in table


def test_shipped_weights_report_inference_figures_without_training() -> None:
    table = markdown([opacity_record()], "shipped", "today")
    speed = next(line for line in table.splitlines() if line.startswith("| opacity_unet | 1,234 |"))
    # no training columns; median of the per-image times after the first: (0.5 + 0.3) / 2 s
    assert speed.startswith("| opacity_unet | 1,234 | – | – | 2.0 | 400 |")


def test_a_failed_bundle_is_listed_with_its_error() -> None:
    record = {"bundle": "res_cr_net", "dataset": "/data/jsrt", "error": "train failed (exit 1); see log\ndetails"}
    table = markdown([record], "quick", "today")
    assert "| res_cr_net | jsrt | | failed: train failed (exit 1); see log |" in table
    assert "- res_cr_net: train failed (exit 1); see log" in table
