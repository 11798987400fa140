"""The NLM tuberculosis sets: Montgomery County (left/right lung masks) and Shenzhen (one mask for both lungs).

File names end in ``_0`` (normal) or ``_1`` (tuberculosis manifestations); each image is a different patient.

Montgomery's ``ManualMask/leftMask`` and ``rightMask`` folders name the sides but the dataset's documentation
does not say whose left is meant. The side is therefore taken from where the mask lies, never from the folder
name: the lung in the image's left half is the patient's right lung (standard PA display), as the collection
requires. A mask whose folder name disagrees with that under the patient's convention is logged, so an
unexpected convention is visible without corrupting the labels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cxrseg.io import RadiographError, read_radiograph

from .base import LoadedCase, SourceCase, UnannotatedImage, display_range, index_files, read_mask, require_dir

LOG = logging.getLogger(__name__)
FINDINGS = {"0": "normal", "1": "tuberculosis"}


def _finding(stem: str) -> dict[str, str]:
    return {"finding": FINDINGS.get(stem.rsplit("_", 1)[-1], "")}


def _images(source: Path, prefix: str) -> list[Path]:
    return sorted(
        p
        for p in source.rglob(f"{prefix}*.png")
        if p.is_file() and not p.stem.endswith("_mask") and "ManualMask" not in p.parts
    )


def patient_side(mask: np.ndarray, path: Path) -> str:
    """``right_lung`` for a mask centred in the image's left half (patient's right in a PA view), else ``left_lung``."""
    columns = np.nonzero(mask)[1]
    if columns.size == 0:
        raise RadiographError(path, "lung mask is empty")
    return "right_lung" if columns.mean() < mask.shape[1] / 2 else "left_lung"


def _load_montgomery(image_path: Path, left_path: Path, right_path: Path) -> LoadedCase:
    image = display_range(read_radiograph(image_path))
    masks: dict[str, np.ndarray] = {}
    for named, path in (("left_lung", left_path), ("right_lung", right_path)):
        if not path.is_file():
            raise RadiographError(path, f"missing Montgomery mask for {image_path.name}")
        mask = read_mask(path, image.shape)
        side = patient_side(mask, path)
        if side != named:
            LOG.warning("%s: mask lies on the patient's %s side; stored as %s", path, side.split("_")[0], side)
        if side in masks:
            raise RadiographError(path, f"both Montgomery masks lie on the patient's {side.split('_')[0]} side")
        masks[side] = mask
    return LoadedCase(image=image, masks=masks)


def find_montgomery(source: Path) -> Iterator[SourceCase]:
    """Cases from ``CXR_png/MCUCXR_*.png`` with same-named masks in ``ManualMask/leftMask`` and ``rightMask``."""
    for image_path in _images(source, "MCUCXR_"):
        root = image_path.parent.parent
        yield SourceCase(
            case=image_path.stem,
            patient=image_path.stem,
            origin=image_path,
            load=lambda i=image_path, r=root: _load_montgomery(
                i, r / "ManualMask" / "leftMask" / i.name, r / "ManualMask" / "rightMask" / i.name
            ),
            metadata=_finding(image_path.stem),
        )


def _load_shenzhen(image_path: Path, mask_paths: list[Path]) -> LoadedCase:
    if not mask_paths:
        raise UnannotatedImage(image_path, f"no {image_path.stem}_mask.png")
    if len(mask_paths) > 1:
        raise RadiographError(mask_paths[1], f"second mask for {image_path.name}, besides {mask_paths[0]}")
    image = display_range(read_radiograph(image_path))
    return LoadedCase(image=image, masks={"lungs": read_mask(mask_paths[0], image.shape)})


def find_shenzhen(source: Path, masks: str | None = None) -> Iterator[SourceCase]:
    """Cases from ``CHNCXR_*.png`` below ``source`` with ``CHNCXR_*_mask.png`` below ``masks`` (default ``source``).

    Images without a mask are reported as unannotated, not as errors: the public mask set covers most images only.
    """
    mask_index = index_files(require_dir(masks, "Shenzhen masks") if masks else source, [".png"])
    for image_path in _images(source, "CHNCXR_"):
        yield SourceCase(
            case=image_path.stem,
            patient=image_path.stem,
            origin=image_path,
            load=lambda i=image_path: _load_shenzhen(i, mask_index.get(f"{i.stem}_mask.png", [])),
            metadata=_finding(image_path.stem),
        )
