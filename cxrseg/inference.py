"""The collection's inference contract, shared by every bundle's ``inference.yaml``.

Every PNG/JPEG/TIFF/BMP/DICOM file in the input folder (and, with ``recursive``, in its sub-folders) becomes
``<relative path>/<stem>_seg.png`` (an 8-bit label map at the input's own size) and one row of
``measurements.csv``. A file that cannot be read or processed becomes a row with its error instead, and the
others go on; a file that looks like an input but is not one (a GIF, a folder named ``x.png``) becomes a
``skipped`` row with the reason. Rows are flushed as they are known, so nothing computed is lost if the run is
stopped, and ``skip_existing`` continues such a run without recomputing what it wrote. The run fails (non-zero
exit) at the end when any file failed.

Archives and shared output folders (issue 30): inputs are found by name or content (DICOM as ``IM_0001.1``); text
cells are printable and never spreadsheet formulas (:func:`csv_cell`); the output folder records what wrote it and
is locked while a run writes it (:class:`InferenceJob`); every output is written through a new temporary file
renamed over its name (:func:`cxrseg.io.save_png`), so a link planted there is replaced, never followed.

How a bundle wires it (``inference.yaml``)::

    job:
      _target_: scripts.cxrseg.inference.InferenceJob
      input_dir: "@dataset_dir"
      output_dir: "@output_dir"
      recursive: "@recursive"
      skip_existing: "@skip_existing"
      bundle_root: "@bundle_root"        # with weights and settings: what OUT/inference_run.json records
      weights: ["@ckpt_path"]
      settings: "@run_settings"          # the config values that shape the results
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
        lung_labels: [1]                 # with check_lung_field: an implausible lung field is an error row
        check_lung_field: "@check_lung_field"
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
import fcntl
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import Dataset, decollate_batch
from monai.engines import SupervisedEvaluator
from PIL import Image, UnidentifiedImageError

from .bundle import as_flag
from .io import SUPPORTED_SUFFIXES, is_radiograph_file, replace_atomically, save_png
from .library_internals import default_iteration
from .lungs import lung_field_problem
from .overlay import save_label_overlay

SOURCE_KEY = "source"
ERROR_KEY = "error"
# the input's path relative to the input folder as the CSV's ``file`` shows it (printable, never a formula), and its
# output stem relative to the output folder
FILE_KEY = "file"
OUTPUT_KEY = "output"
STATUS_KEY = "status"
OK, ERROR, SKIPPED = "ok", "error", "skipped"
MEASUREMENTS_NAME = "measurements.csv"
RANK_ROWS_GLOB = "measurements.rank*.csv"
# what wrote an output folder (bundle, version, weights, settings, input), and the lock of the run writing it now
RUN_RECORD_NAME = "inference_run.json"
LOCK_NAME = ".inference.lock"
# columns every measurements file of the collection starts with
BASE_COLUMNS = ["file", "status", "error", "rows", "cols"]
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
    ".nii.gz",
    ".mha",
    ".mhd",
    ".nrrd",
    ".svg",
    ".ico",
    ".psd",
    ".raw",
    ".dng",
)
# the index of a DICOM export medium (PS3.10): DICOM, but no image
DICOMDIR_NAME = "DICOMDIR"
# files the writers put beside each stem: an input's outputs never take the name of a folder other outputs need
OUTPUT_SUFFIXES = ("_seg.png", "_overlay.png", "_uncertainty.png")
# longest file name most file systems take, in bytes; longer output stems are shortened with a hash of the full one
NAME_MAX = 255
STEM_HASH_LENGTH = 8
# a spreadsheet reads a cell starting with one of these as a formula
FORMULA_STARTS = ("=", "+", "-", "@")
logger = logging.getLogger(__name__)

Measure = Callable[[np.ndarray], Mapping[str, float]]
SaveExtras = Callable[[Mapping[str, Any], np.ndarray, Path, str], None]


class InferenceFailures(RuntimeError):
    """Raised after a run in which some inputs failed; every other input has been written."""


class OutputFolderError(RuntimeError):
    """The output folder cannot take this run (another run writes it, or it holds another run's results); raised
    before any image is read or any file written."""


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def printable(text: str) -> str:
    """``text`` with what a terminal, a log or a CSV line cannot show as it is written out as escapes: bytes of a
    file name that are not UTF-8 (``caf\xe9``), newlines, NUL and other control characters. A name with a newline
    would otherwise forge log lines and CSV rows."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def csv_cell(text: str) -> str:
    """A text cell of ``measurements.csv``: :func:`printable`, and quoted with a leading ``'`` where a spreadsheet
    would run it as a formula (OWASP's advice for CSV injection)."""
    text = printable(text)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def _folder(value: Any, option: str) -> Path:
    """A folder option as a path; a number means the command line read the name as one (``--dataset_dir 1e3``
    arrives as 1000.0), which is said rather than failing on it later."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise TypeError(
        f"{option} must be a folder path, got {type(value).__name__} {value!r}: the command line reads a name like "
        f"1e3 or 007 as a number; write it as ./1e3"
    )


def _has_suffix(name: str, suffixes: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(suffixes))


def _named_like_input(path: Path) -> bool:
    return _has_suffix(path.name, SUPPORTED_SUFFIXES + LOOKALIKE_SUFFIXES)


def _unusable_reason(path: Path, recursive: bool) -> tuple[str, str] | None:
    """``(status, reason)`` for an entry that looks like an input (by name or content) but cannot be one; ``None``
    for a usable input or for anything that does not look like one (``notes.txt``), which is passed over."""
    if path.is_symlink() and not path.exists():
        if not _named_like_input(path):
            return None
        return ERROR, f"{path}: broken symbolic link to {os.readlink(path)}"
    if path.is_dir():
        if recursive or not _named_like_input(path):
            return None
        return SKIPPED, f"{path}: a folder, not a file (--recursive true reads the files inside folders)"
    if path.name == DICOMDIR_NAME:
        return SKIPPED, f"{path}: the index of a DICOM export (DICOMDIR), not an image"
    if is_radiograph_file(path):
        return None
    lookalike = [suffix for suffix in LOOKALIKE_SUFFIXES if path.name.lower().endswith(suffix)]
    if lookalike:
        return SKIPPED, f"{path}: {lookalike[0]} is not a supported format; convert it to PNG, JPEG, TIFF, BMP or DICOM"
    if _named_like_input(path):
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


def _fit_name(name: str) -> str:
    """``name`` (a stem), shortened so that its longest output file name fits in ``NAME_MAX`` bytes: cut, then a
    hash of the whole name, so that two long names that share their start still differ."""
    room = NAME_MAX - max(len(suffix) for suffix in OUTPUT_SUFFIXES)
    encoded = os.fsencode(name)
    if len(encoded) <= room:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:STEM_HASH_LENGTH]
    cut = encoded[: room - STEM_HASH_LENGTH - 1].decode("utf-8", "ignore")  # never half a character
    return f"{cut}~{digest}"


def output_stems(files: Sequence[str]) -> dict[str, str]:
    """Output stem (relative to the output folder) of each input path relative to the input folder.

    ``dir/x.png`` -> ``dir/x``; where two inputs of one folder share a stem, the suffix is added (``dir/x_png``,
    ``dir/x_dcm``); any name still taken, also on a case-insensitive file system, or whose outputs would take the
    name of an output folder (``a.png`` beside a folder ``a_seg.png``), gets ``_2``, ``_3``, ... in input order, so
    no two inputs ever write the same file. A stem too long for its output names is shortened (:func:`_fit_name`).
    """
    paths = [PurePosixPath(name) for name in files]
    folders = {str(parent).casefold() for path in paths for parent in path.parents}
    stem_counts: dict[tuple[str, str], int] = {}
    for path in paths:
        key = (str(path.parent).casefold(), path.stem.casefold())
        stem_counts[key] = stem_counts.get(key, 0) + 1

    def free(stem: str) -> bool:
        return stem.casefold() not in taken and not any(
            (stem + suffix).casefold() in folders for suffix in OUTPUT_SUFFIXES
        )

    taken: set[str] = set()
    stems: dict[str, str] = {}
    for name, path in zip(files, paths, strict=True):
        shared = stem_counts[(str(path.parent).casefold(), path.stem.casefold())] > 1
        base = _fit_name(f"{path.stem}_{path.suffix.lstrip('.')}" if shared else path.stem)
        candidate = str(path.parent / base)
        stem, number = candidate, 2
        while not free(stem):
            stem, number = str(path.parent / _fit_name(f"{base}_{number}")), number + 1
        taken.add(stem.casefold())
        stems[name] = stem
    return stems


def list_radiographs(input_dir: str | Path, recursive: bool = False, exclude: str | Path | None = None) -> list[dict]:
    """Datalist of the radiograph files in ``input_dir`` (``recursive``: in its whole tree), sorted by relative path.

    Files are chosen by name or by content (DICOM, PNG, JPEG or TIFF whatever the name: a PACS exports
    ``IM_0001.1``), not by whether they decode: a corrupt ``.png`` is listed and later reported as an error rather
    than silently ignored. Entries that look like an input but cannot be one (broken links, folders named
    ``x.png``, GIFs, a DICOMDIR) are listed as records that already carry their ``error`` and ``status``, so they
    get their row too. Each input names its ``file`` (relative path as :func:`csv_cell` shows it, the CSV's column)
    and its ``output`` stem, which mirrors the relative path. What is passed over is counted in the log.
    """
    folder = _folder(input_dir, "dataset_dir")
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {printable(str(folder))} does not exist")
    excluded = Path(os.path.realpath(exclude)) if exclude is not None else None
    inputs: dict[str, Path] = {}
    unusable: dict[str, tuple[Path, str, str]] = {}
    passed_over: list[str] = []
    for path in _walk(folder, recursive, excluded):
        relative = path.relative_to(folder).as_posix()
        reason = _unusable_reason(path, recursive)
        if reason is not None:
            unusable[relative] = (path, *reason)
        elif is_radiograph_file(path):
            inputs[relative] = path
        elif not path.is_dir():
            passed_over.append(relative)
    if passed_over:
        logger.info(
            "passed over %d files that are no image by name or content (first: %s)",
            len(passed_over),
            ", ".join(printable(name) for name in sorted(passed_over)[:3]),
        )
    if not inputs and not unusable:
        hint = ""
        if not recursive and any(path.is_dir() for path in folder.iterdir()):
            hint = " directly inside it; --recursive true reads its sub-folders"
        raise FileNotFoundError(f"input folder {printable(str(folder))} holds no PNG/JPEG/TIFF/BMP/DICOM files{hint}")
    stems = output_stems(sorted(inputs))
    entries = {
        relative: {
            "image": str(path),
            SOURCE_KEY: str(path),
            FILE_KEY: csv_cell(relative),
            OUTPUT_KEY: stems[relative],
        }
        for relative, path in inputs.items()
    }
    entries |= {
        relative: {SOURCE_KEY: str(path), FILE_KEY: csv_cell(relative), STATUS_KEY: status, ERROR_KEY: csv_cell(reason)}
        for relative, (path, status, reason) in unusable.items()
    }
    return [entries[relative] for relative in sorted(entries)]


def segmentation_path(output_dir: Path, stem: str) -> Path:
    return output_dir / f"{stem}_seg.png"


def _write_csv_atomically(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``path`` in one step, so a reader (or a later resume) sees the old file or the new, never half."""

    def write(handle: IO[bytes]) -> None:
        with open(handle.fileno(), "w", newline="", encoding="utf-8", closefd=False) as text:
            writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    replace_atomically(path, write)


def _damaged(row: Mapping[str, Any]) -> bool:
    """A row no writer of this module made: a line cut short by a killed process (missing fields), or bytes a
    write never put there (NUL and other control characters, text that was not UTF-8)."""
    if None in row or None in row.values():
        return True
    return any(printable(value) != value for value in row.values())


def _read_rows(path: Path) -> list[dict[str, str]]:
    """Complete rows of a measurements file; damaged ones (:func:`_damaged`) are dropped, so they are redone. A file
    that is not a measurements file of this collection stops the run with its name rather than being overwritten."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except FileNotFoundError:  # a rank's file already merged by another run's rank 0
        return []
    if columns and columns[: len(BASE_COLUMNS)] != BASE_COLUMNS:
        raise OutputFolderError(
            f"{printable(str(path))} is not a measurements file of this collection (its columns are "
            f"{printable(str(columns[:6]))}, not {BASE_COLUMNS} ...): move it away or choose another output folder"
        )
    return [row for row in rows if not _damaged(row)]


def _rank_row_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob(RANK_ROWS_GLOB))


def _label_map_matches(path: Path, row: Mapping[str, str]) -> bool:
    """Whether the label map on disk is the one its row describes: a readable 8-bit PNG of the row's size (not a
    0-byte file left by a full disk, nor another run's image)."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.mode == "L" and image.size == (int(row["cols"]), int(row["rows"]))
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def completed_rows(output_dir: str | Path, entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Rows of an earlier run into ``output_dir`` that need no recomputing, by ``file``: status ``ok`` and the
    label map on disk, of the row's size. A row is written only after its outputs, so a row is the proof that they
    are complete; a label map without a row (the process died between the two) is recomputed. The rows of an
    interrupted multi-process run (``measurements.rank*.csv``, any number of ranks) count as well. That the
    folder's results are this run's own (same bundle, weights, settings and input) is :class:`InferenceJob`'s
    check, made first."""
    output_dir = Path(output_dir)
    stems = {entry[FILE_KEY]: entry[OUTPUT_KEY] for entry in entries if OUTPUT_KEY in entry}
    done: dict[str, dict[str, str]] = {}
    for path in [output_dir / MEASUREMENTS_NAME, *_rank_row_files(output_dir)]:
        for row in _read_rows(path):
            stem = stems.get(row["file"])
            if (
                row["status"] == OK
                and stem is not None
                and _label_map_matches(segmentation_path(output_dir, stem), row)
            ):
                done[row["file"]] = row
    return done


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, to tell weights apart whatever their name."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """A setting as JSON keeps it, one way however it was given: ``"false"`` from the command line is ``False``,
    tuples are lists, paths are strings."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return as_flag(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return str(value)


def run_record(
    input_dir: Path,
    recursive: bool,
    bundle_root: str | Path | None = None,
    weights: Sequence[str | Path] = (),
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What an output folder records about the run that writes it (``inference_run.json``): the bundle and its
    version, a digest of every weights file, the settings that shape the results, and the input folder."""
    bundle, version = None, None
    if bundle_root is not None:
        root = Path(os.path.realpath(bundle_root))
        metadata = json.loads((root / "configs" / "metadata.json").read_text(encoding="utf-8"))
        bundle, version = root.name, metadata.get("version")
    return {
        "bundle": bundle,
        "version": version,
        "weights_sha256": [file_digest(path) for path in weights],
        "settings": _plain(dict(settings or {})),
        "input_dir": printable(os.path.realpath(input_dir)),
        "recursive": recursive,
    }


def _describe(record: Mapping[str, Any]) -> str:
    weights = ", ".join(digest[:12] for digest in record.get("weights_sha256", []))
    return f"{record.get('bundle')} {record.get('version')} (weights {weights or '?'}) over {record.get('input_dir')}"


def _differences(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(previous) | set(current))
    changed = [key for key in keys if previous.get(key) != current.get(key)]
    settings = previous.get("settings") or {}, current.get("settings") or {}
    if "settings" in changed:
        changed.remove("settings")
        for key in sorted(set(settings[0]) | set(settings[1])):
            if settings[0].get(key) != settings[1].get(key):
                changed.append(f"{key} {settings[0].get(key)!r} -> {settings[1].get(key)!r}")
    return changed


def _holds_results(output_dir: Path) -> bool:
    return (output_dir / MEASUREMENTS_NAME).exists() or bool(_rank_row_files(output_dir))


class OutputLock:
    """An exclusive lock on an output folder for the life of one run (``flock`` on ``.inference.lock``): a second
    live run into the folder is refused with the first one's process and host, and the kernel drops the lock of a
    killed run, so none is left stuck."""

    def __init__(self, output_dir: Path) -> None:
        path = output_dir / LOCK_NAME
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise OutputFolderError(f"{printable(str(path))}: cannot open the run lock ({error})") from None
        self.handle = os.fdopen(descriptor, "r+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise OutputFolderError(
                f"{printable(str(output_dir))} is being written by another inference run ({printable(holder)}); "
                "two runs into one output folder would lose each other's rows: wait for it to end or choose "
                "another output folder"
            ) from None
        self.handle.truncate(0)
        self.handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.handle.flush()

    def release(self) -> None:
        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


class InferenceJob:
    """The inputs of one inference run over a folder, the output folder it holds, and which inputs an interrupted
    earlier run already wrote.

    The output folder is claimed first, before anything is read or written: rank 0 takes its lock
    (:class:`OutputLock`; a second live run is refused) and compares its record (``inference_run.json``) with this
    run. Resuming (``skip_existing``) needs the same bundle, version, weights, settings and input, or it would keep
    another run's results under this one's name; a fresh run may redo a folder of its own bundle and input (other
    weights or settings replace the results) but not take over another bundle's or input's results. Every
    process of a multi-process run builds the same job (the listing is sorted, the earlier rows are read before
    any process writes: :class:`SegmentationWriter` waits for all of them first) and stops alike when rank 0
    refuses the folder. ``pending`` is what the data loader gets; ``entries`` (every input, in order) and
    ``done`` are what the writer needs to produce the one merged ``measurements.csv``.

    Args:
        input_dir: folder of radiographs.
        output_dir: the run's output folder; not the input folder itself, and with ``recursive`` left out of the
            walk when it lies inside ``input_dir``, so a rerun never reads its own label maps as inputs.
        recursive: walk sub-folders; outputs mirror each input's relative path.
        skip_existing: keep the rows and label maps of an earlier run into ``output_dir`` and segment only the
            rest (a run over 50,000 files that died at 30,000 resumes at 30,000).
        bundle_root, weights, settings: what the folder's record names (:func:`run_record`): the bundle, its
            weights files and the config values that shape its results.
    """

    def __init__(
        self,
        input_dir: str | Path,
        output_dir: str | Path,
        recursive: bool = False,
        skip_existing: bool = False,
        bundle_root: str | Path | None = None,
        weights: Sequence[str | Path] = (),
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        input_dir, self.output_dir = _folder(input_dir, "dataset_dir"), _folder(output_dir, "output_dir")
        recursive, skip_existing = as_flag(recursive), as_flag(skip_existing)
        self.lock: OutputLock | None = None
        if os.path.realpath(input_dir) == os.path.realpath(self.output_dir):
            raise OutputFolderError(
                f"the output folder is the input folder ({printable(str(input_dir))}): a later run would read the "
                "label maps as radiographs; choose another output folder"
            )
        self.entries = list_radiographs(input_dir, recursive=recursive, exclude=self.output_dir)
        self.record = run_record(input_dir, recursive, bundle_root, weights, settings)
        self._claim_output_folder(Path(input_dir), skip_existing)
        self.done = completed_rows(self.output_dir, self.entries) if skip_existing else {}
        self.pending = [entry for entry in self.entries if entry[FILE_KEY] not in self.done]
        if self.done:
            logger.info(
                "skip_existing: %d of %d inputs were already written to %s; segmenting the other %d",
                len(self.done),
                len(self.entries),
                printable(str(self.output_dir)),
                len(self.pending),
            )

    def _claim_output_folder(self, input_dir: Path, skip_existing: bool) -> None:
        """Rank 0 locks the folder, checks its record and writes this run's; every rank raises what rank 0 did."""
        rank, world = _rank_and_world()
        problem: str | None = None
        if rank == 0:
            try:
                self._claim(input_dir, skip_existing)
            except OutputFolderError as error:
                problem = str(error)
        if world > 1:
            shared = [problem]
            dist.broadcast_object_list(shared, src=0)
            problem = shared[0]
        if problem is not None:
            raise OutputFolderError(problem)

    def _claim(self, input_dir: Path, skip_existing: bool) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.lock = OutputLock(self.output_dir)
        try:
            self._check_record(skip_existing)
        except OutputFolderError:
            self.release()
            raise
        _write_record(self.output_dir / RUN_RECORD_NAME, self.record)

    def _check_record(self, skip_existing: bool) -> None:
        path = self.output_dir / RUN_RECORD_NAME
        previous = _read_record(path)
        where = printable(str(self.output_dir))
        if previous is None:
            if skip_existing and _holds_results(self.output_dir):
                raise OutputFolderError(
                    f"{where} holds results but no {RUN_RECORD_NAME} saying what wrote them, so --skip_existing "
                    "cannot tell whether they are this run's: choose another output folder or run without it"
                )
            return
        changed = _differences(previous, self.record)
        if not changed:
            return
        if skip_existing:
            raise OutputFolderError(
                f"{where} was written by {_describe(previous)}; this run is {_describe(self.record)} "
                f"(differs in: {'; '.join(changed)}). --skip_existing true would keep those results as this run's: "
                "rerun with the same bundle, weights and settings, or choose another output folder"
            )
        if previous.get("bundle") != self.record["bundle"] or previous.get("input_dir") != self.record["input_dir"]:
            raise OutputFolderError(
                f"{where} holds the results of {_describe(previous)}; this run ({_describe(self.record)}) would "
                "overwrite and mix them: choose another output folder"
            )
        logger.warning(
            "%s: replacing the results of %s (differs in: %s)", where, _describe(previous), "; ".join(changed)
        )

    def release(self) -> None:
        """Let another run into the output folder (at the end of this one; a killed run's lock goes by itself)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OutputFolderError(
            f"{printable(str(path))} is unreadable ({error}): move it away or choose another output folder"
        ) from None
    if not isinstance(record, dict):
        raise OutputFolderError(f"{printable(str(path))} is not a record of an inference run: move it away")
    return record


def _write_record(path: Path, record: Mapping[str, Any]) -> None:
    replace_atomically(path, lambda handle: handle.write(json.dumps(record, indent=2).encode("utf-8") + b"\n"))


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


class SegmentationWriter:
    """Ignite handler writing ``<stem>_seg.png`` and a ``measurements.csv`` row for every inference input.

    Args:
        output_dir: folder for the label maps and ``measurements.csv`` (created).
        label_names: label value -> name, background first (the bundle's ``channel_def``).
        postprocessing: applied to each decollated item; must leave ``pred`` as a discrete label map at
            the input's original size (``Invertd`` of the resizing preprocessing).
        measure: bundle-specific measurements of one label map; it is called once on an empty map at
            start-up to learn the CSV columns, so it must handle empty predictions.
        save_extras: optional per-image extra outputs of a bundle's own (uncertainty maps, opacity overlays), to be
            written with :func:`save_png`.
        overlay: also write ``<stem>_overlay.png``, the radiograph with each label outlined in its colour
            (:mod:`cxrseg.overlay`), so a person can check the result without a viewer for label maps.
        fail_on_error: raise :class:`InferenceFailures` at the end when any input failed, so that
            ``python -m monai.bundle run`` exits non-zero.
        job: the run's :class:`InferenceJob` (input order, earlier rows kept by ``skip_existing``); without it
            the data loader's dataset is the whole job.
        lung_labels: label values that make the lung field; with ``check_lung_field`` an image whose field is
            empty or not two plausible lungs (:func:`cxrseg.lungs.lung_field_problem`) becomes an error row and no
            label map, so that a photograph or a blank image never comes back ``ok`` with lungs and a heart.
        check_lung_field: see ``lung_labels``.
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
        lung_labels: Sequence[int] = (),
        check_lung_field: bool | str = False,
    ) -> None:
        self.output_dir = _folder(output_dir, "output_dir")
        self.label_names = list(label_names)
        self.postprocessing = postprocessing
        self.measure = measure
        self.save_extras = save_extras
        self.overlay = as_flag(overlay)
        self.fail_on_error = fail_on_error
        self.job = job
        self.lung_labels = [int(value) for value in lung_labels]
        self.check_lung_field = as_flag(check_lung_field)
        if self.check_lung_field and not self.lung_labels:
            raise ValueError("check_lung_field needs the lung_labels of the label map")
        self.failures: list[str] = []
        self.written = 0
        self.columns = BASE_COLUMNS + list(label_areas(np.zeros((1, 1), np.uint8), self.label_names))
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
        """Flush one row, every text cell through :func:`csv_cell` (names that are not UTF-8, newlines, formulas)."""
        cells = {key: csv_cell(value) if isinstance(value, str) else value for key, value in row.items()}
        with open(self.rows_path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(cells)

    def _record_error(self, item: Mapping[str, Any], message: str) -> None:
        file = item.get(FILE_KEY) or csv_cell(Path(str(item.get(SOURCE_KEY))).name)
        status = item.get(STATUS_KEY) or ERROR
        message = csv_cell(message)
        if status == ERROR:
            self.failures.append(f"{file}: {message}")
            logger.error("%s", message)
        else:
            logger.warning("%s: %s", status, message)
        self._append_row({"file": file, "status": status, "error": message})

    def output_path(self, stem: str, suffix: str) -> Path:
        """``<stem><suffix>`` in the output folder, its folder made; refused where a link would lead the write out
        of the output folder (a link planted in a shared folder, or one the walk mirrored)."""
        path = self.output_dir / f"{stem}{suffix}"
        existing = path.parent
        while not existing.exists():
            existing = existing.parent
        root = Path(os.path.realpath(self.output_dir))
        if not Path(os.path.realpath(existing)).is_relative_to(root):
            raise OSError(f"{printable(str(existing))} leads out of the output folder {printable(str(root))}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _lung_field_problem(self, label_map: np.ndarray) -> str | None:
        if not self.check_lung_field:
            return None
        lung = np.isin(label_map, self.lung_labels)
        if not lung.any():
            return "no lung field found: not a frontal chest radiograph, or one the network fails on"
        problem = lung_field_problem(lung)
        return None if problem is None else f"implausible lung field, so no result is given: {problem}"

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
            problem = self._lung_field_problem(label_map)
            if problem is not None:
                raise ValueError(f"{source}: {problem}")
            stem = item.get(OUTPUT_KEY) or Path(source).stem
            save_png(Image.fromarray(label_map), self.output_path(stem, "_seg.png"))
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
                f"{len(missing)} inputs have no row in {printable(str(self.output_dir))} (first: {missing[:5]}); "
                "rerun with --skip_existing true to complete them"
            )
        merged = [rows[file] for file in files]
        _write_csv_atomically(self.csv_path, self.columns, merged)
        for path in _rank_row_files(self.output_dir):
            path.unlink()
        return merged

    def _finish(self, engine: Engine) -> None:
        """Once every process has flushed its rows, rank 0 merges them, lets other runs into the folder and fails
        the run if any input failed."""
        rank, world = _rank_and_world()
        logger.info(
            "rank %d of %d wrote %d label maps; %d of its inputs failed", rank, world, self.written, len(self.failures)
        )
        _barrier()
        try:
            merged = self.merge_rows(self._entries(engine)) if rank == 0 else []
        finally:
            if self.job is not None:
                self.job.release()
        _barrier()
        failed = [row for row in merged if row["status"] == ERROR]
        if rank == 0:
            logger.info(
                "%s: %d inputs, %d failed, %d skipped",
                printable(str(self.csv_path)),
                len(merged),
                len(failed),
                sum(row["status"] == SKIPPED for row in merged),
            )
        if failed and self.fail_on_error:
            raise InferenceFailures(
                f"{len(failed)} of {len(merged)} inputs failed "
                f"(all others were written; see {printable(str(self.csv_path))}):\n  "
                + "\n  ".join(f"{row['file']}: {row['error']}" for row in failed)
            )
