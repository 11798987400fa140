"""``python -m tools`` prepare, datalist, phantoms, contact_sheet: layout, resampling, patient split, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_readers import (
    box_mask,
    labelme_file,
    polygon_shape,
    save_png,
    write_dicom,
    write_jsrt_image,
    write_montgomery,
)

from tools import prepare as prep
from tools import synthetic
from tools.readers import READERS

REPO_ROOT = Path(__file__).resolve().parents[1]


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def splits_of(out: Path) -> dict[str, list[dict]]:
    return json.loads((out / "datalist.json").read_text())


def run_prepare(capsys: pytest.CaptureFixture, *args, **kwargs) -> tuple[int, str, str]:
    """Run the ``prepare`` command in-process and return its exit status and output."""
    try:
        prep.prepare(*args, **kwargs)
        status = 0
    except SystemExit as exit_:
        status = int(exit_.code)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_output_shape_keeps_aspect_and_never_enlarges() -> None:
    assert prep.output_shape((2048, 2048), 512) == (512, 512)
    assert prep.output_shape((4892, 4020), 1024) == (1024, 841)
    assert prep.output_shape((300, 200), 1024) == (300, 200)


def test_mask_resampling_thresholds_at_half() -> None:
    mask = box_mask((1024, 1024), slice(256, 512), slice(130, 384))
    resized = prep.resample_mask(mask, (512, 512))
    np.testing.assert_array_equal(resized, box_mask((512, 512), slice(128, 256), slice(65, 192)))
    stripe = np.zeros((4, 4), dtype=bool)
    stripe[:, 1] = True  # a one-pixel line covers a quarter of the 2x2 output pixels: below 50 %, dropped
    assert not prep.resample_mask(stripe, (2, 2)).any()


def test_jsrt_prepared_at_default_512(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    words = np.full((2048, 2048), 4095, dtype=np.uint16)
    words[512:1536, 512:1536] = 0
    write_jsrt_image(tmp_path / "src" / "JPCLN001.IMG", words)
    for folder in ("left lung", "right lung", "heart", "left clavicle", "right clavicle"):
        mask = box_mask((1024, 1024), slice(256, 512), slice(128, 384)).astype(np.uint8) * 255
        save_png(tmp_path / "src" / "scr" / folder / "JPCLN001.gif", mask)
    status, out, _ = run_prepare(capsys, "jsrt", str(tmp_path / "src"), str(tmp_path / "out"))
    assert status == 0, out
    image = read_png(tmp_path / "out" / "images" / "JPCLN001.png")
    assert image.shape == (512, 512) and image.dtype == np.uint8
    assert image[256, 256] == 255 and image[10, 10] == 0  # optical density inverted: bone/centre bright, air dark
    heart = read_png(tmp_path / "out" / "masks" / "heart" / "JPCLN001.png")
    np.testing.assert_array_equal(heart, box_mask((512, 512), slice(128, 256), slice(64, 192)).astype(np.uint8) * 255)
    (entry,) = [e for split in splits_of(tmp_path / "out").values() for e in split]
    assert entry == {
        "case": "JPCLN001",
        "image": "images/JPCLN001.png",
        "label": {
            s: f"masks/{s}/JPCLN001.png"
            for s in sorted(["heart", "left_clavicle", "left_lung", "right_clavicle", "right_lung"])
        },
    }
    assert "wrote 1 cases, skipped 0" in out


def test_bad_cases_are_skipped_by_name_and_the_rest_is_prepared(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "MontgomerySet"
    for stem in ("MCUCXR_0001_0", "MCUCXR_0002_1", "MCUCXR_0003_0", "MCUCXR_0004_1"):
        write_montgomery(src, stem)
    (src / "CXR_png" / "MCUCXR_0002_1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    save_png(src / "ManualMask" / "rightMask" / "MCUCXR_0003_0.png", np.zeros((20, 30), dtype=np.uint8))
    (src / "ManualMask" / "leftMask" / "MCUCXR_0004_1.png").unlink()
    status, out, err = run_prepare(capsys, "montgomery", str(src), str(tmp_path / "out"))
    assert status == prep.EXIT_SKIPPED
    assert "wrote 1 cases, skipped 3 with errors" in out
    assert "MCUCXR_0002_1.png: not a readable PNG" in out
    assert "rightMask/MCUCXR_0003_0.png: mask is 20x30 but the image is 40x60" in out
    assert "leftMask/MCUCXR_0004_1.png: missing Montgomery mask" in out
    cases = [e["case"] for split in splits_of(tmp_path / "out").values() for e in split]
    assert cases == ["MCUCXR_0001_0"]
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["MCUCXR_0001_0.png"]
    with open(tmp_path / "out" / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"case": "MCUCXR_0001_0", "patient_id": "MCUCXR_0001_0", "finding": "normal"}]


def test_split_keeps_each_patient_in_one_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for index in range(24):
        write_dicom(tmp_path / "dicom" / f"s{index:02d}.dcm", np.full((32, 32), index), "MONOCHROME2", f"P{index % 6}")
        save_png(tmp_path / "masks" / "lungs" / f"s{index:02d}.png", np.full((32, 32), 255, dtype=np.uint8))
    status, out, _ = run_prepare(
        capsys, "dicom", str(tmp_path / "dicom"), str(tmp_path / "out"), masks=str(tmp_path / "masks")
    )
    assert status == 0, out
    with open(tmp_path / "out" / "metadata.csv", newline="") as handle:
        patient_of = {row["case"]: row["patient_id"] for row in csv.DictReader(handle)}
    splits = splits_of(tmp_path / "out")
    patients = {split: {patient_of[entry["case"]] for entry in entries} for split, entries in splits.items()}
    assert sum(len(entries) for entries in splits.values()) == 24
    assert set().union(*patients.values()) == {f"P{i}" for i in range(6)}
    assert not patients["training"] & patients["validation"]
    assert not patients["training"] & patients["test"]
    assert not patients["validation"] & patients["test"]


def test_patients_csv_overrides_reader_patient_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shapes = [polygon_shape("lung", [[4, 4], [14, 4], [14, 14], [4, 14]])]
    save_png(tmp_path / "src" / "a.png", np.zeros((30, 40), dtype=np.uint8))
    for stem in ("x1", "x2"):
        (tmp_path / "src" / f"{stem}.json").write_text(json.dumps(labelme_file("a.png", None, shapes)))
    (tmp_path / "meta.csv").write_text("patientid,filename\n9,x1.jpg\n9,x2.png\n")
    status, out, _ = run_prepare(
        capsys, "labelme", str(tmp_path / "src"), str(tmp_path / "out"), patients=str(tmp_path / "meta.csv")
    )
    assert status == 0, out
    assert (tmp_path / "out" / "metadata.csv").read_text().splitlines() == ["case,patient_id", "x1,9", "x2,9"]
    assert [len(entries) for entries in splits_of(tmp_path / "out").values()].count(2) == 1


def test_structures_absent_from_a_case_get_empty_masks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_png(tmp_path / "src" / "img.png", np.zeros((30, 40), dtype=np.uint8))
    lung = polygon_shape("lung", [[4, 4], [14, 4], [14, 14], [4, 14]])
    ggo = polygon_shape("ground glass", [[5, 5], [8, 5], [8, 8], [5, 8]])
    (tmp_path / "src" / "sick.json").write_text(json.dumps(labelme_file("img.png", None, [lung, ggo])))
    (tmp_path / "src" / "clear.json").write_text(json.dumps(labelme_file("img.png", None, [lung])))
    status, out, _ = run_prepare(capsys, "labelme", str(tmp_path / "src"), str(tmp_path / "out"))
    assert status == 0, out
    empty = read_png(tmp_path / "out" / "masks" / "ggo" / "clear.png")
    assert empty.shape == (30, 40) and not empty.any()
    assert read_png(tmp_path / "out" / "masks" / "ggo" / "sick.png").sum() == 16 * 255


def test_label_mapping_can_come_from_a_json_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_png(tmp_path / "src" / "img.png", np.zeros((30, 40), dtype=np.uint8))
    shapes = [
        polygon_shape("Opacity", [[4, 4], [14, 4], [14, 14], [4, 14]]),
        polygon_shape("arrow", [[1, 1], [3, 1], [3, 3]]),
    ]
    (tmp_path / "src" / "c1.json").write_text(json.dumps(labelme_file("img.png", None, shapes)))
    (tmp_path / "labels.json").write_text(json.dumps({"opacity": "consolidation", "arrow": None}))
    status, out, _ = run_prepare(
        capsys, "labelme", str(tmp_path / "src"), str(tmp_path / "out"), labels=str(tmp_path / "labels.json")
    )
    assert status == 0, out
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["consolidation"]


def test_unannotated_images_do_not_fail_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_png(tmp_path / "src" / "CHNCXR_0001_0.png", np.full((40, 40), 90, dtype=np.uint8))
    save_png(tmp_path / "src" / "CHNCXR_0001_0_mask.png", np.full((40, 40), 255, dtype=np.uint8))
    save_png(tmp_path / "src" / "CHNCXR_0002_1.png", np.full((40, 40), 90, dtype=np.uint8))
    status, out, _ = run_prepare(capsys, "shenzhen", str(tmp_path / "src"), str(tmp_path / "out"))
    assert status == 0
    assert "wrote 1 cases, skipped 0 with errors, left out 1 unannotated images" in out
    (tmp_path / "src" / "CHNCXR_0001_0_mask.png").unlink()
    status, out, err = run_prepare(capsys, "shenzhen", str(tmp_path / "src"), str(tmp_path / "out"), overwrite=True)
    assert status == prep.EXIT_USAGE and "no annotated shenzhen case" in err


def test_repeated_case_ids_are_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shapes = [polygon_shape("lung", [[4, 4], [14, 4], [14, 14], [4, 14]])]
    for folder in ("site1", "site2"):
        save_png(tmp_path / "src" / folder / "a.png", np.zeros((30, 40), dtype=np.uint8))
        (tmp_path / "src" / folder / "a.json").write_text(json.dumps(labelme_file("a.png", None, shapes)))
    status, out, _ = run_prepare(capsys, "labelme", str(tmp_path / "src"), str(tmp_path / "out"))
    assert status == prep.EXIT_SKIPPED
    assert "site2/a.json: case id 'a' repeats an earlier case" in out


def test_usage_errors_exit_2_and_earlier_output_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_png(tmp_path / "src" / "CHNCXR_0001_0.png", np.full((40, 40), 90, dtype=np.uint8))
    save_png(tmp_path / "src" / "CHNCXR_0001_0_mask.png", np.full((40, 40), 255, dtype=np.uint8))
    status, _, err = run_prepare(capsys, "chexpert", str(tmp_path / "src"), str(tmp_path / "out"))
    assert status == prep.EXIT_USAGE and "unknown dataset 'chexpert'" in err
    status, _, err = run_prepare(capsys, "shenzhen", str(tmp_path / "src"), str(tmp_path / "out"), labels="{}")
    assert status == prep.EXIT_USAGE and "does not take --labels; it takes: --masks" in err
    status, _, err = run_prepare(capsys, "shenzhen", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert status == prep.EXIT_USAGE and "nowhere: source folder does not exist" in err
    status, _, err = run_prepare(capsys, "montgomery", str(tmp_path / "src"), str(tmp_path / "out"))
    assert status == prep.EXIT_USAGE and "no montgomery case found in" in err
    status, _, err = run_prepare(capsys, "shenzhen", str(tmp_path / "src"), str(tmp_path / "src" / "out"))
    assert status == prep.EXIT_USAGE and "OUT must not lie inside SOURCE" in err
    assert run_prepare(capsys, "shenzhen", str(tmp_path / "src"), str(tmp_path / "out"))[0] == 0
    status, _, err = run_prepare(capsys, "shenzhen", str(tmp_path / "src"), str(tmp_path / "out"))
    assert status == prep.EXIT_USAGE and "pass --overwrite" in err
    (tmp_path / "src" / "CHNCXR_0001_0.png").rename(tmp_path / "src" / "CHNCXR_0009_0.png")
    (tmp_path / "src" / "CHNCXR_0001_0_mask.png").rename(tmp_path / "src" / "CHNCXR_0009_0_mask.png")
    assert run_prepare(capsys, "shenzhen", str(tmp_path / "src"), str(tmp_path / "out"), overwrite=True)[0] == 0
    assert [p.name for p in (tmp_path / "out" / "images").iterdir()] == ["CHNCXR_0009_0.png"]


def test_every_documented_dataset_has_a_reader() -> None:
    assert sorted(READERS) == ["darwin", "dicom", "jsrt", "labelme", "montgomery", "shenzhen"]
    for dataset in READERS:
        assert dataset in prep.prepare.__doc__


def test_command_line_runs_prepare_and_reports_skips_in_exit_status(tmp_path: Path) -> None:
    src = tmp_path / "MontgomerySet"
    write_montgomery(src, "MCUCXR_0001_0")
    write_montgomery(src, "MCUCXR_0002_0")
    (src / "CXR_png" / "MCUCXR_0002_0.png").write_bytes(b"")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tools", "prepare", "montgomery", "--source", str(src), "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "wrote 1 cases, skipped 1 with errors" in result.stdout
    assert "MCUCXR_0002_0.png: file is empty" in result.stdout


def test_phantoms_and_contact_sheet_commands(tmp_path: Path) -> None:
    dataset = Path(synthetic.phantoms(str(tmp_path / "ph"), count=2, size=64, seed=3))
    assert sorted(p.name for p in (dataset / "images").iterdir()) == sorted(
        e["case"] + ".png" for split in splits_of(dataset).values() for e in split
    )
    sheet = Path(synthetic.contact_sheet(str(dataset), str(tmp_path / "sheet.png"), count=2, columns=2, tile=32))
    with Image.open(sheet) as image:
        assert image.size == (64, 32)


@pytest.mark.realdata
def test_datalist_for_the_read_only_shared_jsrt(jsrt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prep.datalist(str(jsrt_dir), out=str(tmp_path / "jsrt.json"))
    assert "training 140, validation 30, test 30" in capsys.readouterr().out
    splits = json.loads((tmp_path / "jsrt.json").read_text())
    cases = [entry["case"] for entries in splits.values() for entry in entries]
    assert len(cases) == len(set(cases)) == 200
    assert set(cases) == set(json.loads((jsrt_dir / "cases.json").read_text()))
    assert all(len(entry["label"]) == 5 for entries in splits.values() for entry in entries)


@pytest.mark.realdata
def test_jsrt_from_raw_format_reproduces_the_shared_copy(jsrt_dir: Path, tmp_path: Path) -> None:
    """Shared JSRT cases re-encoded as raw .IMG (2048, inverted 12-bit) and SCR gifs (1024) come back as they were.

    The shared copy was made from the raw files with the same recipe, so preparation must be its inverse up to
    interpolation error: masks exactly (nearest-neighbour 2x up, then bilinear and 50 % down), images within a
    grey level on average.
    """
    scr_folders = {
        "left_lung": "left lung",
        "right_lung": "right lung",
        "heart": "heart",
        "left_clavicle": "left clavicle",
        "right_clavicle": "right clavicle",
    }
    cases = ["JPCLN001", "JPCNN010"]
    for case in cases:
        shared = Image.open(jsrt_dir / "images" / f"{case}.png").convert("F")
        density = 4095 - np.asarray(shared.resize((2048, 2048), Image.Resampling.BICUBIC)) * 4095 / 255
        write_jsrt_image(tmp_path / "raw" / f"{case}.IMG", np.clip(np.rint(density), 0, 4095))
        for structure, folder in scr_folders.items():
            with Image.open(jsrt_dir / "masks" / structure / f"{case}.png") as mask:
                (tmp_path / "scr" / folder).mkdir(parents=True, exist_ok=True)
                mask.resize((1024, 1024), Image.Resampling.NEAREST).save(tmp_path / "scr" / folder / f"{case}.gif")
    cases_found = READERS["jsrt"](tmp_path / "raw", masks=str(tmp_path / "scr"))
    summary = prep.prepare_dataset(cases_found, tmp_path / "out", size=512)
    assert summary.written == cases and not summary.skipped
    for case in cases:
        original = read_png(jsrt_dir / "images" / f"{case}.png").astype(float)
        assert np.abs(read_png(tmp_path / "out" / "images" / f"{case}.png") - original).mean() < 1.0
        for structure in scr_folders:
            np.testing.assert_array_equal(
                read_png(tmp_path / "out" / "masks" / structure / f"{case}.png"),
                read_png(jsrt_dir / "masks" / structure / f"{case}.png"),
            )
