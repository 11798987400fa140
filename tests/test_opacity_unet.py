"""Tests of the opacity_unet bundle: network size, loss, lung crop, the lung stage (another bundle run
in-process), severity measurements, ROC-AUC of opacity %, inference, and a short real-data training."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, bundle_imports, train_bundle
from monai.bundle import ConfigParser
from monai.transforms import LoadImaged
from PIL import Image

from cxrseg.io import RadiographReader

BUNDLE = REPO_ROOT / "bundles" / "opacity_unet"
CONFIGS = BUNDLE / "configs"
ZOO_MODEL_LIMIT = 25_000_000


@pytest.fixture
def opacity_scripts():
    """The bundle's ``scripts`` package, imported as MONAI imports it."""
    with bundle_imports(BUNDLE):
        import scripts.lung_stage
        import scripts.network
        import scripts.report
        import scripts.severity

        yield scripts


def parsed(config: str | list[str], **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in ([config] if isinstance(config, str) else config)])
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser


def test_network_shape_and_parameter_count(opacity_scripts) -> None:
    """MONAI's ResNet18 encoder (shortcut type A: 10,996,416 parameters for one input channel) and the decoder
    at half the segmentation_models widths (128, 64, 32, 16, 8): 12,076,825 parameters in all."""
    network = parsed("train.yaml").get_parsed_content("network_def")
    assert sum(p.numel() for p in network.encoder.parameters()) == 10_996_416
    assert sum(p.numel() for p in network.parameters()) == 12_076_825
    with torch.no_grad():
        assert network(torch.rand(2, 1, 160, 224)).shape == (2, 1, 160, 224)


def test_fp16_weights_fit_the_zoo_limit_and_load_into_fp32(opacity_scripts, tmp_path: Path) -> None:
    from scripts.weights import save_half_precision

    network = parsed("train.yaml").get_parsed_content("network_def")
    torch.save(network.state_dict(), tmp_path / "fp32.pt")
    assert save_half_precision(tmp_path / "fp32.pt", tmp_path / "fp16.pt") <= ZOO_MODEL_LIMIT
    copy = parsed("train.yaml").get_parsed_content("network_def")
    copy.load_state_dict(torch.load(tmp_path / "fp16.pt", weights_only=True))
    assert next(copy.parameters()).dtype == torch.float32
    torch.testing.assert_close(copy.encoder.conv1.weight, network.encoder.conv1.weight.half().float())


def test_shipped_model_is_small_and_matches_the_inference_config(opacity_scripts) -> None:
    model = BUNDLE / "models" / "model.pt"
    assert model.stat().st_size <= ZOO_MODEL_LIMIT
    network = parsed("inference.yaml").get_parsed_content("network_def")
    network.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert parsed("inference.yaml").get_parsed_content("image_size") == metadata[
        "network_data_format"]["inputs"]["image"]["spatial_shape"]


def test_exported_network_matches_eager_on_new_inputs(opacity_scripts) -> None:
    """The shipped weights in MONAI's FlexibleUNet and in scripts.network's version agree exactly; scripted, and
    traced on one input, the network reproduces eager on another input (MONAI's own shortcut would be frozen
    into the trace as a constant of the first input)."""
    from monai.networks.nets import FlexibleUNet

    config = {key: value for key, value in parsed("inference.yaml").get("network_def").items() if key != "_target_"}
    weights = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = parsed("inference.yaml").get_parsed_content("network_def").eval()
    network.load_state_dict(weights)
    monai_network = FlexibleUNet(**config).eval()
    monai_network.load_state_dict(weights)
    generator = torch.Generator().manual_seed(0)
    trace_input, new_input = torch.rand(2, 1, 1, 160, 160, generator=generator)
    with torch.no_grad():
        expected = monai_network(new_input)
        torch.testing.assert_close(network(new_input), expected, atol=0.0, rtol=0.0)
        torch.testing.assert_close(torch.jit.script(network)(new_input), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.jit.trace(network, trace_input)(new_input), expected, atol=1e-4, rtol=1e-4)


def test_dice_focal_loss_on_a_hand_computed_case(opacity_scripts) -> None:
    """Logits 0 (p = 0.5) on 16 pixels, 4 of them opacity: Dice = 2*2/(8+4) = 1/3 so the Dice loss is 2/3;
    focal loss per pixel = (1 - 0.5)^2 * ln 2. A confident correct prediction costs almost nothing."""
    loss = parsed("train.yaml").get_parsed_content("loss")
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    expected = 2 / 3 + 0.25 * math.log(2)
    assert loss(torch.zeros(1, 1, 4, 4), target).item() == pytest.approx(expected, abs=1e-4)
    assert loss(20 * (2 * target - 1), target).item() < 1e-4


def test_training_input_is_the_lung_crop(opacity_scripts, phantom_dir: Path) -> None:
    """Deterministic training transforms: image blanked outside the lung, target inside the lung, the lung's
    bounding box filling the frame, at image_size."""
    parser = parsed("train.yaml", dataset_dir=str(phantom_dir), image_size=[96, 128], num_folds=None)
    transforms = parser.get_parsed_content("validate#preprocessing")
    entries = parser.get_parsed_content("train#dataset#data")
    with_opacity = next(e for e in entries if np.asarray(Image.open(e["label"]["ggo"])).any())
    item = transforms(with_opacity)
    image, label, lung = (np.asarray(item[k])[0] for k in ("image", "label", "lung"))
    assert image.shape == label.shape == lung.shape == (96, 128)
    assert not image[lung == 0].any() and image[lung > 0].max() > 0.5
    assert label.any() and not label[lung == 0].any()
    rows, cols = np.nonzero(lung)
    assert rows.min() <= 1 and rows.max() >= 94 and cols.min() <= 1 and cols.max() >= 126


def test_cross_validation_folds_keep_patients_apart(covid_dir: Path, opacity_scripts) -> None:
    with open(covid_dir / "metadata.csv", newline="") as handle:
        patient = {row["case"]: row["patientid"] for row in csv.DictReader(handle)}
    seen: list[str] = []
    for fold in range(5):
        parser = parsed("train.yaml", dataset_dir=str(covid_dir), num_folds=5, fold=fold)
        train = {e["case"] for e in parser.get_parsed_content("train#dataset#data")}
        val = {e["case"] for e in parser.get_parsed_content("validate#dataset#data")}
        assert not {patient[c] for c in train} & {patient[c] for c in val}
        seen += sorted(val)
    assert sorted(seen) == sorted(patient)


def two_lungs(shape=(90, 100)) -> np.ndarray:
    """Label map with a wide right lung (image left, columns 10-44) and a narrow left lung (columns 60-84),
    both rows 0-89, all clear (2)."""
    label_map = np.zeros(shape, np.uint8)
    label_map[:, 10:45] = 2
    label_map[:, 60:85] = 2
    return label_map


def test_severity_per_lung_and_zone(opacity_scripts) -> None:
    """Opacity filling the lower third of the patient's right lung (image left): 1/3 of that lung, 100 % of
    its lower zone, 35*30 / (35+25)*90 of the lung field, nothing on the left."""
    measure = opacity_scripts.severity.measure_opacity
    label_map = two_lungs()
    label_map[60:90, 10:45] = 1
    row = measure(label_map)
    assert row["lung_area_px"] == 60 * 90 and row["opacity_area_px"] == 35 * 30
    assert row["opacity_pct"] == pytest.approx(100 * 35 * 30 / (60 * 90))
    assert row["right_lung_area_px"] == 35 * 90 and row["left_lung_area_px"] == 25 * 90
    assert row["right_lung_opacity_pct"] == pytest.approx(100 / 3)
    assert (row["right_upper_opacity_pct"], row["right_middle_opacity_pct"], row["right_lower_opacity_pct"]) == (
        0.0, 0.0, pytest.approx(100.0))
    assert row["left_lung_opacity_pct"] == 0.0
    empty = measure(np.zeros((8, 8), np.uint8))
    assert empty["lung_area_px"] == 0
    assert math.isnan(empty["opacity_pct"]) and math.isnan(empty["left_upper_opacity_pct"])


def test_label_map_keeps_opacity_inside_the_lung(opacity_scripts) -> None:
    lung = torch.zeros(1, 4, 4)
    lung[..., :, :2] = 1
    pred = torch.zeros(1, 4, 4)
    pred[..., 0, :] = 1
    out = opacity_scripts.severity.OpacityLabelMapd(keys="pred", lung_key="lung")({"pred": pred, "lung": lung})["pred"]
    expected = torch.tensor([[1, 1, 0, 0], [2, 2, 0, 0], [2, 2, 0, 0], [2, 2, 0, 0]], dtype=torch.uint8)[None]
    assert torch.equal(out, expected)


def test_roc_auc_and_curve_on_known_scores(opacity_scripts, tmp_path: Path) -> None:
    """ICU N, Y, N, Y for scores 1..4: 3 of the 4 positive/negative pairs are ordered right, AUC 0.75; the one
    death (score 2) outranks 1 of 3 survivors, AUC 1/3; a case with unknown outcomes is left out."""
    metadata = tmp_path / "metadata.csv"
    metadata.write_text("case,patientid,went_icu,survival\na,1,N,Y\nb,2,Y,N\nc,3,N,Y\nd,4,Y,Y\ne,5,,\n")
    scores = [1.0, 2.0, 3.0, 4.0, 9.0]
    rows = [{"case": c, "pred_opacity_pct": s, "ref_opacity_pct": s} for c, s in zip("abcde", scores, strict=True)]
    rows.append({"case": "clear", "pred_opacity_pct": 0.5, "ref_opacity_pct": 0.0})
    summary = opacity_scripts.report.write_severity_report(rows, tmp_path / "out", metadata)
    icu = summary["roc_auc"]["icu"]["pred_opacity_pct"]
    assert (icu["positives"], icu["negatives"], icu["auc"]) == (2, 2, pytest.approx(0.75))
    death = summary["roc_auc"]["death"]["pred_opacity_pct"]
    assert (death["positives"], death["negatives"], death["auc"]) == (1, 3, pytest.approx(1 / 3))
    assert summary["correlation"]["spearman_rho"] == pytest.approx(1.0)
    assert summary["reference_absent"] == {
        "cases": 1, "mean_false_positive_pct_of_lung": 0.5, "max_false_positive_pct_of_lung": 0.5}
    assert Image.open(tmp_path / "out" / "roc_icu.png").size == (320, 320)
    points = opacity_scripts.severity.roc_points([1.0, 2.0, 3.0, 4.0], [False, True, False, True])
    assert points == [(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]


FAKE_NETWORK = '''import torch


class DarkIsLung(torch.nn.Module):
    """Lung where the scaled radiograph is darker than a learnable threshold (two-class logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.threshold = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x - self.threshold, self.threshold - x], dim=1) * 10
'''

FAKE_INFERENCE = '''imports: [$import torch]
bundle_root: .
device: "$torch.device('cpu')"
ckpt_path: "$@bundle_root + '/models/model.pt'"
network_def: {_target_: scripts.net.DarkIsLung}
preprocessing:
  _target_: Compose
  transforms:
    - {_target_: LoadImaged, keys: image, reader: {_target_: scripts.cxrseg.io.RadiographReader}}
    - {_target_: EnsureChannelFirstd, keys: image, channel_dim: no_channel}
    - {_target_: ScaleIntensityd, keys: image}
    - {_target_: Resized, keys: image, spatial_size: [64, 64]}
inferer: {_target_: SimpleInferer}
postprocessing:
  _target_: Compose
  transforms:
    - {_target_: Invertd, keys: pred, transform: "@preprocessing", orig_keys: image, nearest_interp: false}
    - {_target_: AsDiscreted, keys: pred, argmax: true}
'''


@pytest.fixture
def fake_lung_bundle(tmp_path: Path) -> Path:
    """A minimal lung bundle with its own ``scripts`` package (the name clash the lung stage must handle)."""
    root = tmp_path / "fake_lung"
    (root / "scripts").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "models").mkdir()
    (root / "scripts" / "__init__.py").write_text('"""fake lung bundle"""\n')
    (root / "scripts" / "net.py").write_text(FAKE_NETWORK)
    (root / "scripts" / "cxrseg").symlink_to(REPO_ROOT / "cxrseg")
    (root / "configs" / "inference.yaml").write_text(FAKE_INFERENCE)
    channel_def = {"0": "background", "1": "lung"}
    metadata = {"network_data_format": {"outputs": {"pred": {"channel_def": channel_def}}}}
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.save({"threshold": torch.tensor(0.4)}, root / "models" / "model.pt")
    return root


def test_lung_stage_runs_the_other_bundle_and_restores_scripts(opacity_scripts, fake_lung_bundle, tmp_path) -> None:
    image = np.zeros((50, 70), np.uint8)
    image[:, 35:] = 200
    image[10:40, 5:25] = 20
    Image.fromarray(image).save(tmp_path / "cxr.png")
    own = sys.modules["scripts"]
    field = opacity_scripts.lung_stage.LungFieldd(keys="image", bundle_dir=fake_lung_bundle, lung_key="lung")
    lung = np.asarray(field({"image": str(tmp_path / "cxr.png")})["lung"])
    assert sys.modules["scripts"] is own and "scripts.net" not in sys.modules
    assert lung.shape == (1, 50, 70)
    assert lung[0, 12:38, 7:23].all() and not lung[0, :, 40:].any()
    assert opacity_scripts.lung_stage.load_lung_bundle(fake_lung_bundle).lung_values == [1]


def test_lung_stage_takes_the_loaded_radiograph(opacity_scripts, fake_lung_bundle, tmp_path) -> None:
    """Given the image LoadImaged has read, the lung stage does not read the file again, gives the field it
    gives from the path, and leaves the caller's image as it was."""
    image = np.zeros((50, 70), np.uint8)
    image[:, 35:] = 200
    image[10:40, 5:25] = 20
    Image.fromarray(image).save(tmp_path / "cxr.png")
    loaded = LoadImaged("image", reader=RadiographReader())({"image": str(tmp_path / "cxr.png")})
    original = loaded["image"].clone()
    field = opacity_scripts.lung_stage.LungFieldd(keys="image", bundle_dir=fake_lung_bundle, lung_key="lung")
    from_path = field({"image": str(tmp_path / "cxr.png")})["lung"]
    (tmp_path / "cxr.png").unlink()
    from_image = field(dict(loaded))["lung"]
    torch.testing.assert_close(from_image, from_path)
    torch.testing.assert_close(loaded["image"], original)


def test_lung_stage_names_missing_weights(opacity_scripts, fake_lung_bundle, tmp_path) -> None:
    (fake_lung_bundle / "models" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        opacity_scripts.lung_stage.load_lung_bundle(fake_lung_bundle)


def run_inference(in_dir: Path, out_dir: Path, ckpt: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.yaml"),
        "--bundle_root", str(BUNDLE), "--dataset_dir", str(in_dir), "--output_dir", str(out_dir),
        "--ckpt_path", str(ckpt), "--device", "$torch.device('cpu')", *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})


@pytest.fixture
def untrained_checkpoint(opacity_scripts, tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save(parsed("inference.yaml").get_parsed_content("network_def").state_dict(), path)
    return path


def test_two_stage_inference_writes_label_map_overlay_and_severity(
    fake_lung_bundle: Path, untrained_checkpoint: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    source = sorted((phantom_dir / "images").glob("*.png"))[0]
    Image.open(source).resize((200, 240)).save(in_dir / "cxr.png")
    result = run_inference(in_dir, tmp_path / "out", untrained_checkpoint, "--lung_bundle_dir", str(fake_lung_bundle))
    assert result.returncode == 0, result.stderr[-3000:]
    label_map = np.asarray(Image.open(tmp_path / "out" / "cxr_seg.png"))
    assert label_map.shape == (240, 200) and set(np.unique(label_map)) <= {0, 1, 2} and (label_map > 0).any()
    assert Image.open(tmp_path / "out" / "cxr_overlay.png").size == (200, 240)
    with open(tmp_path / "out" / "measurements.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert int(row["lung_area_px"]) == int(row["area_px_opacity"]) + int(row["area_px_clear_lung"]) > 0
    assert float(row["opacity_pct"]) == pytest.approx(100 * int(row["area_px_opacity"]) / int(row["lung_area_px"]))


def test_inference_from_lung_mask_files_reports_images_without_mask(
    untrained_checkpoint: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    in_dir, mask_dir = tmp_path / "in", tmp_path / "lungs"
    in_dir.mkdir()
    mask_dir.mkdir()
    cases = sorted(p.stem for p in (phantom_dir / "images").glob("*.png"))[:2]
    for case in cases:
        Image.open(phantom_dir / "images" / f"{case}.png").save(in_dir / f"{case}.png")
    lungs = [np.asarray(Image.open(phantom_dir / "masks" / side / f"{cases[0]}.png"))
             for side in ("left_lung", "right_lung")]
    Image.fromarray(np.maximum(*lungs)).save(mask_dir / f"{cases[0]}.png")
    result = run_inference(in_dir, tmp_path / "out", untrained_checkpoint, "--lung_source", "masks",
                           "--lung_mask_dir", str(mask_dir))
    assert result.returncode != 0
    with open(tmp_path / "out" / "measurements.csv", newline="") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert rows[f"{cases[0]}.png"]["status"] == "ok"
    assert int(rows[f"{cases[0]}.png"]["lung_area_px"]) == int((np.maximum(*lungs) > 127).sum())
    assert rows[f"{cases[1]}.png"]["status"] == "error" and "no lung mask" in rows[f"{cases[1]}.png"]["error"]


@pytest.mark.realdata
@pytest.mark.slow
def test_short_training_on_covid_opacity_lowers_loss_and_raises_dice(covid_dir: Path, tmp_path: Path) -> None:
    """Fold 0 of 5 (by patient), 128 x 128, 6 epochs on CPU: the loss falls and validation Dice rises above
    the untrained network's."""
    record = train_bundle(
        BUNDLE, validate_first=True, dataset_dir=str(covid_dir), num_folds=5, fold=0, epochs=6,
        image_size=[128, 128], num_workers=0, batch_size=8,
        ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"),
    )
    assert record.epoch_losses[-1] < 0.85 * record.epoch_losses[0], record.epoch_losses
    assert len(record.val_dice) == 7 and max(record.val_dice[1:]) > record.val_dice[0] + 0.03, record.val_dice
