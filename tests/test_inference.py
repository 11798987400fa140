"""The inference contract machinery on a one-layer network: outputs at input size, per-file errors,
rows flushed, and a failure raised at the end only after every good file is written."""

from __future__ import annotations

import csv
import io
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
    InferenceFailures,
    InferenceJob,
    SegmentationWriter,
    TolerantDataset,
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
    (tmp_path / "out" / "measurements.rank1.csv").write_text("file,status\n", encoding="utf-8")  # an interrupted rank
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
