"""Time to accuracy of training on CPU: "before" against "after", side by side in one run.

``recipes``: for each bundle, two ``monai.bundle run`` trainings of its ``train.yaml`` start together, one core
each (``OMP_NUM_THREADS=1``, no loader workers), on the same dataset, image size, epoch cap and wall-clock cap,
so that both see the same load on a shared machine. "Before" is the bundle of an old checkout (``--old``, a
plain folder such as ``git worktree add /tmp/old-0.1 361dfcf``) with its own defaults, or, without ``--old``,
this checkout's bundle with the paper's recipe (:data:`PAPER_RECIPES`: the flat learning rate of the paper,
channels-first memory). "After" is this checkout's bundle with its defaults. A
:class:`~benchmarks.timing.StepTimer` on the trainer (:class:`EpochRecorder`, added through the same override
config as the benchmark's timer) appends after every epoch the validation metrics (``val_mean_dice``, the
key metric every version logs, and ``val_dice/<source>`` where the version has them), the wall time, the
learning rate and that epoch's training img/s to ``records.jsonl``. Reported per bundle: training img/s
before and after (the step timer's, first iteration left out) and their ratio, and the minutes from the
start of the process (imports, caching and validation included) to the first validation at or above
``--target_dice``, or "not reached".

``reference_lungvae``: img/s of one training step (forward, loss, backward, Adam step) of this repository's
``LungVAE`` against the published lungVAE model (raghavian/lungVAE, ``models/VAE.py``) at the same network
size and input, alternating in one process. The published code is imported only from ``--reference_repo``, a
checkout (or a copy of ``models/VAE.py`` in a ``models/`` folder) outside this repository.

    git worktree add /tmp/old-0.1 361dfcf
    python -m benchmarks compare_training recipes --old /tmp/old-0.1 --out /tmp/cxrseg-speed --target_dice 0.9
    python -m benchmarks compare_training recipes --out /tmp/cxrseg-speed-paper     # the paper's recipes as "before"
    python -m benchmarks compare_training reference_lungvae --reference_repo /tmp/lungVAE --out /tmp/cxrseg-speed
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bundle_runs import (
    BUNDLES_DIR,
    REPO_ROOT,
    override_arguments,
    read_bundle_yaml,
    read_json,
    subprocess_env,
)
from benchmarks.timing import StepTimer, timer_config

BUNDLES = ("lung_vae", "res_cr_net", "attention_bcdunet")

# "before" without --old: the paper's optimiser settings as each train.yaml's comments give them (flat Adam
# rate), and the default (channels-first) memory format where the bundle now trains channels-last
PAPER_RECIPES: dict[str, dict[str, Any]] = {
    "lung_vae": {"lr_schedule": "constant", "learning_rate": 1e-4},
    "res_cr_net": {"lr_schedule": "constant", "learning_rate": 1e-3, "network": "$@network_def.to(@device)"},
    "attention_bcdunet": {"lr_schedule": "constant", "learning_rate": 1e-3},
    "opacity_unet": {"lr_schedule": "constant", "learning_rate": 1e-3},
}
RECORDS = "records.jsonl"
TIMING = "timing.json"


class EpochRecorder(StepTimer):
    """The step timer on the trainer, also appending one JSON line per epoch to ``records_file``: ``epoch``,
    ``time`` (``time.time()``), that epoch's ``train_images``, ``train_s`` (loader and step time) and
    ``train_images_per_s``, the learning rate after the epoch (``lr``) and ``validation``, the float metrics
    of the evaluator's run at the end of that epoch (empty when ``val_interval`` skipped it).

    ``evaluator`` is the training's validation engine (``@validate#evaluator``); its metrics are read when it
    completes, which the trainer's ``ValidationHandler`` makes happen before this handler's epoch end."""

    def __init__(self, out_file: str, records_file: str, evaluator: Any = None, skip_first: int = 1) -> None:
        super().__init__(out_file, skip_first)
        self.records_file = Path(records_file)
        self.evaluator = evaluator
        self._validation: dict[str, float] = {}
        self._first_iteration = 0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_begins)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._record)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._validated)

    def _epoch_begins(self, engine: Any) -> None:
        self._first_iteration = len(self.step_s)

    def _validated(self, engine: Any) -> None:
        self._validation = {}
        for name, value in engine.state.metrics.items():
            try:
                self._validation[name] = float(value)
            except (TypeError, ValueError):
                continue

    def _record(self, engine: Any) -> None:
        first = self._first_iteration
        seconds = sum(self.loader_s[first:]) + sum(self.step_s[first:])
        images = sum(self.images[first:])
        optimizer = getattr(engine, "optimizer", None)
        record = {
            "epoch": engine.state.epoch,
            "time": time.time(),
            "train_images": images,
            "train_s": seconds,
            "train_images_per_s": images / seconds if seconds else None,
            "lr": float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None,
            "validation": self._validation,
        }
        self._validation = {}
        self.records_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.records_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def recorder_config(run_dir: Path) -> Path:
    """The benchmark's timer override config (:func:`~benchmarks.timing.timer_config`, seeded, on the trainer), with
    the :class:`EpochRecorder` in place of the plain timer."""
    path = timer_config(run_dir / "recorder.json", "train#trainer", run_dir / TIMING, seeded=True)
    config = json.loads(path.read_text(encoding="utf-8"))
    config["benchmark_timer"].update(
        {
            "_target_": f"{__name__}.EpochRecorder",
            "records_file": str(run_dir / RECORDS),
            "evaluator": "@validate#evaluator",
        }
    )
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run, in order; a line cut short by stopping the run is left out."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def time_to_target(
    records: Sequence[Mapping[str, Any]], start: float, metric: str, target: float
) -> dict[str, float | int | None]:
    """Minutes from ``start`` to the end of the first epoch whose validation ``metric`` is at least ``target``,
    and that epoch; both None when no validation reached it."""
    for record in records:
        value = record.get("validation", {}).get(metric)
        if value is not None and value >= target:
            return {"minutes": (record["time"] - start) / 60, "epoch": record["epoch"]}
    return {"minutes": None, "epoch": None}


def best_validation(records: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    values = [r["validation"][metric] for r in records if metric in r.get("validation", {})]
    return max(values) if values else None


def missing_ids(train_yaml: Mapping[str, Any], overrides: Mapping[str, Any]) -> list[str]:
    """The ids of ``overrides`` that a checkout's ``train.yaml`` lacks: MONAI would add them silently and the run
    would not do what the comparison says (e.g. ``lr_schedule`` in a checkout from before the schedules)."""
    missing = []
    for key in overrides:
        node: Any = train_yaml
        for part in key.split("#"):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                missing.append(key)
                break
    return missing


@dataclass
class Side:
    """One training of a side-by-side pair: where its bundle is, its overrides, its process and its start."""

    name: str
    bundle_dir: Path
    run_dir: Path
    overrides: dict[str, Any]
    process: subprocess.Popen | None = None
    start: float = 0.0
    stopped_at_cap: bool = False
    command: list[str] = field(default_factory=list)

    def launch(self) -> None:
        configs = [self.bundle_dir / "configs" / "train.yaml", recorder_config(self.run_dir)]
        for stale in (RECORDS, TIMING):  # of an earlier run into the same folder
            (self.run_dir / stale).unlink(missing_ok=True)
        self.command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr([str(c) for c in configs])]
        self.command += override_arguments(self.overrides)
        # this repository's tools first (the recorder), then the checkout's bundle code as ``scripts``
        env = subprocess_env(threads=1, bundle_dir=self.bundle_dir)
        with open(self.run_dir / "train.log", "w", encoding="utf-8") as log:
            log.write(f"$ {' '.join(self.command)}\n")
            log.flush()
            self.start = time.time()
            self.process = subprocess.Popen(
                self.command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        """End this side's process group (the training and any loader workers it started)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.stopped_at_cap = True
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def summary(self, metric: str, target: float) -> dict[str, Any]:
        records = read_records(self.run_dir / RECORDS)
        timing = read_json(self.run_dir / TIMING) or {}
        returncode = self.process.returncode if self.process is not None else None
        return {
            "bundle_dir": str(self.bundle_dir),
            "overrides": {k: str(v) if isinstance(v, Path) else v for k, v in self.overrides.items()},
            "exit": "stopped at the wall-clock cap" if self.stopped_at_cap else returncode,
            "epochs": len(records),
            "images_per_s": timing.get("images_per_s"),
            "wall_minutes": (records[-1]["time"] - self.start) / 60 if records else None,
            f"best_{metric}": best_validation(records, metric),
            "to_target": time_to_target(records, self.start, metric, target),
            "records": [{**r, "minutes": (r["time"] - self.start) / 60} for r in records],
            "log": str(self.run_dir / "train.log"),
        }


def side_by_side(sides: Sequence[Side], max_minutes: float, poll_s: float = 1.0) -> None:
    """Start every side together and wait until all end or ``max_minutes`` have passed, then stop the rest."""
    for side in sides:
        side.run_dir.mkdir(parents=True, exist_ok=True)
        side.launch()
    deadline = time.time() + 60 * max_minutes
    try:
        while any(s.process.poll() is None for s in sides) and time.time() < deadline:
            time.sleep(poll_s)
    finally:
        for side in sides:
            side.stop()


def _commit(root: Path) -> str:
    """The commit a checkout is at (with ``+changes`` when its tracked files differ from it), or "not git"."""
    git = ["git", "-C", str(root)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "not git"
    changed = subprocess.run(git + ["diff", "--quiet", "HEAD"], capture_output=True).returncode != 0
    return head.stdout.strip() + (" +changes" if changed else "")


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def _cell(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _minutes_cell(to_target: Mapping[str, Any]) -> str:
    if to_target["minutes"] is None:
        return "not reached"
    return f"{to_target['minutes']:.1f} (epoch {to_target['epoch']})"


def table(summary: Mapping[str, Any]) -> str:
    """The Markdown table of a ``recipes`` summary."""
    metric, target = summary["metric"], summary["target"]
    lines = [
        f"| bundle | img/s before | img/s after | after / before | minutes to {metric} {target} before"
        f" | after | before / after | best {metric} before | after | epochs before | after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for bundle, result in summary["bundles"].items():
        before, after = result["before"], result["after"]
        lines.append(
            f"| {bundle} | {_cell(before['images_per_s'])} | {_cell(after['images_per_s'])}"
            f" | {_cell(result['images_per_s_ratio'], 2)} | {_minutes_cell(before['to_target'])}"
            f" | {_minutes_cell(after['to_target'])} | {_cell(result['time_to_target_ratio'], 2)}"
            f" | {_cell(before[f'best_{metric}'], 3)} | {_cell(after[f'best_{metric}'], 3)}"
            f" | {before['epochs']} | {after['epochs']} |"
        )
    return "\n".join(lines)


def recipes(
    old: str | None = None,
    out: str = "/tmp/cxrseg-compare-training",
    bundles: Sequence[str] = BUNDLES,
    dataset_dir: str | None = None,
    image_size: Sequence[int] = (128, 128),
    epochs: int = 30,
    max_minutes: float = 30.0,
    target_dice: float = 0.90,
    metric: str = "val_mean_dice",
    val_interval: int = 1,
    num_workers: int = 0,
    train_size: int | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> None:
    """Train each bundle "before" and "after" side by side, one core each, and report img/s and the minutes to
    ``target_dice`` of validation ``metric``.

    ``old``: an old checkout whose bundles are "before" with their own defaults; without it "before" is this
    checkout's bundle with the paper's recipe (flat rate, channels-first). ``dataset_dir``: default the shared
    copy of the dataset each bundle's metadata names (JSRT for the lung bundles). ``epochs`` also sets the
    length of the half-cosine schedule; ``max_minutes`` stops both trainings of a bundle. ``before`` / ``after``:
    extra overrides of that side, e.g. ``--after "{'warmup_steps': 50}"``. Writes ``<out>/compare_training.json``
    and prints the table; the runs (logs, ``records.jsonl``) are in ``<out>/<bundle>/<side>``."""
    from benchmarks.budgets import dataset_of

    out_dir = Path(out).resolve()
    old_root = Path(old).resolve() if old else None
    if isinstance(bundles, str):
        bundles = [bundles]
    summary: dict[str, Any] = {
        "before": f"old checkout {old_root} ({_commit(old_root)})"
        if old_root
        else "the paper's recipe (PAPER_RECIPES)",
        "after": f"this checkout {REPO_ROOT} ({_commit(REPO_ROOT)}), train.yaml defaults",
        "metric": metric,
        "target": target_dice,
        "image_size": list(image_size),
        "epochs": epochs,
        "max_minutes": max_minutes,
        "bundles": {},
    }
    for bundle in bundles:
        dataset = dataset_of(BUNDLES_DIR / bundle, dataset_dir)
        common = {
            "dataset_dir": dataset,
            "image_size": list(image_size),
            "epochs": epochs,
            "val_interval": val_interval,
            "num_workers": num_workers,
            **({"train_size": train_size} if train_size is not None else {}),
        }
        before_dir = (old_root / "bundles" / bundle) if old_root else BUNDLES_DIR / bundle
        recipe = {} if old_root else PAPER_RECIPES.get(bundle, {})
        sides = []
        for name, bundle_dir, extra in (
            ("before", before_dir, {**recipe, **(before or {})}),
            ("after", BUNDLES_DIR / bundle, dict(after or {})),
        ):
            run_dir = out_dir / bundle / name
            overrides = {
                **common,
                **extra,
                "bundle_root": bundle_dir,
                "ckpt_dir": run_dir / "models",
                "output_dir": run_dir / "eval",
            }
            missing = missing_ids(read_bundle_yaml(bundle_dir, "train.yaml"), overrides)
            if missing:
                raise SystemExit(f"{bundle_dir}/configs/train.yaml has no {', '.join(missing)}: the {name} run cannot")
            sides.append(Side(name, bundle_dir, run_dir, overrides))
        print(f"{bundle}: training before and after side by side (at most {max_minutes} min) in {out_dir / bundle}")
        side_by_side(sides, max_minutes)
        result = {side.name: side.summary(metric, target_dice) for side in sides}
        result["images_per_s_ratio"] = _ratio(result["after"]["images_per_s"], result["before"]["images_per_s"])
        result["time_to_target_ratio"] = _ratio(
            result["before"]["to_target"]["minutes"], result["after"]["to_target"]["minutes"]
        )
        for side in sides:
            if side.process.returncode not in (0, None) and not side.stopped_at_cap:
                print(f"{bundle} {side.name}: the training failed (exit {side.process.returncode}); see {side.run_dir}")
        summary["bundles"][bundle] = result
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compare_training.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(table(summary))
    print(f"written: {out_dir / 'compare_training.json'}")


def load_reference(reference_repo: str | Path) -> Any:
    """The published ``uVAE`` class from ``<reference_repo>/models/VAE.py``, imported under a name of its own."""
    import importlib.util

    path = Path(reference_repo).resolve() / "models" / "VAE.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found: --reference_repo must be a checkout of raghavian/lungVAE")
    spec = importlib.util.spec_from_file_location("lungvae_reference_vae", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.uVAE


def measure_reference(
    reference_repo: str,
    image_size: Sequence[int] = (640, 512),
    batch_size: int = 4,
    rounds: int = 5,
    steps: int = 3,
    threads: int = 2,
    channels_last: bool = False,
    out: str | None = None,
) -> dict[str, Any]:
    """The ``reference_lungvae`` measurement; returns its record (see :func:`reference_lungvae`)."""
    import numpy as np
    import torch

    from cxrseg.bundle import bundle_imports

    torch.set_num_threads(threads)
    rows, cols = (int(s) for s in image_size)
    reference_class = load_reference(reference_repo)
    with bundle_imports(BUNDLES_DIR / "lung_vae"):
        from scripts.elbo import ELBOLoss
        from scripts.network import LungVAE

        torch.manual_seed(0)
        ours = LungVAE((rows, cols), in_channels=1, out_channels=1, features=16, latent_size=8, variational=True)
        elbo = ELBOLoss(kl_weight=1.0)
    torch.manual_seed(0)
    published = reference_class(nlatent=8, nhid=16, h=rows, w=cols)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 1, rows, cols, generator=generator).contiguous(memory_format=memory_format)
    masks = (torch.rand(batch_size, 1, rows, cols, generator=generator) > 0.5).float()
    bce = torch.nn.BCELoss(reduction="mean")

    def our_step() -> None:
        logits, kl = ours(images, return_kl=True)
        loss = elbo({"logits": logits, "kl": kl}, masks)
        our_optimizer.zero_grad()
        loss.backward()
        our_optimizer.step()

    def published_step() -> None:
        kl, pred = published(images)
        loss = kl / masks.shape[0] + bce(torch.sigmoid(pred), masks)
        published_optimizer.zero_grad()
        loss.backward()
        published_optimizer.step()

    networks = {"ours": ours.to(memory_format=memory_format), "published": published.to(memory_format=memory_format)}
    for network in networks.values():
        network.train()
    our_optimizer = torch.optim.Adam(ours.parameters(), lr=1e-3)
    published_optimizer = torch.optim.Adam(published.parameters(), lr=1e-4, weight_decay=1e-5)
    step_of = {"ours": our_step, "published": published_step}
    for step in step_of.values():
        step()  # warm-up: allocations, oneDNN primitives
    per_round: dict[str, list[float]] = {name: [] for name in step_of}
    for round_index in range(rounds):
        # alternate which network goes first, so that neither always follows the other's cache state
        order = list(step_of) if round_index % 2 == 0 else list(step_of)[::-1]
        for name in order:
            start = time.perf_counter()
            for _ in range(steps):
                step_of[name]()
            per_round[name].append(steps * batch_size / (time.perf_counter() - start))
    medians = {name: float(np.median(values)) for name, values in per_round.items()}
    result = {
        "image_size": [rows, cols],
        "batch_size": batch_size,
        "threads": threads,
        "channels_last": bool(channels_last),
        "parameters": {name: int(sum(p.numel() for p in net.parameters())) for name, net in networks.items()},
        "images_per_s": per_round,
        "images_per_s_median": medians,
        "ours_over_published": medians["ours"] / medians["published"],
        "reference": str(Path(reference_repo).resolve() / "models" / "VAE.py"),
    }
    print(
        f"lung_vae training step at {rows} x {cols}, batch {batch_size}, {threads} threads"
        f"{', channels-last' if channels_last else ''}: ours {medians['ours']:.2f} img/s"
        f" ({result['parameters']['ours']:,} parameters), published {medians['published']:.2f} img/s"
        f" ({result['parameters']['published']:,}); ours / published {result['ours_over_published']:.2f}"
        f" (median of {rounds} alternating rounds of {steps} steps)"
    )
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "reference_lungvae.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def reference_lungvae(
    reference_repo: str,
    image_size: Sequence[int] = (640, 512),
    batch_size: int = 4,
    rounds: int = 5,
    steps: int = 3,
    threads: int = 2,
    channels_last: bool = False,
    out: str | None = None,
) -> None:
    """img/s of a training step of this repository's lung_vae network against the published lungVAE at the
    same size, alternating in one process (``rounds`` of ``steps`` timed steps each, after one warm-up step).

    Same size: our proposed model (``features`` F = 16, ``latent_size`` 8, variational) is the published
    ``uVAE(nlatent=8, nhid=16, h=rows, w=cols)``, the defaults of its ``train.py`` (``--hidden 16 --latent 8``,
    U-Net + VAE): the same five levels (pooling by 4, 4, 2, 2; the VAE encoder by 2 four times), channels
    F to 16F, the same 1-D bottleneck; 3,385,602 parameters here against 3,383,522 there at 640 x 512 (each of
    our conv units has its own batch norm after the convolution, theirs one per block before it). A step is
    what each training script does: ours ``ELBOLoss`` on the logits and KL with Adam (lr 1e-3); theirs BCE on
    the sigmoid plus KL / batch, Adam (lr 1e-4, weight decay 1e-5). ``channels_last``: both networks and
    inputs in that memory format (the bundle trains channels-first). Prints the medians and ``ours /
    published``; with ``out``, writes ``<out>/reference_lungvae.json`` (img/s of every round, parameters).
    """
    measure_reference(reference_repo, image_size, batch_size, rounds, steps, threads, channels_last, out)


COMMANDS = {"recipes": recipes, "reference_lungvae": reference_lungvae}
