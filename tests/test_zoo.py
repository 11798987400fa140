"""The Model Zoo's submission checks, run on every bundle as the Zoo runs them (../shared/zoo/README.md).

The Zoo runs its commands from inside the bundle folder, so the CLI tests do too; the generic bundle test
(tests/test_bundles.py) covers the workflows themselves. Packaging is checked by unzipping the package into a
fresh folder and running the inference contract there. A bundle becomes subject to these checks once it has
``configs/metadata.json`` and ``configs/inference.yaml``; before that it is skipped with that reason.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLES_DIR, ZOO_SCHEMA
from monai.bundle import ConfigParser, verify_metadata
from PIL import Image

from cxrseg.bundle import bundle_imports
from tools.export import export_bundle
from tools.package import ZOO_MAX_FILE_BYTES, build_zip, copy_bundle, oversized_files

ZOO_FILES = ["LICENSE", "configs/metadata.json"]
PREFERRED_FILES = ["models/model.pt", "configs/inference.yaml", "docs/README.md", "docs/data_license.txt"]
EXACT_VERSION = re.compile(r"^\d+(\.\d+)*$")
CLI_TIMEOUT_S = 600
TORCHSCRIPT_TOLERANCE = 1e-4
ONNX_TOLERANCE = 1e-3
SIBLING_REFERENCE = re.compile(r"/\.\./(\w+)")


def all_bundle_folders() -> list[str]:
    return sorted(p.name for p in BUNDLES_DIR.iterdir() if p.is_dir()) if BUNDLES_DIR.is_dir() else []


@pytest.fixture(params=all_bundle_folders())
def bundle_dir(request: pytest.FixtureRequest) -> Path:
    folder = BUNDLES_DIR / request.param
    missing = [name for name in ("configs/metadata.json", "configs/inference.yaml") if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"bundle {request.param} is not complete yet: no {', '.join(missing)}")
    return folder


def metadata_of(bundle_dir: Path) -> dict:
    return json.loads((bundle_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))


def run_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """A command run from ``folder`` with this interpreter, failing the test with its output when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )
    output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{' '.join(args)} failed in {folder}:\n{output}"
    return result


def weights_for(bundle_dir: Path, scratch: Path) -> Path:
    """The shipped ``models/model.pt``; until a bundle ships one, freshly initialised weights of ``network_def``,
    so that the export machinery is still checked (the missing file fails ``test_zoo_files_present``)."""
    shipped = bundle_dir / "models" / "model.pt"
    if shipped.is_file():
        return shipped
    with bundle_imports(bundle_dir):
        parser = ConfigParser()
        parser.read_config(str(bundle_dir / "configs" / "inference.yaml"))
        parser["bundle_root"] = str(bundle_dir)
        torch.manual_seed(0)
        network = parser.get_parsed_content("network_def")
    scratch.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), scratch / "model.pt")
    return scratch / "model.pt"


def test_zoo_files_present(bundle_dir: Path) -> None:
    missing = [name for name in ZOO_FILES + PREFERRED_FILES if not (bundle_dir / name).is_file()]
    assert not missing, f"{bundle_dir.name} lacks files the Model Zoo requires or prefers: {missing}"


def test_metadata_schema_version_and_pins(bundle_dir: Path) -> None:
    verify_metadata(meta_file=str(bundle_dir / "configs" / "metadata.json"), filepath=str(ZOO_SCHEMA))
    metadata = metadata_of(bundle_dir)
    assert metadata["version"] in metadata["changelog"], "version must have a changelog entry"
    installed = {
        "monai_version": importlib.metadata.version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
    }
    for key, version in installed.items():
        assert metadata[key] == version, f"{key} is {metadata[key]} but the pinned environment has {version}"
    for package, pin in metadata.get("required_packages_version", {}).items():
        assert EXACT_VERSION.match(pin), f"{package} pin {pin!r} is not an exact version"
        assert importlib.metadata.version(package) == pin, f"{package} pinned {pin}, installed differs"


def test_no_file_over_zoo_limit(bundle_dir: Path, tmp_path: Path) -> None:
    staged = copy_bundle(bundle_dir, tmp_path / bundle_dir.name)
    assert oversized_files(staged) == [], f"files over {ZOO_MAX_FILE_BYTES} bytes must go to large_files.yml"


def test_verify_net_in_out_cli(bundle_dir: Path) -> None:
    run_in(
        bundle_dir,
        "-m",
        "monai.bundle",
        "verify_net_in_out",
        "--net_id",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.yaml",
        "--device",
        "cpu",
    )


def test_ckpt_export_cli_gives_loadable_torchscript(bundle_dir: Path, tmp_path: Path) -> None:
    metadata = metadata_of(bundle_dir)
    ckpt = weights_for(bundle_dir, tmp_path / "weights")
    exported = tmp_path / "model.ts"
    command = [
        "-m",
        "monai.bundle",
        "ckpt_export",
        "--net_id",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(ckpt),
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.yaml",
    ]
    if metadata.get("torchscript_export", "script") == "trace":
        assert metadata.get("torchscript_note"), "a traced export must say in torchscript_note why scripting fails"
        image = metadata["network_data_format"]["inputs"]["image"]
        shape = [1, image["num_channels"], *image["spatial_shape"]]
        command += ["--use_trace", "True", "--input_shape", json.dumps(shape)]
    run_in(bundle_dir, *command)
    module = torch.jit.load(str(exported))
    assert isinstance(module, torch.jit.ScriptModule)


def test_exports_match_eager(bundle_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="ONNX export check needs requirements-export.txt")
    results = export_bundle(bundle_dir, tmp_path / "exports", ckpt_file=weights_for(bundle_dir, tmp_path / "weights"))
    assert results["torchscript"]["max_abs_diff"] <= TORCHSCRIPT_TOLERANCE, results
    assert results["onnx"]["max_abs_diff"] <= ONNX_TOLERANCE, results


def sibling_bundles(bundle_dir: Path) -> list[Path]:
    """Bundles the inference config uses from beside itself (``'/../<name>'``, e.g. a lung stage), which a user
    unzips next to it, as the Zoo's download folder holds them."""
    text = (bundle_dir / "configs" / "inference.yaml").read_text(encoding="utf-8")
    names = sorted(set(SIBLING_REFERENCE.findall(text)))
    return [BUNDLES_DIR / name for name in names if (BUNDLES_DIR / name).is_dir()]


def unzip_with_weights(archive: Path, bundle_dir: Path, into: Path) -> Path:
    """Unzip a package; give it untrained weights if the bundle does not ship any yet."""
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(into)
    unzipped = into / bundle_dir.name
    if not (unzipped / "models" / "model.pt").is_file():
        (unzipped / "models").mkdir(exist_ok=True)
        weights_for(bundle_dir, unzipped / "models")
    return unzipped


def test_package_unzips_and_infers(bundle_dir: Path, phantom_dir: Path, tmp_path: Path) -> None:
    metadata = metadata_of(bundle_dir)
    archive = build_zip(bundle_dir, tmp_path / "dist")
    assert archive.name == f"{bundle_dir.name}_v{metadata['version']}.zip"
    with zipfile.ZipFile(archive) as handle:
        names = handle.namelist()
        assert all(name.startswith(f"{bundle_dir.name}/") for name in names), "Zoo layout: one top folder"
        assert all(info.file_size <= ZOO_MAX_FILE_BYTES for info in handle.infolist())
    unzipped = unzip_with_weights(archive, bundle_dir, tmp_path / "unzipped")
    for sibling in sibling_bundles(bundle_dir):
        unzip_with_weights(build_zip(sibling, tmp_path / "dist"), sibling, tmp_path / "unzipped")
    assert (unzipped / "scripts" / "cxrseg" / "inference.py").is_file(), "the shared package must be materialised"
    assert not [p for p in unzipped.rglob("*") if p.is_symlink()], "a packaged bundle holds no links"
    leftovers = [n for n in names if "/eval/" in n or "checkpoint_" in n or "__pycache__" in n]
    assert not leftovers, f"run products in the package: {leftovers}"

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    sources = sorted((phantom_dir / "images").glob("*.png"))[:2]
    Image.open(sources[0]).save(inputs / "first.png")
    Image.open(sources[1]).resize((200, 240)).save(inputs / "second.png")
    run_in(
        unzipped,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.yaml",
        "--bundle_root",
        ".",
        "--dataset_dir",
        str(inputs),
        "--output_dir",
        str(outputs),
    )
    with open(outputs / "measurements.csv", newline="", encoding="utf-8") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert {name: row["status"] for name, row in rows.items()} == {"first.png": "ok", "second.png": "ok"}
    labels = set(int(k) for k in metadata["network_data_format"]["outputs"]["pred"]["channel_def"])
    for stem, size in (("first", Image.open(sources[0]).size), ("second", (200, 240))):
        label_map = Image.open(outputs / f"{stem}_seg.png")
        assert label_map.size == size and label_map.mode == "L"
        assert set(np.unique(np.asarray(label_map)).tolist()) <= labels
