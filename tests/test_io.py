"""RadiographReader: orientation, bit depths, colour modes, DICOM photometry and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.transforms import EnsureChannelFirstd, LoadImaged
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrseg.io import RadiographError, RadiographReader, is_radiograph_file, read_radiograph


def gradient(rows: int = 40, cols: int = 30) -> np.ndarray:
    """Rows differ from columns so that a transposition cannot pass unnoticed."""
    return (np.arange(rows)[:, None] * 3 + np.arange(cols)[None, :]).astype(np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, slope: float = 1.0, intercept: float = 0.0) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_png_is_row_major(tmp_path: Path) -> None:
    Image.fromarray(gradient()).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "a.png"), gradient())


def test_load_imaged_gives_channel_first_rows_cols(tmp_path: Path) -> None:
    Image.fromarray(gradient()).save(tmp_path / "a.png")
    data = LoadImaged("image", reader=RadiographReader())({"image": str(tmp_path / "a.png")})
    data = EnsureChannelFirstd("image")(data)
    assert tuple(data["image"].shape) == (1, 40, 30)
    assert list(data["image"].meta["spatial_shape"]) == [40, 30]


def test_sixteen_bit_png_keeps_depth(tmp_path: Path) -> None:
    pixels = gradient().astype(np.uint16) * 200
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "a.png"), pixels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_modes_become_luminance(tmp_path: Path, mode: str) -> None:
    grey = Image.fromarray(gradient())
    grey.convert(mode).save(tmp_path / "a.png")
    np.testing.assert_allclose(read_radiograph(tmp_path / "a.png"), gradient(), atol=1)


def test_dicom_monochrome1_is_inverted_to_display(tmp_path: Path) -> None:
    pixels = gradient().astype(np.uint16) * 10
    write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1")
    write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", slope=2.0, intercept=-5)
    m1, m2 = read_radiograph(tmp_path / "m1.dcm"), read_radiograph(tmp_path / "m2.dcm")
    assert m2.min() == 0 and m2.max() == 255 and m2[0, 0] < m2[-1, -1]
    np.testing.assert_allclose(m1, 255 - m2, atol=1e-3)


def test_suffixless_dicom_is_recognised(tmp_path: Path) -> None:
    write_dicom(tmp_path / "IM0001", gradient().astype(np.uint16), "MONOCHROME2")
    assert is_radiograph_file(tmp_path / "IM0001")
    assert read_radiograph(tmp_path / "IM0001").shape == (40, 30)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.png", b"", "empty"),
        ("text.png", b"not an image at all", "not a readable"),
        ("fake.dcm", b"\0" * 200, "not a valid DICOM"),
    ],
)
def test_bad_files_name_file_and_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RadiographError, match=reason) as error:
        read_radiograph(tmp_path / name)
    assert name in str(error.value)


def test_truncated_png_is_reported(tmp_path: Path) -> None:
    Image.fromarray(gradient(200, 200)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(RadiographError, match="cut.png"):
        read_radiograph(tmp_path / "cut.png")


def test_tiny_and_non_finite_images_are_rejected(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    with pytest.raises(RadiographError, match="1x1"):
        read_radiograph(tmp_path / "dot.png")
    pixels = np.ones((32, 32), np.float32)
    pixels[3, 4] = np.nan
    Image.fromarray(pixels, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(RadiographError, match="NaN"):
        read_radiograph(tmp_path / "nan.tif")
