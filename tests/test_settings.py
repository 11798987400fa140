"""Weights carry their settings (docs/conventions.md, "Weights carry their settings"): the training run writes the
values of the ids that define the network and its input beside the best model; the configs state the shipped
weights' values; other weights bring theirs as the last config file; and a config value that differs from the
settings file of the weights a run loads stops it before any image is read, naming the id, both values and the file.

The end-to-end test trains every bundle at a size no shipped weights have (one epoch on two phantoms), then runs
``evaluate.yaml`` and ``inference.yaml`` on those weights with and without the run's ``model.json`` as the last
config file.
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
    check_settings,
    read_settings,
    settings_config_files,
    settings_file,
    settings_path,
    write_settings,
)
from cxrseg.training import AtomicCheckpointSaver

# a size none of the shipped weights has (attention_bcdunet needs multiples of 16)
OTHER_SIZE = [64, 64]


def config(bundle: str, name: str) -> Path:
    return BUNDLES_DIR / bundle / "configs" / name


def raw(bundle: str, name: str) -> dict:
    return yaml.safe_load(config(bundle, name).read_text(encoding="utf-8"))


def shipped(bundle: str) -> dict:
    return json.loads((BUNDLES_DIR / bundle / "models" / "model.json").read_text(encoding="utf-8"))


def run_workflow(bundle: str, files: list[str | Path], workflow_type: str, **overrides: object) -> None:
    """Run configs as ``python -m monai.bundle run`` does, in this process: names of ``bundle``'s configs, or paths."""
    with bundle_imports(BUNDLES_DIR / bundle):
        workflow = ConfigWorkflow(
            config_file=[str(file if isinstance(file, Path) else config(bundle, file)) for file in files],
            workflow_type=workflow_type,
            **overrides,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()


def messages(error: BaseException | None) -> str:
    """The messages of an error and of its causes (MONAI wraps what a config component raises)."""
    found = []
    while error is not None:
        found.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(found)


# --- the mechanism ----------------------------------------------------------------------------------------------


def test_settings_file_sits_beside_the_weights_and_reads_back(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    assert settings_path(ckpt) == tmp_path / "model.json"
    assert read_settings(ckpt) is None and settings_file(ckpt) is None
    write_settings(ckpt, {"image_size": (64, 96), "gate": "add", "variational": False})
    assert read_settings(ckpt) == {"image_size": [64, 96], "gate": "add", "variational": False}
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"], "no temporary file is left behind"


def test_a_checkpoint_of_a_run_takes_the_settings_of_its_folder(tmp_path: Path) -> None:
    """A run writes model.json beside model.pt only; its checkpoint_*.pt were trained with the same settings, and a
    checkpoint's own <stem>.json comes first."""
    write_settings(tmp_path / "model.pt", {"image_size": [256, 256]})
    checkpoint = tmp_path / "checkpoint_checkpoint_epoch=40.pt"
    assert settings_file(checkpoint) == tmp_path / "model.json"
    assert read_settings(checkpoint) == {"image_size": [256, 256]}
    with pytest.raises(SettingsMismatchError, match=r"image_size is \[320, 320\] in the config but \[256, 256\]"):
        check_settings(checkpoint, {"image_size": [320, 320]})
    write_settings(checkpoint, {"image_size": [320, 320]})
    assert settings_file(checkpoint) == settings_path(checkpoint) and check_settings(
        checkpoint, {"image_size": [320, 320]}
    )


def test_settings_file_goes_last_among_the_config_files(tmp_path: Path) -> None:
    configs = ["inference.yaml", Path("override.yaml")]
    assert settings_config_files(configs, tmp_path / "model.pt") == ["inference.yaml", "override.yaml"]
    write_settings(tmp_path / "model.pt", {"image_size": [64, 64]})
    assert settings_config_files(configs, tmp_path / "model.pt") == [
        "inference.yaml",
        "override.yaml",
        str(tmp_path / "model.json"),
    ]


def test_check_passes_weights_without_settings_file_and_ids_not_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "model.pt"
    with caplog.at_level(logging.INFO, logger="cxrseg.settings"):
        assert check_settings(ckpt, {"image_size": [64, 64]}), "weights without a settings file check nothing"
    assert "no settings file" in caplog.text
    write_settings(ckpt, {"image_size": [640, 512]})
    assert check_settings(ckpt, {"image_size": (640, 512), "features": 24}), "ids the file does not record pass"


def test_mismatch_names_every_differing_id_both_values_the_file_and_the_fix(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    write_settings(ckpt, {"image_size": [640, 512], "gate": "bconvlstm", "features": 16})
    with pytest.raises(SettingsMismatchError) as raised:
        check_settings(ckpt, {"image_size": [128, 128], "gate": "bconvlstm", "features": 8})
    message = str(raised.value)
    assert "image_size is [128, 128] in the config but [640, 512] in the weights' settings" in message
    assert "features is 8 in the config but 16" in message and "gate" not in message
    assert f"Add {settings_path(ckpt)} as the last --config_file" in message


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


# --- what each bundle states ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle", bundle_names())
def test_configs_state_the_shipped_weights_settings(bundle: str) -> None:
    """train.yaml names the ids once (each a reference to itself) and the shipped model.json records them all;
    inference.yaml states each id it uses as the model.json's value; evaluate.yaml states only the ids whose shipped
    value differs from train.yaml's, so train + evaluate parse to the model.json; both require the check."""
    train, evaluate, inference = (raw(bundle, name) for name in ("train.yaml", "evaluate.yaml", "inference.yaml"))
    recorded = shipped(bundle)
    assert train["weights_settings"] == {name: f"@{name}" for name in recorded} and "image_size" in recorded
    assert inference["weights_settings"] == {name: f"@{name}" for name in inference["weights_settings"]}
    assert {name: inference[name] for name in inference["weights_settings"]} == {
        name: recorded[name] for name in inference["weights_settings"]
    }
    assert {name for name in recorded if name in evaluate} == {
        name for name, value in recorded.items() if train[name] != value
    }
    with bundle_imports(BUNDLES_DIR / bundle):
        parser = ConfigParser()
        parser.read_config([str(config(bundle, "train.yaml")), str(config(bundle, "evaluate.yaml"))])
        parser["bundle_root"] = str(BUNDLES_DIR / bundle)
        assert parser.get_parsed_content("weights_settings") == recorded
        assert parser.get_parsed_content("settings_check")
    assert evaluate["validate#dataset#_requires_"] == inference["dataset"]["_requires_"] == "@settings_check"


@pytest.mark.parametrize("bundle", bundle_names())
def test_shipped_weights_load_into_the_network_inference_yaml_states(bundle: str) -> None:
    with bundle_imports(BUNDLES_DIR / bundle):
        parser = ConfigParser()
        parser.read_config(str(config(bundle, "inference.yaml")))
        parser["bundle_root"] = str(BUNDLES_DIR / bundle)
        assert parser.get_parsed_content("settings_check")
        network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(BUNDLES_DIR / bundle / "models" / "model.pt", weights_only=True))


# --- other weights, and a mismatch ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_inputs(phantom_dir: Path, tmp_path: Path) -> Path:
    """One radiograph to infer on."""
    folder = tmp_path / "in"
    folder.mkdir()
    source = sorted((phantom_dir / "images").glob("*.png"))[0]
    (folder / source.name).write_bytes(source.read_bytes())
    return folder


@pytest.mark.parametrize("bundle", bundle_names())
def test_weights_of_another_size_run_with_their_settings_file_last(
    bundle: str, phantom_dir: Path, tiny_inputs: Path, tmp_path: Path
) -> None:
    """Train at 64 x 64 (one epoch on two phantoms). With the run's model.json as the last config file, evaluate.yaml
    scores and inference.yaml segments with those weights (the file also holds ids inference.yaml does not use);
    without it, the configs' shipped image_size stops both before any image is read, naming the file, also for the
    run's checkpoint_*.pt, whose settings are its folder's model.json."""
    ckpt_dir, out = tmp_path / "models", tmp_path / "out"
    run_workflow(
        bundle,
        ["train.yaml"],
        "train",
        dataset_dir=str(phantom_dir),
        epochs=1,
        train_size=2,
        image_size=OTHER_SIZE,
        ckpt_dir=str(ckpt_dir),
        output_dir=str(out / "train"),
    )
    settings = ckpt_dir / "model.json"
    assert read_settings(ckpt_dir / "model.pt") == {**shipped(bundle), "image_size": OTHER_SIZE}
    evaluation = {"dataset_dir": str(phantom_dir), "ckpt_dir": str(ckpt_dir)}
    # one epoch on two phantoms finds no plausible lung field, which the check would rightly reject
    inference = {"dataset_dir": str(tiny_inputs), "check_lung_field": False}

    run_workflow(bundle, ["train.yaml", "evaluate.yaml", settings], "train", **evaluation, output_dir=str(out / "eval"))
    assert json.loads((out / "eval" / "metrics_summary.json").read_text())["cases"] > 0
    ckpt = ckpt_dir / "model.pt"
    run_workflow(
        bundle, ["inference.yaml", settings], "infer", **inference, ckpt_path=str(ckpt), output_dir=str(out / "infer")
    )
    with open(out / "infer" / "measurements.csv", newline="", encoding="utf-8") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["ok"]

    checkpoint = next(ckpt_dir.glob("checkpoint_*.pt"))
    mismatch = f"image_size is {shipped(bundle)['image_size']} in the config but {OTHER_SIZE} in the weights' settings"
    for files, workflow_type, weights in (
        (["train.yaml", "evaluate.yaml"], "train", evaluation),
        (["inference.yaml"], "infer", {**inference, "ckpt_path": str(checkpoint)}),
    ):
        with pytest.raises(Exception) as raised:
            run_workflow(bundle, files, workflow_type, **weights, output_dir=str(out / "refused"))
        assert mismatch in messages(raised.value) and f"Add {settings} as the last --config_file" in messages(
            raised.value
        )
        assert not list((out / "refused").glob("*.csv")), "no image may be processed"


def test_inference_with_an_image_size_other_than_the_weights_stops_before_any_image(
    tiny_inputs: Path, tmp_path: Path
) -> None:
    """The command line of README, with the shipped res_cr_net weights (settings file: [128, 144]) and
    --image_size [64, 64]."""
    ckpt = BUNDLES_DIR / "res_cr_net" / "models" / "model.pt"
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
    """The opacity bundle's lung stage builds lung_vae from the settings file of the lung weights it is given, and
    an override of its config that disagrees with them stops it."""
    lung_dir = BUNDLES_DIR / "lung_vae"
    with bundle_imports(lung_dir):
        parser = ConfigParser()
        parser.read_config(str(config("lung_vae", "inference.yaml")))
        parser.update({"bundle_root": str(lung_dir), "image_size": [128, 128]})
        weights = tmp_path / "lung" / "model.pt"
        weights.parent.mkdir()
        torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    write_settings(weights, {**shipped("lung_vae"), "image_size": [128, 128]})
    with bundle_imports(BUNDLES_DIR / "opacity_unet"):
        import scripts.lung_stage

        lung = scripts.lung_stage.load_lung_bundle(lung_dir, ckpt_path=weights)
        assert lung.network.image_size == [128, 128]
        with pytest.raises(RuntimeError) as raised:
            scripts.lung_stage.load_lung_bundle(lung_dir, ckpt_path=weights, overrides={"image_size": [256, 256]})
    assert "image_size is [256, 256] in the config but [128, 128]" in str(raised.value.__cause__)
