"""The MONAI Label app (tools/monailabel_app) served by a real ``monailabel start_server`` on 127.0.0.1.

MONAI Label lives in its own environment (tools/setup_monailabel_env.sh; .ci/run builds it and exports its
interpreter as CXRSEG_MONAILABEL_PYTHON). The test serves copies of every complete bundle with weights (the
shipped models/model.pt, else one epoch on phantoms), asks ``/infer/<bundle>`` for the label of a non-square
JPEG radiograph and compares it with the bundle's own inference contract on the same file: same size, same
way up, same label values. It then trains one bundle from scratch through ``BundleTrainTask`` on label maps in
the datastore, which exercises ``pretrained: false`` and the label-map-to-structure-masks conversion.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLES_DIR, REPO_ROOT
from monai.bundle import ConfigParser
from PIL import Image

from cxrseg.data import load_split
from cxrseg.phantoms import generate_dataset
from cxrseg.transforms import LoadLabelMapd
from tools.package import copy_bundle

PYTHON_ENV = "CXRSEG_MONAILABEL_PYTHON"
TRAIN_BUNDLE = "res_cr_net"
QUERY_IMAGE = "tall"
QUERY_SIZE = (200, 240)  # PIL (cols, rows): non-square, so a transposed label cannot pass
LABELLED_CASES = 4
STARTUP_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 900
SUBPROCESS_TIMEOUT_S = 1200
MIN_AGREEMENT = 0.99


@dataclass
class Server:
    url: str
    bundles_dir: Path
    query_dir: Path  # the query image alone, for the bundles' own inference contract
    work_dir: Path


def monailabel_python() -> Path:
    """The MONAI Label environment's interpreter, or skip saying how to get one."""
    value = os.environ.get(PYTHON_ENV)
    if not value:
        pytest.skip(
            f"{PYTHON_ENV} is not set: build the MONAI Label environment with tools/setup_monailabel_env.sh VENV "
            f"and export {PYTHON_ENV}=VENV/bin/python (.ci/run does both)"
        )
    python = Path(value)
    assert python.is_file(), f"{PYTHON_ENV}={python} does not exist"
    return python


def quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""} | extra


def run_checked(command: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(
        command, cwd=cwd, env=quiet_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def complete_bundles() -> list[Path]:
    return sorted(
        p
        for p in BUNDLES_DIR.iterdir()
        if (p / "configs" / "inference.yaml").is_file() and (p / "configs" / "metadata.json").is_file()
    )


def channel_def(bundle_dir: Path) -> dict[int, str]:
    metadata = json.loads((bundle_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))
    return {int(k): v for k, v in metadata["network_data_format"]["outputs"]["pred"]["channel_def"].items()}


def config_value(bundle_dir: Path, config: str, key: str) -> object:
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / config))
    return parser.get(key)


def give_weights(bundle_dir: Path, phantoms: Path, work_dir: Path) -> None:
    """Keep shipped weights; otherwise train one short epoch into the copy, at the image size inference.yaml states,
    so that the plain inference command of the contract runs them too."""
    if (bundle_dir / "models" / "model.pt").is_file():
        return
    image_size = config_value(bundle_dir, "inference.yaml", "image_size")
    run_checked(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(bundle_dir / "configs" / "train.yaml"),
            "--bundle_root",
            str(bundle_dir),
            "--dataset_dir",
            str(phantoms),
            "--output_dir",
            str(work_dir),
            "--ckpt_dir",
            str(bundle_dir / "models"),
            "--epochs",
            "1",
            "--train_size",
            "2",
            "--batch_size",
            "2",
            "--num_workers",
            "0",
            "--image_size",
            json.dumps(image_size),
            "--device",
            "$torch.device('cpu')",
        ]
    )
    for checkpoint in (bundle_dir / "models").glob("checkpoint_*.pt"):
        checkpoint.unlink()
    assert (bundle_dir / "models" / "model.pt").is_file(), f"training {bundle_dir.name} wrote no model.pt"


def contract_label(bundle_dir: Path, inputs: Path, out_dir: Path) -> np.ndarray:
    """The label map the bundle's own inference contract writes for the query image."""
    run_checked(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(bundle_dir / "configs" / "inference.yaml"),
            "--bundle_root",
            str(bundle_dir),
            "--dataset_dir",
            str(inputs),
            "--output_dir",
            str(out_dir),
        ]
    )
    return np.asarray(Image.open(out_dir / f"{QUERY_IMAGE}_seg.png"))


def fill_datastore(studies: Path, phantoms: Path, label_classes: list[list[str]]) -> None:
    """Phantom radiographs, final label maps (values = classes of TRAIN_BUNDLE) for the first few, and the
    non-square JPEG query image."""
    labels_dir = studies / "labels" / "final"
    labels_dir.mkdir(parents=True)
    to_label_map = LoadLabelMapd(keys="label", classes=label_classes)
    for entry in load_split(phantoms, "training")[:LABELLED_CASES]:
        shutil.copy(entry["image"], studies / f"{entry['case']}.png")
        label = np.asarray(to_label_map({"label": entry["label"]})["label"])[0].astype(np.uint8)
        Image.fromarray(label).save(labels_dir / f"{entry['case']}.png")
    query = sorted((phantoms / "images").glob("*.png"))[-1]
    Image.open(query).convert("RGB").resize(QUERY_SIZE).save(studies / f"{QUERY_IMAGE}.jpg", quality=95)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(url: str, data: bytes | None = None, content_type: str | None = None, timeout: float = 30) -> bytes:
    headers = {"Content-Type": content_type} if content_type else {}
    method = "GET" if data is None else "POST"
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=timeout) as reply:
        return reply.read()


def wait_for_server(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"monailabel exited with {process.returncode}:\n{log.read_text()[-5000:]}")
        try:
            request(f"{url}/info/", timeout=10)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(2)
    pytest.fail(f"monailabel did not answer within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    python = monailabel_python()
    work = tmp_path_factory.mktemp("monailabel")
    phantoms = generate_dataset(work / "phantoms", count=8, size=256, seed=3)
    bundles_dir, studies, query_dir = work / "bundles", work / "studies", work / "query"
    bundles_dir.mkdir()
    query_dir.mkdir()
    bundles = [copy_bundle(source, bundles_dir / source.name) for source in complete_bundles()]
    if not bundles:
        pytest.skip("no complete bundle (configs/inference.yaml and configs/metadata.json) to serve")
    for bundle in bundles:
        give_weights(bundle, phantoms, work / f"train-{bundle.name}")
    train_classes = (
        config_value(bundles_dir / TRAIN_BUNDLE, "train.yaml", "label_classes")
        if (bundles_dir / TRAIN_BUNDLE).is_dir()
        else [["left_lung", "right_lung", "lungs"]]
    )
    fill_datastore(studies, phantoms, train_classes)
    shutil.copy(studies / f"{QUERY_IMAGE}.jpg", query_dir)

    app_dir = shutil.copytree(REPO_ROOT / "tools" / "monailabel_app", work / "app")
    port = free_port()
    log = work / "server.log"
    command = [
        str(python.parent / "monailabel"),
        "start_server",
        "--app",
        str(app_dir),
        "--studies",
        str(studies),
        "--conf",
        "bundles",
        str(bundles_dir),
        "--conf",
        "train",
        TRAIN_BUNDLE,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = quiet_env(MONAI_LABEL_DATASTORE_AUTO_RELOAD="false", PATH=f"{python.parent}{os.pathsep}{os.environ['PATH']}")
    with open(log, "w", encoding="utf-8") as log_handle:
        process = subprocess.Popen(command, env=env, stdout=log_handle, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, process, log)
        yield Server(url, bundles_dir, query_dir, work)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def infer(server: Server, bundle: str) -> np.ndarray:
    query = urllib.parse.urlencode({"image": QUERY_IMAGE, "output": "image"})
    body = urllib.parse.urlencode({"params": "{}"}).encode()
    reply = request(
        f"{server.url}/infer/{bundle}?{query}", body, "application/x-www-form-urlencoded", timeout=REQUEST_TIMEOUT_S
    )
    label = Image.open(io.BytesIO(reply))
    assert label.format == "PNG" and label.mode == "L", f"{bundle}: label is {label.format} {label.mode}, not 8-bit PNG"
    return np.asarray(label)


def test_info_lists_every_bundle_with_channel_def_labels(server: Server) -> None:
    info = json.loads(request(f"{server.url}/info/"))
    served = {p.name: p for p in server.bundles_dir.iterdir()}
    assert set(info["models"]) == set(served)
    for name, model in info["models"].items():
        expected = {label.lower(): value for value, label in channel_def(served[name]).items() if value > 0}
        assert model["labels"] == expected, name
        assert model["dimension"] == 2, name
    assert set(info["trainers"]) == ({TRAIN_BUNDLE} & set(served))


@pytest.mark.parametrize("bundle", [p.name for p in complete_bundles()])
def test_infer_matches_the_inference_contract(server: Server, bundle: str) -> None:
    bundle_dir = server.bundles_dir / bundle
    expected = contract_label(bundle_dir, server.query_dir, server.work_dir / f"contract-{bundle}")
    label = infer(server, bundle)
    assert label.shape == expected.shape == (QUERY_SIZE[1], QUERY_SIZE[0])
    assert set(np.unique(label).tolist()) <= set(channel_def(bundle_dir))
    agreement = float((label == expected).mean())
    assert agreement >= MIN_AGREEMENT, f"MONAI Label and the inference contract agree on {agreement:.4f} of pixels"
    assert set(np.unique(label).tolist()) == set(np.unique(expected).tolist())


def test_train_from_scratch_writes_a_new_model(server: Server) -> None:
    model = server.bundles_dir / TRAIN_BUNDLE / "models" / "model.pt"
    if not model.parent.is_dir():
        pytest.skip(f"{TRAIN_BUNDLE} is not a complete bundle yet")
    before = model.stat().st_mtime_ns
    params = {"max_epochs": 1, "pretrained": False, "val_split": 0.5, "device": "cpu", "multi_gpu": False}
    request(
        f"{server.url}/train/{TRAIN_BUNDLE}?run_sync=true",
        json.dumps(params).encode(),
        "application/json",
        timeout=REQUEST_TIMEOUT_S,
    )
    assert model.stat().st_mtime_ns > before, "training from scratch must write models/model.pt"
    label = infer(server, TRAIN_BUNDLE)
    assert label.shape == (QUERY_SIZE[1], QUERY_SIZE[0])


def test_inference_task_builds_what_the_served_weights_were_trained_for(tmp_path: Path) -> None:
    """inference.yaml states the shipped weights' settings; the inference task reads the settings file of the
    served models/model.pt as the last config file, when it starts and again when a training request replaces the
    weights (a new file: another inode)."""
    python = monailabel_python()
    bundle = copy_bundle(BUNDLES_DIR / TRAIN_BUNDLE, tmp_path / TRAIN_BUNDLE)
    settings = bundle / "models" / "model.json"
    shipped = json.loads(settings.read_text(encoding="utf-8"))
    settings.write_text(json.dumps({**shipped, "image_size": [64, 72]}), encoding="utf-8")
    code = f"""
import json, os, shutil, sys
sys.path.insert(0, {str(REPO_ROOT / "tools" / "monailabel_app")!r})
from lib.radiograph_tasks import RadiographInferTask
bundle = {str(bundle)!r}
task = RadiographInferTask(bundle, {{}})
sizes = [task.bundle_config.get_parsed_content("image_size")]
shutil.copy(bundle + "/models/model.pt", bundle + "/models/new.pt")
os.replace(bundle + "/models/new.pt", bundle + "/models/model.pt")
with open(bundle + "/models/model.json") as handle:
    trained = {{**json.load(handle), "image_size": [96, 108]}}
with open(bundle + "/models/model.json", "w") as handle:
    json.dump(trained, handle)
task.follow_weights()
sizes.append(task.bundle_config.get_parsed_content("image_size"))
print("SIZES", json.dumps(sizes))
"""
    result = subprocess.run(
        [str(python), "-c", code], cwd=tmp_path, env=quiet_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.split("SIZES", 1)[1]) == [[64, 72], [96, 108]]
