"""The collection's inference contract, shared by every bundle's ``inference.yaml``.

Every PNG/JPEG/TIFF/BMP/DICOM file in the input folder becomes ``<stem>_seg.png`` (an 8-bit label map at the
input's own size) and one row of ``measurements.csv``. A file that cannot be read or processed becomes a
row with its error instead, and the others go on; rows are flushed as they are known, so nothing computed
is lost if the run is stopped; the run fails (non-zero exit) at the end when any file failed.

How a bundle wires it (``inference.yaml``)::

    dataset:
      _target_: scripts.cxrseg.inference.TolerantDataset
      data: {_target_: scripts.cxrseg.inference.list_radiographs, input_dir: "@dataset_dir"}
      transform: "@preprocessing"        # LoadImaged(reader=RadiographReader) first
    dataloader: {_target_: DataLoader, dataset: "@dataset", batch_size: 1, num_workers: "@num_workers"}
    handlers:
      - {_target_: CheckpointLoader, load_path: "@ckpt_path", load_dict: {model: "@network"}, map_location: "@device"}
      - _target_: scripts.cxrseg.inference.SegmentationWriter
        output_dir: "@output_dir"
        label_names: "@label_names"      # from channel_def, background first
        postprocessing: "@postprocessing"  # ends with a discrete label map at the input size (Invertd)
        measure: {_target_: scripts.<bundle>.measurements, _mode_: callable}
    evaluator:
      _target_: SupervisedEvaluator
      ...
      iteration_update: {_target_: scripts.cxrseg.inference.tolerant_iteration, _mode_: callable}
      val_handlers: "@handlers"

The evaluator gets no ``postprocessing`` of its own: the writer applies it per image, so that a failure in
one image's post-processing is that image's error, not the end of the run.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import Dataset, decollate_batch
from monai.engines import SupervisedEvaluator
from PIL import Image

from .io import is_radiograph_file

SOURCE_KEY = "source"
ERROR_KEY = "error"
MEASUREMENTS_NAME = "measurements.csv"
logger = logging.getLogger(__name__)

Measure = Callable[[np.ndarray], Mapping[str, float]]
SaveExtras = Callable[[Mapping[str, Any], np.ndarray, Path, str], None]


class InferenceFailures(RuntimeError):
    """Raised after a run in which some inputs failed; every other input has been written."""


def list_radiographs(input_dir: str | Path) -> list[dict]:
    """Datalist of the radiograph files directly inside ``input_dir``, sorted by name.

    Files are chosen by suffix (or DICOM content for suffix-less files), not by whether they decode: a
    corrupt ``.png`` is listed and later reported as an error rather than silently ignored.
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if is_radiograph_file(p))
    if not files:
        raise FileNotFoundError(f"input folder {folder} holds no PNG/JPEG/TIFF/BMP/DICOM files")
    return [{"image": str(p), SOURCE_KEY: str(p)} for p in files]


class TolerantDataset(Dataset):
    """A MONAI ``Dataset`` whose items that fail to load or transform become error records.

    The record ``{"source": path, "error": message}`` travels through the data loader (batch size 1) and
    :func:`tolerant_iteration` to :class:`SegmentationWriter`, which lists it in ``measurements.csv``.
    """

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as error:  # any failure of one file must not stop the others
            source = self.data[index].get(SOURCE_KEY, self.data[index].get("image"))
            return {SOURCE_KEY: source, ERROR_KEY: describe_failure(error, source)}


def describe_failure(error: BaseException, source: str) -> str:
    """The innermost cause of a failure, naming the file: MONAI wraps transform errors in a RuntimeError
    ("applying transform ...") whose own text says nothing about what was wrong with the file."""
    while error.__cause__ is not None:
        error = error.__cause__
    message = str(error)
    return message if str(source) in message else f"{source}: {type(error).__name__}: {message}"


def tolerant_iteration(engine: SupervisedEvaluator, batchdata: dict) -> dict:
    """``iteration_update`` for the inference evaluator: pass error records through, and turn a failure
    of the network step on one image into that image's error record."""
    if ERROR_KEY in batchdata:
        return batchdata
    try:
        return engine._iteration(engine, batchdata)
    except Exception as error:  # e.g. out of memory on one huge input
        source = batchdata.get(SOURCE_KEY)
        source = source[0] if isinstance(source, list) else source
        return {SOURCE_KEY: [source], ERROR_KEY: [describe_failure(error, source)]}


def label_areas(label_map: np.ndarray, label_names: Sequence[str]) -> dict[str, int]:
    """Pixel count of every non-background label, named ``area_px_<name>``."""
    counts = np.bincount(label_map.ravel(), minlength=len(label_names))
    return {f"area_px_{name}": int(counts[value]) for value, name in enumerate(label_names) if value > 0}


def to_label_map(pred: torch.Tensor | np.ndarray) -> np.ndarray:
    """A ``(rows, cols)`` uint8 label map from a post-processed prediction: one channel of label values, or
    several channels (one-hot or scores) reduced by argmax."""
    array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if array.ndim == 3 and array.shape[0] > 1:
        array = array.argmax(axis=0)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"prediction of shape {pred.shape} is not a 2-D label map")
    return np.rint(array).astype(np.uint8)


def _original_shape(item: Mapping[str, Any]) -> tuple[int, int] | None:
    image = item.get("image")
    meta = getattr(image, "meta", {}) or {}
    shape = meta.get("spatial_shape")
    return None if shape is None else tuple(int(s) for s in np.asarray(shape).ravel()[:2])


def output_stems(sources: Sequence[str]) -> dict[str, str]:
    """``<stem>`` per input, or ``<stem>_<ext>`` where two inputs share a stem, so outputs never collide."""
    stems = [Path(s).stem for s in sources]
    return {
        source: stem if stems.count(stem) == 1 else f"{stem}_{Path(source).suffix.lstrip('.').lower()}"
        for source, stem in zip(sources, stems)
    }


class SegmentationWriter:
    """Ignite handler writing ``<stem>_seg.png`` and a ``measurements.csv`` row for every inference input.

    Args:
        output_dir: folder for the label maps and ``measurements.csv`` (created).
        label_names: label value -> name, background first (the bundle's ``channel_def``).
        postprocessing: applied to each decollated item; must leave ``pred`` as a discrete label map at
            the input's original size (``Invertd`` of the resizing preprocessing).
        measure: bundle-specific measurements of one label map; it is called once on an empty map at
            start-up to learn the CSV columns, so it must handle empty predictions.
        save_extras: optional per-image extra outputs (overlays, uncertainty maps).
        fail_on_error: raise :class:`InferenceFailures` at the end when any input failed, so that
            ``python -m monai.bundle run`` exits non-zero.
    """

    def __init__(
        self,
        output_dir: str | Path,
        label_names: Sequence[str],
        postprocessing: Callable[[dict], dict] | None = None,
        measure: Measure | None = None,
        save_extras: SaveExtras | None = None,
        fail_on_error: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.label_names = list(label_names)
        self.postprocessing = postprocessing
        self.measure = measure
        self.save_extras = save_extras
        self.fail_on_error = fail_on_error
        self.failures: list[str] = []
        self.written = 0
        self._stems: dict[str, str] = {}
        self.columns = ["file", "status", "error", "rows", "cols"] + list(
            label_areas(np.zeros((1, 1), np.uint8), self.label_names)
        )
        if measure is not None:
            self.columns += list(measure(np.zeros((8, 8), np.uint8)))

    @property
    def csv_path(self) -> Path:
        return self.output_dir / MEASUREMENTS_NAME

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_iteration)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _start(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.failures, self.written = [], 0
        sources = [entry.get(SOURCE_KEY, "") for entry in getattr(engine.data_loader.dataset, "data", [])]
        self._stems = output_stems(sources)
        with open(self.csv_path, "w", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns).writeheader()

    def _append_row(self, row: Mapping[str, Any]) -> None:
        with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(row)

    def _record_error(self, source: str, message: str) -> None:
        self.failures.append(f"{Path(source).name}: {message}")
        logger.error("%s", message)
        self._append_row({"file": Path(source).name, "status": "error", "error": message})

    def _write_one(self, item: Mapping[str, Any]) -> None:
        source = str(item.get(SOURCE_KEY))
        if ERROR_KEY in item:
            self._record_error(source, str(item[ERROR_KEY]))
            return
        try:
            processed = self.postprocessing(dict(item)) if self.postprocessing is not None else item
            label_map = to_label_map(processed["pred"])
            original = _original_shape(item)
            if original is not None and label_map.shape != original:
                raise ValueError(f"label map is {label_map.shape} but the input is {original}; check Invertd")
            stem = self._stems.get(source, Path(source).stem)
            Image.fromarray(label_map).save(self.output_dir / f"{stem}_seg.png")
            row = {"file": Path(source).name, "status": "ok", "error": "", "rows": label_map.shape[0]}
            row |= {"cols": label_map.shape[1]} | label_areas(label_map, self.label_names)
            if self.measure is not None:
                row |= dict(self.measure(label_map))
            if self.save_extras is not None:
                self.save_extras(processed, label_map, self.output_dir, stem)
        except Exception as error:  # one image's post-processing failure must not lose the others
            self._record_error(source, describe_failure(error, source))
            return
        self._append_row(row)
        self.written += 1

    def _write_iteration(self, engine: Engine) -> None:
        """Pair each output item with its batch item: the engine's output lacks the batch's ``source``, and
        error records skipped the network step, so MONAI never decollated them."""
        outputs, batch = engine.state.output, engine.state.batch
        outputs = decollate_batch(outputs) if isinstance(outputs, dict) else outputs
        batch = decollate_batch(batch) if isinstance(batch, dict) else batch
        for item, batch_item in zip(outputs, batch):
            self._write_one({**batch_item, **item})

    def _finish(self, engine: Engine) -> None:
        logger.info("wrote %d label maps and %s; %d inputs failed", self.written, self.csv_path, len(self.failures))
        if self.failures and self.fail_on_error:
            raise InferenceFailures(
                f"{len(self.failures)} of {self.written + len(self.failures)} inputs failed "
                f"(all others were written; see {self.csv_path}):\n  " + "\n  ".join(self.failures)
            )
