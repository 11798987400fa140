"""Reading chest radiographs and their masks from PNG, JPEG, TIFF, BMP and DICOM files, and writing output images
safely (:func:`save_png`).

One reader serves images and masks, for training and inference alike, so that every array in the
collection has the same orientation (row-major ``(rows, cols)``, as PIL and numpy show it) and every
unreadable file fails with the same kind of error naming the file. ITK is not needed: PIL handles the
bitmap formats and pydicom handles DICOM, which keeps the bundles runnable where ITK's large wheels
are not available.
"""

from __future__ import annotations

import os
import tempfile
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys
from PIL import Image, ImageOps, UnidentifiedImageError

BITMAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED_SUFFIXES = BITMAP_SUFFIXES + DICOM_SUFFIXES
MIN_SIDE = 16
DISPLAY_MAX = 255.0
# pixels one image may hold before it is decoded (10,000 x 10,000; an 8000 x 8000 radiograph takes about 6 GB through
# a bundle): a small file declaring a huge image (a decompression bomb) is refused instead of exhausting memory.
# Readers take a max_pixels to raise it (inference.yaml: --max_pixels)
DEFAULT_MAX_PIXELS = 100_000_000
# what the first bytes of a file say it is, whatever its name (a PACS exports DICOM as IM_0001 or 1.2.840.xxx.5)
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
BITMAP_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")
# PIL's own pixel limit is swapped for the reader's budget while a file is opened; one swap at a time
_PIL_LIMIT = threading.Lock()


class RadiographError(ValueError):
    """A file that cannot be used as a radiograph or mask; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _head(path: Path) -> bytes:
    """The first bytes of a regular file (never opens a FIFO or device, which could block or never end)."""
    try:
        if not path.is_file():
            return b""
        with open(path, "rb") as handle:
            return handle.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    except OSError:
        return b""


def has_dicom_content(path: str | Path) -> bool:
    """Whether the file starts as a DICOM Part 10 file does (``DICM`` after the 128-byte preamble)."""
    head = _head(Path(path))
    return head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC


def has_bitmap_content(path: str | Path) -> bool:
    """Whether the file starts as a PNG, JPEG or TIFF does, whatever its name."""
    return _head(Path(path)).startswith(BITMAP_MAGIC)


def is_dicom(path: str | Path) -> bool:
    """Tell DICOM from bitmap files by content (the ``DICM`` tag) or, for content that says nothing (a corrupt or
    empty ``.dcm``), by a DICOM suffix."""
    return has_dicom_content(path) or Path(path).suffix.lower() in DICOM_SUFFIXES


def is_radiograph_file(path: str | Path) -> bool:
    """Whether inference should try to read this file: a regular file named like an input, or holding DICOM, PNG,
    JPEG or TIFF content under any name."""
    path = Path(path)
    if not path.is_file() or path.name.startswith("."):
        return False
    return path.suffix.lower() in SUPPORTED_SUFFIXES or has_dicom_content(path) or has_bitmap_content(path)


def _pixel_budget_problem(shape: Sequence[int], max_pixels: int) -> str | None:
    pixels = int(np.prod([int(side) for side in shape], dtype=np.int64))
    if pixels <= max_pixels:
        return None
    size = " x ".join(str(int(side)) for side in shape)
    return (
        f"image declares {size} = {pixels:,} pixels, over the pixel budget of {max_pixels:,} "
        "(a decompression bomb or an unusually large image; raise max_pixels to read it)"
    )


def _luminance(image: Image.Image) -> np.ndarray:
    """Collapse any PIL mode to one grey channel, keeping the bit depth of 16-bit and float images."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(image, dtype=np.float32)
    if image.mode == "RGBA" or image.mode == "LA" or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32)


def _open_bitmap(path: Path, max_pixels: int) -> Image.Image:
    """Open (header only) under the reader's pixel budget instead of PIL's fixed one."""
    with _PIL_LIMIT:
        pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit
    problem = _pixel_budget_problem(image.size[::-1], max_pixels)
    if problem is not None:
        image.close()
        raise RadiographError(path, problem)
    return image


def _read_bitmap(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    try:
        with _open_bitmap(path, max_pixels) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return _luminance(image)
    except RadiographError:
        raise
    except UnidentifiedImageError:
        raise RadiographError(path, "not a readable PNG/JPEG/TIFF/BMP image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise RadiographError(path, f"cannot decode image ({error})") from None


PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# a deflated DICOM is inflated whole by pydicom before its header can be read: it may inflate to at most this many
# bytes per pixel of the budget (3 samples of 16 bits, or double floats) and this much besides
MAX_BYTES_PER_PIXEL = 8
HEADER_ALLOWANCE = 16 * 2**20
# the file meta group: 128-byte preamble, "DICM", then its group length element (tag, VR, length, value: 12 bytes)
FILE_META_START = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC) + 12


def _deflated_size_problem(path: Path, max_pixels: int) -> str | None:
    """Why a deflated DICOM is refused before pydicom inflates it in memory: it inflates beyond what the pixel
    budget allows (a few hundred kilobytes of zeros can declare gigabytes)."""
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        meta = read_file_meta_info(path)
        start = FILE_META_START + int(meta.FileMetaInformationGroupLength)
    except Exception:  # a broken header: dcmread says what is wrong with it
        return None
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    limit = max_pixels * MAX_BYTES_PER_PIXEL + HEADER_ALLOWANCE
    inflater, size = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with open(path, "rb") as handle:
        handle.seek(start)
        while size <= limit and (chunk := handle.read(2**14)):
            size += len(inflater.decompress(chunk))
    if size <= limit:
        return None
    return (
        f"deflated DICOM inflates to over {limit / 2**20:.0f} MiB, more than an image within the pixel budget of "
        f"{max_pixels:,} holds (a decompression bomb; raise max_pixels to read it)"
    )


def _dicom_pixels(path: Path, max_pixels: int) -> tuple[Any, np.ndarray]:
    """The dataset and its decoded pixels, the declared size checked against the budget before decoding."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    problem = _deflated_size_problem(path, max_pixels)
    if problem is not None:
        raise RadiographError(path, problem)
    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError:
        raise RadiographError(path, "not a valid DICOM file") from None
    except Exception as error:  # a header cut short or garbled
        raise RadiographError(path, f"cannot read the DICOM header ({type(error).__name__}: {error})") from None
    if not any(keyword in dataset for keyword in PIXEL_DATA_KEYWORDS):
        raise RadiographError(path, "DICOM file has no pixel data (not an image: a report, a DICOMDIR, ...)")
    frames, samples = (int(getattr(dataset, name, 1) or 1) for name in ("NumberOfFrames", "SamplesPerPixel"))
    declared = [int(getattr(dataset, "Rows", 0) or 0), int(getattr(dataset, "Columns", 0) or 0)]
    problem = _pixel_budget_problem(declared + [count for count in (frames, samples) if count > 1], max_pixels)
    if problem is not None:
        raise RadiographError(path, problem)
    try:
        return dataset, dataset.pixel_array
    except Exception as error:  # pydicom raises many types for broken, compressed or under-described pixel data
        raise RadiographError(path, f"cannot decode DICOM pixel data ({type(error).__name__}: {error})") from None


def _read_dicom(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a DICOM radiograph as display values: modality and VOI LUTs applied, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    dataset, pixels = _dicom_pixels(path, max_pixels)
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
    """Refuse NaN and infinity, and a range too wide for float32 arithmetic (a float TIFF at +-3e38), which
    scaling to 0..1 would turn into NaN."""
    if not np.isfinite(pixels).all():
        raise RadiographError(path, "contains NaN or infinite pixel values")
    low, high = float(pixels.min()), float(pixels.max())
    with np.errstate(over="ignore"):
        span = np.float32(high) - np.float32(low)
    if not np.isfinite(span):
        raise RadiographError(
            path, f"pixel values span {low:.3g} to {high:.3g}, too wide a range to scale in 32-bit floating point"
        )


def read_radiograph(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one radiograph or mask as a float32 ``(rows, cols)`` array, or raise :class:`RadiographError`.

    Bitmaps keep their stored values (8-bit 0..255, 16-bit 0..65535; masks 0/255); colour and palette images
    become luminance. DICOM is mapped to the display range 0..255 with MONOCHROME1 inverted, so that bone is
    bright and air dark in every returned image. DICOM is recognised by content whatever the file's name. An image
    declaring more than ``max_pixels`` pixels is refused before it is decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise RadiographError(path, "no such file")
    if path.stat().st_size == 0:
        raise RadiographError(path, "file is empty (0 bytes)")
    pixels = _read_dicom(path, max_pixels) if is_dicom(path) else _read_bitmap(path, max_pixels)
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
    ``(rows, cols)``, which is what the collection's writers use to restore the input size. ``max_pixels`` is the
    pixel budget of :func:`read_radiograph`.
    """

    def __init__(self, max_pixels: int | float = DEFAULT_MAX_PIXELS) -> None:
        super().__init__()
        self.max_pixels = int(max_pixels)

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(Path(name).suffix.lower() in SUPPORTED_SUFFIXES or is_radiograph_file(name) for name in names)

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> list[str]:
        """Defer decoding to :meth:`get_data`: an error raised here would make MONAI's ``LoadImage`` retry the
        file with every other installed reader (ITK happily reads a 1x1 PNG) and bury the reason."""
        return [str(data)] if isinstance(data, (str, Path)) else [str(name) for name in data]

    def get_data(self, img: list[str]) -> tuple[np.ndarray, dict]:
        if len(img) != 1:
            raise ValueError(f"RadiographReader reads one file per key, got {len(img)}")
        pixels = read_radiograph(img[0], self.max_pixels)
        meta = {MetaKeys.SPATIAL_SHAPE: np.asarray(pixels.shape), MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel"}
        return pixels, meta


def _temporary_beside(path: Path) -> tuple[IO[bytes], Path]:
    """A new hidden file in ``path``'s folder, made with O_EXCL (never a file or link already there) under a short
    random name (never too long where ``path`` itself fits)."""
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    return os.fdopen(descriptor, "wb"), Path(name)


def replace_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file renamed over it: a reader sees the old file or the new, never half;
    a link planted at ``path`` is replaced, not followed; a failed write (a full disk) leaves nothing behind."""
    handle, partial = _temporary_beside(path)
    try:
        with handle:
            write(handle)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def save_png(image: Image.Image, path: str | Path, compress_level: int = 6) -> None:
    """``image`` as the PNG ``path``, through :func:`replace_atomically`: the way every output image is written
    (``compress_level``: zlib's 0-9, PIL's default 6)."""
    replace_atomically(Path(path), lambda handle: image.save(handle, format="PNG", compress_level=compress_level))
