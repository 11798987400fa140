"""Conventions of README that hold for every bundle without training it: loader workers, copied bundles, the
labels metadata declares, and the lung columns of ``measurements.csv``.

Each test is parametrised over the bundle folders (``conftest.bundle_names``), so a new bundle is covered by
adding its folder.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLES_DIR, bundle_names
from monai.bundle import ConfigParser

from cxrseg.bundle import bundle_imports

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
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(copied / "configs" / "inference.yaml"),
        "--bundle_root",
        str(copied),
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert f"{copied / 'scripts' / 'cxrseg'} does not resolve" in last_line, result.stderr[-2000:]
    assert f"python -m tools package {bundle}" in last_line and "cp -rL" in last_line


def network_format(bundle: str) -> dict:
    metadata = json.loads((BUNDLES_DIR / bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    return metadata["network_data_format"]


@pytest.mark.parametrize("bundle", bundle_names())
def test_metadata_channels_match_what_the_network_emits(bundle: str) -> None:
    """``num_channels`` is the network's output channels; ``channel_def`` names the label values of the label
    map, 0 to N without gaps, among them every label the network decides: one per channel where channels are
    classes (argmax), background and foreground for a single sigmoid channel. A two-stage bundle may add
    labels from its other stage (opacity_unet's clear lung)."""
    formats = network_format(bundle)
    image, pred = formats["inputs"]["image"], formats["outputs"]["pred"]
    bundle_dir = BUNDLES_DIR / bundle
    with bundle_imports(bundle_dir):
        parser = ConfigParser()
        parser.read_config(str(bundle_dir / "configs" / "inference.yaml"))
        parser["bundle_root"] = str(bundle_dir)
        network = parser.get_parsed_content("network_def").eval()
        with torch.no_grad():
            output = network(torch.zeros(1, image["num_channels"], *image["spatial_shape"]))
    assert output.shape[1] == pred["num_channels"]
    labels = sorted(int(value) for value in pred["channel_def"])
    assert labels == list(range(len(labels))) and pred["channel_def"]["0"] == "background"
    assert set(range(max(2, pred["num_channels"]))) <= set(labels)


def lung_bundles() -> list[str]:
    """Bundles whose label map is background and lung only."""
    return [
        b
        for b in bundle_names()
        if network_format(b)["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "lung"}
    ]


def test_lung_bundles_write_the_same_lung_columns() -> None:
    label_map = np.zeros((40, 60), dtype=np.uint8)
    label_map[5:35, 5:25] = 1
    label_map[5:30, 35:55] = 1
    columns = {}
    for bundle in lung_bundles():
        with bundle_imports(BUNDLES_DIR / bundle):
            measured = importlib.import_module("scripts.measurements").measure_lungs(label_map)
        columns[bundle] = measured
        assert measured["right_lung_area_px"] == 600 and measured["left_lung_area_px"] == 500
    assert len(columns) >= 2, "lung_vae and res_cr_net are lung bundles"
    assert len({tuple(measured) for measured in columns.values()}) == 1, columns
