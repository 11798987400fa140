"""Benchmark of the whole collection: train, evaluate and time every bundle on a prepared dataset, one table.

Each bundle runs exactly as a user runs it (``python -m monai.bundle run`` in a subprocess, with overrides:
:mod:`benchmarks.bundle_runs`), so the figures include everything a user pays for. Timing comes from inside those
runs (:mod:`benchmarks.timing`), the schedule from the budget and the bundle's facts (:mod:`benchmarks.budgets`), the
tables from :mod:`benchmarks.report` and the figures from :mod:`benchmarks.plots`. This module only runs the stages.

Outputs in ``--out``: ``benchmark.json`` (everything), ``benchmark.md`` (the tables of docs/results-log.md), ``plots/``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.budgets import (
    BUDGETS,
    LARGE_SIDE,
    Budget,
    dataset_of,
    held_out,
    held_out_name,
    held_out_overrides,
    lung_stage_bundle,
    lung_stage_overrides,
    shipped_settings,
)
from benchmarks.bundle_runs import (
    BUNDLES_DIR,
    available_bundles,
    evaluated_case_names,
    monai_run,
    output_tail,
    read_json,
    scored_cases,
)
from benchmarks.report import markdown
from benchmarks.timing import stage_profile, timer_config
from cxrseg.settings import settings_config_files

LOG = logging.getLogger("benchmarks.benchmark")

LARGE_REPEATS = 3
INFERENCE_LIMIT = 30
PROFILE_OVERRIDES = ("ckpt_path", "lung_bundle_dir", "lung_ckpt_path", "lung_overrides")


def inference_inputs(dataset_dir: Path, folder: Path, limit: int, cases: Sequence[str]) -> list[dict]:
    """Link the images of ``cases`` (at most ``limit``) into ``folder``, the inference contract's input."""
    entries = scored_cases(dataset_dir, cases)[:limit]
    folder.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        link = folder / Path(entry["image"]).name
        if not link.exists():
            link.symlink_to(entry["image"])
    return entries


def large_inputs(source_image: str, folder: Path, side: int = LARGE_SIDE, repeats: int = LARGE_REPEATS) -> Path:
    """``repeats`` copies of one radiograph enlarged to ``side`` x ``side`` (a full-size CXR), as 8-bit PNGs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(source_image) as image:
        large = image.convert("L").resize((side, side), Image.Resampling.LANCZOS)
    for index in range(repeats):
        large.save(folder / f"large_{index}.png")
    return folder


@dataclass
class BundleRun:
    """One bundle's benchmark in progress: where it writes, how its stages run, and the record they fill."""

    bundle_dir: Path
    run_dir: Path
    threads: int
    timeout: float | None
    record: dict[str, Any] = field(default_factory=dict)

    def stage(
        self, name: str, files: Sequence[str | Path], overrides: Mapping[str, Any], threads: int | None = None
    ) -> bool:
        """Run one ``monai.bundle run`` stage, logging to ``<name>.log``; on failure record which and why."""
        start = time.perf_counter()
        LOG.info("%s: %s", self.bundle_dir.name, name)
        log_file = self.run_dir / f"{name}.log"
        result = monai_run(files, overrides, self.timeout, threads or self.threads, log_file, bundle_on_path=True)
        self.record[f"{name}_wall_s"] = round(time.perf_counter() - start, 1)
        if result.returncode != 0:
            self.record["error"] = f"{name} failed (exit {result.returncode}); see {log_file}:\n{output_tail(result)}"
            LOG.error("%s: %s", self.bundle_dir.name, self.record["error"])
        return result.returncode == 0

    def timer(self, name: str, engine_id: str, seeded: bool) -> Path:
        """An override config timing ``engine_id`` into ``timing_<name>.json`` (read back by :meth:`timing`)."""
        return timer_config(
            self.run_dir / f"timer_{name}.json", engine_id, self.run_dir / f"timing_{name}.json", seeded
        )

    @property
    def configs(self) -> Path:
        return self.bundle_dir / "configs"

    def timing(self, name: str) -> dict | None:
        """The record of the timer :meth:`timer` set up, or None when its run stopped before writing it."""
        return read_json(self.run_dir / f"timing_{name}.json")


def train_stage(run: BundleRun, common: Mapping[str, Any]) -> bool:
    """Train with the budget's schedule and the step timer; the checkpoints go to ``common["ckpt_dir"]``."""
    files = [run.configs / "train.yaml", run.timer("train", "train#trainer", seeded=True)]
    if not run.stage("train", files, {**common, "output_dir": run.run_dir / "train"}):
        return False
    run.record["train"] = run.timing("train")
    return True


def evaluate_stage(run: BundleRun, common: Mapping[str, Any], shipped_weights: bool) -> bool:
    """Score the cases the weights never trained on (metadata ``held_out``) through ``evaluate.yaml``, with the
    settings file of the weights in ``common["ckpt_dir"]`` as the last config file."""
    cases = held_out(run.bundle_dir, shipped_weights)
    run.record["held_out"] = held_out_name(cases)
    evaluation = {**common, "output_dir": run.run_dir / "eval", **held_out_overrides(cases)}
    configs = [run.configs / "train.yaml", run.configs / "evaluate.yaml"]
    if not run.stage("evaluate", settings_config_files(configs, Path(common["ckpt_dir"]) / "model.pt"), evaluation):
        return False
    run.record["metrics"] = read_json(run.run_dir / "eval" / "metrics_summary.json")
    severity = run.run_dir / "eval" / "severity_summary.json"
    if severity.is_file():
        run.record["severity"] = read_json(severity)
    return True


def inference_stages(run: BundleRun, inference: Mapping[str, Any], dataset_dir: Path, large_threads: int) -> None:
    """Time the inference contract on the evaluated cases, then on full-size radiographs, and profile one of
    those in-process; the settings file of ``inference["ckpt_path"]`` is read after ``inference.yaml``."""
    weights = Path(inference["ckpt_path"])
    configs = settings_config_files([run.configs / "inference.yaml"], weights)
    cases_in = run.run_dir / "inference_in"
    entries = inference_inputs(dataset_dir, cases_in, INFERENCE_LIMIT, evaluated_case_names(run.run_dir / "eval"))
    files = [*configs, run.timer("infer", "evaluator", seeded=False)]
    if not run.stage(
        "infer", files, {**inference, "dataset_dir": cases_in, "output_dir": run.run_dir / "inference_out"}
    ):
        return
    run.record["infer"] = run.timing("infer")

    large_dir = large_inputs(entries[0]["image"], run.run_dir / "large_in")
    files = [*configs, run.timer("large", "evaluator", seeded=False)]
    large_out = run.run_dir / "large_out"
    if not run.stage(
        "infer_large", files, {**inference, "dataset_dir": large_dir, "output_dir": large_out}, large_threads
    ):
        return
    run.record["infer_large"] = run.timing("large")
    profiled = {key: value for key, value in inference.items() if key in PROFILE_OVERRIDES}
    run.record["large_profile_ms"] = stage_profile(
        run.bundle_dir, large_dir / "large_0.png", weights, profiled, large_threads, large_out
    )


def run_bundle(
    bundle: str,
    budget: Budget,
    dataset_dir: Path,
    run_dir: Path,
    threads: int,
    large_threads: int,
    timeout: float | None,
    lung_weights: Path | None = None,
) -> dict[str, Any]:
    """Train, evaluate and time one bundle; return its record (``error`` says which stage failed and why).

    ``large_threads``: torch threads of the full-size (2048x2048) inference timing and its profile.
    ``lung_weights``: the lung bundle's checkpoint, for two-stage bundles (:func:`lung_stage_overrides`).
    """
    bundle_dir = BUNDLES_DIR / bundle
    ckpt_dir = run_dir / "models" if budget.train else bundle_dir / "models"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    common = {"bundle_root": bundle_dir, "dataset_dir": dataset_dir, "ckpt_dir": ckpt_dir, **budget.overrides()}
    if not budget.train:
        common |= shipped_settings(bundle_dir)
    record = {"bundle": bundle, "dataset": str(dataset_dir), "run_dir": str(run_dir)}
    run = BundleRun(bundle_dir, run_dir, threads, timeout, record)
    if budget.train and not train_stage(run, common):
        return run.record
    if not evaluate_stage(run, common, shipped_weights=not budget.train):
        return run.record

    inference = {"bundle_root": bundle_dir, "ckpt_dir": ckpt_dir, "ckpt_path": ckpt_dir / "model.pt", "num_workers": 0}
    inference |= lung_stage_overrides(bundle_dir, lung_weights)
    if budget.train:
        # a smoke run's few epochs find no plausible lung field, which the check would rightly reject: what is
        # timed here is the inference contract, not the weights
        inference["check_lung_field"] = False
    inference_stages(run, inference, dataset_dir, large_threads)
    return run.record


def cache_comparison(bundle: str, budget: Budget, dataset_dir: Path, run_dir: Path, threads: int) -> dict | None:
    """One epoch of ``bundle`` with the cache switched off, for the loader-time comparison with the cached run."""
    configs = BUNDLES_DIR / bundle / "configs"
    timer = timer_config(run_dir / "timer_nocache.json", "train#trainer", run_dir / "timing_nocache.json", True)
    overrides = {
        "bundle_root": BUNDLES_DIR / bundle,
        "dataset_dir": dataset_dir,
        "ckpt_dir": run_dir / "models_nocache",
        **budget.overrides(),
        "epochs": 1,
        "val_interval": 1000,
        "output_dir": run_dir / "train_nocache",
        "train#dataset#cache_rate": 0.0,
    }
    result = monai_run(
        [configs / "train.yaml", timer], overrides, None, threads, run_dir / "train_nocache.log", bundle_on_path=True
    )
    return read_json(run_dir / "timing_nocache.json") if result.returncode == 0 else None


def lung_weights_for(bundle: str, budget: Budget, runs_dir: Path) -> Path | None:
    """The lung-stage weights a two-stage bundle uses in this benchmark: those the benchmark trained (the lung
    bundle runs first, in name order) or, for ``shipped``, the lung bundle's shipped ones; None if absent."""
    lung_bundle = lung_stage_bundle(BUNDLES_DIR / bundle)
    if lung_bundle is None:
        return None
    weights = (runs_dir / lung_bundle.name if budget.train else lung_bundle) / "models" / "model.pt"
    return weights if weights.is_file() else None


def chosen_bundles(bundle: str | Sequence[str] | None) -> list[str]:
    """The bundles to benchmark: all, one name or a list; unknown names stop the command."""
    names = available_bundles() if bundle is None else [bundle] if isinstance(bundle, str) else list(bundle)
    unknown = sorted(set(names) - set(available_bundles()))
    if unknown:
        raise SystemExit(f"unknown bundle(s) {', '.join(unknown)}; available: {', '.join(available_bundles())}")
    return names


def main(
    bundle: str | Sequence[str] | None = None,
    budget: str = "quick",
    dataset_dir: str | None = None,
    out: str | None = None,
    threads: int = 1,
    large_threads: int = 2,
    compare_cache: bool = True,
    plots: bool = True,
    timeout: float | None = None,
) -> dict:
    """Train, evaluate and time every bundle (or BUNDLE, one name or a list) and write benchmark.md/.json and plots.

    --budget quick: a CPU smoke run at 128x128 (minutes per bundle); --budget paper: the bundles' own (paper)
    settings, meant for a GPU; --budget shipped: no training, the shipped models/model.pt scored and timed.
    --dataset_dir: a prepared dataset for every bundle (default: ../shared/data/<the dataset its metadata's
    held_out names>); bundles are scored on the cases their weights never trained on (metadata held_out).
    --out: result folder (default $TMPDIR/cxrseg-benchmark; keep it outside the repository: it derives from
    licensed data). --threads: torch threads of every run (default 1, for a shared machine);
    --large_threads: those of the 2048x2048 inference timing (default 2, the target machine's cores).
    --compare_cache: one more epoch of the first bundle with the data cache off, for the loader-time comparison.

    Exit status: 0 when every bundle ran through, 1 when any failed (its error is in the table and JSON).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if budget not in BUDGETS:
        raise SystemExit(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    chosen = BUDGETS[budget]
    out_dir = Path(out) if out else Path(tempfile.gettempdir()) / "cxrseg-benchmark"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    records = []
    for index, name in enumerate(chosen_bundles(bundle)):
        run_dir = out_dir / "runs" / name
        try:
            data = dataset_of(BUNDLES_DIR / name, dataset_dir)
            lung_weights = lung_weights_for(name, chosen, out_dir / "runs")
            record = run_bundle(name, chosen, data, run_dir, threads, large_threads, timeout, lung_weights)
        except (OSError, subprocess.TimeoutExpired, ValueError) as error:
            record = {"bundle": name, "dataset": str(dataset_dir or "?"), "error": f"{type(error).__name__}: {error}"}
        if compare_cache and index == 0 and record.get("train"):
            record["train_without_cache"] = cache_comparison(name, chosen, data, run_dir, threads)
        records.append(record)
        (out_dir / "benchmark.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    table = markdown(records, budget, started)
    (out_dir / "benchmark.md").write_text(table, encoding="utf-8")
    if plots:
        from benchmarks.plots import draw_all

        draw_all(records, out_dir / "plots")
    print(table)
    print(f"results: {out_dir}")
    if any(record.get("error") for record in records):
        raise SystemExit(1)
    return {"out": str(out_dir), "bundles": len(records)}
