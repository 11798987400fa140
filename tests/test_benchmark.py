"""The benchmark (``python -m benchmarks benchmark``): its report's Markdown tables from the records of its runs,
the facts it reads from the bundles, and the shape of ``tools/`` and ``benchmarks/`` (one command line each, no
import cycle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLES_DIR, REPO_ROOT, bundle_names

from benchmarks.__main__ import COMMANDS as BENCHMARK_COMMANDS
from benchmarks.budgets import (
    BUDGETS,
    SPLIT_ID,
    dataset_of,
    held_out,
    held_out_name,
    held_out_overrides,
    lung_stage_bundle,
    lung_stage_overrides,
)
from benchmarks.report import markdown
from tools.__main__ import COMMANDS, load_command

ENTRY_POINTS = {"tools": COMMANDS, "benchmarks": BENCHMARK_COMMANDS}


def stats(mean: float, sd: float = 0.1, worst: float = 0.0) -> dict:
    return {"n": 3, "mean": mean, "sd": sd, "worst": worst}


def group(dice: float) -> dict:
    return {"dice": stats(dice), "iou": stats(dice - 0.1), "hd95": stats(20.0, 5.0, 30.0), "hd95_undefined": 0}


def opacity_record() -> dict:
    """Three cases, one without opacity in the reference: Dice 0.4 over all, 0.6 over the two with opacity."""
    return {
        "bundle": "opacity_unet",
        "dataset": "/data/covid_opacity",
        "held_out": held_out_name({"split": "validation", "num_folds": 5, "fold": 1}),
        "metrics": {
            "cases": 3,
            "labels": {
                "opacity": {
                    "all": group(0.4),
                    "reference_present": group(0.6),
                    "reference_absent": {"cases": 1, "false_positive_fraction": stats(0.05, 0.0, 0.05)},
                }
            },
        },
        "infer": {
            "parameters": 1234,
            "images_per_s": 2.0,
            "iteration_s_each": [1.0, 0.5, 0.3],
            "threads": 1,
            "peak_rss_mb": 900.0,
            "device_name": "CPU test",
        },
    }


def test_cases_without_the_structure_are_reported_apart() -> None:
    table = markdown([opacity_record()], "shipped", "today")
    rows = [line for line in table.splitlines() if line.startswith("| opacity_unet | covid_opacity |")]
    assert rows[0].startswith("| opacity_unet | covid_opacity | fold 1 of 5 | opacity | 3 | 0.400 ± 0.100")
    assert "| opacity, cases with it | 2 | 0.600 ± 0.100" in rows[1]
    assert "| opacity, cases without it: predicted share of the image | 1 | 0.050 ± 0.000 (0.050)" in rows[2]
    assert BUDGETS["shipped"].description in table and "CPU test" in table


def test_opacity_severity_table_shows_false_alarms_on_clear_lungs() -> None:
    spread = {"n": 4, "mean": 2.5, "sd": 1.0, "median": 2.0, "p95": 6.25, "max": 7.0}
    rho = {"pred_opacity_pct": {"n": 8, "spearman_rho": 0.71}}
    record = opacity_record() | {
        "severity": {
            "with_opacity": {"iou": spread | {"mean": 0.512, "p95": 0.8}},
            "abs_error_pct": spread,
            "clear_lungs": {"pred_opacity_pct": spread},
            "radiologists": {"geographic_extent_mean": rho, "opacity_mean": rho},
        }
    }
    table = markdown([record], "shipped", "today")
    row = next(line for line in table.splitlines() if line.startswith("| opacity_unet | fold 1 of 5 | 0.512"))
    assert row == "| opacity_unet | fold 1 of 5 | 0.512 (0.800) | 2.5 (6.2) | 4 | 2.5 (6.2) | 0.71 (n=8) / 0.71 (n=8) |"


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


@pytest.mark.parametrize("bundle", bundle_names())
def test_every_bundle_states_its_held_out_cases(bundle: str) -> None:
    for shipped in (False, True):
        cases = held_out(BUNDLES_DIR / bundle, shipped_weights=shipped)
        assert cases["split"] in ("validation", "test") and cases["dataset"]
        assert held_out_overrides(cases)[SPLIT_ID] == cases["split"]


def test_shipped_opacity_weights_are_scored_on_their_cross_validation_fold() -> None:
    """opacity_unet ships fold 0 of 5, scored with the clear lungs of the same fold and the lung bundle's field it
    was trained with; weights trained with train.yaml's defaults hold out the test split and read the dataset's
    lung masks, as they trained."""
    shipped = held_out(BUNDLES_DIR / "opacity_unet", shipped_weights=True)
    overrides = held_out_overrides(shipped)
    fold = {k: overrides[k] for k in (SPLIT_ID, "num_folds", "fold")}
    assert fold == {SPLIT_ID: "validation", "num_folds": 5, "fold": 0}
    assert [Path(d).name for d in overrides["clear_lung_dirs"]] == ["jsrt", "montgomery", "shenzhen", "covid_qu_ex"]
    assert overrides["lung_source"] == "bundle"
    assert "lung_source" not in held_out_overrides(held_out(BUNDLES_DIR / "opacity_unet", shipped_weights=False))
    assert held_out_name(shipped) == "fold 0 of 5"
    assert held_out_name(held_out(BUNDLES_DIR / "opacity_unet", shipped_weights=False)) == "test"
    assert held_out(BUNDLES_DIR / "attention_bcdunet", shipped_weights=False)["split"] == "validation"


def test_dataset_defaults_to_the_shared_copy_of_the_one_metadata_names(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="covid_opacity: not a prepared dataset"):
        dataset_of(BUNDLES_DIR / "opacity_unet", str(tmp_path / "covid_opacity"))
    (tmp_path / "images").mkdir()
    assert dataset_of(BUNDLES_DIR / "lung_vae", str(tmp_path)) == tmp_path.resolve()


def test_lung_stage_comes_from_the_inference_config(tmp_path) -> None:
    assert lung_stage_bundle(BUNDLES_DIR / "res_cr_net") is None
    assert lung_stage_overrides(BUNDLES_DIR / "res_cr_net", None) == {}
    assert lung_stage_bundle(BUNDLES_DIR / "opacity_unet") == (BUNDLES_DIR / "lung_vae").resolve()
    with pytest.raises(FileNotFoundError, match="opacity_unet needs trained lung_vae weights"):
        lung_stage_overrides(BUNDLES_DIR / "opacity_unet", None)
    # the lung weights' settings travel in their settings file, so the lung stage needs no image_size of its own
    assert lung_stage_overrides(BUNDLES_DIR / "opacity_unet", tmp_path / "lung.pt") == {
        "lung_bundle_dir": (BUNDLES_DIR / "lung_vae").resolve(),
        "lung_ckpt_path": tmp_path / "lung.pt",
    }


def test_plots_do_not_import_the_benchmark() -> None:
    """The figures read a finished run; importing them must not pull in the benchmark (they used to import each
    other)."""
    code = "import sys, benchmarks.plots; print(sorted(m for m in sys.modules if m.startswith('benchmarks')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "benchmarks.benchmark" not in result.stdout and "benchmarks.plots" in result.stdout


@pytest.mark.parametrize("package", sorted(ENTRY_POINTS))
def test_every_tool_runs_through_python_m(package: str) -> None:
    """Each module of tools/ and benchmarks/ with an entry point of its own (a ``__main__`` guard) or a command
    is reached through ``python -m <package>``, and every registered command names a function or a dict of them."""
    commands = ENTRY_POINTS[package]
    registered = {target.split(":")[0] for target in commands.values()}
    for module in sorted((REPO_ROOT / package).glob("*.py")):
        if module.name == "__main__.py":
            continue
        tree = ast.parse(module.read_text(encoding="utf-8"))
        main_guards = [
            node for node in ast.walk(tree) if isinstance(node, ast.Compare) and "__main__" in ast.unparse(node)
        ]
        if main_guards:
            assert f"{package}.{module.stem}" in registered, (
                f"{module.name} runs on its own but not through python -m {package}"
            )
    for target in commands.values():
        assert callable(load_command(target)) or isinstance(load_command(target), dict), target
    assert all(target.startswith(f"{package}.") for target in commands.values())


def test_registered_commands() -> None:
    assert {"benchmarks.strauss", "benchmarks.memory", "benchmarks.benchmark"} <= {
        target.split(":")[0] for target in BENCHMARK_COMMANDS.values()
    }
    assert {"tools.synthetic", "tools.prepare", "tools.package", "tools.export"} <= {
        target.split(":")[0] for target in COMMANDS.values()
    }


def test_strauss_command_runs_importing_only_its_own_module() -> None:
    """A command imports only its module, so each needs only its own packages (matplotlib, skimage are the
    benchmark's and the readers')."""
    command = [sys.executable, "-m", "benchmarks", "strauss", "--rows", "64", "--cols", "48", "--repeats", "2"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "speed-up" in result.stdout and "sample_strauss" in result.stdout
    code = (
        "import contextlib, io, sys\n"
        "import tools.__main__ as entry\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    entry.main(['datalist', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('tools.', 'benchmarks'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert "tools.prepare" in loaded.stdout and "benchmarks" not in loaded.stdout, loaded.stdout + loaded.stderr


@pytest.mark.parametrize("package", sorted(ENTRY_POINTS))
def test_help_lists_every_command(package: str) -> None:
    result = subprocess.run([sys.executable, "-m", package, "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert all(name in result.stdout + result.stderr for name in ENTRY_POINTS[package])
