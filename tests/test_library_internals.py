"""The private MONAI and Ignite attributes of ``cxrseg/library_internals.py`` still do what the collection relies
on: each test fails, naming the attribute, when a library upgrade renames or changes it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator

from cxrseg.library_internals import default_iteration
from cxrseg.training import AtomicCheckpointSaver


def test_default_iteration_runs_monai_evaluator_step() -> None:
    """``SupervisedEvaluator._iteration``: the network step a custom ``iteration_update`` wraps."""
    network = torch.nn.Conv2d(1, 2, 1)
    batch = {"image": torch.ones(1, 1, 4, 4), "label": torch.zeros(1, 1, 4, 4)}
    seen: list[dict] = []

    def wrapped(engine: SupervisedEvaluator, batchdata: dict) -> dict:
        output = default_iteration(engine, batchdata)
        seen.append(output)
        return output

    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=[batch], network=network, iteration_update=wrapped, decollate=False
    )
    evaluator.run()
    assert len(seen) == 1, "SupervisedEvaluator._iteration no longer runs as the iteration of the engine"
    with torch.no_grad():
        torch.testing.assert_close(seen[0]["pred"], network(batch["image"]))


def test_checkpoint_saver_writes_every_file_through_a_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CheckpointSaver._final_checkpoint`` (and its key-metric and interval siblings) and ``DiskSaver._atomic``:
    with atomic writes Ignite serialises into a temporary file object, then renames it over the target; without
    them ``torch.save`` gets the target path itself, and a kill mid-write leaves a truncated checkpoint."""
    targets: list[Any] = []
    real_save = torch.save

    def recording_save(obj: object, target: Any, *args: Any, **kwargs: Any) -> None:
        targets.append(target)
        real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", recording_save)
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(score=float(e.state.epoch)))
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"network": torch.nn.Linear(1, 1)},
        save_final=True,
        save_key_metric=True,
        key_metric_name="score",
        save_interval=1,
        n_saved=2,
    )
    saver.attach(engine)
    engine.run([0], max_epochs=2)
    assert len(targets) >= 5, "final, key-metric and interval checkpoints were expected"
    written_to_their_path = [target for target in targets if isinstance(target, (str, os.PathLike))]
    assert not written_to_their_path, f"checkpoints written in place, not atomically: {written_to_their_path}"
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".pt"] * len(list(tmp_path.iterdir()))
