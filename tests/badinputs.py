"""A generator of awkward and broken input files, for the reliability tests of inference and data preparation.

Every case says what a correct program does with it: ``ok`` (a valid radiograph in an unusual form: it must be
segmented) or ``error`` (it must be reported with the file's name, and the rest of the folder still processed).
Files are made on the fly with PIL, numpy and pydicom, so the suite needs no fixtures on disk.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OK = "ok"
ERROR = "error"
SKIPPED = "skipped"
SIDE = 64
HUGE_SIDE = 8000
# a decompression bomb: what a small file declares, beyond the readers' default pixel budget (100 M pixels)
BOMB_SIDE = 16000
# a name that is not UTF-8 (Latin-1 "café", as an old Windows export writes it)
NOT_UTF8_NAME = os.fsdecode(b"caf\xe9.png")


@dataclass(frozen=True)
class BadInput:
    """One input file: its name in the folder, the expected outcome, and what it exercises."""

    name: str
    expect: str
    about: str
    make: Callable[[Path], None]


def radiograph(side: int = SIDE, seed: int = 0) -> np.ndarray:
    """A small radiograph-like uint8 image: bright mediastinum and body, dark lung fields, with noise."""
    rows, cols = np.mgrid[0:side, 0:side] / side
    lungs = ((rows - 0.5) / 0.35) ** 2 + ((np.abs(cols - 0.5) - 0.22) / 0.15) ** 2 < 1
    image = 200 - 140 * lungs + np.random.default_rng(seed).normal(0, 8, (side, side))
    return np.clip(image, 0, 255).astype(np.uint8)


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _image(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> Callable[[Path], None]:
    def make(path: Path) -> None:
        image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
        path.write_bytes(png_bytes(image, fmt))

    return make


def dicom_bytes(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    frames: int = 1,
    big_endian: bool = False,
) -> bytes:
    """A minimal but complete DICOM file (explicit VR, little or big endian) holding ``pixels`` as unsigned
    integers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientID = "bad-input"
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape[-2:]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, bits_stored, bits_stored - 1
    dataset.PixelRepresentation = 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    dataset.PixelData = np.ascontiguousarray(pixels, dtype=">u2" if big_endian else "<u2").tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deflated_bomb_bytes(side: int = BOMB_SIDE) -> bytes:
    """A deflated DICOM declaring ``side`` x ``side`` 8-bit pixels of zeros: a few hundred kilobytes that inflate to
    ``side**2`` bytes. The dataset is deflated as it is made, so the test never holds the pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    dataset = Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows = dataset.Columns = side
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_file_meta_info(header, meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, dataset)
    # Pixel Data (7FE0,0010), VR OB, two reserved bytes, then its 4-byte length
    body.write(struct.pack("<HH2s2sI", 0x7FE0, 0x0010, b"OB", b"\0\0", side * side))
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflater.compress(body.getvalue())]
    row_block = bytes(side * 256)
    chunks += [deflater.compress(row_block) for _ in range(side // 256)]
    chunks += [deflater.compress(bytes(side * (side % 256))), deflater.flush()]
    return b"\0" * 128 + b"DICM" + header.getvalue() + b"".join(chunks)


def png_bomb_bytes(side: int = BOMB_SIDE) -> bytes:
    """A PNG whose header declares ``side`` x ``side`` 8-bit pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def dicomdir_bytes() -> bytes:
    """A DICOMDIR, the index a DICOM export medium carries: DICOM, but no image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.FileSetID = "EXPORT"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def float_dicom_bytes(pixels: np.ndarray) -> bytes:
    """A DICOM file with Float Pixel Data (7FE0,0008), the DICOM way of storing NaN and infinity."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage: float pixels allowed
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 32
    dataset.FloatPixelData = np.ascontiguousarray(pixels, dtype="<f4").tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _float_tiff(value: float, low: float | None = None) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        pixels = radiograph().astype(np.float32)
        pixels[10:20, 10:20] = value
        if low is not None:
            pixels[30:40, 30:40] = low
        Image.fromarray(pixels, mode="F").save(path, format="TIFF")

    return make


def _huge_png(path: Path) -> None:
    """An 8000x8000 8-bit PNG; a flat image with one bright band compresses to a few tens of kilobytes."""
    pixels = np.full((HUGE_SIDE, HUGE_SIDE), 40, np.uint8)
    pixels[:, HUGE_SIDE // 2 - 500 : HUGE_SIDE // 2 + 500] = 200
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


def _palette_png(path: Path) -> None:
    Image.fromarray(radiograph()).convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(path, format="PNG")


def _sixteen_bit_png(path: Path) -> None:
    Image.fromarray(radiograph().astype(np.uint16) * 257).save(path, format="PNG")


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.stack([array, array // 2, array], axis=-1)


def inference_inputs() -> list[BadInput]:
    """The inference suite: one folder holding every case; names are unique by stem except the pair
    ``same_stem.png``/``same_stem.jpg``, which tests that outputs of same-stem inputs do not overwrite each other."""
    gray = radiograph()
    good_png, good_jpeg = png_bytes(Image.fromarray(gray)), png_bytes(Image.fromarray(gray), "JPEG")
    good_dicom = dicom_bytes(gray.astype(np.uint16) * 16)
    rgba = np.dstack([_rgb(gray), np.full_like(gray, 200)])
    twelve_bit = gray.astype(np.uint16) * 16
    mono1 = dicom_bytes(4095 - twelve_bit, "MONOCHROME1")
    sixteen_bit = dicom_bytes(gray.astype(np.uint16) * 257, bits_stored=16)
    two_frames = dicom_bytes(np.stack([twelve_bit, twelve_bit]), frames=2)
    float_nan = float_dicom_bytes(np.where(gray > 100, np.nan, 1.0))
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"0" * 400
    return [
        # issue 30: names and forms as a PACS export and a shared folder hold them
        BadInput(NOT_UTF8_NAME, OK, "a name that is not UTF-8", _bytes(good_png)),
        BadInput("1.2.826.0.1.3680043.8.498.5", OK, "DICOM named by its SOP instance UID", _bytes(good_dicom)),
        BadInput("IM_0001.1", OK, "DICOM named as a PACS exports it", _bytes(good_dicom)),
        BadInput("DICOMDIR", SKIPPED, "the index of a DICOM export", _bytes(dicomdir_bytes())),
        BadInput("photo.jfif", OK, "JPEG with the .jfif suffix", _bytes(good_jpeg)),
        BadInput("volume.nii.gz", SKIPPED, "a compressed NIfTI volume", _bytes(zlib.compress(b"\0" * 400))),
        BadInput("=HYPERLINK(1).png", OK, "a name a spreadsheet runs as a formula", _bytes(good_png)),
        BadInput("+1.png", OK, "a name starting with +", _bytes(good_png)),
        BadInput("-1.png", OK, "a name starting with -", _bytes(good_png)),
        BadInput("@SUM.png", OK, "a name starting with @", _bytes(good_png)),
        BadInput("x\n2 inputs, 0 failed.png", OK, "a newline in the name (a forged log line)", _bytes(good_png)),
        BadInput("l" * 245 + ".png", OK, "a 245-character stem", _bytes(good_png)),
        BadInput("m" * 251 + ".png", OK, "a 255-byte name: its outputs' names are too long", _bytes(good_png)),
        BadInput(
            "big_endian.dcm", OK, "DICOM explicit VR big endian", _bytes(dicom_bytes(twelve_bit, big_endian=True))
        ),
        BadInput("float_extreme.tiff", ERROR, "float32 TIFF at +-3e38", _float_tiff(3e38, low=-3e38)),
        BadInput("bomb.dcm", ERROR, "deflated DICOM declaring 16000 x 16000", _bytes(deflated_bomb_bytes())),
        BadInput("bomb.png", ERROR, "PNG declaring 16000 x 16000", _bytes(png_bomb_bytes())),
        BadInput("plain.png", OK, "an ordinary 8-bit grayscale PNG", _bytes(good_png)),
        BadInput("corrupt_png.png", ERROR, "PNG signature then garbage", _bytes(good_png[:16] + b"\x00bad" * 64)),
        BadInput("truncated_png.png", ERROR, "PNG cut in its data", _bytes(good_png[: len(good_png) // 2])),
        BadInput("corrupt_jpeg.jpg", ERROR, "JPEG marker then garbage", _bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 500)),
        BadInput("truncated_jpeg.jpg", ERROR, "JPEG cut in the middle", _bytes(good_jpeg[: len(good_jpeg) // 2])),
        BadInput("corrupt_dicom.dcm", ERROR, "DICM then garbage", _bytes(b"\x00" * 128 + b"DICM" + b"\x07" * 300)),
        BadInput("truncated_dicom.dcm", ERROR, "DICOM cut in its pixels", _bytes(good_dicom[: len(good_dicom) - 3000])),
        BadInput("zero_byte.png", ERROR, "empty file with an image suffix", _bytes(b"")),
        BadInput("zero_byte.dcm", ERROR, "empty file with a DICOM suffix", _bytes(b"")),
        BadInput("one_pixel.png", ERROR, "1x1 image: nothing to segment", _image(np.array([[128]], np.uint8))),
        BadInput("huge_8000.png", OK, "8000x8000 image", _huge_png),
        BadInput("smallest_16.png", OK, "16x16, the smallest accepted side", _image(radiograph(16))),
        BadInput("thin_strip.png", OK, "extreme aspect ratio, 32x600", _image(np.tile(gray[:32, :1], (1, 600)))),
        BadInput("rgb.png", OK, "RGB PNG", _image(_rgb(gray))),
        BadInput("rgba.png", OK, "RGBA PNG with alpha", _image(rgba)),
        BadInput("gray_alpha.png", OK, "grayscale + alpha (LA) PNG", _image(gray, mode="LA")),
        BadInput("bilevel.png", OK, "1-bit PNG", _image(gray, mode="1")),
        BadInput("gray16.png", OK, "16-bit grayscale PNG", _sixteen_bit_png),
        BadInput("palette.png", OK, "palette PNG", _palette_png),
        BadInput("colour.jpg", OK, "colour JPEG", _image(_rgb(gray), fmt="JPEG")),
        BadInput("gray.jpeg", OK, "grayscale JPEG, .jpeg suffix", _bytes(good_jpeg)),
        BadInput("mono2.dcm", OK, "DICOM MONOCHROME2, 12 bit", _bytes(good_dicom)),
        BadInput("mono1.dcm", OK, "DICOM MONOCHROME1 (inverted)", _bytes(mono1)),
        BadInput("mono2_16bit.dcm", OK, "DICOM MONOCHROME2, 16 bit", _bytes(sixteen_bit)),
        BadInput("multiframe.dcm", ERROR, "multi-frame DICOM", _bytes(two_frames)),
        BadInput("float_nan.dcm", ERROR, "DICOM float pixel data with NaN", _bytes(float_nan)),
        BadInput("float_nan.tiff", ERROR, "float32 TIFF with NaN", _float_tiff(np.nan)),
        BadInput("float_inf.tif", ERROR, "float32 TIFF with +inf", _float_tiff(np.inf)),
        BadInput("float_finite.tiff", OK, "float32 TIFF, finite", _float_tiff(0.5)),
        BadInput("all_black.png", OK, "constant 0 image", _image(np.zeros((SIDE, SIDE), np.uint8))),
        BadInput("all_white.png", OK, "constant 255 image", _image(np.full((SIDE, SIDE), 255, np.uint8))),
        BadInput("constant.dcm", OK, "constant DICOM", _bytes(dicom_bytes(np.full((SIDE, SIDE), 700, np.uint16)))),
        BadInput("text.png", ERROR, "a text file with a .png suffix", _bytes(b"this is not an image\n" * 20)),
        BadInput("html.jpg", ERROR, "an HTML page with a .jpg suffix", _bytes(b"<html><body>404</body></html>\n")),
        BadInput("pdf.dcm", ERROR, "a PDF with a .dcm suffix", _bytes(pdf)),
        BadInput("UPPER.PNG", OK, "upper-case suffix", _bytes(good_png)),
        BadInput("ünïcødé 肺 图像.png", OK, "unicode and spaces in the name", _bytes(good_png)),
        BadInput("name with spaces.jpg", OK, "spaces in the name", _bytes(good_jpeg)),
        BadInput("same_stem.png", OK, "shares its stem with same_stem.jpg", _bytes(good_png)),
        BadInput("same_stem.jpg", OK, "shares its stem with same_stem.png", _bytes(good_jpeg)),
    ]


# named like inputs but unusable: each gets a row with the reason (a flat listing does not enter folders)
LOOKALIKES = {"a_folder.png": SKIPPED, "animation.gif": SKIPPED, "dangling.png": ERROR}

IGNORED = {
    "notes.txt": b"not a radiograph: must be ignored, not reported",
    ".hidden.png": b"hidden files are ignored",
    "IM_0002.7": b"no image by name or content: passed over",
}


def write_inference_folder(folder: Path, include_huge: bool = True) -> list[BadInput]:
    """Write every inference case (and the look-alikes and files that must be ignored) into ``folder``; return the
    cases written."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = [case for case in inference_inputs() if include_huge or case.name != "huge_8000.png"]
    for case in cases:
        case.make(folder / case.name)
    for name, data in IGNORED.items():
        (folder / name).write_bytes(data)
    (folder / "a_folder.png").mkdir(exist_ok=True)
    (folder / "animation.gif").write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    if not (folder / "dangling.png").is_symlink():
        (folder / "dangling.png").symlink_to(folder / "deleted.png")
    return cases


def _mask(side: int = SIDE) -> np.ndarray:
    return np.where(radiograph(side) < 120, 255, 0).astype(np.uint8)


def write_shenzhen_source(folder: Path) -> dict[str, str]:
    """A Shenzhen-layout source (``CHNCXR_<x>.png`` + ``CHNCXR_<x>_mask.png``) of awkward cases for ``prepare``.

    Returns case (image stem) -> expected outcome. Bitmap failures of images and of masks are both covered.
    """
    folder.mkdir(parents=True, exist_ok=True)
    gray, mask = radiograph(), _mask()
    good_png = png_bytes(Image.fromarray(gray))
    images: dict[str, tuple[str, Callable[[Path], None], Callable[[Path], None] | None]] = {
        "CHNCXR_good": (OK, _bytes(good_png), _image(mask)),
        "CHNCXR_rgb": (OK, _image(_rgb(gray)), _image(mask)),
        "CHNCXR_gray16": (OK, _sixteen_bit_png, _image(mask)),
        "CHNCXR_palette": (OK, _palette_png, _image(mask)),
        "CHNCXR_all_black": (OK, _image(np.zeros_like(gray)), _image(mask)),
        "CHNCXR_empty_lungs": (OK, _bytes(good_png), _image(np.zeros_like(mask))),
        "CHNCXR_ünïcødé 肺": (OK, _bytes(good_png), _image(mask)),
        "CHNCXR_with space": (OK, _bytes(good_png), _image(mask)),
        "CHNCXR_corrupt": (ERROR, _bytes(good_png[:16] + b"\x00garbage" * 64), _image(mask)),
        "CHNCXR_truncated": (ERROR, _bytes(good_png[: len(good_png) // 2]), _image(mask)),
        "CHNCXR_zero_byte": (ERROR, _bytes(b""), _image(mask)),
        "CHNCXR_one_pixel": (ERROR, _image(np.array([[9]], np.uint8)), _image(np.array([[255]], np.uint8))),
        "CHNCXR_text": (ERROR, _bytes(b"not an image\n" * 30), _image(mask)),
        "CHNCXR_jpeg_inside": (OK, _bytes(png_bytes(Image.fromarray(gray), "JPEG")), _image(mask)),
        "CHNCXR_mask_wrong_size": (ERROR, _bytes(good_png), _image(_mask(2 * SIDE))),
        "CHNCXR_corrupt_lung_mask_file": (ERROR, _bytes(good_png), _bytes(b"\x89PNG\r\n\x1a\n" + b"\x01" * 50)),
    }
    for stem, (_, make_image, make_mask) in images.items():
        make_image(folder / f"{stem}.png")
        if make_mask is not None:
            make_mask(folder / f"{stem}_mask.png")
    return {stem: expect for stem, (expect, _, _) in images.items()}


def write_dicom_source(folder: Path, masks: Path) -> dict[str, str]:
    """A DICOM source (``<x>.dcm`` + ``<masks>/lungs/<x>.png``) of awkward cases for ``prepare dicom``."""
    folder.mkdir(parents=True, exist_ok=True)
    (masks / "lungs").mkdir(parents=True, exist_ok=True)
    gray, mask = radiograph(), _mask()
    good = dicom_bytes(gray.astype(np.uint16) * 16)
    cases: dict[str, tuple[str, bytes, Callable[[Path], None] | None]] = {
        "mono2": (OK, good, _image(mask)),
        "mono1": (OK, dicom_bytes(4095 - gray.astype(np.uint16) * 16, "MONOCHROME1"), _image(mask)),
        "constant": (OK, dicom_bytes(np.full((SIDE, SIDE), 9, np.uint16)), _image(mask)),
        "empty_mask": (OK, good, _image(np.zeros_like(mask))),
        "corrupt": (ERROR, b"\x00" * 128 + b"DICM" + b"\x07" * 300, _image(mask)),
        "truncated": (ERROR, good[: len(good) - 3000], _image(mask)),
        "zero_byte": (ERROR, b"", _image(mask)),
        "float_nan": (ERROR, float_dicom_bytes(np.where(gray > 100, np.nan, 1.0)), _image(mask)),
        "missing_mask": (ERROR, good, None),
        "mask_wrong_size": (ERROR, good, _image(_mask(SIDE // 2))),
    }
    for stem, (_, data, make_mask) in cases.items():
        (folder / f"{stem}.dcm").write_bytes(data)
        if make_mask is not None:
            make_mask(masks / "lungs" / f"{stem}.png")
    return {stem: expect for stem, (expect, _, _) in cases.items()}
