"""Weights carry their settings (README, "Weights carry their settings"): the training run writes the values of the
ids that define the network and its input beside the best model, evaluation and inference take them from there,
and a config value that disagrees with them stops the run naming the id, both values and the file.

The end-to-end test trains every bundle with its ``train.yaml`` defaults (sizes, widths, classes as shipped in the
config), overriding only the number of epochs, the data and where the run writes, then runs ``evaluate.yaml`` and
``inference.yaml`` with their defaults on those weights: before the settings travelled with the weights, inference
built every network at the shipped weights' size instead of the trained one.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BUNDLES_DIR, REPO_ROOT, bundle_names
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow

from cxrseg.bundle import bundle_imports
from cxrseg.settings import (
    SettingsMismatchError,
    WeightsSettings,
    config_file_values,
    read_settings,
    settings_path,
    write_settings,
)
from cxrseg.training import AtomicCheckpointSaver


def config(bundle: str, name: str) -> Path:
    return BUNDLES_DIR / bundle / "configs" / name


def raw(bundle: str, name: str) -> dict:
    return yaml.safe_load(config(bundle, name).read_text(encoding="utf-8"))


def run_workflow(bundle: str, files: list[str], workflow_type: str, **overrides: object) -> None:
    """Run configs of ``bundle`` as ``python -m monai.bundle run`` does, in this process."""
    with bundle_imports(BUNDLES_DIR / bundle):
        workflow = ConfigWorkflow(
            config_file=[str(config(bundle, name)) for name in files], workflow_type=workflow_type, **overrides
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()


# --- the mechanism ----------------------------------------------------------------------------------------------


def test_settings_file_sits_beside_the_weights_and_reads_back(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    assert settings_path(ckpt) == tmp_path / "model.json"
    assert read_settings(ckpt) is None
    write_settings(ckpt, {"image_size": (64, 96), "gate": "add", "variational": False})
    assert read_settings(ckpt) == {"image_size": [64, 96], "gate": "add", "variational": False}
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"], "no temporary file is left behind"


def test_recorded_values_win_over_the_config_defaults(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = tmp_path / "model.pt"
    defaults = {"image_size": [256, 256], "features": 16}
    with caplog.at_level(logging.INFO, logger="cxrseg.settings"):
        unrecorded = WeightsSettings(ckpt, defaults)
    assert unrecorded["image_size"] == [256, 256] and "no settings file" in caplog.text
    assert unrecorded.check({"image_size": [64, 64]}), "weights without a settings file check nothing"
    write_settings(ckpt, {"image_size": [640, 512]})
    recorded = WeightsSettings(ckpt, defaults)
    assert recorded["image_size"] == [640, 512] and recorded["features"] == 16
    assert recorded.check({"image_size": (640, 512), "features": 24}), "ids the file does not record are not checked"
    with pytest.raises(KeyError, match="latent_size"):
        recorded["latent_size"]


def test_mismatch_names_the_setting_both_values_and_the_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    write_settings(ckpt, {"image_size": [640, 512], "gate": "bconvlstm"})
    with pytest.raises(SettingsMismatchError) as raised:
        WeightsSettings(ckpt, {}).check({"image_size": [128, 128], "gate": "bconvlstm"})
    message = str(raised.value)
    assert "image_size is [128, 128] in the config but [640, 512] in the weights' settings" in message
    assert str(settings_path(ckpt)) in message and "gate" not in message


def test_checkpoint_saver_writes_the_settings_whenever_it_writes_the_best_model(tmp_path: Path) -> None:
    sidecar = settings_path(tmp_path / "model.pt")
    scores = iter([0.5, 0.4, 0.7])
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(dice=next(scores)))
    AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": torch.nn.Linear(1, 1)},
        save_key_metric=True,
        key_metric_name="dice",
        key_metric_filename="model.pt",
        settings={"image_size": (64, 64)},
    ).attach(engine)
    written: list[bool] = []

    def take_settings_file(_: Engine) -> None:
        written.append(sidecar.is_file())
        sidecar.unlink(missing_ok=True)

    engine.add_event_handler(Events.EPOCH_COMPLETED, take_settings_file)
    engine.run([0], max_epochs=3)
    assert written == [True, False, True], "with the first and the improved best model, not for the worse epoch"
    assert read_settings(tmp_path / "model.pt") is None and (tmp_path / "model.pt").is_file()
    with pytest.raises(ValueError, match="key_metric_filename"):
        AtomicCheckpointSaver(
            save_dir=str(tmp_path), save_dict={"model": torch.nn.Linear(1, 1)}, save_key_metric=True, settings={}
        )


# --- what each bundle records -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle", bundle_names())
def test_every_config_names_the_settings_once_and_reads_them_from_the_weights(bundle: str) -> None:
    """train.yaml lists the ids (each as a reference to itself); evaluate.yaml and inference.yaml take each from
    the weights; inference.yaml checks the ids it has; train.yaml's values, the defaults of evaluate.yaml for
    weights without a settings file, are plain values."""
    train, evaluate, inference = (raw(bundle, name) for name in ("train.yaml", "evaluate.yaml", "inference.yaml"))
    recorded = train["weights_settings"]
    assert recorded == {name: f"@{name}" for name in recorded} and "image_size" in recorded
    assert inference["weights_settings"] == {name: f"@{name}" for name in inference["weights_settings"]}
    assert set(inference["weights_settings"]) <= set(recorded)
    for name in recorded:
        assert evaluate[name] == f"$@trained_with['{name}']", f"evaluate.yaml: {name}"
        assert not str(train[name]).startswith(("$", "@", "%")), f"train.yaml: {name} must be a plain value"
    for name in inference["weights_settings"]:
        assert inference[name] == f"$@trained_with['{name}']", f"inference.yaml: {name}"
    assert evaluate["validate#dataset#_requires_"] == inference["dataset"]["_requires_"] == "@settings_check"


@pytest.mark.parametrize("bundle", bundle_names())
def test_shipped_weights_carry_the_settings_inference_used_before(bundle: str) -> None:
    """The settings file of the shipped weights records every id train.yaml lists, with the values inference.yaml
    stated before the settings travelled (now its defaults for weights without the file), so shipped inference
    builds the same network on the same input; and those weights load into it."""
    recorded = read_settings(BUNDLES_DIR / bundle / "models" / "model.pt")
    assert recorded is not None and set(recorded) == set(raw(bundle, "train.yaml")["weights_settings"])
    defaults = raw(bundle, "inference.yaml")["trained_with"]["defaults"]
    assert defaults == {name: recorded[name] for name in raw(bundle, "inference.yaml")["weights_settings"]}
    with bundle_imports(BUNDLES_DIR / bundle):
        parser = ConfigParser()
        parser.read_config(str(config(bundle, "inference.yaml")))
        parser["bundle_root"] = str(BUNDLES_DIR / bundle)
        assert parser.get_parsed_content("settings_check")
        network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(BUNDLES_DIR / bundle / "models" / "model.pt", weights_only=True))


def test_evaluation_defaults_come_from_train_yaml_without_a_settings_file(tmp_path: Path) -> None:
    assert config_file_values(config("lung_vae", "train.yaml"))["image_size"] == [640, 512]
    with bundle_imports(BUNDLES_DIR / "lung_vae"):
        parser = ConfigParser()
        parser.read_config([str(config("lung_vae", "train.yaml")), str(config("lung_vae", "evaluate.yaml"))])
        parser.update({"bundle_root": str(BUNDLES_DIR / "lung_vae"), "ckpt_dir": str(tmp_path)})
        assert parser.get_parsed_content("image_size") == [640, 512]


# --- defaults after defaults, and a mismatch ---------------------------------------------------------------------


@pytest.fixture
def tiny_inputs(phantom_dir: Path, tmp_path: Path) -> Path:
    """One radiograph to infer on."""
    folder = tmp_path / "in"
    folder.mkdir()
    source = sorted((phantom_dir / "images").glob("*.png"))[0]
    (folder / source.name).write_bytes(source.read_bytes())
    return folder


@pytest.mark.parametrize("bundle", bundle_names())
def test_weights_trained_with_defaults_evaluate_and_infer_with_defaults(
    bundle: str, phantom_dir: Path, tiny_inputs: Path, tmp_path: Path
) -> None:
    """Train with train.yaml's defaults (one epoch on two phantoms), then evaluate and infer with the defaults of
    evaluate.yaml and inference.yaml: both run on the trained network at the trained size."""
    ckpt_dir, out = tmp_path / "models", tmp_path / "out"
    run_workflow(
        bundle,
        ["train.yaml"],
        "train",
        dataset_dir=str(phantom_dir),
        epochs=1,
        train_size=2,
        ckpt_dir=str(ckpt_dir),
        output_dir=str(out / "train"),
    )
    recorded = read_settings(ckpt_dir / "model.pt")
    train = raw(bundle, "train.yaml")
    assert recorded == {name: train[name] for name in train["weights_settings"]}

    run_workflow(
        bundle,
        ["train.yaml", "evaluate.yaml"],
        "train",
        dataset_dir=str(phantom_dir),
        ckpt_dir=str(ckpt_dir),
        output_dir=str(out / "eval"),
    )
    assert json.loads((out / "eval" / "metrics_summary.json").read_text())["cases"] > 0

    run_workflow(
        bundle,
        ["inference.yaml"],
        "infer",
        dataset_dir=str(tiny_inputs),
        ckpt_path=str(ckpt_dir / "model.pt"),
        output_dir=str(out / "infer"),
        # one epoch on two phantoms finds no plausible lung field, which the check would rightly reject
        check_lung_field=False,
    )
    with open(out / "infer" / "measurements.csv", newline="", encoding="utf-8") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["ok"]


def test_inference_with_an_image_size_other_than_the_weights_stops_before_any_image(
    tiny_inputs: Path, tmp_path: Path
) -> None:
    """The command line of README, with weights whose settings file says [128, 144] and --image_size [64, 64]."""
    ckpt = tmp_path / "weights" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes((BUNDLES_DIR / "res_cr_net" / "models" / "model.pt").read_bytes())
    write_settings(ckpt, read_settings(BUNDLES_DIR / "res_cr_net" / "models" / "model.pt") or {})
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(config("res_cr_net", "inference.yaml")),
        "--dataset_dir",
        str(tiny_inputs),
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(ckpt),
        "--image_size",
        "[64, 64]",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO_ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode != 0
    assert "image_size is [64, 64] in the config but [128, 144] in the weights' settings" in result.stderr
    assert str(settings_path(ckpt)) in result.stderr
    assert not (tmp_path / "out" / "measurements.csv").exists(), "no image may be processed"


def test_lung_stage_follows_and_checks_the_lung_weights_settings(tmp_path: Path) -> None:
    """The opacity bundle's lung stage builds lung_vae from the settings beside the lung weights it is given, and
    an override of its config that disagrees with them stops it."""
    lung_dir = BUNDLES_DIR / "lung_vae"
    with bundle_imports(lung_dir):
        parser = ConfigParser()
        parser.read_config(str(config("lung_vae", "inference.yaml")))
        parser.update({"bundle_root": str(lung_dir), "image_size": [128, 128]})
        weights = tmp_path / "lung" / "model.pt"
        weights.parent.mkdir()
        torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    write_settings(weights, {**(read_settings(lung_dir / "models" / "model.pt") or {}), "image_size": [128, 128]})
    with bundle_imports(BUNDLES_DIR / "opacity_unet"):
        import scripts.lung_stage

        lung = scripts.lung_stage.load_lung_bundle(lung_dir, ckpt_path=weights)
        assert lung.network.image_size == [128, 128]
        with pytest.raises(RuntimeError) as raised:
            scripts.lung_stage.load_lung_bundle(lung_dir, ckpt_path=weights, overrides={"image_size": [256, 256]})
    assert "image_size is [256, 256] in the config but [128, 128]" in str(raised.value.__cause__)
