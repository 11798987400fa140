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


@pytest.mark.parametrize("name", ["1.2.826.0.1.3680043.8.498.5", "IM_0001.1", "looks_like.png"])
def test_dicom_is_read_by_its_content_whatever_its_name(tmp_path: Path, name: str) -> None:
    write_dicom(tmp_path / name, gradient().astype(np.uint16), "MONOCHROME2")
    assert is_radiograph_file(tmp_path / name)
    assert read_radiograph(tmp_path / name).shape == (40, 30)


def test_jfif_is_jpeg(tmp_path: Path) -> None:
    Image.fromarray(gradient()).save(tmp_path / "a.jfif", format="JPEG")
    assert is_radiograph_file(tmp_path / "a.jfif") and read_radiograph(tmp_path / "a.jfif").shape == (40, 30)


def test_a_png_declaring_too_many_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    from badinputs import png_bomb_bytes

    (tmp_path / "bomb.png").write_bytes(png_bomb_bytes(16000))
    with pytest.raises(RadiographError, match=r"bomb.png: image declares 16000 x 16000 = 256,000,000 pixels"):
        read_radiograph(tmp_path / "bomb.png")
    Image.fromarray(gradient()).save(tmp_path / "small.png")
    with pytest.raises(RadiographError, match="over the pixel budget of 1,000 "):
        RadiographReader(max_pixels=1000).get_data([str(tmp_path / "small.png")])
    assert RadiographReader(max_pixels=1200).get_data([str(tmp_path / "small.png")])[0].shape == (40, 30)


def test_a_deflated_dicom_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    """A few kilobytes declaring 5000 x 5000 (25 MB inflated): refused by the declared size, and, with a budget that
    small, before pydicom inflates the file in memory at all."""
    from badinputs import deflated_bomb_bytes

    (tmp_path / "bomb.dcm").write_bytes(deflated_bomb_bytes(5000))
    assert (tmp_path / "bomb.dcm").stat().st_size < 100_000
    with pytest.raises(RadiographError, match="5000 x 5000 = 25,000,000 pixels, over the pixel budget of 2,000,000"):
        read_radiograph(tmp_path / "bomb.dcm", max_pixels=2_000_000)
    with pytest.raises(RadiographError, match="deflated DICOM inflates to over 16 MiB"):
        read_radiograph(tmp_path / "bomb.dcm", max_pixels=100)


def test_unclear_pixel_messages_say_what_is_wrong(tmp_path: Path) -> None:
    """A float TIFF at +-3e38 (its range overflows float32), a big-endian DICOM (read), a DICOM without pixels."""
    pixels = np.zeros((32, 32), np.float32)
    pixels[0, 0], pixels[1, 1] = 3e38, -3e38
    Image.fromarray(pixels, mode="F").save(tmp_path / "wide.tif")
    with pytest.raises(RadiographError, match="wide.tif: pixel values span -3e\\+38 to 3e\\+38, too wide"):
        read_radiograph(tmp_path / "wide.tif")
    from badinputs import dicom_bytes, dicomdir_bytes

    (tmp_path / "big.dcm").write_bytes(dicom_bytes(gradient().astype(np.uint16), big_endian=True))
    assert read_radiograph(tmp_path / "big.dcm").shape == (40, 30)
    (tmp_path / "DICOMDIR").write_bytes(dicomdir_bytes())
    with pytest.raises(RadiographError, match="DICOMDIR: DICOM file has no pixel data"):
        read_radiograph(tmp_path / "DICOMDIR")
