"""The inference contract machinery on a one-layer network: outputs at input size, per-file errors,
rows flushed, and a failure raised at the end only after every good file is written."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    ScaleIntensityd,
    SpatialPadd,
)
from PIL import Image

from cxrseg.inference import (
    RUN_RECORD_NAME,
    InferenceFailures,
    InferenceJob,
    OutputFolderError,
    SegmentationWriter,
    TolerantDataset,
    csv_cell,
    list_radiographs,
    output_stems,
    tolerant_iteration,
)
from cxrseg.io import RadiographReader
from cxrseg.progress import progress_bar
from cxrseg.transforms import FitResized


class BrightIsForeground(torch.nn.Module):
    """Two logits per pixel: class 1 wins where the scaled intensity exceeds one half."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full_like(image, 0.5), image], dim=1)


def write_inputs(folder: Path) -> None:
    folder.mkdir()
    bright_half = np.zeros((90, 60), np.uint8)
    bright_half[:, 30:] = 255
    Image.fromarray(bright_half).save(folder / "half.png")
    Image.fromarray(np.full((40, 50), 255, np.uint8)).convert("RGB").save(folder / "white photo.jpg")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "notes.txt").write_text("not an input")


def run_inference(
    input_dir: Path, output_dir: Path, measure=None, overlay: bool = False, **job_options
) -> SegmentationWriter:
    preprocessing = Compose(
        [
            LoadImaged("image", reader=RadiographReader()),
            EnsureChannelFirstd("image"),
            ScaleIntensityd("image", minv=0.0, maxv=1.0),
            FitResized("image", (32, 32)),
            SpatialPadd("image", (32, 32)),
        ]
    )
    postprocessing = Compose(
        [
            Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False),
            AsDiscreted("pred", argmax=True),
        ]
    )
    job = InferenceJob(input_dir, output_dir, **job_options)
    dataset = TolerantDataset(job.pending, transform=preprocessing)
    writer = SegmentationWriter(
        output_dir, ["background", "bright"], postprocessing=postprocessing, measure=measure, overlay=overlay, job=job
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(dataset, batch_size=1),
        network=BrightIsForeground(),
        iteration_update=tolerant_iteration,
        val_handlers=[writer],
    )
    evaluator.run()
    return writer


def read_rows(output_dir: Path) -> dict[str, dict]:
    with open(output_dir / "measurements.csv", newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def test_good_files_written_bad_file_listed_then_failure(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in")
    with pytest.raises(InferenceFailures, match="1 of 3 inputs failed"):
        run_inference(tmp_path / "in", tmp_path / "out")
    half = np.asarray(Image.open(tmp_path / "out" / "half_seg.png"))
    assert half.shape == (90, 60)
    assert half[:, :28].max() == 0 and half[:, 32:].min() == 1
    assert np.asarray(Image.open(tmp_path / "out" / "white photo_seg.png")).shape == (40, 50)
    rows = read_rows(tmp_path / "out")
    assert set(rows) == {"half.png", "white photo.jpg", "corrupt.png"}
    assert rows["corrupt.png"]["status"] == "error" and "corrupt.png" in rows["corrupt.png"]["error"]
    assert rows["white photo.jpg"]["status"] == "ok" and rows["half.png"]["area_px_bright"] == str(90 * 30)


def test_overlay_option_writes_the_labels_on_the_radiograph(tmp_path: Path) -> None:
    """``overlay=True`` adds ``<stem>_overlay.png`` beside each label map: RGB at the input's size, the label
    filled and outlined in its colour, background left grey; a failed input gets none."""
    write_inputs(tmp_path / "in")
    with pytest.raises(InferenceFailures):
        run_inference(tmp_path / "in", tmp_path / "out", overlay=True)
    assert sorted(p.name for p in (tmp_path / "out").glob("*_overlay.png")) == [
        "half_overlay.png",
        "white photo_overlay.png",
    ]
    picture = np.asarray(Image.open(tmp_path / "out" / "half_overlay.png"))
    assert picture.shape == (90, 60, 3)
    left, right = picture[:, :30], picture[5:-5, 35:-5]
    assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all(), "background stays grey"
    assert (right[..., 1] > right[..., 0]).all(), "the label is tinted with its colour (green for value 1)"
    assert not list((tmp_path / "out").glob("corrupt*_overlay.png"))


def test_measure_columns_and_failing_measure_is_one_error(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in")
    (tmp_path / "in" / "corrupt.png").unlink()

    def bright_fraction(label_map: np.ndarray) -> dict[str, float]:
        if label_map.size > 8 * 8 and label_map.max() == 0:
            raise ValueError("nothing is bright")
        return {"bright_fraction": float((label_map == 1).mean())}

    with pytest.raises(InferenceFailures, match="nothing is bright"):
        run_inference(tmp_path / "in", tmp_path / "out", measure=bright_fraction)
    rows = read_rows(tmp_path / "out")
    assert float(rows["half.png"]["bright_fraction"]) == pytest.approx(0.5, abs=0.05)
    assert rows["white photo.jpg"]["status"] == "error"


def test_listing_rejects_missing_or_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_radiographs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no PNG"):
        list_radiographs(tmp_path / "empty")


def test_output_stems_never_collide() -> None:
    stems = output_stems(["a/x.png", "a/x.dcm", "a/y.png"])
    assert stems == {"a/x.png": "a/x_png", "a/x.dcm": "a/x_dcm", "a/y.png": "a/y"}


def test_output_stems_survive_case_and_suffix_clashes() -> None:
    stems = output_stems(["x.PNG", "x.png", "x_png.png", "d/x.png", "D/y.png"])
    # x_PNG and x_png are one file on a case-insensitive file system
    assert stems == {"x.PNG": "x_PNG", "x.png": "x_png_2", "x_png.png": "x_png_3", "d/x.png": "d/x", "D/y.png": "D/y"}
    assert len({stem.casefold() for stem in stems.values()}) == len(stems)


def write_archive(folder: Path) -> None:
    """A PACS-like export: nested folders, one stem in two folders and twice in one folder, and entries named like
    inputs that are not usable ones."""
    image = np.zeros((40, 30), np.uint8)
    image[:, 15:] = 255
    for relative in ["p1/s1/img.png", "p1/s1/img.jpg", "p2/s1/img.png", "top.png", "a_folder.png/inside.png"]:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / relative)
    Image.fromarray(image).save(folder / "p2" / "animation.gif")
    (folder / "p2" / "dangling.png").symlink_to(folder / "p2" / "missing.png")
    (folder / "p2" / "notes.txt").write_text("passed over: not named like an image")
    (folder / ".cache").mkdir()
    Image.fromarray(image).save(folder / ".cache" / "hidden.png")


def test_recursive_run_mirrors_the_tree_and_lists_every_lookalike(tmp_path: Path) -> None:
    write_archive(tmp_path / "in")
    out = tmp_path / "in" / "results"  # inside the input: a rerun must not read its own label maps
    with pytest.raises(InferenceFailures, match="1 of 7 inputs failed"):
        run_inference(tmp_path / "in", out, recursive=True)
    rows = read_rows(out)
    assert list(rows) == sorted(rows), "rows follow the input order"
    assert {file: row["status"] for file, row in rows.items()} == {
        "a_folder.png/inside.png": "ok",
        "p1/s1/img.jpg": "ok",
        "p1/s1/img.png": "ok",
        "p2/s1/img.png": "ok",
        "top.png": "ok",
        "p2/animation.gif": "skipped",
        "p2/dangling.png": "error",
    }, rows
    assert "broken symbolic link" in rows["p2/dangling.png"]["error"]
    assert "not a supported format" in rows["p2/animation.gif"]["error"]
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*_seg.png"))
    assert written == [
        "a_folder.png/inside_seg.png",
        "p1/s1/img_jpg_seg.png",
        "p1/s1/img_png_seg.png",
        "p2/s1/img_seg.png",
        "top_seg.png",
    ]
    with pytest.raises(InferenceFailures, match="1 of 7 inputs failed"):
        run_inference(tmp_path / "in", out, recursive=True, skip_existing=True)
    assert read_rows(out).keys() == rows.keys(), "the output folder inside the input must not be read as input"
    # the same folder without --recursive: the sub-folder named like an image is reported, the others passed over
    with pytest.raises(InferenceFailures):
        run_inference(tmp_path / "in" / "p2", tmp_path / "flat")
    flat = read_rows(tmp_path / "flat")
    assert {file: row["status"] for file, row in flat.items()} == {"animation.gif": "skipped", "dangling.png": "error"}
    run_inference(tmp_path / "in", tmp_path / "top_only")
    assert read_rows(tmp_path / "top_only")["a_folder.png"]["status"] == "skipped"


def test_listing_suggests_recursive_for_a_folder_of_folders(tmp_path: Path) -> None:
    (tmp_path / "in" / "patient").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "in" / "patient" / "a.png")
    with pytest.raises(FileNotFoundError, match="--recursive true"):
        list_radiographs(tmp_path / "in")
    assert [entry["file"] for entry in list_radiographs(tmp_path / "in", recursive=True)] == ["patient/a.png"]


def test_skip_existing_keeps_written_rows_and_redoes_the_rest(tmp_path: Path) -> None:
    """An interrupted run: rows of ok inputs whose label map exists are kept (not recomputed), a label map without
    its row, an error row and a row cut short by the kill are redone; the result has one row per input."""
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(5):
        Image.fromarray(np.full((20, 24), 60 * index, np.uint8)).save(folder / f"case{index}.png")
    run_inference(folder, tmp_path / "out")
    out = tmp_path / "out"
    header, *lines = (out / "measurements.csv").read_text(encoding="utf-8").splitlines()
    # case0 kept; case1's row lost (its label map stays); case2 was an error; case3 cut short; case4 never reached
    error_row = "case2.png,error,case2.png: stopped,,,"
    (out / "measurements.csv").write_text("\n".join([header, lines[0], error_row, lines[3][:12]]), encoding="utf-8")
    (out / "case4_seg.png").unlink()
    kept = (out / "case0_seg.png").stat().st_mtime_ns
    run_inference(folder, out, skip_existing=True)
    rows = read_rows(out)
    assert list(rows) == [f"case{index}.png" for index in range(5)]
    assert all(row["status"] == "ok" for row in rows.values())
    assert (out / "case0_seg.png").stat().st_mtime_ns == kept, "a completed input was recomputed"
    assert (out / "case1_seg.png").stat().st_mtime_ns > kept


def test_skip_existing_with_everything_written_still_writes_the_csv(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in")
    (tmp_path / "in" / "corrupt.png").unlink()
    run_inference(tmp_path / "in", tmp_path / "out")
    before = read_rows(tmp_path / "out")
    header = (tmp_path / "out" / "measurements.csv").read_text(encoding="utf-8").splitlines()[0]
    (tmp_path / "out" / "measurements.rank1.csv").write_text(header + "\n", encoding="utf-8")  # an interrupted rank
    writer = run_inference(tmp_path / "in", tmp_path / "out", skip_existing=True)
    assert writer.written == 0
    assert read_rows(tmp_path / "out") == before
    assert not list((tmp_path / "out").glob("measurements.rank*.csv"))


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_shows_rate_and_eta_on_a_terminal_only(terminal: bool) -> None:
    stream = FakeTerminal() if terminal else io.StringIO()
    engine = Engine(lambda engine, batch: batch)
    progress_bar("inference", stream=stream).attach(engine)
    engine.run(range(3))
    shown = stream.getvalue()
    if terminal:
        assert "inference: [3/3] 100%" in shown and "it/s" in shown and "<00:00" in shown, shown
    else:
        assert shown == ""


def test_tolerant_dataset_indexing(tmp_path: Path) -> None:
    """Through the public ``__getitem__``: a failing file is an error record keeping its ``file``/``output``, a
    look-alike record passes through untransformed, a slice is a Subset whose items are tolerant too, and an
    index out of range is still an ``IndexError`` (what ends a plain iteration over the dataset)."""
    write_inputs(tmp_path / "in")
    (tmp_path / "in" / "animation.gif").write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    entries = list_radiographs(tmp_path / "in")
    dataset = TolerantDataset(entries, transform=Compose([LoadImaged("image", reader=RadiographReader())]))
    by_file = {entry["file"]: dataset[index] for index, entry in enumerate(entries)}
    assert set(by_file) == {"animation.gif", "corrupt.png", "half.png", "white photo.jpg"}
    assert by_file["animation.gif"]["status"] == "skipped" and "image" not in by_file["animation.gif"]
    assert by_file["corrupt.png"]["output"] == "corrupt" and "corrupt.png" in by_file["corrupt.png"]["error"]
    assert "error" not in by_file["half.png"] and tuple(by_file["half.png"]["image"].shape) == (90, 60)
    subset = dataset[1:3]
    assert [item.get("file") for item in subset] == [entry["file"] for entry in entries[1:3]]
    with pytest.raises(IndexError):
        dataset[len(entries)]
    assert len(list(dataset)) == len(entries)


def test_false_from_the_command_line_switches_a_flag_off() -> None:
    """``--skip_existing false`` reaches the config as the string "false": it must not count as true."""
    from cxrseg.bundle import as_flag

    assert (as_flag("false"), as_flag("True"), as_flag(False)) == (False, True, False)
    with pytest.raises(ValueError, match="true or false"):
        as_flag("no")


def one_radiograph(folder: Path, name: str = "a.png", side: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = np.zeros((side, side), np.uint8)
    image[:, side // 2 :] = 255
    Image.fromarray(image).save(folder / name, format="PNG")
    return folder / name


def test_awkward_names_get_one_printable_row_each_and_the_others_go_on(tmp_path: Path) -> None:
    """Issue 30, cases 1, 8 and 9: a name that is not UTF-8, one with a newline, formula-like names and stems too long
    for a temporary or an output name each get an ``ok`` row under a name that is printable and never a formula;
    the inputs after them are segmented."""
    names = [
        os.fsdecode(b"b_caf\xe9.png"),
        "c\n2 inputs, 0 failed.png",
        "=cmd.png",
        "@sum.png",
        "s" * 245 + ".png",
        "t" * 251 + ".png",
        "z.png",
    ]
    for name in names:
        one_radiograph(tmp_path / "in", name)
    run_inference(tmp_path / "in", tmp_path / "out")
    rows = read_rows(tmp_path / "out")
    assert list(rows) == sorted(csv_cell(name) for name in names)
    assert "b_caf\\xe9.png" in rows and "c\\n2 inputs, 0 failed.png" in rows and "'=cmd.png" in rows
    assert all(row["status"] == "ok" for row in rows.values())
    assert len(list((tmp_path / "out").glob("*_seg.png"))) == len(names)
    assert (tmp_path / "out" / os.fsdecode(b"b_caf\xe9_seg.png")).is_file(), "outputs mirror the name's bytes"
    assert not list((tmp_path / "out").glob(".*.tmp"))
    text = (tmp_path / "out" / "measurements.csv").read_bytes()
    assert text.decode("utf-8").count("\n") == len(names) + 1, "one line per row: no name breaks a line"


def test_every_input_by_name_or_content_gets_a_row(tmp_path: Path) -> None:
    """Issue 30, case 2: DICOM as a PACS names it is found by its content, .jfif is JPEG, .nii.gz and a DICOMDIR are
    skipped with the reason; a file that is no image by name or content is passed over."""
    from badinputs import dicom_bytes, dicomdir_bytes, png_bytes, radiograph

    folder = tmp_path / "in"
    folder.mkdir()
    dicom = dicom_bytes(radiograph().astype(np.uint16))
    (folder / "1.2.826.0.1.3680043.8.498.5").write_bytes(dicom)
    (folder / "IM_0001.1").write_bytes(dicom)
    (folder / "IM_0002").write_bytes(png_bytes(Image.fromarray(radiograph()), "JPEG"))
    (folder / "photo.jfif").write_bytes(png_bytes(Image.fromarray(radiograph()), "JPEG"))
    (folder / "brain.nii.gz").write_bytes(b"\x1f\x8b" + bytes(100))
    (folder / "DICOMDIR").write_bytes(dicomdir_bytes())
    (folder / "README.TXT").write_text("export of 2 studies")
    entries = {entry["file"]: entry for entry in list_radiographs(folder)}
    assert set(entries) == {
        "1.2.826.0.1.3680043.8.498.5",
        "IM_0001.1",
        "IM_0002",
        "photo.jfif",
        "brain.nii.gz",
        "DICOMDIR",
    }
    assert (
        entries["brain.nii.gz"]["status"] == "skipped"
        and ".nii.gz is not a supported" in entries["brain.nii.gz"]["error"]
    )
    assert entries["DICOMDIR"]["status"] == "skipped" and "DICOMDIR" in entries["DICOMDIR"]["error"]
    for name in ("1.2.826.0.1.3680043.8.498.5", "IM_0001.1", "IM_0002", "photo.jfif"):
        assert "error" not in entries[name]
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "IM_0001.1").write_bytes(dicom)
    assert [entry["file"] for entry in list_radiographs(alone)] == ["IM_0001.1"]


def test_output_stems_keep_clear_of_output_folders_and_long_names() -> None:
    """Issue 30, case 9: ``a.png`` beside a folder ``a_seg.png`` does not write the file where the folder's outputs
    need a folder; a stem whose output names exceed 255 bytes is cut and given a hash of the whole."""
    stems = output_stems(["a.png", "a_seg.png/x.png", "u" * 251 + ".png", "u" * 250 + "v.png"])
    assert stems["a.png"] == "a_2" and stems["a_seg.png/x.png"] == "a_seg.png/x"
    long_stems = [stems["u" * 251 + ".png"], stems["u" * 250 + "v.png"]]
    assert len(set(long_stems)) == 2
    assert all(len((stem + "_uncertainty.png").encode()) <= 255 for stem in long_stems)


def test_recursive_input_beside_a_folder_named_like_its_label_map(tmp_path: Path) -> None:
    one_radiograph(tmp_path / "in", "a.png")
    one_radiograph(tmp_path / "in" / "a_seg.png", "x.png")
    run_inference(tmp_path / "in", tmp_path / "out", recursive=True)
    assert {file: row["status"] for file, row in read_rows(tmp_path / "out").items()} == {
        "a.png": "ok",
        "a_seg.png/x.png": "ok",
    }
    assert (tmp_path / "out" / "a_2_seg.png").is_file() and (tmp_path / "out" / "a_seg.png" / "x_seg.png").is_file()


def record_job(input_dir: Path, output_dir: Path, weights: Path, **options) -> InferenceJob:
    job = InferenceJob(input_dir, output_dir, weights=[weights], settings={"threshold": 0.5}, **options)
    job.release()
    return job


def test_resume_needs_the_same_weights_settings_and_input(tmp_path: Path) -> None:
    """Issue 30, case 3: an output folder records what wrote it; resuming with other weights, settings or input is
    refused before anything is read, naming the difference; the same run resumes."""
    one_radiograph(tmp_path / "in")
    one_radiograph(tmp_path / "other_in")
    weights, other_weights = tmp_path / "w.pt", tmp_path / "w2.pt"
    weights.write_bytes(b"weights")
    other_weights.write_bytes(b"other weights")
    run_inference(tmp_path / "in", tmp_path / "out")  # a folder with rows and label maps
    record_job(tmp_path / "in", tmp_path / "out", weights)
    record = json.loads((tmp_path / "out" / RUN_RECORD_NAME).read_text())
    assert record["weights_sha256"] == [hashlib.sha256(b"weights").hexdigest()]
    with pytest.raises(OutputFolderError, match="weights_sha256"):
        record_job(tmp_path / "in", tmp_path / "out", other_weights, skip_existing=True)
    with pytest.raises(OutputFolderError, match="threshold 0.5 -> 0.7"):
        InferenceJob(
            tmp_path / "in", tmp_path / "out", weights=[weights], settings={"threshold": 0.7}, skip_existing="true"
        )
    with pytest.raises(OutputFolderError, match="input_dir"):
        record_job(tmp_path / "other_in", tmp_path / "out", weights, skip_existing=True)
    with pytest.raises(OutputFolderError, match="holds the results of"):
        record_job(tmp_path / "other_in", tmp_path / "out", weights)  # a fresh run over another input's results
    assert record_job(tmp_path / "in", tmp_path / "out", weights, skip_existing=True).done
    (tmp_path / "out" / RUN_RECORD_NAME).unlink()
    with pytest.raises(OutputFolderError, match="no inference_run.json"):
        record_job(tmp_path / "in", tmp_path / "out", weights, skip_existing=True)


def test_a_second_live_run_is_refused_and_a_killed_runs_lock_is_not_stuck(tmp_path: Path) -> None:
    """Issue 30, case 4: while a run holds the output folder (here a process holding its lock), another run is
    refused; once that process is killed, a run goes ahead."""
    one_radiograph(tmp_path / "in")
    (tmp_path / "out").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "out" / ".inference.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputFolderError, match="being written by another inference run"):
            InferenceJob(tmp_path / "in", tmp_path / "out")
        assert not (tmp_path / "out" / "measurements.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    run_inference(tmp_path / "in", tmp_path / "out")
    assert read_rows(tmp_path / "out")["a.png"]["status"] == "ok"


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("recursive", [False, True])
def test_output_folder_that_is_the_input_folder_is_refused(tmp_path: Path, recursive: bool) -> None:
    """Issue 30, case 5: a second run would read its own label maps as radiographs."""
    one_radiograph(tmp_path / "in")
    with pytest.raises(OutputFolderError, match="the output folder is the input folder"):
        InferenceJob(tmp_path / "in", tmp_path / "in" / ".", recursive=recursive)
    assert sorted(path.name for path in (tmp_path / "in").iterdir()) == ["a.png"]


def test_skip_existing_redoes_empty_label_maps_and_damaged_rows(tmp_path: Path) -> None:
    """Issue 30, case 3: a 0-byte label map (a full disk) and a row holding a NUL byte are not proof of a result."""
    for name in ("a.png", "b.png", "c.png"):
        one_radiograph(tmp_path / "in", name)
    run_inference(tmp_path / "in", tmp_path / "out")
    out = tmp_path / "out"
    (out / "a_seg.png").write_bytes(b"")
    text = (out / "measurements.csv").read_text(encoding="utf-8").replace("b.png,ok", "b.png\0,ok")
    (out / "measurements.csv").write_text(text, encoding="utf-8")
    kept = (out / "c_seg.png").stat().st_mtime_ns
    job = InferenceJob(tmp_path / "in", out, skip_existing=True)
    job.release()
    assert set(job.done) == {"c.png"}
    run_inference(tmp_path / "in", out, skip_existing=True)
    assert all(row["status"] == "ok" for row in read_rows(out).values()) and len(read_rows(out)) == 3
    assert (out / "c_seg.png").stat().st_mtime_ns == kept and (out / "a_seg.png").stat().st_size > 0


@pytest.mark.parametrize(
    "content", [b"patient,score\nx,1\n", b"file,status,error,rows,cols\nb_caf\xe9.png,ok,,40,40\n"]
)
def test_foreign_or_non_utf8_measurements_file_is_named_not_a_traceback(tmp_path: Path, content: bytes) -> None:
    """Issue 30, case 9: a foreign measurements.csv stops the resume naming it; one that is not UTF-8 loses only
    its damaged rows, which are redone."""
    one_radiograph(tmp_path / "in")
    run_inference(tmp_path / "in", tmp_path / "out")
    (tmp_path / "out" / "measurements.csv").write_bytes(content)
    if content.startswith(b"patient"):
        with pytest.raises(OutputFolderError, match="measurements.csv is not a measurements file"):
            InferenceJob(tmp_path / "in", tmp_path / "out", skip_existing=True)
        return
    run_inference(tmp_path / "in", tmp_path / "out", skip_existing=True)
    assert list(read_rows(tmp_path / "out")) == ["a.png"]


def test_links_in_the_output_folder_never_lead_a_write_out_of_it(tmp_path: Path) -> None:
    """Issue 30, case 6: links planted at an output's name or at a folder it needs are replaced or refused, never
    followed; the file they lead to is untouched."""
    one_radiograph(tmp_path / "in", "a.png")
    one_radiograph(tmp_path / "in" / "p1", "b.png")
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(b"keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_seg.png").symlink_to(victim)
    (out / "a_overlay.png").symlink_to(victim)
    (out / "p1").symlink_to(victim.parent, target_is_directory=True)
    with pytest.raises(InferenceFailures, match="1 of 2 inputs failed"):
        run_inference(tmp_path / "in", out, overlay=True, recursive=True)
    assert victim.read_bytes() == b"keep" and sorted(p.name for p in victim.parent.iterdir()) == ["victim"]
    assert not (out / "a_seg.png").is_symlink() and not (out / "a_overlay.png").is_symlink()
    assert "leads out of the output folder" in read_rows(out)["p1/b.png"]["error"]


def test_a_full_disk_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 30, case 9: a write that fails half-way is that input's error, and its temporary file is removed."""
    one_radiograph(tmp_path / "in", "a.png")
    one_radiograph(tmp_path / "in", "b.png")
    save = Image.Image.save

    def full_disk(image: Image.Image, target, *args, **kwargs) -> None:
        if not isinstance(target, (str, Path)) and full_disk.calls == 0:  # the first output written: a's label map
            full_disk.calls += 1
            target.write(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        save(image, target, *args, **kwargs)

    full_disk.calls = 0
    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(InferenceFailures, match="No space left on device"):
        run_inference(tmp_path / "in", tmp_path / "out")
    assert not [path.name for path in (tmp_path / "out").iterdir() if path.name.endswith(".tmp")]
    assert read_rows(tmp_path / "out")["b.png"]["status"] == "ok"


def test_a_folder_option_read_as_a_number_is_named(tmp_path: Path) -> None:
    """``--dataset_dir 1e3`` reaches the config as 1000.0: the error says so instead of a bare TypeError."""
    with pytest.raises(TypeError, match=r"dataset_dir must be a folder path, got float 1000.0.*\./1e3"):
        InferenceJob(1000.0, tmp_path / "out")
