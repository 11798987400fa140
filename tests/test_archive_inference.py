"""Inference over an archive as users run it (``python -m monai.bundle run`` subprocesses, shipped weights): a run
killed part-way resumes with ``--skip_existing true`` without recomputing what it wrote, and
``--backend onnxruntime`` segments like eager PyTorch and refuses an export of other weights."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLES_DIR, REPO_ROOT
from PIL import Image

BUNDLE = "res_cr_net"
ARCHIVE_SIZE = 24
ROWS_BEFORE_KILL = 5
RUN_TIMEOUT_S = 600


def monai_run(output_dir: Path, input_dir: Path, *options: str) -> list[str]:
    bundle_dir = BUNDLES_DIR / BUNDLE
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle_dir / "configs" / "inference.yaml"),
        "--bundle_root",
        str(bundle_dir),
        "--dataset_dir",
        str(input_dir),
        "--output_dir",
        str(output_dir),
        *options,
    ]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def read_rows(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "measurements.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def flushed_rows(path: Path) -> int:
    return max(0, len(path.read_text(encoding="utf-8").splitlines()) - 1) if path.is_file() else 0


@pytest.fixture(scope="module")
def archive(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ARCHIVE_SIZE phantom radiographs in three patient folders."""
    folder = tmp_path_factory.mktemp("archive")
    sources = sorted((phantom_dir / "images").glob("*.png"))
    for index in range(ARCHIVE_SIZE):
        target = folder / f"patient{index % 3}" / f"image{index:03d}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(sources[index % len(sources)], target)
    return folder


def test_killed_run_resumes_without_recomputing(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(
        monai_run(out, archive, "--recursive", "true"),
        cwd=REPO_ROOT,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while flushed_rows(out / "measurements.csv") < ROWS_BEFORE_KILL and process.poll() is None:
        assert time.monotonic() < deadline, "no rows were flushed"
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed; give it more inputs"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {row["file"]: row for row in read_rows(out) if row.get("status") == "ok"}
    assert ROWS_BEFORE_KILL <= len(before) < ARCHIVE_SIZE
    stamps = {file: (out / file).with_name(Path(file).stem + "_seg.png").stat().st_mtime_ns for file in before}

    resumed = run(monai_run(out, archive, "--recursive", "true", "--skip_existing", "true"))
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"{len(before)} of {ARCHIVE_SIZE} inputs were already written" in resumed.stdout + resumed.stderr
    rows = read_rows(out)
    files = [row["file"] for row in rows]
    expected = sorted(path.relative_to(archive).as_posix() for path in archive.rglob("*.png"))
    assert files == expected, "one row per input, in input order: none lost, none doubled"
    assert all(row["status"] == "ok" for row in rows)
    for file, stamp in stamps.items():
        assert (out / file).with_name(Path(file).stem + "_seg.png").stat().st_mtime_ns == stamp, f"{file} recomputed"
        assert rows[files.index(file)] == before[file]

    fresh = run(monai_run(tmp_path / "fresh", archive, "--recursive", "true"))
    assert fresh.returncode == 0, (fresh.stdout + fresh.stderr)[-3000:]
    assert read_rows(tmp_path / "fresh") == rows, "the resumed run differs from an uninterrupted one"
    for file in expected[::7]:
        seg = Path(file).with_name(Path(file).stem + "_seg.png")
        assert np.array_equal(np.asarray(Image.open(out / seg)), np.asarray(Image.open(tmp_path / "fresh" / seg)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model.onnx of the shipped weights, and of other weights (every parameter moved by 0.05)."""
    pytest.importorskip("onnxruntime", reason="the ONNX Runtime backend needs requirements-export.txt")
    from tools.export import export_bundle

    root = tmp_path_factory.mktemp("onnx")
    shipped = BUNDLES_DIR / BUNDLE / "models" / "model.pt"
    state = torch.load(shipped, map_location="cpu", weights_only=True)
    other = {name: value + 0.05 if value.is_floating_point() else value for name, value in state.items()}
    torch.save(other, root / "other.pt")
    export_bundle(BUNDLE, root / "shipped", formats=("onnx",))
    export_bundle(BUNDLE, root / "other", formats=("onnx",), ckpt_file=root / "other.pt")
    return {"shipped": root / "shipped" / "model.onnx", "other": root / "other" / "model.onnx"}


def test_onnxruntime_backend_segments_like_pytorch(exports: dict[str, Path], archive: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(archive.rglob("*.png"))[:4]:
        shutil.copy(path, folder / path.name)
    eager = run(monai_run(tmp_path / "eager", folder))
    onnx = run(monai_run(tmp_path / "onnx", folder, "--backend", "onnxruntime", "--onnx_path", str(exports["shipped"])))
    assert eager.returncode == 0 and onnx.returncode == 0, (onnx.stdout + onnx.stderr)[-3000:]
    assert "max |onnx - eager|" in onnx.stdout + onnx.stderr
    for path in sorted(folder.glob("*.png")):
        seg = f"{path.stem}_seg.png"
        eager_map, onnx_map = (np.asarray(Image.open(tmp_path / name / seg)) for name in ("eager", "onnx"))
        assert (eager_map == onnx_map).mean() > 0.999, path.name


def test_onnxruntime_backend_refuses_an_export_of_other_weights(
    exports: dict[str, Path], archive: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(next(archive.rglob("*.png")), folder / "a.png")
    result = run(monai_run(tmp_path / "out", folder, "--backend", "onnxruntime", "--onnx_path", str(exports["other"])))
    assert result.returncode != 0
    assert "differs from the eager network" in result.stdout + result.stderr
    assert not list((tmp_path / "out").glob("*_seg.png")), "no image may be segmented by a stale export"
