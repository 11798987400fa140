"""The GPU training script's CPU dry run: every bundle trains (tiny) side by side and its weights and log come
back; a run over its budget is stopped and reported so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def run_gpu_train(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.gpu_train", "train", "--tiny", "--out", str(out), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_dry_run_brings_back_weights_and_logs_of_every_bundle(tmp_path: Path) -> None:
    result = run_gpu_train(tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [b["bundle"] for b in summary["bundles"]] == ["lung_vae", "attention_bcdunet", "res_cr_net"]
    for bundle in summary["bundles"]:
        folder = tmp_path / "out" / bundle["bundle"]
        assert (folder / "model.pt").stat().st_size > 10_000
        assert json.loads((folder / "model.json").read_text())["image_size"], "the weights' settings come too"
        assert "Epoch[1] Complete" in (folder / "train.log").read_text()


def test_budget_stops_a_run_and_says_so(tmp_path: Path) -> None:
    result = run_gpu_train(tmp_path / "out", "--bundles", "[res_cr_net]", "--minutes", "0.02")
    assert result.returncode == 1, "a run stopped before its first validation has no weights to bring back"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["bundles"][0]["stopped_by_budget"] and not summary["bundles"][0]["weights"]
