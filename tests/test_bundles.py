"""The generic bundle test: every folder in bundles/ must train, evaluate, infer and export on phantoms.

A new bundle is covered by adding its folder. Each bundle gets the same short recipe through config
overrides only (1 epoch, 4 training cases, 128x128), which is also a check that the conventions of README
(top-level ids, inference contract, evaluation report) hold for it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, ZOO_SCHEMA, bundle_imports, bundle_names
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata, verify_net_in_out
from PIL import Image

SMALL_SIZE = [128, 128]


def config_path(bundle: str, name: str) -> str:
    return str(REPO_ROOT / "bundles" / bundle / "configs" / name)


def short_run_overrides(bundle_dir: Path, dataset_dir: Path, work_dir: Path) -> dict:
    return {
        "bundle_root": str(bundle_dir),
        "dataset_dir": str(dataset_dir),
        "ckpt_dir": str(work_dir / "models"),
        "output_dir": str(work_dir / "eval"),
        "epochs": 1,
        "train_size": 4,
        "batch_size": 2,
        "num_workers": 0,
        "image_size": SMALL_SIZE,
        "device": "$torch.device('cpu')",
    }


def channel_def(bundle: str) -> dict[int, str]:
    metadata = json.loads(Path(config_path(bundle, "metadata.json")).read_text())
    return {int(k): v for k, v in metadata["network_data_format"]["outputs"]["pred"]["channel_def"].items()}


def inference_inputs(phantom_dir: Path, folder: Path) -> dict[str, tuple[int, int]]:
    """Radiographs of several sizes and formats plus one broken file; returns the expected (rows, cols)."""
    folder.mkdir()
    sources = sorted((phantom_dir / "images").glob("*.png"))[:2]
    Image.open(sources[0]).save(folder / "square.png")
    Image.open(sources[1]).resize((260, 300)).convert("RGB").save(folder / "tall colour.jpg")
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    return {"square.png": (256, 256), "tall colour.jpg": (300, 260)}


@pytest.fixture(scope="module", params=bundle_names())
def trained_bundle(request: pytest.FixtureRequest, phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Train each bundle for one short epoch on phantoms; yields (name, bundle_dir, work_dir, overrides)."""
    bundle = request.param
    bundle_dir = REPO_ROOT / "bundles" / bundle
    work_dir = tmp_path_factory.mktemp(bundle)
    overrides = short_run_overrides(bundle_dir, phantom_dir, work_dir)
    with bundle_imports(bundle_dir):
        workflow = ConfigWorkflow(config_file=config_path(bundle, "train.yaml"), workflow_type="train", **overrides)
        workflow.initialize()
        assert workflow.check_properties() == []
        workflow.run()
        workflow.finalize()
    return bundle, bundle_dir, work_dir, overrides


def test_metadata_validates_against_zoo_schema(trained_bundle) -> None:
    bundle = trained_bundle[0]
    verify_metadata(meta_file=config_path(bundle, "metadata.json"), filepath=str(ZOO_SCHEMA))
    metadata = json.loads(Path(config_path(bundle, "metadata.json")).read_text())
    assert metadata["version"] in metadata["changelog"]
    assert channel_def(bundle)[0] == "background"


def test_training_writes_best_model(trained_bundle) -> None:
    _, _, work_dir, _ = trained_bundle
    state = torch.load(work_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())


def test_evaluation_writes_per_case_and_summary(trained_bundle) -> None:
    bundle, bundle_dir, work_dir, overrides = trained_bundle
    with bundle_imports(bundle_dir):
        workflow = ConfigWorkflow(
            config_file=[config_path(bundle, "train.yaml"), config_path(bundle, "evaluate.yaml")],
            workflow_type="train",
            **overrides,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    summary = json.loads((work_dir / "eval" / "metrics_summary.json").read_text())
    with open(work_dir / "eval" / "metrics_per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert summary["cases"] == len(rows) > 0
    first_label = channel_def(bundle)[1]
    assert 0.0 <= float(rows[0][f"{first_label}_dice"]) <= 1.0


def test_inference_contract(trained_bundle, phantom_dir: Path, tmp_path: Path) -> None:
    """The CLI of README: label maps at the input size with the metadata's labels, one CSV row per input,
    the broken file reported, the others written, and a non-zero exit because one input failed."""
    bundle, bundle_dir, work_dir, _ = trained_bundle
    expected = inference_inputs(phantom_dir, tmp_path / "in")
    out_dir = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        config_path(bundle, "inference.yaml"),
        "--bundle_root",
        str(bundle_dir),
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(out_dir),
        "--ckpt_path",
        str(work_dir / "models" / "model.pt"),
        "--image_size",
        json.dumps(SMALL_SIZE),
        # a few epochs on phantoms find no plausible lungs on every input; the file handling is under test
        "--check_lung_field",
        "false",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode != 0, "one input is broken, so the run must report failure"
    assert "broken.png" in result.stderr + result.stdout
    labels = set(channel_def(bundle))
    for name, (rows, cols) in expected.items():
        label_map = np.asarray(Image.open(out_dir / f"{Path(name).stem}_seg.png"))
        assert label_map.shape == (rows, cols) and label_map.dtype == np.uint8
        assert set(np.unique(label_map)) <= labels
    with open(out_dir / "measurements.csv", newline="", encoding="utf-8") as handle:
        rows_by_file = {row["file"]: row for row in csv.DictReader(handle)}
    assert set(rows_by_file) == {"square.png", "tall colour.jpg", "broken.png"}
    assert rows_by_file["broken.png"]["status"] == "error" and "broken.png" in rows_by_file["broken.png"]["error"]
    assert rows_by_file["square.png"]["status"] == "ok"


def test_inference_config_properties(trained_bundle) -> None:
    bundle, bundle_dir, _, _ = trained_bundle
    with bundle_imports(bundle_dir):
        workflow = ConfigWorkflow(
            config_file=config_path(bundle, "inference.yaml"), workflow_type="infer", bundle_root=str(bundle_dir)
        )
        workflow.initialize()
        assert workflow.check_properties() == []


def test_verify_net_in_out(trained_bundle) -> None:
    bundle, bundle_dir, _, _ = trained_bundle
    with bundle_imports(bundle_dir):
        verify_net_in_out(
            net_id="network_def",
            meta_file=config_path(bundle, "metadata.json"),
            config_file=config_path(bundle, "inference.yaml"),
            device="cpu",
            bundle_root=str(bundle_dir),
        )


def test_torchscript_export_matches_eager(trained_bundle) -> None:
    """Scripting where the network allows it; tracing where metadata says it cannot be scripted. The export is
    checked on an input other than the trace's, since tracing freezes whatever depends on values it sees."""
    bundle, bundle_dir, work_dir, _ = trained_bundle
    metadata = json.loads(Path(config_path(bundle, "metadata.json")).read_text())
    with bundle_imports(bundle_dir):
        parser = ConfigParser()
        parser.read_config(config_path(bundle, "inference.yaml"))
        parser.update({"bundle_root": str(bundle_dir), "image_size": SMALL_SIZE})
        network = parser.get_parsed_content("network_def").eval()
        network.load_state_dict(torch.load(work_dir / "models" / "model.pt", map_location="cpu", weights_only=True))
        channels = metadata["network_data_format"]["inputs"]["image"]["num_channels"]
        trace_input, example = torch.rand(2, 1, channels, *SMALL_SIZE, generator=torch.Generator().manual_seed(0))
        if metadata.get("torchscript_export", "script") == "trace":
            exported = torch.jit.trace(network, trace_input)
        else:
            exported = torch.jit.script(network)
        with torch.no_grad():
            np.testing.assert_allclose(exported(example).numpy(), network(example).numpy(), atol=1e-4)


@pytest.mark.parametrize("bundle", bundle_names())
def test_training_and_inference_show_progress(bundle: str) -> None:
    """Progress bars (rate and ETA; off where stderr is no terminal): first of the report handlers, which the
    trainer attaches before validation so that the bar of an epoch closes before validation logs, and among the
    inference handlers."""
    train = ConfigParser.load_config_file(config_path(bundle, "train.yaml"))
    assert train["train"]["trainer"]["train_handlers"] == "$@train#report_handlers + @train#handlers"
    progress = "scripts.cxrseg.progress.progress_bar"
    assert train["train"]["report_handlers"][0]["_target_"] == progress
    inference = ConfigParser.load_config_file(config_path(bundle, "inference.yaml"))
    assert progress in [handler.get("_target_") for handler in inference["handlers"]]


@pytest.mark.parametrize("bundle", bundle_names())
def test_multi_gpu_inference_override(bundle: str) -> None:
    """The Zoo's multi-GPU evaluation pattern: a DistributedSampler on the inference dataset, the process group
    made in ``initialize`` and destroyed in ``finalize``."""
    override = ConfigParser.load_config_file(config_path(bundle, "multi_gpu_inference.yaml"))
    assert override["sampler"]["_target_"] == "DistributedSampler" and override["sampler"]["dataset"] == "@dataset"
    assert override["dataloader#sampler"] == "@sampler"
    assert any("init_process_group" in step for step in override["initialize"])
    assert any("destroy_process_group" in step for step in override["finalize"])
