"""The inference contract machinery on a one-layer network: outputs at input size, per-file errors,
rows flushed, and a failure raised at the end only after every good file is written."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.transforms import AsDiscreted, Compose, EnsureChannelFirstd, Invertd, LoadImaged, ScaleIntensityd, SpatialPadd
from PIL import Image

from cxrseg.inference import (
    InferenceFailures,
    SegmentationWriter,
    TolerantDataset,
    list_radiographs,
    output_stems,
    tolerant_iteration,
)
from cxrseg.io import RadiographReader
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


def run_inference(input_dir: Path, output_dir: Path, measure=None) -> SegmentationWriter:
    preprocessing = Compose([
        LoadImaged("image", reader=RadiographReader()),
        EnsureChannelFirstd("image"),
        ScaleIntensityd("image", minv=0.0, maxv=1.0),
        FitResized("image", (32, 32)),
        SpatialPadd("image", (32, 32)),
    ])
    postprocessing = Compose([
        Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False),
        AsDiscreted("pred", argmax=True),
    ])
    dataset = TolerantDataset(list_radiographs(input_dir), transform=preprocessing)
    writer = SegmentationWriter(output_dir, ["background", "bright"], postprocessing=postprocessing, measure=measure)
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
    assert output_stems(["a/x.png", "a/x.dcm", "a/y.png"]) == {"a/x.png": "x_png", "a/x.dcm": "x_dcm", "a/y.png": "y"}
