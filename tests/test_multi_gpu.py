"""Data-parallel training and inference as the Model Zoo runs them: ``torchrun`` with the bundle's
``multi_gpu_train.yaml`` or ``multi_gpu_inference.yaml``.

Without GPUs the config falls back to CPU processes and the gloo backend, so CI checks the distributed wiring
(process group, DistributedSampler, DDP gradient averaging, rank-0-only checkpoints) with two CPU ranks on a
tiny phantom set at 64x64. An extra override file makes each rank save its final weights; DDP must have kept
them identical. Two inference ranks must write the same label maps and the same single ``measurements.csv`` as one
process does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLES_DIR
from PIL import Image

DDP_BUNDLES = ["res_cr_net"]
RANKS = 2
TORCHRUN_TIMEOUT_S = 900
SAVE_RANK_WEIGHTS = """\
finalize:
  - "$torch.save({{'state': @network.module.state_dict(), 'iterations': @train#trainer.state.iteration, \
'handlers': [type(handler).__name__ for handler in @train#trainer#train_handlers]}}, \
'{out}/rank' + str(dist.get_rank()) + '.pt')"
  - $dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("bundle", DDP_BUNDLES)
def test_two_ranks_train_identical_weights(bundle: str, phantom_dir: Path, tmp_path: Path) -> None:
    bundle_dir = BUNDLES_DIR / bundle
    multi_gpu = bundle_dir / "configs" / "multi_gpu_train.yaml"
    if not multi_gpu.is_file():
        pytest.skip(f"bundle {bundle} has no configs/multi_gpu_train.yaml yet")
    save_ranks = tmp_path / "save_rank_weights.yaml"
    save_ranks.write_text(SAVE_RANK_WEIGHTS.format(out=tmp_path.as_posix()), encoding="utf-8")
    configs = [str(bundle_dir / "configs" / "train.yaml"), str(multi_gpu), str(save_ranks)]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(RANKS),
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"127.0.0.1:{free_port()}",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        repr(configs),
        "--bundle_root",
        str(bundle_dir),
        "--dataset_dir",
        str(phantom_dir),
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "eval"),
        "--epochs",
        "1",
        "--train_size",
        "8",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
        "--image_size",
        "[64, 64]",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"

    saved = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(RANKS)]
    # 8 training cases split over 2 ranks in batches of 2: 2 iterations on each rank
    assert [s["iterations"] for s in saved] == [8 // RANKS // 2] * RANKS
    reference = saved[0]["state"]
    for rank, other in enumerate(saved[1:], start=1):
        assert reference.keys() == other["state"].keys()
        different = [name for name in reference if not torch.equal(reference[name], other["state"][name])]
        assert not different, f"rank {rank} weights differ from rank 0 in {different[:5]}"
    assert list((tmp_path / "models").glob("checkpoint_*.pt")), "rank 0 must save the resumable checkpoint"
    # every rank steps the schedule and validates; rank 0 alone logs and writes TensorBoard
    reporting = {"StatsHandler", "TensorBoardStatsHandler"}
    assert reporting <= set(saved[0]["handlers"])
    assert {"LrScheduleHandler", "ValidationHandler"} <= set(saved[1]["handlers"])
    assert not reporting & set(saved[1]["handlers"])


INFERENCE_BUNDLES = ["res_cr_net"]


def write_mixed_archive(folder: Path, phantom_dir: Path) -> None:
    """Seven radiographs in nested folders, a broken one and a GIF: nine rows, so two ranks get shares of five
    (one input repeated) and the merge must give each input exactly one row."""
    sources = sorted((phantom_dir / "images").glob("*.png"))
    for index, source in enumerate(sources[:7]):
        target = folder / f"study{index % 2}" / f"image{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    (folder / "study0" / "broken.png").write_bytes(b"not a PNG")
    (folder / "study1" / "animation.gif").write_bytes(b"GIF89a")


@pytest.mark.parametrize("bundle", INFERENCE_BUNDLES)
def test_two_ranks_infer_like_one_process(bundle: str, phantom_dir: Path, tmp_path: Path) -> None:
    bundle_dir = BUNDLES_DIR / bundle
    write_mixed_archive(tmp_path / "in", phantom_dir)
    inference = str(bundle_dir / "configs" / "inference.yaml")
    options = ["--bundle_root", str(bundle_dir), "--dataset_dir", str(tmp_path / "in"), "--recursive", "true"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            inference,
            *options,
            "--output_dir",
            str(tmp_path / "one"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=TORCHRUN_TIMEOUT_S,
    )
    ranks = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(RANKS),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            f"127.0.0.1:{free_port()}",
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            repr([inference, str(bundle_dir / "configs" / "multi_gpu_inference.yaml")]),
            *options,
            "--output_dir",
            str(tmp_path / "ranks"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=TORCHRUN_TIMEOUT_S,
    )
    for result in (single, ranks):
        log = result.stdout + result.stderr
        failed = result.returncode != 0 and "study0/broken.png" in log
        assert failed, f"the broken input must fail the run:\n{log[-4000:]}"
    merged = (tmp_path / "ranks" / "measurements.csv").read_text(encoding="utf-8")
    assert merged == (tmp_path / "one" / "measurements.csv").read_text(encoding="utf-8")
    files = [line.split(",")[0] for line in merged.splitlines()[1:]]
    assert len(files) == len(set(files)) == 9 and files == sorted(files)
    leftover = list((tmp_path / "ranks").glob("measurements.rank*.csv"))
    assert not leftover, "rank 0 removes the ranks' files after merging"
    written = sorted(path.relative_to(tmp_path / "one") for path in (tmp_path / "one").rglob("*_seg.png"))
    assert written == sorted(path.relative_to(tmp_path / "ranks") for path in (tmp_path / "ranks").rglob("*_seg.png"))
    assert len(written) == 7
    for relative in written:
        one, two = (np.asarray(Image.open(tmp_path / run / relative)) for run in ("one", "ranks"))
        assert np.array_equal(one, two), relative
