"""Conventions of README that hold for every bundle without training it: loader workers, copied bundles.

Each test is parametrised over the bundle folders (``conftest.bundle_names``), so a new bundle is covered by
adding its folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLES_DIR, bundle_names
from monai.bundle import ConfigParser

COPY_CHECK_MARKER = "# A bundle copied with `cp -r`"


def parsed_config_value(bundle: str, config: str, config_id: str) -> object:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / bundle / "configs" / config))
    return parser.get_parsed_content(config_id)


@pytest.mark.parametrize("bundle", bundle_names())
def test_loader_workers_never_exceed_the_cores(bundle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four workers on a two-core machine only compete with the training step (and MONAI warns)."""
    assert parsed_config_value(bundle, "train.yaml", "num_workers") == min(4, os.cpu_count() or 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert parsed_config_value(bundle, "train.yaml", "num_workers") == 1
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert parsed_config_value(bundle, "train.yaml", "num_workers") == 1


def copy_check(bundle: str) -> str:
    """The copied-bundle check at the end of the bundle's ``scripts/__init__.py``."""
    text = (BUNDLES_DIR / bundle / "scripts" / "__init__.py").read_text(encoding="utf-8")
    assert COPY_CHECK_MARKER in text, f"{bundle}/scripts/__init__.py lacks the copied-bundle check"
    return text[text.index(COPY_CHECK_MARKER) :]


def test_copied_bundle_check_is_the_same_in_every_bundle() -> None:
    checks = {bundle: copy_check(bundle) for bundle in bundle_names()}
    assert len(set(checks.values())) == 1, f"the checks differ between bundles: {sorted(checks)}"


@pytest.mark.parametrize("bundle", bundle_names())
def test_bundle_copied_with_its_link_fails_saying_how_to_copy_it(bundle: str, tmp_path: Path) -> None:
    """``cp -r`` keeps ``scripts/cxrseg`` as a relative link that dangles outside the repository; the inference
    command must stop with a message naming the ways to copy a bundle, not a puzzling 'cannot locate'."""
    copied = Path(shutil.copytree(BUNDLES_DIR / bundle, tmp_path / "elsewhere" / bundle, symlinks=True))
    assert (copied / "scripts" / "cxrseg").is_symlink() and not (copied / "scripts" / "cxrseg").exists()
    (tmp_path / "in").mkdir()
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(copied / "configs" / "inference.yaml"),
        "--bundle_root", str(copied), "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert f"{copied / 'scripts' / 'cxrseg'} does not resolve" in last_line, result.stderr[-2000:]
    assert f"python -m tools package {bundle}" in last_line and "cp -rL" in last_line
