"""The collection's inference contract, shared by every bundle's ``inference.yaml``.

Every PNG/JPEG/TIFF/BMP/DICOM file in the input folder (and, with ``recursive``, in its sub-folders) becomes
``<relative path>/<stem>_seg.png`` (an 8-bit label map at the input's own size) and one row of
``measurements.csv``. A file that cannot be read or processed becomes a row with its error instead, and the
others go on; a file that looks like an input but is not one (a GIF, a folder named ``x.png``) becomes a
``skipped`` row with the reason. Rows are flushed as they are known, so nothing computed is lost if the run is
stopped, and ``skip_existing`` continues such a run without recomputing what it wrote. The run fails (non-zero
exit) at the end when any file failed.

How a bundle wires it (``inference.yaml``)::

    job:
      _target_: scripts.cxrseg.inference.InferenceJob
      input_dir: "@dataset_dir"
      output_dir: "@output_dir"
      recursive: "@recursive"
      skip_existing: "@skip_existing"
    dataset:
      _target_: scripts.cxrseg.inference.TolerantDataset
      data: "$@job.pending"
      transform: "@preprocessing"        # LoadImaged(reader=RadiographReader) first
    dataloader: {_target_: DataLoader, dataset: "@dataset", batch_size: 1, num_workers: "@num_workers"}
    handlers:
      - {_target_: CheckpointLoader, load_path: "@ckpt_path", load_dict: {model: "@network"}, map_location: "@device"}
      - _target_: scripts.cxrseg.inference.SegmentationWriter
        output_dir: "@output_dir"
        label_names: "@label_names"      # from channel_def, background first
        postprocessing: "@postprocessing"  # ends with a discrete label map at the input size (Invertd)
        measure: {_target_: scripts.<bundle>.measurements, _mode_: callable}
        overlay: "@overlay"              # true: also <stem>_overlay.png, the labels drawn on the radiograph
        job: "@job"
    evaluator:
      _target_: SupervisedEvaluator
      ...
      iteration_update: {_target_: scripts.cxrseg.inference.tolerant_iteration, _mode_: callable}
      val_handlers: "@handlers"

The evaluator gets no ``postprocessing`` of its own: the writer applies it per image, so that a failure in
one image's post-processing is that image's error, not the end of the run.

Several processes (``torchrun`` with ``multi_gpu_inference.yaml``) share one job: each segments the share its
``DistributedSampler`` gives it and flushes its rows to ``measurements.rank<r>.csv``; at the end rank 0 merges
every row into ``measurements.csv`` in input order, one row per input.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import Dataset, decollate_batch
from monai.engines import SupervisedEvaluator
from PIL import Image

from .bundle import as_flag
from .io import SUPPORTED_SUFFIXES, is_radiograph_file
from .library_internals import default_iteration
from .overlay import save_label_overlay

SOURCE_KEY = "source"
ERROR_KEY = "error"
# the input's path relative to the input folder (the CSV's ``file``), and its output stem relative to the output folder
FILE_KEY = "file"
OUTPUT_KEY = "output"
STATUS_KEY = "status"
OK, ERROR, SKIPPED = "ok", "error", "skipped"
MEASUREMENTS_NAME = "measurements.csv"
RANK_ROWS_GLOB = "measurements.rank*.csv"
# image formats a PACS export or a photo library may hold that the readers do not take: reported, not ignored
LOOKALIKE_SUFFIXES = (
    ".gif",
    ".webp",
    ".jp2",
    ".j2k",
    ".jpx",
    ".heic",
    ".heif",
    ".pgm",
    ".ppm",
    ".pnm",
    ".nii",
    ".mha",
    ".mhd",
    ".nrrd",
    ".svg",
    ".ico",
    ".psd",
    ".raw",
    ".dng",
)
logger = logging.getLogger(__name__)

Measure = Callable[[np.ndarray], Mapping[str, float]]
SaveExtras = Callable[[Mapping[str, Any], np.ndarray, Path, str], None]


class InferenceFailures(RuntimeError):
    """Raised after a run in which some inputs failed; every other input has been written."""


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _looks_like_input(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_SUFFIXES + LOOKALIKE_SUFFIXES


def _unusable_reason(path: Path, recursive: bool) -> tuple[str, str] | None:
    """``(status, reason)`` for an entry named like an input that cannot be one; ``None`` for a usable input
    or for anything not named like an input (``notes.txt``), which is passed over."""
    if path.is_symlink() and not path.exists():
        if not _looks_like_input(path):
            return None
        return ERROR, f"{path}: broken symbolic link to {os.readlink(path)}"
    if path.is_dir():
        if recursive or not _looks_like_input(path):
            return None
        return SKIPPED, f"{path}: a folder, not a file (--recursive true reads the files inside folders)"
    if is_radiograph_file(path):
        return None
    if path.suffix.lower() in LOOKALIKE_SUFFIXES:
        return SKIPPED, f"{path}: {path.suffix} is not a supported format; convert it to PNG, JPEG, TIFF, BMP or DICOM"
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        return SKIPPED, f"{path}: not a regular file"
    return None


def _walk(folder: Path, recursive: bool, exclude: Path | None) -> Iterator[Path]:
    """Every entry of ``folder`` (with ``recursive``, of its whole tree, following folder links once), hidden
    entries and the ``exclude`` tree (the output folder, when it lies inside the input) left out."""
    if not recursive:
        yield from (path for path in folder.iterdir() if not path.name.startswith("."))
        return
    visited: set[str] = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited or (exclude is not None and Path(real) == exclude):
            folders[:] = []
            continue
        visited.add(real)
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        yield from (Path(root) / name for name in files if not name.startswith("."))


def output_stems(files: Sequence[str]) -> dict[str, str]:
    """Output stem (relative to the output folder) of each input path relative to the input folder.

    ``dir/x.png`` -> ``dir/x``; where two inputs of one folder share a stem, the suffix is added (``dir/x_png``,
    ``dir/x_dcm``); any name still taken, also on a case-insensitive file system, gets ``_2``, ``_3``, ... in
    input order, so no two inputs ever write the same file.
    """
    paths = [PurePosixPath(name) for name in files]
    stem_counts: dict[tuple[str, str], int] = {}
    for path in paths:
        key = (str(path.parent).casefold(), path.stem.casefold())
        stem_counts[key] = stem_counts.get(key, 0) + 1
    taken: set[str] = set()
    stems: dict[str, str] = {}
    for name, path in zip(files, paths, strict=True):
        shared = stem_counts[(str(path.parent).casefold(), path.stem.casefold())] > 1
        candidate = str(path.parent / (f"{path.stem}_{path.suffix.lstrip('.')}" if shared else path.stem))
        stem, number = candidate, 2
        while stem.casefold() in taken:
            stem, number = f"{candidate}_{number}", number + 1
        taken.add(stem.casefold())
        stems[name] = stem
    return stems


def list_radiographs(input_dir: str | Path, recursive: bool = False, exclude: str | Path | None = None) -> list[dict]:
    """Datalist of the radiograph files in ``input_dir`` (``recursive``: in its whole tree), sorted by relative path.

    Files are chosen by suffix (or DICOM content for suffix-less files), not by whether they decode: a
    corrupt ``.png`` is listed and later reported as an error rather than silently ignored. Entries named like
    an input that cannot be one (broken links, folders named ``x.png``, GIFs) are listed as records that
    already carry their ``error`` and ``status``, so they get their row too. Each input names its ``file``
    (relative path, the CSV's column) and its ``output`` stem, which mirrors the relative path.
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    excluded = Path(os.path.realpath(exclude)) if exclude is not None else None
    inputs: dict[str, Path] = {}
    unusable: dict[str, tuple[Path, str, str]] = {}
    for path in _walk(folder, recursive, excluded):
        relative = path.relative_to(folder).as_posix()
        reason = _unusable_reason(path, recursive)
        if reason is not None:
            unusable[relative] = (path, *reason)
        elif is_radiograph_file(path):
            inputs[relative] = path
    if not inputs and not unusable:
        hint = ""
        if not recursive and any(path.is_dir() for path in folder.iterdir()):
            hint = " directly inside it; --recursive true reads its sub-folders"
        raise FileNotFoundError(f"input folder {folder} holds no PNG/JPEG/TIFF/BMP/DICOM files{hint}")
    stems = output_stems(sorted(inputs))
    entries = {
        relative: {"image": str(path), SOURCE_KEY: str(path), FILE_KEY: relative, OUTPUT_KEY: stems[relative]}
        for relative, path in inputs.items()
    }
    entries |= {
        relative: {SOURCE_KEY: str(path), FILE_KEY: relative, STATUS_KEY: status, ERROR_KEY: reason}
        for relative, (path, status, reason) in unusable.items()
    }
    return [entries[relative] for relative in sorted(entries)]


def segmentation_path(output_dir: Path, stem: str) -> Path:
    return output_dir / f"{stem}_seg.png"


def _read_rows(path: Path) -> list[dict[str, str]]:
    """Complete rows of a measurements file; a line cut short by a killed process has empty fields and is dropped."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:  # a rank's file already merged by another run's rank 0
        return []
    return [row for row in rows if None not in row and None not in row.values()]


def _rank_row_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob(RANK_ROWS_GLOB))


def completed_rows(output_dir: str | Path, entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Rows of an earlier run into ``output_dir`` that need no recomputing, by ``file``: status ``ok`` and the
    label map on disk. A row is written only after its outputs, so a row is the proof that they are complete;
    a label map without a row (the process died between the two) is recomputed. The rows of an interrupted
    multi-process run (``measurements.rank*.csv``, any number of ranks) count as well."""
    output_dir = Path(output_dir)
    stems = {entry[FILE_KEY]: entry[OUTPUT_KEY] for entry in entries if OUTPUT_KEY in entry}
    done: dict[str, dict[str, str]] = {}
    for path in [output_dir / MEASUREMENTS_NAME, *_rank_row_files(output_dir)]:
        for row in _read_rows(path):
            stem = stems.get(row["file"])
            if row["status"] == OK and stem is not None and segmentation_path(output_dir, stem).is_file():
                done[row["file"]] = row
    return done


class InferenceJob:
    """The inputs of one inference run over a folder, and which of them an interrupted earlier run already wrote.

    Every process of a multi-process run builds the same job (the listing is sorted and the earlier rows are
    read before any process writes: :class:`SegmentationWriter` waits for all of them first). ``pending`` is
    what the data loader gets; ``entries`` (every input, in order) and ``done`` are what the writer needs to
    produce the one merged ``measurements.csv``.

    Args:
        input_dir: folder of radiographs.
        output_dir: the run's output folder; with ``recursive`` it is left out of the walk when it lies inside
            ``input_dir``, so a rerun never reads its own label maps as inputs.
        recursive: walk sub-folders; outputs mirror each input's relative path.
        skip_existing: keep the rows and label maps of an earlier run into ``output_dir`` and segment only the
            rest (a run over 50,000 files that died at 30,000 resumes at 30,000).
    """

    def __init__(
        self, input_dir: str | Path, output_dir: str | Path, recursive: bool = False, skip_existing: bool = False
    ) -> None:
        self.output_dir = Path(output_dir)
        self.entries = list_radiographs(input_dir, recursive=as_flag(recursive), exclude=output_dir)
        self.done = completed_rows(self.output_dir, self.entries) if as_flag(skip_existing) else {}
        self.pending = [entry for entry in self.entries if entry[FILE_KEY] not in self.done]
        if self.done:
            logger.info(
                "skip_existing: %d of %d inputs were already written to %s; segmenting the other %d",
                len(self.done),
                len(self.entries),
                self.output_dir,
                len(self.pending),
            )


class TolerantDataset(Dataset):
    """A MONAI ``Dataset`` whose items that fail to load or transform become error records.

    The record ``{"source": path, "error": message}`` travels through the data loader (batch size 1) and
    :func:`tolerant_iteration` to :class:`SegmentationWriter`, which lists it in ``measurements.csv``. Entries
    that already are such records (unusable files found by the listing) pass through untransformed.
    """

    def __getitem__(self, index: int | slice | Sequence[int]) -> Any:
        if isinstance(index, (slice, Sequence)):
            return super().__getitem__(index)  # a Subset, whose items come back here one by one
        entry = self.data[index]  # out of range stays an IndexError, which ends iteration over the dataset
        if ERROR_KEY in entry:
            return dict(entry)
        try:
            return super().__getitem__(index)
        except Exception as error:  # any failure of one file must not stop the others
            source = entry.get(SOURCE_KEY, entry.get("image"))
            record = {key: entry[key] for key in (FILE_KEY, OUTPUT_KEY) if key in entry}
            return record | {SOURCE_KEY: source, ERROR_KEY: describe_failure(error, source)}


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
        return default_iteration(engine, batchdata)
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


def _write_csv_atomically(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``path`` in one step, so a reader (or a later resume) sees the old file or the new, never half."""
    partial = path.with_name(f".{path.name}.tmp")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


class SegmentationWriter:
    """Ignite handler writing ``<stem>_seg.png`` and a ``measurements.csv`` row for every inference input.

    Args:
        output_dir: folder for the label maps and ``measurements.csv`` (created).
        label_names: label value -> name, background first (the bundle's ``channel_def``).
        postprocessing: applied to each decollated item; must leave ``pred`` as a discrete label map at
            the input's original size (``Invertd`` of the resizing preprocessing).
        measure: bundle-specific measurements of one label map; it is called once on an empty map at
            start-up to learn the CSV columns, so it must handle empty predictions.
        save_extras: optional per-image extra outputs of a bundle's own (uncertainty maps, opacity overlays).
        overlay: also write ``<stem>_overlay.png``, the radiograph with each label outlined in its colour
            (:mod:`cxrseg.overlay`), so a person can check the result without a viewer for label maps.
        fail_on_error: raise :class:`InferenceFailures` at the end when any input failed, so that
            ``python -m monai.bundle run`` exits non-zero.
        job: the run's :class:`InferenceJob` (input order, earlier rows kept by ``skip_existing``); without it
            the data loader's dataset is the whole job.
    """

    def __init__(
        self,
        output_dir: str | Path,
        label_names: Sequence[str],
        postprocessing: Callable[[dict], dict] | None = None,
        measure: Measure | None = None,
        save_extras: SaveExtras | None = None,
        overlay: bool = False,
        fail_on_error: bool = True,
        job: InferenceJob | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.label_names = list(label_names)
        self.postprocessing = postprocessing
        self.measure = measure
        self.save_extras = save_extras
        self.overlay = overlay
        self.fail_on_error = fail_on_error
        self.job = job
        self.failures: list[str] = []
        self.written = 0
        self.columns = ["file", "status", "error", "rows", "cols"] + list(
            label_areas(np.zeros((1, 1), np.uint8), self.label_names)
        )
        if measure is not None:
            self.columns += list(measure(np.zeros((8, 8), np.uint8)))

    @property
    def csv_path(self) -> Path:
        return self.output_dir / MEASUREMENTS_NAME

    @property
    def rows_path(self) -> Path:
        """Where this process flushes its rows: ``measurements.csv`` itself, or one file per rank."""
        rank, world = _rank_and_world()
        return self.csv_path if world == 1 else self.output_dir / f"measurements.rank{rank}.csv"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_iteration)
        engine.add_event_handler(Events.COMPLETED, self._finish)
        if engine.state.epoch_length == 0:
            # MONAI skips `run` on an empty loader: every input was written by an earlier run (skip_existing),
            # whose rows still become the final measurements.csv
            self._start(engine)
            self._finish(engine)

    def _entries(self, engine: Engine) -> list[Mapping[str, Any]]:
        return self.job.entries if self.job is not None else getattr(engine.data_loader.dataset, "data", [])

    def _start(self, engine: Engine) -> None:
        """Fold the earlier rows kept by ``skip_existing`` (and any interrupted ranks' files) into
        ``measurements.csv``, then open this process's rows file. Every process has read the earlier rows
        (built its job) before rank 0 rewrites them."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.failures, self.written = [], 0
        rank, world = _rank_and_world()
        _barrier()
        if rank == 0:
            done = self.job.done if self.job is not None else {}
            order = {entry[FILE_KEY]: index for index, entry in enumerate(self._entries(engine)) if FILE_KEY in entry}
            kept = sorted(done.values(), key=lambda row: order[row["file"]])
            _write_csv_atomically(self.csv_path, self.columns, kept)
            for stale in _rank_row_files(self.output_dir):
                stale.unlink()
        _barrier()
        if world > 1:
            _write_csv_atomically(self.rows_path, self.columns, [])

    def _append_row(self, row: Mapping[str, Any]) -> None:
        with open(self.rows_path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(row)

    def _record_error(self, item: Mapping[str, Any], message: str) -> None:
        file = item.get(FILE_KEY) or Path(str(item.get(SOURCE_KEY))).name
        status = item.get(STATUS_KEY) or ERROR
        if status == ERROR:
            self.failures.append(f"{file}: {message}")
            logger.error("%s", message)
        else:
            logger.warning("%s: %s", status, message)
        self._append_row({"file": file, "status": status, "error": message})

    def _save_label_map(self, label_map: np.ndarray, stem: str) -> None:
        """Write through a temporary name, so an interrupted write never leaves a truncated label map behind
        (and two ranks given the same padded input by ``DistributedSampler`` never interleave)."""
        path = segmentation_path(self.output_dir, stem)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{_rank_and_world()[0]}.tmp")
        Image.fromarray(label_map).save(partial, format="PNG")
        os.replace(partial, path)

    def _write_one(self, item: Mapping[str, Any]) -> None:
        source = str(item.get(SOURCE_KEY))
        if ERROR_KEY in item:
            self._record_error(item, str(item[ERROR_KEY]))
            return
        try:
            processed = self.postprocessing(dict(item)) if self.postprocessing is not None else item
            label_map = to_label_map(processed["pred"])
            original = _original_shape(item)
            if original is not None and label_map.shape != original:
                raise ValueError(f"label map is {label_map.shape} but the input is {original}; check Invertd")
            stem = item.get(OUTPUT_KEY) or Path(source).stem
            self._save_label_map(label_map, stem)
            row = {
                "file": item.get(FILE_KEY) or Path(source).name,
                "status": OK,
                "error": "",
                "rows": label_map.shape[0],
                "cols": label_map.shape[1],
            }
            row |= label_areas(label_map, self.label_names)
            if self.measure is not None:
                row |= dict(self.measure(label_map))
            if self.save_extras is not None:
                self.save_extras(processed, label_map, self.output_dir, stem)
            if self.overlay:
                save_label_overlay(source, label_map, self.output_dir, stem)
        except Exception as error:  # one image's post-processing failure must not lose the others
            self._record_error(item, describe_failure(error, source))
            return
        self._append_row(row)
        self.written += 1

    def _write_iteration(self, engine: Engine) -> None:
        """Pair each output item with its batch item: the engine's output lacks the batch's ``source``, and
        error records skipped the network step, so MONAI never decollated them."""
        outputs, batch = engine.state.output, engine.state.batch
        outputs = decollate_batch(outputs) if isinstance(outputs, dict) else outputs
        batch = decollate_batch(batch) if isinstance(batch, dict) else batch
        for item, batch_item in zip(outputs, batch, strict=True):
            self._write_one({**batch_item, **item})

    def merge_rows(self, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
        """Write ``measurements.csv`` as one row per entry, in input order, from itself and the ranks' files
        (a rank's row wins; ``DistributedSampler`` pads uneven shares by repeating inputs, whose rows agree),
        then remove the ranks' files. An entry without a row is an error of the run, not of an input."""
        rows: dict[str, dict[str, str]] = {}
        for path in [self.csv_path, *_rank_row_files(self.output_dir)]:
            rows |= {row["file"]: row for row in _read_rows(path)}
        files = [entry.get(FILE_KEY) or Path(str(entry[SOURCE_KEY])).name for entry in entries]
        missing = [file for file in files if file not in rows]
        if missing:
            raise RuntimeError(
                f"{len(missing)} inputs have no row in {self.output_dir} (first: {missing[:5]}); "
                "rerun with --skip_existing true to complete them"
            )
        merged = [rows[file] for file in files]
        _write_csv_atomically(self.csv_path, self.columns, merged)
        for path in _rank_row_files(self.output_dir):
            path.unlink()
        return merged

    def _finish(self, engine: Engine) -> None:
        """Once every process has flushed its rows, rank 0 merges them and fails the run if any input failed."""
        rank, world = _rank_and_world()
        logger.info(
            "rank %d of %d wrote %d label maps; %d of its inputs failed", rank, world, self.written, len(self.failures)
        )
        _barrier()
        merged = self.merge_rows(self._entries(engine)) if rank == 0 else []
        _barrier()
        failed = [row for row in merged if row["status"] == ERROR]
        if rank == 0:
            logger.info(
                "%s: %d inputs, %d failed, %d skipped",
                self.csv_path,
                len(merged),
                len(failed),
                sum(row["status"] == SKIPPED for row in merged),
            )
        if failed and self.fail_on_error:
            raise InferenceFailures(
                f"{len(failed)} of {len(merged)} inputs failed "
                f"(all others were written; see {self.csv_path}):\n  "
                + "\n  ".join(f"{row['file']}: {row['error']}" for row in failed)
            )
