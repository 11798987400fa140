"""JSRT raw radiographs (``.IMG``) with the SCR reference masks (``.gif``, one folder per structure).

JSRT images are 2048x2048 headerless files of 16-bit big-endian words holding 12-bit values, where a high
value is a high optical density (dark on film). SCR masks are 1024x1024 GIFs in folders named after the
structure (``left lung``, ``right lung``, ``heart``, ``left clavicle``, ``right clavicle``), possibly nested
(``fold1/masks/left lung/JPCLN001.gif``); left and right are the patient's, as in the collection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from cxrseg.io import RadiographError

from .base import DISPLAY_MAX, LoadedCase, SourceCase, read_mask, require_dir, structure_name

JSRT_SHAPE = (2048, 2048)
JSRT_MAX = 4095
SCR_STRUCTURES = ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle")


def read_jsrt_image(path: str | Path, shape: Sequence[int] = JSRT_SHAPE) -> np.ndarray:
    """Read a JSRT ``.IMG`` as a float32 ``(rows, cols)`` image in the standard display, 0..255.

    The 12-bit optical density is inverted on its fixed range (not stretched per image), so that the
    intensities of different cases stay comparable.
    """
    path = Path(path)
    rows, cols = (int(side) for side in shape)
    expected = rows * cols * 2
    size = path.stat().st_size if path.is_file() else None
    if size is None:
        raise RadiographError(path, "no such file")
    if size != expected:
        raise RadiographError(
            path, f"file has {size} bytes; a headerless {rows}x{cols} 16-bit JSRT image has {expected}"
        )
    words = np.fromfile(path, dtype=">u2").reshape(rows, cols)
    if int(words.max()) > JSRT_MAX:
        raise RadiographError(
            path, f"values up to {int(words.max())} exceed the 12-bit range; not a big-endian JSRT image?"
        )
    return (JSRT_MAX - words.astype(np.float32)) * (DISPLAY_MAX / JSRT_MAX)


def index_scr_masks(masks_dir: Path) -> dict[str, dict[str, list[Path]]]:
    """``{case: {structure: [gif, ...]}}`` over every structure-named folder below ``masks_dir``."""
    index: dict[str, dict[str, list[Path]]] = {}
    for gif in sorted(masks_dir.rglob("*")):
        structure = structure_name(gif.parent.name)
        if gif.suffix.lower() == ".gif" and structure in SCR_STRUCTURES:
            index.setdefault(gif.stem, {}).setdefault(structure, []).append(gif)
    return index


def _load(image_path: Path, masks: dict[str, list[Path]], shape: Sequence[int]) -> LoadedCase:
    image = read_jsrt_image(image_path, shape)
    missing = [s for s in SCR_STRUCTURES if s not in masks]
    if missing:
        raise RadiographError(
            image_path, f"no SCR mask for {', '.join(missing)} (looked for <structure>/{image_path.stem}.gif)"
        )
    loaded = {}
    for structure in SCR_STRUCTURES:
        if len(masks[structure]) > 1:
            first, second = masks[structure][:2]
            raise RadiographError(second, f"second {structure} mask for the case, besides {first}")
        loaded[structure] = read_mask(masks[structure][0], image.shape, same_size=False)
    return LoadedCase(image=image, masks=loaded)


def find_cases(source: Path, masks: str | None = None, shape: Sequence[int] = JSRT_SHAPE) -> Iterator[SourceCase]:
    """Cases from every ``*.IMG`` below ``source``; SCR masks are looked up below ``masks`` (default ``source``)."""
    mask_index = index_scr_masks(require_dir(masks, "SCR masks") if masks else source)
    for image_path in sorted(p for p in source.rglob("*") if p.suffix.lower() == ".img" and p.is_file()):
        case = image_path.stem
        finding = "nodule" if case.upper().startswith("JPCLN") else "normal"
        yield SourceCase(
            case=case,
            patient=case,
            origin=image_path,
            load=partial(_load, image_path, mask_index.get(case, {}), shape),
            metadata={"finding": finding},
        )
