"""Benchmark of the whole collection: train, evaluate and time every bundle on a prepared dataset, one table.

Each bundle runs exactly as a user runs it (``python -m monai.bundle run`` in a subprocess, with overrides), so
the figures include everything a user pays for. Timing comes from inside those runs: an override config adds
:class:`StepTimer`, an Ignite handler, to the trainer and to the inference evaluator, which records data-loader
time against step time, throughput and peak memory into a JSON file the benchmark reads back.

Outputs in ``--out``: ``benchmark.json`` (everything), ``benchmark.md`` (the README table), ``plots/``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrseg.bundle import bundle_imports

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
LOG = logging.getLogger("tools.benchmark")

DEFAULT_DATASET = "jsrt"
DATASET_OF_BUNDLE = {"opacity_unet": "covid_opacity"}
EVAL_SPLIT = "test"
# Scores come from cases a bundle's weights were not trained on: the test split, except where a bundle's own
# split has none (attention_bcdunet keeps the paper's 85/15 split; its validation cases chose the best epoch)
# and, for the shipped weights, where the model card names another held-out set (opacity_unet ships fold 1 of
# its 5-fold cross-validation).
HELD_OUT = {"attention_bcdunet": {"validate#dataset#data#split": "validation"}}
SHIPPED_HELD_OUT = {"opacity_unet": {"num_folds": 5, "fold": 1, "validate#dataset#data#split": "validation"}}
LARGE_SIDE = 2048
LARGE_REPEATS = 3
INFERENCE_LIMIT = 30
LUNG_STAGE_BUNDLE = "lung_vae"
PROFILE_OVERRIDES = ("image_size", "lung_bundle_dir", "lung_ckpt_path", "lung_overrides")


@dataclass(frozen=True)
class Budget:
    """A named training budget: overrides of the bundle's schedule (``None`` keeps the bundle's value)."""

    description: str
    train: bool = True
    epochs: int | None = None
    image_side: int | None = None
    train_size: int | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    val_interval: int | None = None

    def overrides(self) -> dict[str, Any]:
        values = {
            "epochs": self.epochs,
            "image_size": None if self.image_side is None else [self.image_side, self.image_side],
            "train_size": self.train_size,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "val_interval": self.val_interval,
        }
        return {key: value for key, value in values.items() if value is not None}


BUDGETS = {
    "quick": Budget(
        "CPU smoke run: 128x128 inputs, 24 training cases, 2 epochs, batch 4, no loader workers",
        epochs=2, image_side=128, train_size=24, batch_size=4, num_workers=0, val_interval=2,
    ),
    "paper": Budget("the paper's settings (bundle defaults: epochs, size, batch), for a GPU"),
    "shipped": Budget(
        "no training: the shipped models/model.pt of each bundle at the settings of its inference.yaml", train=False
    ),
}


def subprocess_env(threads: int = 1, bundle_dir: Path | None = None) -> dict[str, str]:
    """Environment of bundle subprocesses: repository importable, thread count pinned (the machine is shared).

    ``bundle_dir`` is put on the path from the start, for override configs whose ``initialize`` names bundle
    code (MONAI adds the bundle root itself only when ``run`` starts).
    """
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(bundle_dir) if bundle_dir else None, env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def override_arguments(overrides: Mapping[str, Any]) -> list[str]:
    """``--id value`` pairs for ``monai.bundle run``; values are written as Python literals, which fire parses."""
    arguments = []
    for key, value in overrides.items():
        if isinstance(value, Path):
            value = str(value)
        text = value if isinstance(value, str) else repr(value)
        arguments += [f"--{key}", text]
    return arguments


def monai_run(
    config_files: Sequence[Path],
    overrides: Mapping[str, Any],
    timeout: float | None = None,
    threads: int = 1,
    log_file: Path | None = None,
    bundle_on_path: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run`` on ``config_files`` (merged in order) with ``overrides``, from the
    repository root; capture its output (and copy it to ``log_file``). ``bundle_on_path``: see
    :func:`subprocess_env` (the bundle is the folder above the first config file)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr([str(f) for f in config_files])]
    result = subprocess.run(
        command + override_arguments(overrides), cwd=REPO_ROOT, capture_output=True, text=True,
        env=subprocess_env(threads, Path(config_files[0]).parents[1] if bundle_on_path else None), timeout=timeout,
    )
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}", encoding="utf-8")
    return result


def parse_bundle_config(bundle_dir: Path, config: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """A ``ConfigParser`` of one of the bundle's configs with ``bundle_root`` and ``overrides`` set; use it
    inside :func:`cxrseg.bundle.bundle_imports` of the same bundle, which makes its ``scripts`` importable."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / config))
    parser["bundle_root"] = str(bundle_dir)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def lung_stage_overrides(
    bundle_dir: Path, lung_weights: Path | None, lung_image_size: Sequence[int] | None = None
) -> dict[str, Any]:
    """Overrides naming the lung model of a two-stage bundle (one whose inference has ``lung_ckpt_path``: the lung
    bundle segments the lung field first), and the ``image_size`` it was trained at where that is not the one
    of its ``inference.yaml``; empty for one-stage bundles."""
    import yaml

    config = yaml.safe_load((bundle_dir / "configs" / "inference.yaml").read_text(encoding="utf-8"))
    if "lung_ckpt_path" not in config:
        return {}
    if lung_weights is None:
        raise FileNotFoundError(f"{bundle_dir.name} needs trained {LUNG_STAGE_BUNDLE} weights for its lung stage")
    overrides = {"lung_bundle_dir": BUNDLES_DIR / LUNG_STAGE_BUNDLE, "lung_ckpt_path": lung_weights}
    if lung_image_size is not None:
        overrides["lung_overrides"] = {"image_size": list(lung_image_size)}
    return overrides


def save_untrained_weights(bundle_dir: Path, out_file: Path, config: str = "inference.yaml") -> Path:
    """Save a freshly initialised ``network_def`` state dict as ``out_file``: a checkpoint for tests of file
    handling, where the weights do not matter."""
    import torch

    with bundle_imports(bundle_dir):
        network = parse_bundle_config(bundle_dir, config).get_parsed_content("network_def")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out_file)
    return out_file


class StepTimer:
    """Ignite handler recording where an engine's iterations spend their time, written to ``out_file`` as JSON.

    Per iteration: ``loader_s`` (waiting for the data loader: GET_BATCH_STARTED to GET_BATCH_COMPLETED) and
    ``step_s`` (ITERATION_STARTED to ITERATION_COMPLETED: the network step and every handler attached before
    this one, e.g. the inference writer's PNG). Also images seen, parameters, device and peak memory. Written
    after every epoch, so a run cut short still leaves its figures.
    """

    def __init__(self, out_file: str, skip_first: int = 1) -> None:
        self.out_file = Path(out_file)
        self.skip_first = skip_first
        self.loader_s: list[float] = []
        self.step_s: list[float] = []
        self.images: list[int] = []
        self.epoch_s: list[float] = []
        self._marks: dict[str, float] = {}

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.GET_BATCH_STARTED, self._mark, "batch")
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._loaded)
        engine.add_event_handler(Events.ITERATION_STARTED, self._mark, "step")
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stepped)
        engine.add_event_handler(Events.EPOCH_STARTED, self._mark, "epoch")
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_done)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _mark(self, engine: Any, name: str) -> None:
        self._marks[name] = time.perf_counter()

    def _loaded(self, engine: Any) -> None:
        self.loader_s.append(time.perf_counter() - self._marks["batch"])
        self.images.append(_batch_size(engine.state.batch))

    def _stepped(self, engine: Any) -> None:
        self.step_s.append(time.perf_counter() - self._marks["step"])

    def _epoch_done(self, engine: Any) -> None:
        self.epoch_s.append(time.perf_counter() - self._marks["epoch"])
        self.write(engine)

    def write(self, engine: Any) -> None:
        import torch

        skip = self.skip_first if len(self.step_s) > self.skip_first else 0
        loader, step, images = self.loader_s[skip:], self.step_s[skip:], self.images[skip:]
        network = getattr(engine, "network", None)
        device = next(network.parameters()).device if network is not None else torch.device("cpu")
        record = {
            "iterations": len(self.step_s),
            "timed_iterations": len(step),
            "loader_s_mean": float(np.mean(loader)) if loader else None,
            "step_s_mean": float(np.mean(step)) if step else None,
            "step_s_median": float(np.median(step)) if step else None,
            "iteration_s_each": [a + b for a, b in zip(self.loader_s, self.step_s)],
            "loader_fraction": float(np.sum(loader) / (np.sum(loader) + np.sum(step))) if step else None,
            "images_per_s": float(np.sum(images) / (np.sum(loader) + np.sum(step))) if step else None,
            "epoch_s": self.epoch_s,
            "parameters": int(sum(p.numel() for p in network.parameters())) if network is not None else None,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else _cpu_name(),
            "threads": torch.get_num_threads(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        }
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        self.out_file.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _batch_size(batch: Any) -> int:
    if isinstance(batch, (list, tuple)):
        return len(batch)
    image = batch.get("image") if isinstance(batch, Mapping) else None
    return int(image.shape[0]) if hasattr(image, "shape") else 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"CPU, {os.cpu_count()} cores"


def timer_config(path: Path, engine_id: str, out_file: Path, seeded: bool) -> Path:
    """An override config that attaches a :class:`StepTimer` to ``engine_id`` in ``initialize``.

    ``initialize`` runs before ``run`` and builds the engine (and its network); ``seeded`` seeds first, so that
    a training run gets the same initial weights as without the timer.
    """
    seeding = ["$monai.utils.set_determinism(seed=@seed)"] if seeded else []
    config = {
        "benchmark_timer": {"_target_": "tools.benchmark.StepTimer", "out_file": str(out_file)},
        "initialize": seeding + [f"$@benchmark_timer.attach(@{engine_id})"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def dataset_of(bundle: str, dataset_dir: str | None) -> Path:
    """The prepared dataset a bundle is benchmarked on: ``dataset_dir`` if given, else its shared default."""
    if dataset_dir is not None:
        path = Path(dataset_dir)
    else:
        path = SHARED_DATA / DATASET_OF_BUNDLE.get(bundle, DEFAULT_DATASET)
    if not (path / "images").is_dir():
        raise FileNotFoundError(f"{path}: not a prepared dataset (no images/); pass --dataset_dir")
    return path.resolve()


def _tail(result: subprocess.CompletedProcess, lines: int = 25) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def scored_cases(dataset_dir: str | Path, cases: Sequence[str]) -> list[dict]:
    """Datalist entries (absolute paths) of the named cases of a prepared dataset, in the given order: the
    cases an evaluation scored, whatever split or fold they came from."""
    from cxrseg.data import absolute_entry, discover_cases

    by_case = {entry["case"]: entry for entry in discover_cases(dataset_dir)}
    return [absolute_entry(by_case[case], dataset_dir) for case in cases if case in by_case]


def evaluated_case_names(run_dir: Path) -> list[str]:
    """The cases of the run's ``eval/metrics_per_case.csv``."""
    import csv

    with open(run_dir / "eval" / "metrics_per_case.csv", newline="", encoding="utf-8") as handle:
        return [row["case"] for row in csv.DictReader(handle)]


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


def _timed_transforms(transforms: Sequence[Any], item: dict, stage: str, times: dict[str, float]) -> dict:
    """Apply ``transforms`` one by one, adding each one's time to ``times`` as ``<stage>: <transform class>``."""
    for transform in transforms:
        start = time.perf_counter()
        item = transform(item)
        key = f"{stage}: {type(transform).__name__}"
        times[key] = times.get(key, 0.0) + time.perf_counter() - start
    return item


def stage_profile(
    bundle_dir: Path, image: Path, weights: Path, overrides: Mapping[str, Any], threads: int, out_dir: Path,
    repeats: int = 2,
) -> dict[str, dict[str, float]]:
    """Where the time of one inference goes, in-process, with the bundle's own ``inference.yaml`` objects; the
    label map is written into ``out_dir``.

    Returns milliseconds per stage (read, preprocess, network, postprocess, write_png, total) and per transform;
    each the best of ``repeats`` runs (the first warms up).
    """
    import torch
    from PIL import Image

    from cxrseg.inference import to_label_map

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with bundle_imports(bundle_dir):
            parser = parse_bundle_config(bundle_dir, "inference.yaml", {**overrides, "device": "$torch.device('cpu')"})
            preprocessing, network = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("network")
            postprocessing, inferer = parser.get_parsed_content("postprocessing"), parser.get_parsed_content("inferer")
            network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            network.eval()
            best: dict[str, float] = {}
            for _ in range(repeats):
                steps: dict[str, float] = {}
                item = _timed_transforms(preprocessing.transforms, {"image": str(image)}, "preprocess", steps)
                start = time.perf_counter()
                with torch.no_grad():
                    item["pred"] = inferer(item["image"][None], network)[0]
                steps["network"] = time.perf_counter() - start
                post = getattr(postprocessing, "transforms", [postprocessing])
                item = _timed_transforms(post, item, "postprocess", steps)
                start = time.perf_counter()
                Image.fromarray(to_label_map(item["pred"])).save(out_dir / "profile_seg.png")
                steps["write_png"] = time.perf_counter() - start
                best = {key: min(value, best.get(key, value)) for key, value in steps.items()}
    finally:
        torch.set_num_threads(previous_threads)
    stages = {name: sum(v for k, v in best.items() if k.split(":")[0] == name)
              for name in ("preprocess", "network", "postprocess", "write_png")}
    stages["total"] = sum(stages.values())
    return {
        "stages": {key: round(1000 * value, 1) for key, value in stages.items()},
        "steps": {key: round(1000 * value, 1) for key, value in best.items()},
    }


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
    configs = bundle_dir / "configs"
    ckpt_dir = run_dir / "models" if budget.train else bundle_dir / "models"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    common = {"bundle_root": bundle_dir, "dataset_dir": dataset_dir, "ckpt_dir": ckpt_dir, **budget.overrides()}
    if not budget.train:
        common |= shipped_settings(bundle_dir)
    record: dict[str, Any] = {"bundle": bundle, "dataset": str(dataset_dir), "run_dir": str(run_dir)}

    def stage(name: str, files: list[Path], overrides: Mapping[str, Any], stage_threads: int = threads) -> bool:
        start = time.perf_counter()
        LOG.info("%s: %s", bundle, name)
        result = monai_run(files, overrides, timeout, stage_threads, run_dir / f"{name}.log", bundle_on_path=True)
        record[f"{name}_wall_s"] = round(time.perf_counter() - start, 1)
        if result.returncode != 0:
            log_file = run_dir / f"{name}.log"
            record["error"] = f"{name} failed (exit {result.returncode}); see {log_file}:\n{_tail(result)}"
            LOG.error("%s: %s", bundle, record["error"])
        return result.returncode == 0

    if budget.train:
        train_timer = timer_config(run_dir / "timer_train.json", "train#trainer", run_dir / "timing_train.json", True)
        if not stage("train", [configs / "train.yaml", train_timer], {**common, "output_dir": run_dir / "train"}):
            return record
        record["train"] = _read_json(run_dir / "timing_train.json")
    held_out = {"validate#dataset#data#split": EVAL_SPLIT, **HELD_OUT.get(bundle, {})}
    if not budget.train:
        held_out |= SHIPPED_HELD_OUT.get(bundle, {})
    record["held_out"] = held_out_name(held_out)
    evaluation = {**common, "output_dir": run_dir / "eval", **held_out}
    if not stage("evaluate", [configs / "train.yaml", configs / "evaluate.yaml"], evaluation):
        return record
    record["metrics"] = _read_json(run_dir / "eval" / "metrics_summary.json")

    inference = {"bundle_root": bundle_dir, "ckpt_dir": ckpt_dir, "ckpt_path": ckpt_dir / "model.pt", "num_workers": 0}
    inference |= lung_stage_overrides(bundle_dir, lung_weights, trained_image_size(budget, LUNG_STAGE_BUNDLE))
    inference |= {key: value for key, value in common.items() if key == "image_size"}
    entries = inference_inputs(dataset_dir, run_dir / "inference_in", INFERENCE_LIMIT, evaluated_case_names(run_dir))
    infer_timer = timer_config(run_dir / "timer_infer.json", "evaluator", run_dir / "timing_infer.json", False)
    inference_run = {**inference, "dataset_dir": run_dir / "inference_in", "output_dir": run_dir / "inference_out"}
    if not stage("infer", [configs / "inference.yaml", infer_timer], inference_run):
        return record
    record["infer"] = _read_json(run_dir / "timing_infer.json")
    large_dir = large_inputs(entries[0]["image"], run_dir / "large_in")
    large_timer = timer_config(run_dir / "timer_large.json", "evaluator", run_dir / "timing_large.json", False)
    large_run = {**inference, "dataset_dir": large_dir, "output_dir": run_dir / "large_out"}
    if stage("infer_large", [configs / "inference.yaml", large_timer], large_run, large_threads):
        record["infer_large"] = _read_json(run_dir / "timing_large.json")
        record["large_profile_ms"] = stage_profile(
            bundle_dir, large_dir / "large_0.png", ckpt_dir / "model.pt",
            {key: value for key, value in inference.items() if key in PROFILE_OVERRIDES}, large_threads,
            run_dir / "large_out",
        )
    return record


def trained_image_size(budget: Budget, bundle: str) -> list[int] | None:
    """The ``image_size`` a bundle was trained at in this benchmark: the budget's, else the bundle's
    ``train.yaml`` default; None for the shipped weights, whose ``inference.yaml`` states theirs."""
    import yaml

    if not budget.train:
        return None
    if "image_size" in budget.overrides():
        return budget.overrides()["image_size"]
    config = yaml.safe_load((BUNDLES_DIR / bundle / "configs" / "train.yaml").read_text(encoding="utf-8"))
    return config["image_size"]


def held_out_name(overrides: Mapping[str, Any]) -> str:
    """How the table names the evaluated cases: the split, and the fold where folds are used."""
    split = overrides["validate#dataset#data#split"]
    return f"fold {overrides['fold']} of {overrides['num_folds']}" if "num_folds" in overrides else split


def shipped_settings(bundle_dir: Path) -> dict[str, Any]:
    """The settings the shipped weights were trained with, as ``inference.yaml`` states them (``image_size``),
    for evaluating ``models/model.pt`` through ``train.yaml`` + ``evaluate.yaml``."""
    import yaml

    config = yaml.safe_load((bundle_dir / "configs" / "inference.yaml").read_text(encoding="utf-8"))
    return {"image_size": config["image_size"]}


def cache_comparison(bundle: str, budget: Budget, dataset_dir: Path, run_dir: Path, threads: int) -> dict | None:
    """One epoch of ``bundle`` with the cache switched off, for the loader-time comparison with the cached run."""
    configs = BUNDLES_DIR / bundle / "configs"
    timer = timer_config(run_dir / "timer_nocache.json", "train#trainer", run_dir / "timing_nocache.json", True)
    overrides = {
        "bundle_root": BUNDLES_DIR / bundle, "dataset_dir": dataset_dir, "ckpt_dir": run_dir / "models_nocache",
        **budget.overrides(), "epochs": 1, "val_interval": 1000, "output_dir": run_dir / "train_nocache",
        "train#dataset#cache_rate": 0.0,
    }
    result = monai_run(
        [configs / "train.yaml", timer], overrides, None, threads, run_dir / "train_nocache.log", bundle_on_path=True
    )
    return _read_json(run_dir / "timing_nocache.json") if result.returncode == 0 else None


def _stat(stats: Mapping[str, Any] | None, digits: int) -> str:
    if not stats or stats.get("mean") is None:
        return "–"
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f} ({stats['worst']:.{digits}f})"


def _number(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _loader_share(timing: Mapping[str, Any]) -> str:
    iteration_ms = 1000 * (timing["loader_s_mean"] + timing["step_s_mean"])
    return f"{timing['loader_fraction']:.1%} ({1000 * timing['loader_s_mean']:.1f} ms of {iteration_ms:.1f} ms)"


def markdown(records: Sequence[Mapping[str, Any]], budget_name: str, started: str) -> str:
    """The README's results tables: accuracy per structure, then speed and memory per bundle."""
    devices = sorted({(r.get("train") or r.get("infer") or {}).get("device_name", "?") for r in records})
    lines = [
        f"Budget `{budget_name}` ({BUDGETS[budget_name].description}); scored on held-out cases "
        f"(column `held out`); device: {', '.join(devices)}; {started}.",
        "",
        "| bundle | dataset | held out | structure | cases | Dice mean ± sd (worst) | IoU mean ± sd (worst) "
        "| HD95 px mean ± sd (worst) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        dataset = Path(record["dataset"]).name
        metrics = record.get("metrics")
        if not metrics:
            failure = record.get("error", "?").splitlines()[0]
            lines.append(f"| {record['bundle']} | {dataset} | | failed: {failure} | | | | |")
            continue
        prefix = f"| {record['bundle']} | {dataset} | {record.get('held_out', '?')} |"
        for structure, groups in metrics["labels"].items():
            absent = groups["reference_absent"]
            # where some references lack the structure, Dice/IoU of 0 or 1 on those cases blur the mean: the
            # cases that have it are scored apart, the others by the false-positive share of the image
            scored = [("all", structure, metrics["cases"])]
            if absent["cases"]:
                scored.append(("reference_present", f"{structure}, cases with it", metrics["cases"] - absent["cases"]))
            for group, title, cases in scored:
                scores = groups[group]
                undefined = f", {scores['hd95_undefined']} undefined" if scores.get("hd95_undefined") else ""
                lines.append(
                    f"{prefix} {title} | {cases} | {_stat(scores['dice'], 3)} | {_stat(scores['iou'], 3)} | "
                    f"{_stat(scores['hd95'], 1)}{undefined} |"
                )
            if absent["cases"]:
                lines.append(
                    f"{prefix} {structure}, cases without it: predicted share of the image | {absent['cases']} | "
                    f"{_stat(absent['false_positive_fraction'], 3)} | | |"
                )
    lines += [
        "",
        "| bundle | parameters | train img/s | loader / iteration | infer img/s | ms per image (dataset) | "
        "ms per 2048² image | peak RSS MB (train / infer) | peak GPU MB | threads |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        train, infer, large = record.get("train") or {}, record.get("infer") or {}, record.get("infer_large") or {}
        per_image = infer.get("iteration_s_each", [])[1:]
        large_each = large.get("iteration_s_each", [])
        parameters = train.get("parameters", infer.get("parameters"))
        lines.append(
            f"| {record['bundle']} | {_number(parameters, ',')} | {_number(train.get('images_per_s'), '.1f')} | "
            f"{_number(train.get('loader_fraction'), '.1%')} | {_number(infer.get('images_per_s'), '.1f')} | "
            f"{_number(1000 * float(np.median(per_image)) if per_image else None, '.0f')} | "
            f"{_number(1000 * float(np.median(large_each)) if large_each else None, '.0f')} | "
            f"{_number(train.get('peak_rss_mb'), '.0f')} / {_number(infer.get('peak_rss_mb'), '.0f')} | "
            f"{_number(train.get('peak_gpu_mb'), '.0f')} | {train.get('threads', infer.get('threads', '–'))} |"
        )
    profiled = [r for r in records if r.get("large_profile_ms")]
    if profiled:
        names = list(profiled[0]["large_profile_ms"]["stages"])
        lines += ["", f"Where one {LARGE_SIDE}x{LARGE_SIDE} inference spends its time (ms, in-process, best of 2; "
                  "the three costliest steps last):", "",
                  "| bundle | threads | " + " | ".join(names) + " | costliest steps |",
                  "|---|---|" + "---|" * (len(names) + 1)]
        for record in profiled:
            profile = record["large_profile_ms"]
            costliest = sorted(profile["steps"].items(), key=lambda step: -step[1])[:3]
            lines.append(
                f"| {record['bundle']} | {record.get('infer_large', {}).get('threads', '–')} | "
                + " | ".join(str(profile["stages"][n]) for n in names) + " | "
                + ", ".join(f"{name} {ms:.0f}" for name, ms in costliest) + " |"
            )
    comparison = [r for r in records if r.get("train_without_cache")]
    for record in comparison:
        cached, uncached = record["train"], record["train_without_cache"]
        lines += [
            "",
            f"Data loading, {record['bundle']}, same budget and benchmark run: with the cache (deterministic "
            f"transforms cached) the loader takes {_loader_share(cached)} of each training iteration; "
            f"with the cache off (every transform on every read) {_loader_share(uncached)}.",
        ]
    failed = [r for r in records if r.get("error")]
    if failed:
        lines += ["", "Failures:", ""] + [f"- {r['bundle']}: {r['error'].splitlines()[0]}" for r in failed]
    return "\n".join(lines) + "\n"


def available_bundles() -> list[str]:
    return sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "train.yaml").is_file())


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
    --dataset_dir: a prepared dataset for every bundle (default ../shared/data/jsrt,
    ../shared/data/covid_opacity for opacity_unet); bundles are scored on its test split. --out: result folder
    (default $TMPDIR/cxrseg-benchmark; keep it outside the repository: it derives from licensed data).
    --threads: torch threads of every run (default 1; the development machine is shared); --large_threads: those of
    the 2048x2048 inference timing (default 2, the target machine's cores). --compare_cache: one
    more epoch of the first bundle with the data cache off, for the loader-time comparison.

    Exit status: 0 when every bundle ran through, 1 when any failed (its error is in the table and JSON).
    """
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if budget not in BUDGETS:
        raise SystemExit(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    names = available_bundles() if bundle is None else [bundle] if isinstance(bundle, str) else list(bundle)
    unknown = sorted(set(names) - set(available_bundles()))
    if unknown:
        raise SystemExit(f"unknown bundle(s) {', '.join(unknown)}; available: {', '.join(available_bundles())}")
    out_dir = Path(out) if out else Path(tempfile.gettempdir()) / "cxrseg-benchmark"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    records = []
    for index, name in enumerate(names):
        run_dir = out_dir / "runs" / name
        try:
            lung_run = out_dir / "runs" if BUDGETS[budget].train else BUNDLES_DIR
            lung_weights = lung_run / LUNG_STAGE_BUNDLE / "models" / "model.pt"
            record = run_bundle(
                name, BUDGETS[budget], dataset_of(name, dataset_dir), run_dir, threads, large_threads, timeout,
                lung_weights if lung_weights.is_file() else None,
            )
        except (OSError, subprocess.TimeoutExpired, ValueError) as error:
            record = {"bundle": name, "dataset": str(dataset_dir or "?"), "error": f"{type(error).__name__}: {error}"}
        if compare_cache and index == 0 and record.get("train"):
            record["train_without_cache"] = cache_comparison(
                name, BUDGETS[budget], dataset_of(name, dataset_dir), run_dir, threads
            )
        records.append(record)
        (out_dir / "benchmark.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    table = markdown(records, budget, started)
    (out_dir / "benchmark.md").write_text(table, encoding="utf-8")
    if plots:
        from tools.plots import draw_all

        draw_all(records, out_dir / "plots")
    print(table)
    print(f"results: {out_dir}")
    if any(record.get("error") for record in records):
        raise SystemExit(1)
    return {"out": str(out_dir), "bundles": len(records)}


if __name__ == "__main__":
    import fire

    fire.Fire(main)
