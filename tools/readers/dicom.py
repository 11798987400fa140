"""DICOM radiographs with masks drawn elsewhere, as ``<masks>/<structure>/<stem>.png`` at the image's size.

Pixels are decoded by :func:`cxrseg.io.read_radiograph` (modality and VOI LUTs, MONOCHROME1 inverted, mapped to
0..255), so prepared DICOM cases look like every other dataset. The patient id comes from the ``PatientID``
tag, which keeps several studies of one patient in the same split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cxrseg.io import RadiographError, is_dicom, read_radiograph

from .base import LoadedCase, SourceCase, case_id, read_mask, require_dir


def dicom_patient(path: Path) -> str | None:
    """``PatientID`` of a DICOM file without decoding its pixels; ``None`` when absent or unreadable."""
    import pydicom

    try:
        patient = str(pydicom.dcmread(path, stop_before_pixels=True).get("PatientID", "")).strip()
    except Exception:  # an unreadable file is reported when its pixels are loaded
        return None
    return patient or None


def _load(image_path: Path, mask_dirs: list[Path]) -> LoadedCase:
    image = read_radiograph(image_path)
    masks = {}
    for structure_dir in mask_dirs:
        mask_path = structure_dir / f"{image_path.stem}.png"
        if not mask_path.is_file():
            raise RadiographError(mask_path, f"missing {structure_dir.name} mask for {image_path.name}")
        masks[structure_dir.name] = read_mask(mask_path, image.shape)
    return LoadedCase(image=image, masks=masks)


def find_cases(source: Path, masks: str | None = None) -> Iterator[SourceCase]:
    """Cases from every DICOM file below ``source`` (``.dcm``, ``.dicom`` or a ``DICM`` preamble).

    ``masks`` is required: a folder of structure folders; every case needs a mask in each of them.
    """
    if masks is None:
        raise ValueError("prepare dicom needs --masks DIR holding <structure>/<image stem>.png masks")
    mask_dirs = sorted(p for p in require_dir(masks, "masks").iterdir() if p.is_dir())
    if not mask_dirs:
        raise FileNotFoundError(f"{masks}: no <structure> folders with masks")
    for image_path in sorted(p for p in source.rglob("*") if p.is_file() and is_dicom(p)):
        case = case_id(image_path.stem)
        yield SourceCase(
            case=case,
            patient=dicom_patient(image_path) or case,
            origin=image_path,
            load=lambda i=image_path: _load(i, mask_dirs),
        )
