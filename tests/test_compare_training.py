"""``python -m tools compare_training``: the per-epoch records of a training, the minutes to a validation Dice,
the side-by-side ``recipes`` run on phantoms and the ``reference_lungvae`` timing against a stand-in of the
published model (the real one is not needed)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from benchmarks.__main__ import COMMANDS
from benchmarks.compare_training import (
    EpochRecorder,
    measure_reference,
    missing_ids,
    read_records,
    recipes,
    table,
    time_to_target,
)
from benchmarks.timing import timer_config


def record(epoch: int, minutes: float, dice: float | None) -> dict:
    return {"epoch": epoch, "time": 1000.0 + 60 * minutes, "validation": {} if dice is None else {"val_dice": dice}}


def test_minutes_to_target_is_the_first_validation_at_or_above_it() -> None:
    records = [record(1, 2.0, 0.5), record(2, 4.0, None), record(3, 6.5, 0.9), record(4, 8.0, 0.95)]
    assert time_to_target(records, 1000.0, "val_dice", 0.9) == {"minutes": pytest.approx(6.5), "epoch": 3}
    assert time_to_target(records, 1000.0, "val_dice", 0.94) == {"minutes": pytest.approx(8.0), "epoch": 4}
    assert time_to_target(records, 1000.0 + 60, "val_dice", 0.5)["minutes"] == pytest.approx(1.0)


def test_a_target_never_reached_is_reported_as_not_reached() -> None:
    records = [record(1, 2.0, 0.5), record(2, 4.0, 0.8)]
    assert time_to_target(records, 1000.0, "val_dice", 0.9) == {"minutes": None, "epoch": None}
    assert time_to_target([], 1000.0, "val_dice", 0.9) == {"minutes": None, "epoch": None}
    side = {"images_per_s": 2.0, "to_target": {"minutes": None, "epoch": None}, "best_val_dice": 0.8, "epochs": 2}
    reached = {**side, "images_per_s": 3.0, "to_target": {"minutes": 4.0, "epoch": 2}, "best_val_dice": 0.93}
    summary = {
        "metric": "val_dice",
        "target": 0.9,
        "bundles": {"b": {"before": side, "after": reached, "images_per_s_ratio": 1.5, "time_to_target_ratio": None}},
    }
    row = table(summary).splitlines()[-1]
    assert row == "| b | 2.0 | 3.0 | 1.50 | not reached | 4.0 (epoch 2) | – | 0.800 | 0.930 | 2 | 2 |"


def test_records_cut_short_by_stopping_the_run_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(record(1, 1.0, 0.5)) + "\n" + json.dumps(record(2, 2.0, 0.6))[:20], encoding="utf-8")
    assert [r["epoch"] for r in read_records(path)] == [1]
    assert read_records(tmp_path / "absent.jsonl") == []


def test_overrides_an_old_train_yaml_lacks_are_named() -> None:
    old = {"epochs": 5, "learning_rate": 1e-4, "validate": {"dataset": {"data": {"limit": None}}}}
    overrides = {"epochs": 2, "lr_schedule": "constant", "validate#dataset#data#limit": 3, "validate#x": 1}
    assert missing_ids(old, overrides) == ["lr_schedule", "validate#x"]


def test_epoch_recorder_writes_each_epochs_validation_learning_rate_and_images(tmp_path: Path) -> None:
    """On plain Ignite engines: the evaluator runs at the end of every second epoch (as ValidationHandler with
    ``val_interval`` 2), so epochs 2 and 4 carry its metric and 1 and 3 none; the learning rate is the one
    after the epoch's last step."""
    network = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    validations = []
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def score(engine: Engine) -> None:
        validations.append(0.25 * (len(validations) + 1))
        engine.state.metrics.update(val_dice=validations[-1], note="text")

    trainer = Engine(lambda engine, batch: (optimizer.step(), scheduler.step()))
    trainer.optimizer = optimizer
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=2), lambda _: evaluator.run([0]))
    recorder = EpochRecorder(str(tmp_path / "timing.json"), str(tmp_path / "records.jsonl"), evaluator)
    recorder.attach(trainer)
    trainer.run([{"image": torch.zeros(4, 1, 8, 8)}] * 2, max_epochs=4)
    records = read_records(tmp_path / "records.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [r["validation"] for r in records] == [{}, {"val_dice": 0.25}, {}, {"val_dice": 0.5}]
    assert [r["lr"] for r in records] == pytest.approx([0.5, 0.05, 0.005, 0.005])
    assert all(r["train_images"] == 8 and r["train_images_per_s"] > 0 for r in records)
    assert records == sorted(records, key=lambda r: r["time"])
    assert json.loads((tmp_path / "timing.json").read_text())["iterations"] == 8


def test_the_recorder_config_names_the_trainer_and_the_evaluator(tmp_path: Path) -> None:
    from benchmarks.compare_training import recorder_config

    config = json.loads(recorder_config(tmp_path).read_text())
    plain = json.loads(timer_config(tmp_path / "t.json", "train#trainer", tmp_path / "timing.json", True).read_text())
    assert config["initialize"] == plain["initialize"]
    assert config["benchmark_timer"]["_target_"] == "benchmarks.compare_training.EpochRecorder"
    assert config["benchmark_timer"]["evaluator"] == "@validate#evaluator"
    assert "compare_training" in COMMANDS


def written_summary(out: Path) -> dict:
    """The summary ``recipes`` wrote to ``<out>/compare_training.json``."""
    return json.loads((out / "compare_training.json").read_text(encoding="utf-8"))


def test_recipes_trains_before_and_after_side_by_side_on_phantoms(phantom_dir: Path, tmp_path: Path) -> None:
    """Two epochs of lung_vae at 64 x 64 each side: "before" keeps the paper's flat 1e-4, "after" follows the
    bundle's warm-up and cosine; both record validation Dice and img/s, and the summary is written."""
    recipes(
        out=str(tmp_path),
        bundles=["lung_vae"],
        dataset_dir=str(phantom_dir),
        image_size=(64, 64),
        epochs=2,
        max_minutes=20,  # a guard only: the run ends when both trainings end (well under a minute on 2 free cores)
        target_dice=0.0,
        after={"warmup_steps": 1},
    )
    result = written_summary(tmp_path)["bundles"]["lung_vae"]
    before, after = result["before"], result["after"]
    for side in (before, after):
        assert side["exit"] == 0, Path(side["log"]).read_text()[-3000:]
        assert [r["epoch"] for r in side["records"]] == [1, 2]
        assert all(0.0 <= r["validation"]["val_mean_dice"] <= 1.0 for r in side["records"])
        assert side["images_per_s"] > 0 and side["to_target"]["epoch"] == 1
        assert 0 < side["to_target"]["minutes"] <= side["wall_minutes"]
    assert [r["lr"] for r in before["records"]] == pytest.approx([1e-4, 1e-4])
    assert after["records"][0]["lr"] > 1e-4 and after["records"][-1]["lr"] < 1e-6
    assert result["images_per_s_ratio"] == pytest.approx(after["images_per_s"] / before["images_per_s"])
    assert result["before"]["epochs"] == 2


def test_recipes_stops_both_trainings_at_the_wall_clock_cap(phantom_dir: Path, tmp_path: Path) -> None:
    recipes(out=str(tmp_path), bundles="res_cr_net", dataset_dir=str(phantom_dir), epochs=50, max_minutes=0.05)
    summary = written_summary(tmp_path)
    result = summary["bundles"]["res_cr_net"]
    for side in (result["before"], result["after"]):
        assert side["exit"] == "stopped at the wall-clock cap"
        assert side["to_target"]["minutes"] is None
    assert result["before"]["overrides"]["network"] == "$@network_def.to(@device)"
    assert "not reached" in table(summary)


def test_an_old_checkout_without_the_recipe_ids_stops_before_training(tmp_path: Path) -> None:
    old = tmp_path / "old" / "bundles" / "lung_vae" / "configs"
    old.mkdir(parents=True)
    (old / "train.yaml").write_text("epochs: 1\nnum_workers: 0\n", encoding="utf-8")
    (tmp_path / "data" / "images").mkdir(parents=True)
    with pytest.raises(SystemExit, match="has no dataset_dir, image_size, val_interval, bundle_root"):
        recipes(
            old=str(tmp_path / "old"),
            out=str(tmp_path / "out"),
            bundles=["lung_vae"],
            dataset_dir=str(tmp_path / "data"),
        )
    assert not (tmp_path / "out").exists()


STAND_IN = """
import torch
from torch import nn

calls = []


class uVAE(nn.Module):
    def __init__(self, nlatent, unet=False, nhid=8, ker=3, inCh=1, h=640, w=512):
        super().__init__()
        self.conv = nn.Conv2d(inCh, nhid, ker, padding=1)
        self.head = nn.Conv2d(nhid, inCh, 1)
        self.mu = nn.Linear(nhid, nlatent)
        self.shape = (h, w)

    def forward(self, x):
        calls.append(tuple(x.shape))
        features = torch.relu(self.conv(x))
        kl = self.mu(features.mean((2, 3))).pow(2).sum()
        return kl, self.head(features)
"""


def test_reference_lungvae_times_both_networks_from_the_given_checkout(tmp_path: Path) -> None:
    (tmp_path / "ref" / "models").mkdir(parents=True)
    (tmp_path / "ref" / "models" / "VAE.py").write_text(textwrap.dedent(STAND_IN), encoding="utf-8")
    result = measure_reference(
        str(tmp_path / "ref"), image_size=(64, 64), batch_size=2, rounds=2, steps=1, threads=1, out=str(tmp_path)
    )
    stand_in_parameters = 16 * 1 * 9 + 16 + 16 + 1 + 16 * 8 + 8
    assert result["parameters"]["published"] == stand_in_parameters
    assert result["parameters"]["ours"] > 3_000_000
    assert all(len(values) == 2 and min(values) > 0 for values in result["images_per_s"].values())
    assert result["ours_over_published"] == pytest.approx(
        result["images_per_s_median"]["ours"] / result["images_per_s_median"]["published"]
    )
    written = json.loads((tmp_path / "reference_lungvae.json").read_text())
    assert written["reference"] == str(tmp_path / "ref" / "models" / "VAE.py")
    assert sys.modules["lungvae_reference_vae"].calls == [(2, 1, 64, 64)] * 3


def test_reference_lungvae_needs_the_published_model_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="raghavian/lungVAE"):
        measure_reference(str(tmp_path), image_size=(64, 64))
