"""What every dataset reader hands to the preparation: cases that load lazily, and the checks they share.

Readers only find and decode files; resampling, writing and the error policy live in ``tools.prepare`` so
that every dataset is prepared the same way. A reader reports a bad file by raising
:class:`cxrseg.io.RadiographError` (file and reason) from ``load``; the case is then skipped, not the dataset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrseg.io import RadiographError, read_radiograph

DISPLAY_MAX = 255.0


@dataclass
class LoadedCase:
    """A decoded radiograph in the standard display (0..255, bone bright) and its boolean structure masks.

    A mask lies on the image grid or on a grid with the same aspect ratio (SCR masks are half the JSRT size);
    the preparation resamples both onto the output grid.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]


@dataclass
class SourceCase:
    """One radiograph of a source dataset; ``load`` decodes it only when it is written (datasets exceed memory).

    ``origin`` is the file the case comes from (image or annotation), named in messages about the case as a whole.
    """

    case: str
    patient: str
    origin: Path
    load: Callable[[], LoadedCase]
    metadata: dict[str, str] = field(default_factory=dict)


class UnannotatedImage(Exception):
    """An image the source ships without any annotation (e.g. most of Shenzhen's 662 images have a mask, not all).

    Not an error: such images are counted and left out, and do not make the preparation fail.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


def case_id(name: str) -> str:
    """A file-system-safe case id from a file stem: characters other than letters, digits, ``.-_`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "case"


def structure_name(label: str) -> str:
    """Normalise a structure or label name for matching: ``"Left Lung"``, ``"left-lung"`` -> ``"left_lung"``."""
    return re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")


def binary_mask(pixels: np.ndarray) -> np.ndarray:
    """Foreground of a stored mask (0/255, 0/1 or palette), as pixels above half its maximum; empty stays empty."""
    return pixels > max(float(pixels.max()), 1.0) / 2


def read_mask(path: Path, image_shape: tuple[int, int], same_size: bool = True) -> np.ndarray:
    """Read a mask file and check that it belongs to the image: same size, or at least the same aspect ratio.

    ``same_size=False`` is for sources whose masks are stored at a fixed fraction of the image size (SCR).
    """
    pixels = read_radiograph(path)
    rows, cols = pixels.shape
    if same_size and pixels.shape != tuple(image_shape):
        raise RadiographError(path, f"mask is {rows}x{cols} but the image is {image_shape[0]}x{image_shape[1]}")
    if not same_size and rows * image_shape[1] != cols * image_shape[0]:
        raise RadiographError(
            path, f"mask is {rows}x{cols}, not the aspect ratio of the {image_shape[0]}x{image_shape[1]} image"
        )
    return binary_mask(pixels)


def display_range(pixels: np.ndarray) -> np.ndarray:
    """Map a decoded bitmap to 0..255: 8-bit values are kept, deeper images (12/16-bit PNG) are stretched min-max."""
    if float(pixels.max()) <= DISPLAY_MAX:
        return pixels.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    return ((pixels - low) / (high - low) * DISPLAY_MAX).astype(np.float32)


def index_files(root: Path, suffixes: Iterable[str]) -> dict[str, list[Path]]:
    """All files under ``root`` with one of ``suffixes`` (case-insensitive), by file name, for name look-ups."""
    wanted = {suffix.lower() for suffix in suffixes}
    index: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in wanted and not path.name.startswith("."):
            index.setdefault(path.name, []).append(path)
    return index


def require_dir(path: str | Path, what: str) -> Path:
    """The folder ``path``, or a ``FileNotFoundError`` saying which input it should have been."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder does not exist")
    return folder
