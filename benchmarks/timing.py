"""Where a bundle run spends its time: an Ignite handler timing every iteration, and an in-process profile of
one inference step by step.

:class:`StepTimer` goes into a ``monai.bundle run`` through an override config (:func:`timer_config`), so the
figures come from inside the very run a user makes; :func:`stage_profile` re-runs one inference in this
process with the bundle's own ``inference.yaml`` objects to split its time by transform.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bundle_runs import parse_bundle_config
from cxrseg.bundle import bundle_imports


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
        self.images.append(batch_images(engine.state.batch))

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
            "iteration_s_each": [a + b for a, b in zip(self.loader_s, self.step_s, strict=True)],
            "loader_fraction": float(np.sum(loader) / (np.sum(loader) + np.sum(step))) if step else None,
            "images_per_s": float(np.sum(images) / (np.sum(loader) + np.sum(step))) if step else None,
            "epoch_s": self.epoch_s,
            "parameters": int(sum(p.numel() for p in network.parameters())) if network is not None else None,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else cpu_name(),
            "threads": torch.get_num_threads(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        }
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        self.out_file.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def batch_images(batch: Any) -> int:
    """Images in a batch as the data loader delivers it (a list of items, or a dict of batched tensors)."""
    if isinstance(batch, (list, tuple)):
        return len(batch)
    image = batch.get("image") if isinstance(batch, Mapping) else None
    return int(image.shape[0]) if hasattr(image, "shape") else 1


def cpu_name() -> str:
    """The CPU model and core count, which name the device of a CPU run in the report."""
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
        "benchmark_timer": {"_target_": "benchmarks.timing.StepTimer", "out_file": str(out_file)},
        "initialize": seeding + [f"$@benchmark_timer.attach(@{engine_id})"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def timed_transforms(transforms: Sequence[Any], item: dict, stage: str, times: dict[str, float]) -> dict:
    """Apply ``transforms`` one by one, adding each one's time to ``times`` as ``<stage>: <transform class>``."""
    for transform in transforms:
        start = time.perf_counter()
        item = transform(item)
        key = f"{stage}: {type(transform).__name__}"
        times[key] = times.get(key, 0.0) + time.perf_counter() - start
    return item


def stage_profile(
    bundle_dir: Path,
    image: Path,
    weights: Path,
    overrides: Mapping[str, Any],
    threads: int,
    out_dir: Path,
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
            cpu = {**overrides, "device": "$torch.device('cpu')"}
            parser = parse_bundle_config(bundle_dir, "inference.yaml", cpu, weights)
            preprocessing, network = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("network")
            postprocessing, inferer = parser.get_parsed_content("postprocessing"), parser.get_parsed_content("inferer")
            network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            network.eval()
            best: dict[str, float] = {}
            for _ in range(repeats):
                steps: dict[str, float] = {}
                item = timed_transforms(preprocessing.transforms, {"image": str(image)}, "preprocess", steps)
                start = time.perf_counter()
                with torch.no_grad():
                    item["pred"] = inferer(item["image"][None], network)[0]
                steps["network"] = time.perf_counter() - start
                post = getattr(postprocessing, "transforms", [postprocessing])
                item = timed_transforms(post, item, "postprocess", steps)
                start = time.perf_counter()
                Image.fromarray(to_label_map(item["pred"])).save(out_dir / "profile_seg.png")
                steps["write_png"] = time.perf_counter() - start
                best = {key: min(value, best.get(key, value)) for key, value in steps.items()}
    finally:
        torch.set_num_threads(previous_threads)
    stages = {
        name: sum(v for k, v in best.items() if k.split(":")[0] == name)
        for name in ("preprocess", "network", "postprocess", "write_png")
    }
    stages["total"] = sum(stages.values())
    return {
        "stages": {key: round(1000 * value, 1) for key, value in stages.items()},
        "steps": {key: round(1000 * value, 1) for key, value in best.items()},
    }
