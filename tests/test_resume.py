"""Training survives being killed: checkpoints are never half-written, and a run killed mid-epoch resumes from its
last checkpoint and finishes.

Uses the smallest bundle at 64x64 on tiny phantoms. On the weights: a resumed run cannot reproduce the
uninterrupted run bit for bit, because what decides the later epochs besides the weights is not checkpointed:
MONAI's DataLoader seeds the random transforms once when it is built and Ignite's ``SupervisedTrainer`` is not a
``DeterministicEngine``, so after a resume the augmentation and shuffling streams start again from the seed.
The test therefore asserts (1) exact equality of everything up to the checkpoint the run resumed from, and
(2) that the resumed run ends as close to the uninterrupted one as a fraction of the distance both travelled
from their common checkpoint (``FINAL_WEIGHTS_TOLERANCE``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import BUNDLES_DIR, REPO_ROOT

from benchmarks.bundle_runs import monai_run, override_arguments, parse_bundle_config, subprocess_env
from cxrseg.bundle import bundle_imports

BUNDLE = "res_cr_net"
EPOCHS = 4
KILL_IN_EPOCH = 3
FINAL_WEIGHTS_TOLERANCE = 0.5
RUN_TIMEOUT_S = 600


def training_overrides(dataset_dir: Path, run_dir: Path, epochs: int = EPOCHS) -> dict:
    """A tiny schedule: 64x64, 6 training cases in batches of 1 (6 iterations per epoch), every epoch kept."""
    return {
        "bundle_root": BUNDLES_DIR / BUNDLE,
        "dataset_dir": dataset_dir,
        "output_dir": run_dir / "logs",
        "ckpt_dir": run_dir / "models",
        "epochs": epochs,
        "image_size": [64, 64],
        "train_size": 6,
        "batch_size": 1,
        "num_workers": 0,
        "val_interval": 1,
        "seed": 3,
        "train#checkpoint_saver#n_saved": EPOCHS,
    }


def checkpoint_of_epoch(ckpt_dir: Path, epoch: int) -> Path:
    matches = [p for p in ckpt_dir.glob("checkpoint_*.pt") if re.findall(r"\d+", p.stem)[-1:] == [str(epoch)]]
    assert len(matches) == 1, f"no single checkpoint of epoch {epoch} in {sorted(ckpt_dir.iterdir())}"
    return matches[0]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def weight_distance(first: dict, second: dict) -> float:
    """Euclidean distance between two state dicts over their floating-point tensors."""
    squares = [(first[k].double() - second[k].double()).pow(2).sum() for k in first if first[k].is_floating_point()]
    return float(sum(squares) ** 0.5)


@pytest.fixture(scope="module")
def bundle_ready() -> None:
    if not (BUNDLES_DIR / BUNDLE / "configs" / "train.yaml").is_file():
        pytest.skip(f"bundle {BUNDLE} is not in the repository")


def _truncate_to_half(handle: Any) -> None:
    handle.seek(0, os.SEEK_END)
    handle.truncate(handle.tell() // 2)


@pytest.mark.parametrize("val_interval", [1, 100], ids=["validation writes model.pt first", "checkpoint only"])
def test_a_checkpoint_write_killed_midway_leaves_a_loadable_checkpoint(
    bundle_ready: None, phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, val_interval: int
) -> None:
    """The bundle's own savers (its ``n_saved``), with ``torch.save`` dying half-way through the first file of
    epoch 2 (as under SIGKILL or a full disk): every ``*.pt`` left must load, and a complete checkpoint of epoch 1
    must remain to resume from. Ignite deletes the previous checkpoint before writing the next one, so this needs
    atomic writes and ``n_saved`` of at least 2."""
    from cxrseg.training import latest_checkpoint

    overrides = training_overrides(phantom_dir, tmp_path, epochs=1) | {"val_interval": val_interval}
    del overrides["train#checkpoint_saver#n_saved"]
    overrides = {key: str(value) if isinstance(value, Path) else value for key, value in overrides.items()}
    with bundle_imports(BUNDLES_DIR / BUNDLE):
        parser = parse_bundle_config(BUNDLES_DIR / BUNDLE, "train.yaml", overrides)
        trainer = parser.get_parsed_content("train#trainer")
        parser.get_parsed_content("train#checkpoint_saver").attach(trainer)
        trainer.run()
        real_save = torch.save

        def dying_save(obj: object, target: Any, *args: object, **kwargs: object) -> None:
            real_save(obj, target, *args, **kwargs)
            if isinstance(target, (str, Path)):
                with open(target, "r+b") as handle:
                    _truncate_to_half(handle)
            else:
                _truncate_to_half(target)
            raise KeyboardInterrupt("killed while writing the checkpoint")

        monkeypatch.setattr(torch, "save", dying_save)
        trainer.state.max_epochs = 2
        with pytest.raises(KeyboardInterrupt):
            trainer.run()
    monkeypatch.undo()
    for path in sorted((tmp_path / "models").glob("*.pt")):
        try:
            load(path)
        except Exception as error:
            pytest.fail(f"half-written checkpoint left behind: {path.name} ({type(error).__name__}: {error})")
    newest = latest_checkpoint(tmp_path / "models")
    assert newest is not None, "no complete checkpoint left to resume from"
    state = load(Path(newest))["trainer"]
    assert state["iteration"] == state["epoch_length"], "the newest complete checkpoint is that of epoch 1"


def start_training(overrides: dict) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(BUNDLES_DIR / BUNDLE / "configs" / "train.yaml"),
        *override_arguments(overrides),
    ]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def kill_mid_epoch(process: subprocess.Popen, epoch: int) -> list[str]:
    """Read the training log until the second iteration of ``epoch`` is logged, then SIGKILL the run."""
    lines = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    pattern = re.compile(rf"Epoch: {epoch}/\d+, Iter: 2/")
    for line in process.stdout:
        lines.append(line)
        if pattern.search(line):
            process.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "training did not reach the epoch to kill in"
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(lines[-30:])
    return lines


def test_training_killed_mid_epoch_resumes_and_finishes(bundle_ready: None, phantom_dir: Path, tmp_path: Path) -> None:
    reference = training_overrides(phantom_dir, tmp_path / "uninterrupted")
    result = monai_run([BUNDLES_DIR / BUNDLE / "configs" / "train.yaml"], reference, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]

    killed = training_overrides(phantom_dir, tmp_path / "killed")
    kill_mid_epoch(start_training(killed), KILL_IN_EPOCH)
    ckpt_dir = tmp_path / "killed" / "models"
    resume_from = KILL_IN_EPOCH - 1
    assert not list(ckpt_dir.glob(f"*_{KILL_IN_EPOCH}.pt")), "killed before the epoch ended, yet it was saved"
    saved, expected = (
        load(checkpoint_of_epoch(ckpt_dir, resume_from)),
        load(checkpoint_of_epoch(tmp_path / "uninterrupted" / "models", resume_from)),
    )
    for key, tensor in expected["model"].items():
        assert torch.equal(saved["model"][key], tensor), f"epoch {resume_from} weights differ at {key}"

    resumed = monai_run(
        [BUNDLES_DIR / BUNDLE / "configs" / "train.yaml"], {**killed, "resume": True}, timeout=RUN_TIMEOUT_S
    )
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert not re.search(r"Epoch: 1/\d+, Iter:", log), "the resumed run started again from epoch 1"
    assert re.search(rf"Epoch: {KILL_IN_EPOCH}/{EPOCHS}, Iter: 1/", log), log[-3000:]
    final = load(checkpoint_of_epoch(ckpt_dir, EPOCHS))
    assert final["trainer"]["iteration"] == EPOCHS * final["trainer"]["epoch_length"]
    assert (ckpt_dir / "model.pt").is_file()

    uninterrupted = load(checkpoint_of_epoch(tmp_path / "uninterrupted" / "models", EPOCHS))["model"]
    travelled = weight_distance(uninterrupted, expected["model"])
    assert travelled > 0
    assert weight_distance(final["model"], uninterrupted) < FINAL_WEIGHTS_TOLERANCE * travelled + 1e-12


def test_resume_true_starts_a_run_that_has_no_checkpoint_yet(
    bundle_ready: None, phantom_dir: Path, tmp_path: Path
) -> None:
    """One command both starts and continues a run: ``--resume true`` on an empty ``ckpt_dir`` trains from epoch 1
    and says it found nothing to resume (it stopped with a TypeError from MONAI's CheckpointLoader before)."""
    overrides = training_overrides(phantom_dir, tmp_path, epochs=1) | {"resume": "true"}
    result = monai_run([BUNDLES_DIR / BUNDLE / "configs" / "train.yaml"], overrides, timeout=RUN_TIMEOUT_S)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert re.search(r"Epoch: 1/1, Iter: 1/", log) and f"no checkpoint_*.pt in {tmp_path / 'models'} yet" in log
    trainer = load(checkpoint_of_epoch(tmp_path / "models", 1))["trainer"]
    assert trainer["iteration"] == trainer["epoch_length"]


@pytest.mark.parametrize("resume", [True, "true", False, "false"])
def test_every_bundle_resumes_only_from_a_checkpoint_that_exists(resume: bool | str, tmp_path: Path) -> None:
    for bundle in ("attention_bcdunet", "lung_vae", "opacity_unet", "res_cr_net"):
        overrides = {"bundle_root": str(BUNDLES_DIR / bundle), "ckpt_dir": str(tmp_path / bundle), "resume": resume}
        (tmp_path / bundle).mkdir()
        with bundle_imports(BUNDLES_DIR / bundle):
            assert (
                parse_bundle_config(BUNDLES_DIR / bundle, "train.yaml", overrides).get_parsed_content("resuming")
                is False
            )
            (tmp_path / bundle / "checkpoint_checkpoint_epoch=1.pt").write_bytes(b"")
            resumes = parse_bundle_config(BUNDLES_DIR / bundle, "train.yaml", overrides).get_parsed_content("resuming")
        assert resumes is (resume in (True, "true")), bundle
