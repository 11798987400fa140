"""Convert public chest X-ray datasets into the prepared layout (docs/data.md, "Prepared dataset layout").

Every dataset goes through the same steps: its reader (``tools/readers``) finds cases and decodes them one at a
time; here each case is resampled (image Lanczos, masks bilinear then thresholded at 50 %, the way the shared
JSRT copy was made), written as 8-bit PNGs, and listed in ``metadata.csv`` and a patient-wise ``datalist.json``.
A bad case is reported by name with the reason and skipped; the rest of the dataset is still prepared.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrseg.data import DATALIST_NAME, DEFAULT_FRACTIONS, PATIENT_COLUMNS, SPLITS, write_datalist
from cxrseg.io import RadiographError
from cxrseg.transforms import fit_size

from .readers import READERS
from .readers.base import DISPLAY_MAX, LoadedCase, SourceCase, UnannotatedImage, case_id, require_dir

LOG = logging.getLogger("tools.prepare")
DEFAULT_SIZES = {"jsrt": 512}
DEFAULT_SIZE = 1024
OUTPUTS = ("images", "masks", "metadata.csv", DATALIST_NAME)
CASE_COLUMNS = ("case", "filename", "file", "image")
EXIT_SKIPPED = 1
EXIT_USAGE = 2


@dataclass
class Summary:
    """What a preparation did: cases written, cases skipped for errors (with reasons), unannotated images left out."""

    out: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unannotated: list[str] = field(default_factory=list)
    datalist: Path | None = None

    def text(self) -> str:
        lines = [
            f"{self.out}: wrote {len(self.written)} cases, skipped {len(self.skipped)} with errors, "
            f"left out {len(self.unannotated)} unannotated images"
        ]
        lines += [f"  skipped {message}" for message in self.skipped]
        if self.datalist is not None:
            lines.append(f"datalist: {self.datalist}")
        return "\n".join(lines)


def output_shape(shape: Sequence[int], size: int) -> tuple[int, int]:
    """Shape with the longest side at most ``size``, aspect ratio kept; small images are never enlarged."""
    rows, cols = int(shape[0]), int(shape[1])
    return (rows, cols) if max(rows, cols) <= size else fit_size((rows, cols), (size, size))


def resample_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Display image (0..255 floats) resampled to ``shape`` with Lanczos and stored as 8-bit."""
    if image.shape != shape:
        resized = Image.fromarray(image.astype(np.float32), mode="F").resize(shape[::-1], Image.Resampling.LANCZOS)
        image = np.asarray(resized)
    return np.clip(np.rint(image), 0, DISPLAY_MAX).astype(np.uint8)


def resample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask resampled to ``shape``: bilinear (area-weighted when shrinking), then thresholded at 50 %."""
    if mask.shape == shape:
        return mask
    resized = Image.fromarray(mask.astype(np.float32), mode="F").resize(shape[::-1], Image.Resampling.BILINEAR)
    return np.asarray(resized) >= 0.5


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_case(root: Path, case: str, loaded: LoadedCase, size: int) -> set[str]:
    """Write one case's image and masks; everything is resampled before the first file is written."""
    shape = output_shape(loaded.image.shape, size)
    image = resample_image(loaded.image, shape)
    masks = {structure: resample_mask(mask, shape) for structure, mask in loaded.masks.items()}
    _save_png(image, root / "images" / f"{case}.png")
    for structure, mask in masks.items():
        _save_png(mask.astype(np.uint8) * 255, root / "masks" / structure / f"{case}.png")
    return set(masks)


def complete_structures(root: Path, structures_of: Mapping[str, set[str]]) -> None:
    """Give every case an empty mask for each structure of the dataset it has no annotation of.

    Annotators outline what is there: a case without a consolidation polygon has no consolidation, and an
    explicit empty mask keeps it usable (as a negative) by bundles that train on that structure.
    """
    every = set().union(*structures_of.values())
    for case, structures in structures_of.items():
        missing = every - structures
        if missing:
            with Image.open(root / "images" / f"{case}.png") as image:
                empty = np.zeros((image.height, image.width), dtype=np.uint8)
            for structure in sorted(missing):
                _save_png(empty, root / "masks" / structure / f"{case}.png")


def write_metadata(root: Path, cases: Sequence[SourceCase]) -> None:
    """``metadata.csv``: one row per written case with its patient id and the reader's extra columns."""
    extra = sorted({key for source_case in cases for key in source_case.metadata})
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "patient_id", *extra])
        for source_case in cases:
            writer.writerow([source_case.case, source_case.patient, *(source_case.metadata.get(k, "") for k in extra)])


def read_patients(csv_path: str | Path) -> dict[str, str]:
    """Case id to patient id from a CSV with a case/filename column and a patient column (e.g. Cohen's metadata)."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = {name.lower(): name for name in (rows[0].keys() if rows else [])}
    key = next((columns[c] for c in CASE_COLUMNS if c in columns), None)
    patient = next((columns[c] for c in ("patientid", *PATIENT_COLUMNS) if c in columns), None)
    if key is None or patient is None:
        wanted = ("patientid", *PATIENT_COLUMNS)
        raise ValueError(f"{csv_path}: needs a column among {CASE_COLUMNS} and one among {wanted}")
    return {case_id(Path(row[key]).stem): str(row[patient]) for row in rows if row.get(key) and row.get(patient)}


def clear_outputs(root: Path, overwrite: bool) -> None:
    """Remove an earlier preparation's outputs from ``root`` when allowed; other files in ``root`` are kept."""
    existing = [root / name for name in OUTPUTS if (root / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{root}: already holds a prepared dataset ({existing[0].name}); pass --overwrite to replace it"
        )
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def prepare_dataset(
    cases: Iterable[SourceCase],
    out: str | Path,
    size: int,
    patients: Mapping[str, str] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> Summary:
    """Write ``cases`` into ``out`` (which must hold no earlier preparation) and return what was written and skipped.

    A case whose files are unreadable or inconsistent (:class:`RadiographError`, ``OSError``) or whose id repeats
    is skipped with its reason; unannotated images are left out. ``patients`` overrides the readers' patient ids.
    """
    root = Path(out)
    clear_outputs(root, overwrite=False)
    summary = Summary(out=root)
    written: list[SourceCase] = []
    structures_of: dict[str, set[str]] = {}
    for source_case in cases:
        case = source_case.case
        try:
            if case in structures_of:
                raise RadiographError(source_case.origin, f"case id {case!r} repeats an earlier case")
            structures_of[case] = write_case(root, case, source_case.load(), size)
        except UnannotatedImage as error:
            LOG.info("unannotated %s", error)
            summary.unannotated.append(str(error))
            continue
        except (RadiographError, OSError) as error:
            LOG.error("skipped %s: %s", case, error)
            summary.skipped.append(f"{case}: {error}")
            continue
        if patients and case in patients:
            source_case.patient = patients[case]
        written.append(source_case)
        summary.written.append(case)
        if len(written) % 25 == 0:
            LOG.info("%d cases written", len(written))
    if written:
        complete_structures(root, structures_of)
        write_metadata(root, written)
        patient_of = {source_case.case: source_case.patient for source_case in written}
        summary.datalist = write_datalist(root, fractions=fractions, seed=seed, patient_of=patient_of)
    return summary


def _reader_options(dataset: str, options: Mapping[str, object]) -> dict[str, object]:
    """Check ``options`` against the dataset reader's keyword parameters; load ``labels`` given as a JSON file."""
    accepted = [name for name in inspect.signature(READERS[dataset]).parameters if name != "source"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"prepare {dataset} does not take --{', --'.join(unknown)}; it takes: "
            + (", ".join(f"--{name}" for name in accepted) or "no dataset options")
        )
    options = dict(options)
    if isinstance(options.get("labels"), str):
        options["labels"] = json.loads(Path(str(options["labels"])).read_text(encoding="utf-8"))
    return options


def prepare(
    dataset: str,
    source: str,
    out: str,
    size: int | None = None,
    overwrite: bool = False,
    patients: str | None = None,
    seed: int = 0,
    **options: object,
) -> None:
    """Convert the public dataset in SOURCE into the prepared layout in OUT (images, masks, metadata, datalist).

    DATASET and its own options:
      jsrt        raw JSRT *.IMG (2048x2048 12-bit big-endian) + SCR gifs in <structure> folders;
                  --masks DIR (SCR folder, default SOURCE), --shape ROWS,COLS (default 2048,2048)
      montgomery  CXR_png/MCUCXR_*.png + ManualMask/leftMask|rightMask (sides taken from mask position)
      shenzhen    CHNCXR_*.png + CHNCXR_*_mask.png (structure lungs); --masks DIR (default SOURCE)
      darwin      V7 Darwin 1.0/2.0 JSON; --images DIR (default SOURCE), --labels
      labelme     LabelMe JSON, embedded imageData or imagePath; --labels
      dicom       DICOM files; --masks DIR with <structure>/<stem>.png (required)
    --labels maps annotation labels to structures, as a dict or a JSON file, e.g.
      '{"ground glass": "ggo", "lung": "lungs"}'; unmapped labels keep their lower-case name ("Ignore" -> ignore).

    Common options: --size N: longest side at most N px, aspect kept, never enlarged (default 512 for jsrt,
    1024 otherwise); --overwrite replaces an earlier preparation in OUT; --patients CSV (case/filename and
    patientid columns) sets patient ids for the split; --seed K seeds the 70/15/15 patient-wise split.

    Bad input: an unreadable or corrupt file, a mask of another size, a missing mask, or a polygon more than 5 %
    outside its image (vertices less far out are clipped, with a warning) skips that case with the file and the
    reason; the rest is prepared. Images that the source ships without annotation (Shenzhen) are left out.

    Exit status: 0 when every annotated case was written, 1 when any case was skipped, 2 for a usage error
    (bad option or folder, OUT already prepared without --overwrite, nothing found or nothing annotated).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if dataset not in READERS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(READERS)}")
        reader_options = _reader_options(dataset, options)
        source_dir = require_dir(source, "source")
        if Path(out).resolve().is_relative_to(source_dir.resolve()):
            raise ValueError(f"{out}: OUT must not lie inside SOURCE (a later run would read it as input)")
        cases = list(READERS[dataset](source_dir, **reader_options))
        if not cases:
            raise ValueError(f"no {dataset} case found in {source}")
        patient_ids = read_patients(patients) if patients else None
        clear_outputs(Path(out), overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    size = size or DEFAULT_SIZES.get(dataset, DEFAULT_SIZE)
    summary = prepare_dataset(cases, out, size=size, patients=patient_ids, seed=seed)
    print(summary.text())
    if summary.skipped:
        raise SystemExit(EXIT_SKIPPED)
    if not summary.written:
        print(f"error: no annotated {dataset} case in {source}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def datalist(dataset_dir: str, out: str, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> None:
    """Write the datalist of an already prepared DATASET_DIR to the file OUT; DATASET_DIR is only read.

    The split is 70/15/15 by patient (patient ids from DATASET_DIR/metadata.csv when it has a patient column,
    else one patient per case), seeded by SEED. OUT is required so that a shared copy is never written to:
    python -m tools datalist --dataset_dir ../shared/data/jsrt --out /tmp/jsrt_datalist.json
    Bundles take it with load_split(dataset_dir, split, datalist=OUT).
    """
    try:
        path = write_datalist(dataset_dir, out, fractions=tuple(float(f) for f in fractions), seed=seed)
    except (ValueError, FileNotFoundError, PermissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    splits = json.loads(path.read_text(encoding="utf-8"))
    print(f"{path}: " + ", ".join(f"{split} {len(splits[split])}" for split in SPLITS))
