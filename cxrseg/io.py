"""Reading chest radiographs and their masks from PNG, JPEG, TIFF, BMP and DICOM files.

One reader serves images and masks, for training and inference alike, so that every array in the
collection has the same orientation (row-major ``(rows, cols)``, as PIL and numpy show it) and every
unreadable file fails with the same kind of error naming the file. ITK is not needed: PIL handles the
bitmap formats and pydicom handles DICOM, which keeps the bundles runnable where ITK's large wheels
are not available.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys
from PIL import Image, ImageOps, UnidentifiedImageError

BITMAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED_SUFFIXES = BITMAP_SUFFIXES + DICOM_SUFFIXES
MIN_SIDE = 16
DISPLAY_MAX = 255.0


class RadiographError(ValueError):
    """A file that cannot be used as a radiograph or mask; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_dicom(path: str | Path) -> bool:
    """Tell DICOM from bitmap files by suffix or, for suffix-less files, by the ``DICM`` preamble tag."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_radiograph_file(path: str | Path) -> bool:
    """Whether inference should try to read this file (by suffix, or DICOM content for suffix-less files)."""
    path = Path(path)
    if not path.is_file() or path.name.startswith("."):
        return False
    return path.suffix.lower() in SUPPORTED_SUFFIXES or is_dicom(path)


def _luminance(image: Image.Image) -> np.ndarray:
    """Collapse any PIL mode to one grey channel, keeping the bit depth of 16-bit and float images."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(image, dtype=np.float32)
    if image.mode == "RGBA" or image.mode == "LA" or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32)


def _read_bitmap(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                return _luminance(image)
    except UnidentifiedImageError:
        raise RadiographError(path, "not a readable PNG/JPEG/TIFF/BMP image (unknown or corrupt format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise RadiographError(path, f"image too large to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise RadiographError(path, f"cannot decode image ({error})") from None


def _read_dicom(path: Path) -> np.ndarray:
    """Read a DICOM radiograph as display values: modality and VOI LUTs applied, MONOCHROME1 inverted."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except InvalidDicomError:
        raise RadiographError(path, "not a valid DICOM file") from None
    except (AttributeError, KeyError):
        raise RadiographError(path, "DICOM file has no pixel data") from None
    except Exception as error:  # pydicom raises many types for broken or compressed pixel data
        raise RadiographError(path, f"cannot decode DICOM pixel data ({error})") from None
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        raise RadiographError(path, f"multi-frame DICOM ({dataset.NumberOfFrames} frames); expected one radiograph")
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3:
        pixels = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    else:
        pixels = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
    pixels = np.asarray(pixels, dtype=np.float32)
    _require_finite(path, pixels)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * DISPLAY_MAX if high > low else np.zeros_like(pixels)
    return DISPLAY_MAX - scaled if photometric == "MONOCHROME1" else scaled


def _require_finite(path: Path, pixels: np.ndarray) -> None:
    if not np.isfinite(pixels).all():
        raise RadiographError(path, "contains NaN or infinite pixel values")


def read_radiograph(path: str | Path) -> np.ndarray:
    """Read one radiograph or mask as a float32 ``(rows, cols)`` array, or raise :class:`RadiographError`.

    Bitmaps keep their stored values (8-bit 0..255, 16-bit 0..65535; masks 0/255); colour and palette images
    become luminance. DICOM is mapped to the display range 0..255 with MONOCHROME1 inverted, so that bone is
    bright and air dark in every returned image.
    """
    path = Path(path)
    if not path.is_file():
        raise RadiographError(path, "no such file")
    if path.stat().st_size == 0:
        raise RadiographError(path, "file is empty (0 bytes)")
    pixels = _read_dicom(path) if is_dicom(path) else _read_bitmap(path)
    if pixels.ndim != 2:
        raise RadiographError(path, f"expected a 2-D image, got an array of shape {pixels.shape}")
    if min(pixels.shape) < MIN_SIDE:
        raise RadiographError(
            path, f"image is {pixels.shape[0]}x{pixels.shape[1]} pixels; a radiograph needs at least {MIN_SIDE}"
        )
    _require_finite(path, pixels)
    return pixels


class RadiographReader(ImageReader):
    """MONAI image reader for radiographs and masks, for ``LoadImaged(reader=RadiographReader())``.

    Arrays are row-major ``(rows, cols)`` with no channel axis, and ``spatial_shape`` in the metadata is
    ``(rows, cols)``, which is what the collection's writers use to restore the input size.
    """

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(Path(name).suffix.lower() in SUPPORTED_SUFFIXES or is_dicom(name) for name in names)

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> list[str]:
        """Defer decoding to :meth:`get_data`: an error raised here would make MONAI's ``LoadImage`` retry the
        file with every other installed reader (ITK happily reads a 1x1 PNG) and bury the reason."""
        return [str(data)] if isinstance(data, (str, Path)) else [str(name) for name in data]

    def get_data(self, img: list[str]) -> tuple[np.ndarray, dict]:
        if len(img) != 1:
            raise ValueError(f"RadiographReader reads one file per key, got {len(img)}")
        pixels = read_radiograph(img[0])
        meta = {MetaKeys.SPATIAL_SHAPE: np.asarray(pixels.shape), MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel"}
        return pixels, meta
