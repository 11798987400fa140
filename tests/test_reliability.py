"""Bad input: every awkward or broken file gives a correct output or an error naming it, the rest of the folder is
processed, and the exit status says whether anything failed. Covers inference (every bundle, through the
inference contract), data preparation (``python -m tools prepare``), label maps and the empty-mask metric rules.

Inference runs once per bundle over the whole folder with untrained weights: what is tested is the handling of
files, not the segmentation. A two-stage bundle (opacity_unet) gets the shipped lung_vae weights for its lung
stage, as in real use, because an untrained lung stage finds no lung and so fails every image.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from badinputs import (
    ERROR,
    IGNORED,
    LOOKALIKES,
    OK,
    SKIPPED,
    radiograph,
    write_dicom_source,
    write_inference_folder,
    write_shenzhen_source,
)
from conftest import BUNDLES_DIR, REPO_ROOT, bundle_names, save_untrained_weights
from PIL import Image

from benchmarks.budgets import lung_stage_bundle, lung_stage_overrides, shipped_lung_weights
from benchmarks.bundle_runs import monai_run, subprocess_env
from cxrseg.inference import RUN_RECORD_NAME, csv_cell, run_record
from cxrseg.io import read_radiograph

INFERENCE_TIMEOUT_S = 900
# images with no anatomy at all: a two-stage bundle rightly reports that its lung stage found no lung there, or
# none that is two plausible lungs (cxrseg.lungs.lung_field_problem)
NO_LUNG_TO_FIND = {"all_black.png", "all_white.png", "constant.dcm", "smallest_16.png", "thin_strip.png"}
NO_LUNG_ERRORS = ("no lung field found", "implausible lung field")
# what each error case's message must say, beyond the file's name
ERROR_REASONS = {
    "float_extreme.tiff": "too wide a range",
    "bomb.dcm": "pixel budget",
    "bomb.png": "pixel budget",
}
# links planted in the output folder before a run, each to a file outside it that the run must leave alone
PLANTED = ("plain_seg.png", ".plain_seg.png.0.tmp", "plain_overlay.png", "UPPER_overlay.png")


def is_two_stage(bundle: str) -> bool:
    return lung_stage_bundle(BUNDLES_DIR / bundle) is not None


def read_measurements(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "measurements.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_inference(
    bundle: str, input_dir: Path, out_dir: Path, weights: dict[str, Path], **overrides: Any
) -> subprocess.CompletedProcess:
    """The inference contract of README, with the checkpoints replaced by ``weights`` (bundle name -> file) and
    any other config ids in ``overrides``."""
    bundle_dir = BUNDLES_DIR / bundle
    return monai_run(
        [bundle_dir / "configs" / "inference.yaml"],
        {
            "bundle_root": bundle_dir,
            "dataset_dir": input_dir,
            "output_dir": out_dir,
            "ckpt_dir": weights[bundle].parent,
            "ckpt_path": weights[bundle],
            "num_workers": 0,
            **lung_stage_overrides(bundle_dir, shipped_lung_weights(bundle_dir)),
            **overrides,
        },
        timeout=INFERENCE_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("bad inputs ü")
    return folder, write_inference_folder(folder, include_huge=False)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained weights of every bundle (inference needs a checkpoint; its values do not matter here)."""
    root = tmp_path_factory.mktemp("weights")
    return {name: save_untrained_weights(BUNDLES_DIR / name, root / name / "model.pt") for name in bundle_names()}


def test_suite_has_at_least_30_cases(bad_folder: tuple[Path, list]) -> None:
    _, cases = bad_folder
    assert len(cases) >= 30
    assert {OK, ERROR, SKIPPED} == {case.expect for case in cases}


def plant_links(out_dir: Path, outside: Path) -> dict[Path, bytes]:
    """Links in ``out_dir`` named as the run's own outputs and temporary files, leading to files outside it;
    returns each target and its content."""
    out_dir.mkdir(parents=True)
    outside.mkdir()
    targets = {}
    for index, name in enumerate(PLANTED):
        target = outside / f"victim{index}"
        target.write_bytes(b"must survive")
        (out_dir / name).symlink_to(target)
        targets[target] = target.read_bytes()
    return targets


@pytest.mark.parametrize("bundle", bundle_names())
def test_inference_reports_every_bad_input_and_segments_the_rest(
    bundle: str, bad_folder: tuple[Path, list], untrained: dict[str, Path], tmp_path: Path
) -> None:
    """Every case gets exactly one row, under its name as the CSV shows it (:func:`cxrseg.inference.csv_cell`:
    printable, never a formula); nothing is written through the links planted in the output folder. Untrained
    single-stage weights find no plausible lungs anywhere, so their lung-field check is off here (it has its own
    test with the shipped weights)."""
    folder, cases = bad_folder
    out_dir = tmp_path / "out"
    planted = plant_links(out_dir, tmp_path / "elsewhere")
    unchecked = {} if is_two_stage(bundle) else {"check_lung_field": False}
    result = run_inference(bundle, folder, out_dir, untrained, overlay=True, **unchecked)
    log = result.stdout + result.stderr
    assert result.returncode != 0, f"inputs failed but the run exited 0:\n{log[-3000:]}"
    rows = read_measurements(out_dir)
    by_file = {row["file"]: row for row in rows}
    assert sorted(by_file) == sorted([csv_cell(case.name) for case in cases] + list(LOOKALIKES)), (
        "one row per radiograph and per look-alike, none for ignored files"
    )
    assert len(rows) == len(cases) + len(LOOKALIKES)
    assert not set(IGNORED) & set(by_file)
    for name, status in LOOKALIKES.items():
        assert by_file[name]["status"] == status and name in by_file[name]["error"], by_file[name]
    num_labels = len(
        json.loads((BUNDLES_DIR / bundle / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"][
            "pred"
        ]["channel_def"]
    )
    for case in cases:
        row = by_file[csv_cell(case.name)]
        if is_two_stage(bundle) and case.name in NO_LUNG_TO_FIND and row["status"] == ERROR:
            assert any(error in row["error"] for error in NO_LUNG_ERRORS), f"{case.name}: {row}"
            assert case.name in row["error"], f"{case.name}: {row}"
            continue
        assert row["status"] == case.expect, f"{case.name!r} ({case.about}): {row}"
        if case.expect != OK:
            assert csv_cell(case.name).lstrip("'") in row["error"], f"the error does not name the file: {row}"
            assert ERROR_REASONS.get(case.name, "") in row["error"], row
            if case.expect == ERROR:
                assert case.name in log
            continue
        height, width = read_radiograph(folder / case.name).shape
        assert (int(row["rows"]), int(row["cols"])) == (height, width), case.name
        stem = Path(case.name).stem
        if stem != "same_stem" and len(stem) < 240:
            with Image.open(out_dir / f"{stem}_seg.png") as seg:
                assert seg.size == (width, height) and seg.mode == "L", case.name
                assert int(np.asarray(seg).max()) < num_labels, case.name
    assert len(list(out_dir.glob("same_stem*_seg.png"))) == 2, "same-stem inputs overwrote each other's output"
    ok_rows = [row for row in rows if row["status"] == OK]
    assert len(list(out_dir.glob("*_seg.png"))) == len(ok_rows)
    assert len(list(out_dir.glob("m*~*_seg.png"))) == 1, "the 251-character stem's outputs are shortened"
    assert not [line for line in log.splitlines() if line.startswith("2 inputs, 0 failed")], "a name forged a log line"
    assert all(row["file"].startswith("'") for row in rows if row["file"].lstrip("'")[:1] in "=+-@")
    assert {target.read_bytes() for target in planted} == {b"must survive"}, "a link led a write out of OUT"
    assert not (out_dir / "plain_seg.png").is_symlink() and (out_dir / "plain_seg.png").is_file()
    assert not list(out_dir.glob(".*.tmp")) or [p.name for p in out_dir.glob(".*.tmp")] == [PLANTED[1]]


@pytest.mark.parametrize("bundle", bundle_names())
def test_inference_exits_zero_when_every_input_is_good(bundle: str, untrained: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    Image.fromarray(radiograph(96)).save(folder / "a.png")
    Image.fromarray(radiograph(80, seed=1)).save(folder / "b.jpg")
    unchecked = {} if is_two_stage(bundle) else {"check_lung_field": False}  # untrained: no plausible lungs
    result = run_inference(bundle, folder, tmp_path / "out", untrained, **unchecked)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert [row["status"] for row in read_measurements(tmp_path / "out")] == [OK, OK]


@pytest.mark.parametrize("bundle", bundle_names())
def test_resuming_an_output_folder_of_another_bundle_is_refused(
    bundle: str, untrained: dict[str, Path], tmp_path: Path
) -> None:
    """``--skip_existing true`` into a folder another bundle wrote (its record, rows and label map) stops before any
    image is read and leaves the folder as it was, instead of keeping the other bundle's results as its own."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    Image.fromarray(radiograph(96)).save(folder / "a.png")
    other = next(name for name in bundle_names() if name != bundle)
    record = run_record(folder, False, BUNDLES_DIR / other, [untrained[other]], {"overlay": False})
    (out / RUN_RECORD_NAME).write_text(json.dumps(record), encoding="utf-8")
    (out / "measurements.csv").write_text("file,status,error,rows,cols\na.png,ok,,96,96\n", encoding="utf-8")
    Image.fromarray(np.ones((96, 96), np.uint8)).save(out / "a_seg.png")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    result = run_inference(bundle, folder, out, untrained, skip_existing=True)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"was written by {other}" in log and f"this run is {bundle}" in log, log[-3000:]
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.name != ".inference.lock"} == before


def write_non_radiographs(folder: Path) -> None:
    """Images no lung bundle may return "ok", each checked to be rejected by every bundle's shipped weights (issue
    30): constant grey, white noise, smooth noise (blurred noise with dark and bright blobs of lung size, where a
    network finds two "lungs" at unrelated places) and a colour gradient like a photograph."""
    from scipy import ndimage

    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(np.full((512, 512), 128, np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (512, 512)).astype(np.uint8)).save(folder / "noise.png")
    for sigma in (30, 40, 50):  # the third draw of this generator, as measured
        smooth = ndimage.gaussian_filter(rng.normal(size=(512, 512)), sigma)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    Image.fromarray(smooth.astype(np.uint8)).save(folder / "smooth_noise.png")
    rows, cols = np.mgrid[0:512, 0:640]
    photo = np.stack([cols / 640 * 255, rows / 512 * 255, np.full_like(cols, 90.0)], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(folder / "photo.jpg")


# attention_bcdunet 0.7 finds two lungs and a heart in the smooth noise (sides 24 / 76 %, mirror overlap 0.25), within
# the range of real diseased chests' reference masks (covid_opacity, Shenzhen: down to 9 % and 0.10), so no rule on
# the field's geometry rejects it without rejecting those
KNOWN_NON_RADIOGRAPH_MISSES = {"attention_bcdunet": "smooth_noise.png"}


@pytest.mark.parametrize("bundle", bundle_names())
def test_shipped_weights_do_not_call_a_non_radiograph_ok(bundle: str, phantom_dir: Path, tmp_path: Path) -> None:
    """The lung-field check of every bundle (on by default): each non-radiograph is an error row naming the lung
    field's problem and gets no label map, while a radiograph beside them is segmented."""
    folder = tmp_path / "in"
    write_non_radiographs(folder)
    shutil.copy(sorted((phantom_dir / "images").glob("*.png"))[0], folder / "phantom.png")
    shipped = {bundle: BUNDLES_DIR / bundle / "models" / "model.pt"}
    result = run_inference(bundle, folder, tmp_path / "out", shipped)
    log = result.stdout + result.stderr
    rows = {row["file"]: row for row in read_measurements(tmp_path / "out")}
    assert rows["phantom.png"]["status"] == OK, (rows["phantom.png"], log[-3000:])
    known_miss = KNOWN_NON_RADIOGRAPH_MISSES.get(bundle)
    for name in ("grey.png", "noise.png", "smooth_noise.png", "photo.jpg"):
        if name == known_miss:
            assert rows[name]["status"] == OK, f"{bundle} now rejects {name}: drop it from KNOWN_NON_RADIOGRAPH_MISSES"
            continue
        assert rows[name]["status"] == ERROR and "lung" in rows[name]["error"], rows[name]
        assert not (tmp_path / "out" / f"{Path(name).stem}_seg.png").exists()
    assert result.returncode != 0
    if known_miss:
        pytest.xfail(f"{bundle} segments a chest in {known_miss} that the lung-field geometry cannot tell apart")


def write_two_lung_masks(image_dir: Path, mask_dir: Path) -> Path:
    """``<stem>.png`` for every image of ``image_dir``: two upright rectangles where a frontal radiograph's lungs lie,
    at the image's size (opacity_unet's ``lung_source: masks``)."""
    mask_dir.mkdir()
    for image in image_dir.iterdir():
        with Image.open(image) as opened:
            width, height = opened.size
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4 : 3 * height // 4, width // 8 : 7 * width // 16] = 255
        mask[height // 4 : 3 * height // 4, 9 * width // 16 : 7 * width // 8] = 255
        Image.fromarray(mask).save(mask_dir / f"{image.stem}.png")
    return mask_dir


@pytest.mark.slow
@pytest.mark.parametrize("bundle", bundle_names())
def test_inference_segments_an_8000_pixel_radiograph(bundle: str, untrained: dict[str, Path], tmp_path: Path) -> None:
    """Minutes and about 6 GB of memory per bundle on a CPU (Invertd of full-size class scores), hence slow.

    The image is a flat field with a bright band, not a radiograph: the lung-field check rightly rejects what the
    networks find in it, so the check is off here, where the size through the bundles is under test. opacity_unet
    reads its lung field from mask files, since the shipped lung bundle rightly finds no lungs in a flat field."""
    folder = tmp_path / "huge"
    cases = [case for case in write_inference_folder(folder) if case.name in ("huge_8000.png", "plain.png")]
    for path in folder.iterdir():
        if path.name not in {case.name for case in cases}:
            path.rmdir() if path.is_dir() else path.unlink()
    lung_masks = {}
    if bundle == "opacity_unet":
        lung_masks = {"lung_source": "masks", "lung_mask_dir": write_two_lung_masks(folder, tmp_path / "masks")}
    result = run_inference(bundle, folder, tmp_path / "out", untrained, check_lung_field=False, **lung_masks)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    with Image.open(tmp_path / "out" / "huge_8000_seg.png") as seg:
        assert seg.size == (8000, 8000)


def run_prepare(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools", "prepare", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )


def check_prepared(result: subprocess.CompletedProcess, out: Path, expected: dict[str, str]) -> None:
    """Exit 1 (some cases skipped); every bad case reported by file name, every good case written."""
    log = result.stdout + result.stderr
    assert result.returncode == 1, f"exit {result.returncode}, expected 1 (cases skipped):\n{log[-3000:]}"
    skipped = [line for line in log.splitlines() if "skipped" in line]
    for stem, expect in expected.items():
        reported = [line for line in skipped if stem in line]
        assert bool(reported) == (expect == ERROR), f"{stem}: expected {expect}; skipped lines: {reported}"
    written = sorted(p.stem for p in (out / "images").glob("*.png"))
    assert len(written) == sum(expect == OK for expect in expected.values()), written
    datalist = json.loads((out / "datalist.json").read_text(encoding="utf-8"))
    assert sum(len(entries) for entries in datalist.values()) == len(written)
    for image in (out / "images").glob("*.png"):
        for mask in (out / "masks").glob(f"*/{image.name}"):
            with Image.open(image) as picture, Image.open(mask) as drawn:
                assert picture.size == drawn.size, mask


def test_prepare_skips_bad_bitmaps_and_masks_by_name(tmp_path: Path) -> None:
    source = tmp_path / "shenzhen src ü"
    expected = write_shenzhen_source(source)
    out = tmp_path / "prepared"
    check_prepared(run_prepare("shenzhen", source, out), out, expected)


def test_prepare_skips_bad_dicoms_by_name(tmp_path: Path) -> None:
    source, masks = tmp_path / "dicom src", tmp_path / "dicom masks"
    expected = write_dicom_source(source, masks)
    out = tmp_path / "prepared"
    check_prepared(run_prepare("dicom", source, out, "--masks", masks), out, expected)


def test_prepare_exits_zero_on_a_clean_source(tmp_path: Path) -> None:
    source = tmp_path / "src"
    expected = write_shenzhen_source(source)
    for stem, expect in expected.items():
        if expect == ERROR:
            for path in source.glob(f"{stem}*.png"):
                path.unlink()
    result = run_prepare("shenzhen", source, tmp_path / "out")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def _save_mask(path: Path, mask: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return str(path)


def test_label_map_rejects_a_mask_of_another_size_naming_it(tmp_path: Path) -> None:
    from cxrseg.io import RadiographError
    from cxrseg.transforms import LoadLabelMapd

    wrong = _save_mask(tmp_path / "masks" / "left_lung" / "c1.png", np.ones((32, 40), bool))
    entry = {"image": np.zeros((1, 64, 64), np.float32), "label": {"left_lung": wrong}}
    with pytest.raises(RadiographError, match="c1.png.*32x40.*64x64"):
        LoadLabelMapd(keys="label", classes=[["left_lung"]])(entry)


def test_label_map_of_empty_masks_is_all_background(tmp_path: Path) -> None:
    from cxrseg.transforms import LoadLabelMapd

    labels = {name: _save_mask(tmp_path / name / "c.png", np.zeros((48, 40), bool)) for name in ("lungs", "heart")}
    label = LoadLabelMapd(keys="label", classes=[["lungs"], ["heart"]])({"label": labels})["label"]
    assert tuple(label.shape) == (1, 48, 40) and int(label.max()) == 0


def test_evaluation_report_of_empty_masks(tmp_path: Path) -> None:
    """Three cases through the evaluation writer: both empty, reference empty, prediction empty."""
    import torch
    from ignite.engine import Engine

    from cxrseg.evaluation import MetricsWriter

    full = np.zeros((1, 20, 20), np.uint8)
    full[0, 5:15, 5:15] = 1
    empty = np.zeros_like(full)
    outputs = iter([(empty, empty), (full, empty), (empty, full)])

    def step(engine: Engine, case: str) -> list[dict]:
        pred, label = next(outputs)
        engine.state.batch = [{"case": case}]
        return [{"pred": torch.from_numpy(pred), "label": torch.from_numpy(label)}]

    engine = Engine(step)
    MetricsWriter(tmp_path, ["background", "lung"]).attach(engine)
    engine.run(["both_empty", "reference_empty", "prediction_empty"], max_epochs=1)
    with open(tmp_path / "metrics_per_case.csv", newline="") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert (float(rows["both_empty"]["lung_dice"]), float(rows["both_empty"]["lung_iou"])) == (1.0, 1.0)
    assert float(rows["both_empty"]["lung_hd95"]) == 0.0
    for case in ("reference_empty", "prediction_empty"):
        assert (float(rows[case]["lung_dice"]), float(rows[case]["lung_iou"])) == (0.0, 0.0)
        assert math.isnan(float(rows[case]["lung_hd95"]))
    summary = json.loads((tmp_path / "metrics_summary.json").read_text())["labels"]["lung"]
    assert summary["all"]["dice"]["mean"] == pytest.approx(1 / 3)
    assert summary["all"]["hd95_undefined"] == 2
    assert summary["reference_absent"]["cases"] == 2
    assert summary["reference_absent"]["false_positive_fraction"]["worst"] == pytest.approx(100 / 400)
