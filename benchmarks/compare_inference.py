"""Compare the inference of two checkouts of this repository, bundle by bundle, side by side in one run.

``speed``: milliseconds per 2048 x 2048 radiograph, end to end in a ``monai.bundle run`` process (read to
written outputs, the benchmark's :class:`~benchmarks.timing.StepTimer`), old and new checkout alternating so that
both see the same load on a shared machine. ``dice``: the same held-out evaluation (``train.yaml`` +
``evaluate.yaml`` on the shipped weights, the cases the benchmark scores) in both checkouts. ``anatomy``: the
lung Dice of this checkout with and without the anatomy post-processing (``cxrseg/postprocess.py``), per source.

The old checkout is a plain folder, e.g. ``git archive main | tar -x -C /tmp/old``::

    python -m benchmarks compare_inference speed --old /tmp/old --out /tmp/cmp
    python -m benchmarks compare_inference dice --old /tmp/old --out /tmp/cmp
    python -m benchmarks compare_inference anatomy --out /tmp/cmp
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.benchmark import large_inputs
from benchmarks.budgets import dataset_of, held_out_overrides, shipped_settings
from benchmarks.budgets import held_out as held_out_cases
from benchmarks.bundle_runs import BUNDLES_DIR, REPO_ROOT, SHARED_DATA, override_arguments
from benchmarks.timing import timer_config
from cxrseg.settings import settings_config_files

BUNDLES = ("lung_vae", "attention_bcdunet", "res_cr_net", "opacity_unet")


def _run(root: Path, configs: Sequence[str | Path], overrides: Mapping[str, Any], threads: int, log: Path) -> None:
    """``monai.bundle run`` of ``configs`` inside checkout ``root`` (its ``benchmarks`` and bundle code importable)."""
    import os

    bundle_dir = Path(configs[0]).parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(bundle_dir)]), PYTHONUNBUFFERED="1")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr([str(c) for c in configs])]
    result = subprocess.run(command + override_arguments(overrides), cwd=root, env=env, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed, see {log}")


def _timer(root: Path, run_dir: Path) -> Path:
    """The step timer's override config for a run in checkout ``root``, naming the timer where that checkout has
    it: ``benchmarks/timing.py``, ``tools/timing.py`` before the benchmarks left ``tools/``, or
    ``tools.benchmark.StepTimer`` before the benchmark's split into modules."""
    path = timer_config(run_dir / "timer.json", "evaluator", run_dir / "timing.json", False)
    if not (root / "benchmarks" / "timing.py").is_file():
        target = "tools.timing.StepTimer" if (root / "tools" / "timing.py").is_file() else "tools.benchmark.StepTimer"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["benchmark_timer"]["_target_"] = target
        path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def _large_ms(root: Path, bundle: str, large_dir: Path, run_dir: Path, threads: int) -> list[float]:
    """End-to-end ms of each image of one inference run over ``large_dir`` but the first (which warms up)."""
    bundle_dir = root / "bundles" / bundle
    timer = _timer(root, run_dir)
    overrides = {"bundle_root": bundle_dir, "dataset_dir": large_dir, "output_dir": run_dir / "out", "num_workers": 0}
    _run(root, [bundle_dir / "configs" / "inference.yaml", timer], overrides, threads, run_dir / "infer.log")
    timing = json.loads((run_dir / "timing.json").read_text(encoding="utf-8"))
    return [1000 * seconds for seconds in timing["iteration_s_each"][1:]]


def speed(
    old: str,
    out: str = "/tmp/cxrseg-compare",
    bundles: Sequence[str] = BUNDLES,
    rounds: int = 3,
    images: int = 4,
    threads: int = 2,
) -> dict[str, dict[str, float]]:
    """ms per 2048 x 2048 image, old vs new checkout: ``rounds`` alternating runs of ``images`` inputs each; the
    fastest image (the least disturbed by other jobs on a shared machine) and the median."""
    out_dir, roots = Path(out), {"old": Path(old).resolve(), "new": REPO_ROOT}
    source = sorted((dataset_of(BUNDLES_DIR / "lung_vae", None) / "images").iterdir())[0]
    large_dir = large_inputs(str(source), out_dir / "large_in", repeats=images)
    times: dict[str, dict[str, list[float]]] = {bundle: {name: [] for name in roots} for bundle in bundles}
    for round_index in range(rounds):
        for bundle in bundles:
            for name, root in roots.items():
                run_dir = out_dir / "speed" / f"{bundle}_{name}_{round_index}"
                times[bundle][name] += _large_ms(root, bundle, large_dir, run_dir, threads)
    summary = {
        bundle: {
            f"{name}_{stat}": float(function(ms))
            for name, ms in by_root.items()
            for stat, function in (("best", np.min), ("median", np.median))
        }
        for bundle, by_root in times.items()
    }
    print("| bundle | old ms best (median) | new ms best (median) | old / new (best) |\n|---|---|---|---|")
    for bundle, ms in summary.items():
        print(
            f"| {bundle} | {ms['old_best']:.0f} ({ms['old_median']:.0f})"
            f" | {ms['new_best']:.0f} ({ms['new_median']:.0f}) | {ms['old_best'] / ms['new_best']:.1f} |"
        )
    return summary


def held_out(bundle: str) -> dict[str, Any]:
    """Overrides selecting the held-out cases the benchmark scores the shipped weights on (this checkout's metadata
    ``held_out``, also for the old checkout, which may predate the key)."""
    return held_out_overrides(held_out_cases(BUNDLES_DIR / bundle, shipped_weights=True))


def evaluate(
    root: Path, bundle: str, dataset: Path, run_dir: Path, overrides: Mapping[str, Any] | None = None, threads: int = 1
) -> dict[str, Any]:
    """``metrics_summary.json`` of the shipped weights of ``bundle`` in checkout ``root`` on ``dataset`` (or of the
    weights in ``overrides["ckpt_dir"]``, whose settings file is read as the last config file)."""
    bundle_dir = root / "bundles" / bundle
    settings = {
        "bundle_root": bundle_dir,
        "dataset_dir": dataset,
        "ckpt_dir": bundle_dir / "models",
        "output_dir": run_dir,
        "num_workers": 0,
        **shipped_settings(bundle_dir),
        **held_out(bundle),
        **(overrides or {}),
    }
    configs = [bundle_dir / "configs" / "train.yaml", bundle_dir / "configs" / "evaluate.yaml"]
    configs = settings_config_files(configs, Path(settings["ckpt_dir"]) / "model.pt")
    _run(root, configs, settings, threads, run_dir / "evaluate.log")
    return json.loads((run_dir / "metrics_summary.json").read_text(encoding="utf-8"))


def _dice(summary: Mapping[str, Any]) -> dict[str, str]:
    """``mean ± sd (worst)`` Dice per structure of a metrics summary."""
    return {
        name: f"{dice['mean']:.4f} ± {dice['sd']:.4f} ({dice['worst']:.3f})"
        for name, stats in summary["labels"].items()
        for dice in [stats["all"]["dice"]]
        if dice["mean"] is not None
    }


def dice(old: str, out: str = "/tmp/cxrseg-compare", bundles: Sequence[str] = BUNDLES) -> None:
    """Dice of the shipped weights on each bundle's held-out cases, old vs new checkout."""
    out_dir, roots = Path(out), {"old": Path(old).resolve(), "new": REPO_ROOT}
    print("| bundle | structure | old Dice | new Dice |\n|---|---|---|---|")
    for bundle in bundles:
        scores = {
            name: _dice(
                evaluate(root, bundle, dataset_of(BUNDLES_DIR / bundle, None), out_dir / "dice" / f"{bundle}_{name}")
            )
            for name, root in roots.items()
        }
        for structure in scores["new"]:
            print(f"| {bundle} | {structure} | {scores['old'].get(structure, '–')} | {scores['new'][structure]} |")


def _per_case_dice(run_dir: Path, structure: str) -> dict[str, float]:
    import csv

    with open(run_dir / "metrics_per_case.csv", newline="", encoding="utf-8") as handle:
        return {row["case"]: float(row[f"{structure}_dice"]) for row in csv.DictReader(handle)}


def anatomy(
    out: str = "/tmp/cxrseg-compare",
    bundles: Sequence[str] = ("lung_vae", "attention_bcdunet", "res_cr_net"),
    sources: Sequence[str] = ("jsrt", "montgomery", "shenzhen"),
    limit: int | None = None,
) -> None:
    """Lung Dice of the shipped weights on each source's held-out cases (at most ``limit``, a seeded subset) with
    the anatomy filter and without it (``anatomy_postprocessing: false``), and how many cases it changed."""
    out_dir = Path(out)
    print("| bundle | source | cases | Dice without | Dice with | cases changed | largest gain | largest loss |")
    print("|---|---|---|---|---|---|---|---|")
    for bundle in bundles:
        for source in sources:
            dataset = dataset_of(BUNDLES_DIR / bundle, str(SHARED_DATA / source))
            runs = {flag: out_dir / "anatomy" / f"{bundle}_{source}_{flag}" for flag in ("without", "with")}
            scores = {}
            for flag, run_dir in runs.items():
                overrides = {"anatomy_postprocessing": flag == "with", "validate#dataset#data#limit": limit}
                summary = evaluate(REPO_ROOT, bundle, dataset, run_dir, overrides)
                structure = next(iter(summary["labels"]))
                scores[flag] = summary["labels"][structure]["all"]["dice"]
            cases = {flag: _per_case_dice(run_dir, structure) for flag, run_dir in runs.items()}
            change = [cases["with"][case] - cases["without"][case] for case in cases["with"]]
            changed = [delta for delta in change if abs(delta) > 1e-9]
            print(
                f"| {bundle} | {source} | {len(change)}"
                f" | {scores['without']['mean']:.4f} ({scores['without']['worst']:.3f})"
                f" | {scores['with']['mean']:.4f} ({scores['with']['worst']:.3f}) | {len(changed)}"
                f" | {max(change):+.4f} | {min(change):+.4f} |"
            )


COMMANDS = {"speed": speed, "dice": dice, "anatomy": anatomy}
