"""Training memory and step time of one bundle under variants of its config, measured side by side.

Each variant trains a few steps in its own ``python -m monai.bundle run`` process (peak memory is a property
of the process), with :class:`benchmarks.timing.StepTimer` on the trainer, one after the other in one call so
the figures compare with each other on a shared machine. The first step is left out of the step time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.bundle_runs import BUNDLES_DIR, SHARED_DATA, monai_run, output_tail, read_json
from benchmarks.timing import timer_config

DEFAULT_VARIANTS = {
    "default": {},
    "channels-first": {"network": "$@network_def.to(@device)"},
    "checkpointed levels": {"checkpoint_levels": True},
}


def measure_variant(
    bundle_dir: Path, overrides: Mapping[str, Any], run_dir: Path, threads: int, timeout: float | None
) -> dict[str, Any]:
    """Train ``bundle_dir`` with ``overrides`` and return the trainer's timing record (peak RSS, step times)."""
    timer = timer_config(run_dir / "timer.json", "train#trainer", run_dir / "timing.json", seeded=True)
    result = monai_run(
        [bundle_dir / "configs" / "train.yaml", timer],
        overrides,
        timeout,
        threads,
        run_dir / "train.log",
        bundle_on_path=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{run_dir.name}: training failed (exit {result.returncode}):\n{output_tail(result)}")
    return read_json(run_dir / "timing.json") or {}


def memory(
    bundle: str = "res_cr_net",
    image_size: tuple[int, int] = (300, 340),
    batch_size: int = 8,
    steps: int = 3,
    variants: str | None = None,
    dataset_dir: str = str(SHARED_DATA / "jsrt"),
    out: str = "/tmp/cxrseg-memory",
    threads: int = 1,
    timeout: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Peak memory (process RSS; GPU max allocated on a GPU) and median step time of BUNDLE's training for each
    variant: VARIANTS is a JSON object {name: {config id: value}} (default: the bundle as it is, channels-first
    memory, checkpointed levels). STEPS training steps of BATCH_SIZE images at IMAGE_SIZE [rows, cols]."""
    chosen = json.loads(variants) if isinstance(variants, str) else (variants or DEFAULT_VARIANTS)
    bundle_dir = BUNDLES_DIR / bundle
    common = {
        "bundle_root": bundle_dir,
        "dataset_dir": Path(dataset_dir),
        "image_size": list(image_size),
        "batch_size": batch_size,
        "train_size": batch_size * steps,
        "epochs": 1,
        "val_interval": 1000,
        "num_workers": 0,
    }
    results: dict[str, dict[str, Any]] = {}
    for index, (name, overrides) in enumerate(chosen.items()):
        run_dir = Path(out) / f"variant{index}"
        run = {**common, "ckpt_dir": run_dir / "models", "output_dir": run_dir / "eval", **overrides}
        timing = measure_variant(bundle_dir, run, run_dir, threads, timeout)
        results[name] = {key: timing.get(key) for key in ("peak_rss_mb", "peak_gpu_mb", "step_s_median", "device")}
        print(
            f"{name}: peak RSS {timing['peak_rss_mb']:.0f} MB, step {timing['step_s_median']:.1f} s "
            f"(median of {timing['timed_iterations']}), {timing['device']}, {threads} thread(s)",
            flush=True,
        )
    return results
