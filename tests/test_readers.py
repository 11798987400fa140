"""Dataset readers of ``tools/readers`` on tiny fixtures written here in each dataset's real file format."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrseg.io import RadiographError
from tools.readers import darwin, dicom, jsrt, labelme, nlm
from tools.readers.base import UnannotatedImage
from tools.readers.polygons import label_mapping, rasterize, structure_of

SCR_FOLDERS = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")


def save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def box_mask(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def write_jsrt_image(path: Path, words: np.ndarray) -> Path:
    """A headerless JSRT file: 16-bit big-endian words."""
    path.parent.mkdir(parents=True, exist_ok=True)
    words.astype(">u2").tofile(path)
    return path


def write_scr_masks(root: Path, case: str, shape: tuple[int, int] = (1024, 1024)) -> dict[str, np.ndarray]:
    """SCR-style GIFs, one folder per structure named as in the SCR distribution; one box per structure."""
    masks = {}
    for index, folder in enumerate(SCR_FOLDERS):
        mask = box_mask(shape, slice(64 * index, 64 * index + 128), slice(256, 512))
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / folder / f"{case}.gif")
        masks[folder.replace(" ", "_")] = mask
    return masks


# JSRT ----------------------------------------------------------------------------------------------------------


def test_jsrt_default_size_is_2048_and_optical_density_is_inverted(tmp_path: Path) -> None:
    words = np.zeros((2048, 2048), dtype=np.uint16)
    words[:, :1024] = 4095  # high optical density (air on film) must come out dark
    words[0, 1024] = 0x0102  # one mid value checks the byte order: 258 big-endian, 513 if read little-endian
    image = jsrt.read_jsrt_image(write_jsrt_image(tmp_path / "JPCNN001.IMG", words))
    assert image.shape == (2048, 2048)
    assert image[5, 5] == 0.0
    assert image[5, 2000] == 255.0
    assert image[0, 1024] == pytest.approx((4095 - 258) * 255 / 4095)


def test_jsrt_wrong_size_and_little_endian_files_are_rejected(tmp_path: Path) -> None:
    short = write_jsrt_image(tmp_path / "short.IMG", np.zeros((64, 60), dtype=np.uint16))
    with pytest.raises(RadiographError, match=r"short\.IMG.*7680 bytes.*8192"):
        jsrt.read_jsrt_image(short, shape=(64, 64))
    little = tmp_path / "little.IMG"
    np.full((64, 64), 4000, dtype="<u2").tofile(little)
    with pytest.raises(RadiographError, match=r"little\.IMG.*12-bit"):
        jsrt.read_jsrt_image(little, shape=(64, 64))


def test_jsrt_cases_find_scr_masks_in_nested_structure_folders(tmp_path: Path) -> None:
    write_jsrt_image(tmp_path / "images" / "JPCLN001.IMG", np.full((64, 64), 2000, dtype=np.uint16))
    expected = write_scr_masks(tmp_path / "scr" / "fold1" / "masks", "JPCLN001", shape=(32, 32))
    (case,) = jsrt.find_cases(tmp_path / "images", masks=str(tmp_path / "scr"), shape=(64, 64))
    loaded = case.load()
    assert case.case == "JPCLN001" and case.metadata == {"finding": "nodule"}
    assert sorted(loaded.masks) == sorted(jsrt.SCR_STRUCTURES)
    for structure, mask in expected.items():
        np.testing.assert_array_equal(loaded.masks[structure], mask)


def test_jsrt_case_without_scr_mask_names_the_missing_structure(tmp_path: Path) -> None:
    write_jsrt_image(tmp_path / "JPCNN002.IMG", np.zeros((64, 64), dtype=np.uint16))
    write_scr_masks(tmp_path, "JPCNN002", shape=(32, 32))
    (tmp_path / "heart" / "JPCNN002.gif").unlink()
    (case,) = jsrt.find_cases(tmp_path, shape=(64, 64))
    with pytest.raises(RadiographError, match=r"JPCNN002\.IMG: no SCR mask for heart"):
        case.load()


def test_jsrt_mask_with_another_aspect_ratio_is_rejected(tmp_path: Path) -> None:
    write_jsrt_image(tmp_path / "JPCNN003.IMG", np.zeros((64, 64), dtype=np.uint16))
    write_scr_masks(tmp_path, "JPCNN003", shape=(32, 32))
    Image.fromarray(np.zeros((32, 20), dtype=np.uint8)).save(tmp_path / "heart" / "JPCNN003.gif")
    (case,) = jsrt.find_cases(tmp_path, shape=(64, 64))
    with pytest.raises(RadiographError, match=r"heart/JPCNN003\.gif: mask is 32x20, not the aspect ratio"):
        case.load()


# Montgomery and Shenzhen ---------------------------------------------------------------------------------------


def write_montgomery(root: Path, stem: str, left_folder_side: str = "image_right") -> None:
    """One Montgomery case; ``leftMask`` holds the lung on the image right unless told otherwise."""
    save_png(root / "CXR_png" / f"{stem}.png", np.full((40, 60), 100, dtype=np.uint8))
    image_left = box_mask((40, 60), slice(5, 35), slice(5, 25)).astype(np.uint8) * 255
    image_right = box_mask((40, 60), slice(5, 35), slice(35, 55)).astype(np.uint8) * 255
    left, right = (image_right, image_left) if left_folder_side == "image_right" else (image_left, image_right)
    save_png(root / "ManualMask" / "leftMask" / f"{stem}.png", left)
    save_png(root / "ManualMask" / "rightMask" / f"{stem}.png", right)


def test_montgomery_sides_follow_the_patient(tmp_path: Path) -> None:
    write_montgomery(tmp_path, "MCUCXR_0001_0")
    (case,) = nlm.find_montgomery(tmp_path)
    loaded = case.load()
    assert case.metadata == {"finding": "normal"}
    assert sorted(loaded.masks) == ["left_lung", "right_lung"]
    assert loaded.masks["right_lung"][:, :30].sum() == 30 * 20  # patient's right lung: the image's left half
    assert loaded.masks["right_lung"][:, 30:].sum() == 0
    assert loaded.masks["left_lung"][:, 30:].sum() == 30 * 20
    assert loaded.masks["left_lung"][:, :30].sum() == 0


def test_montgomery_folder_names_disagreeing_with_position_are_resolved_by_position(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_montgomery(tmp_path, "MCUCXR_0002_1", left_folder_side="image_left")
    (case,) = nlm.find_montgomery(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = case.load()
    assert loaded.masks["right_lung"][:, 30:].sum() == 0
    assert "leftMask/MCUCXR_0002_1.png: mask lies on the patient's right side" in caplog.text


def test_montgomery_missing_and_resized_masks_are_errors(tmp_path: Path) -> None:
    write_montgomery(tmp_path, "MCUCXR_0003_0")
    (tmp_path / "ManualMask" / "rightMask" / "MCUCXR_0003_0.png").unlink()
    write_montgomery(tmp_path, "MCUCXR_0004_0")
    save_png(tmp_path / "ManualMask" / "leftMask" / "MCUCXR_0004_0.png", np.zeros((20, 30), dtype=np.uint8))
    missing, resized = nlm.find_montgomery(tmp_path)
    with pytest.raises(RadiographError, match=r"rightMask/MCUCXR_0003_0\.png: missing Montgomery mask"):
        missing.load()
    with pytest.raises(RadiographError, match=r"leftMask/MCUCXR_0004_0\.png: mask is 20x30 but the image is 40x60"):
        resized.load()


def test_shenzhen_joint_lung_mask_and_unannotated_images(tmp_path: Path) -> None:
    save_png(tmp_path / "CXR_png" / "CHNCXR_0001_0.png", np.full((40, 40, 3), 90, dtype=np.uint8))
    save_png(tmp_path / "CXR_png" / "CHNCXR_0002_1.png", np.full((40, 40), 90, dtype=np.uint8))
    lungs = box_mask((40, 40), slice(5, 30), slice(5, 35))
    save_png(tmp_path / "mask" / "CHNCXR_0001_0_mask.png", lungs.astype(np.uint8) * 255)
    annotated, unannotated = nlm.find_shenzhen(tmp_path / "CXR_png", masks=str(tmp_path / "mask"))
    loaded = annotated.load()
    assert list(loaded.masks) == ["lungs"] and annotated.metadata == {"finding": "normal"}
    np.testing.assert_array_equal(loaded.masks["lungs"], lungs)
    assert loaded.image.shape == (40, 40)
    with pytest.raises(UnannotatedImage, match="no CHNCXR_0002_1_mask.png"):
        unannotated.load()


def test_sixteen_bit_png_is_stretched_to_display_range(tmp_path: Path) -> None:
    pixels = np.linspace(1000, 3000, 40 * 40).reshape(40, 40).astype(np.uint16)
    save_png(tmp_path / "CHNCXR_0003_0.png", pixels)
    save_png(tmp_path / "CHNCXR_0003_0_mask.png", np.full((40, 40), 255, dtype=np.uint8))
    (case,) = nlm.find_shenzhen(tmp_path)
    image = case.load().image
    assert image.min() == 0.0 and image.max() == 255.0


# Polygons ------------------------------------------------------------------------------------------------------


def test_rasterize_uses_even_odd_rule_for_holes_and_disjoint_paths(tmp_path: Path) -> None:
    outer = [(2, 2), (17, 2), (17, 17), (2, 17)]
    hole = [(7, 7), (12, 7), (12, 12), (7, 12)]
    other = [(25, 2), (28, 2), (28, 5), (25, 5)]
    mask = rasterize([outer, hole, other], (20, 30), tmp_path / "a.json", "lung")
    assert mask[4, 4] and not mask[9, 9] and mask[3, 26]
    assert mask.sum() == 16 * 16 - 6 * 6 + 4 * 4


def test_rasterize_clips_vertices_just_outside_and_rejects_far_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        mask = rasterize([[(-1, -1), (20.5, -1), (20.5, 10), (-1, 10)]], (40, 20), tmp_path / "a.json", "lung")
    assert mask[:11].all() and not mask[11:].any()
    assert "clipped" in caplog.text
    with pytest.raises(RadiographError, match=r"a\.json: polygon 'lung' has a vertex at \(x=40\.0, y=5\.0\)"):
        rasterize([[(0, 0), (40, 5), (0, 10)]], (40, 20), tmp_path / "a.json", "lung")


def test_label_mapping_normalises_names_and_keeps_unmapped_labels() -> None:
    mapping = label_mapping({"Opacity": "consolidation", "Text": None, "arrow": "null"})
    assert structure_of("Left Lung", mapping) == "left_lung"
    assert structure_of("ground-glass", mapping) == "ggo"
    assert structure_of("opacity", mapping) == "consolidation"
    assert structure_of("Ignore", mapping) == "ignore"
    assert structure_of("text", mapping) is None
    assert structure_of("Arrow", mapping) is None
    assert structure_of("Pleural Effusion", mapping) == "pleural_effusion"


# V7 Darwin -----------------------------------------------------------------------------------------------------


def square(x0: float, y0: float, side: float) -> list[dict[str, float]]:
    return [{"x": x0, "y": y0}, {"x": x0 + side, "y": y0}, {"x": x0 + side, "y": y0 + side}, {"x": x0, "y": y0 + side}]


def darwin_v1(name: str, width: int, height: int, annotations: list[dict]) -> dict:
    return {
        "dataset": "covid",
        "image": {
            "width": width,
            "height": height,
            "original_filename": name,
            "filename": name,
            "url": "",
            "path": "/",
        },
        "annotations": annotations,
    }


def darwin_v2(name: str, width: int, height: int, annotations: list[dict]) -> dict:
    slot = {
        "type": "image",
        "slot_name": "0",
        "width": width,
        "height": height,
        "source_files": [{"file_name": name, "url": ""}],
    }
    schema = "https://darwin-public.s3.eu-west-1.amazonaws.com/darwin_json/2.0/schema.json"
    return {
        "version": "2.0",
        "schema_ref": schema,
        "item": {"name": name, "path": "/", "slots": [slot]},
        "annotations": annotations,
    }


def expected_lungs(shape: tuple[int, int]) -> np.ndarray:
    return box_mask(shape, slice(4, 15), slice(4, 15)) | box_mask(shape, slice(4, 15), slice(24, 35))


@pytest.mark.parametrize("version", ["1.0", "1.0-complex", "2.0"])
def test_darwin_lungs_with_several_paths_and_ignore_class(tmp_path: Path, version: str) -> None:
    save_png(tmp_path / "images" / "covid-1.png", np.full((30, 40), 128, dtype=np.uint8))
    paths = [square(4, 4, 10), square(24, 4, 10)]
    if version == "2.0":
        lungs = {"name": "Lungs", "polygon": {"paths": paths}, "slot_names": ["0"]}
        data = darwin_v2("covid-1.png", 40, 30, [lungs, {"name": "Ignore", "polygon": {"paths": [square(0, 20, 5)]}}])
    elif version == "1.0":
        lungs = {"name": "Lungs", "polygon": {"path": paths[0], "additional_paths": paths[1:]}}
        data = darwin_v1("covid-1.png", 40, 30, [lungs, {"name": "Ignore", "polygon": {"path": square(0, 20, 5)}}])
    else:
        lungs = {"name": "Lungs", "complex_polygon": {"path": paths}}
        data = darwin_v1("covid-1.png", 40, 30, [lungs, {"name": "Ignore", "polygon": {"path": square(0, 20, 5)}}])
    data["annotations"].append({"name": "PA", "tag": {}})
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "covid-1.json").write_text(json.dumps(data))
    (case,) = darwin.find_cases(tmp_path / "export", images=str(tmp_path / "images"))
    loaded = case.load()
    assert case.case == "covid-1" and case.metadata == {"tags": "PA"}
    assert sorted(loaded.masks) == ["ignore", "lungs"]
    np.testing.assert_array_equal(loaded.masks["lungs"], expected_lungs((30, 40)))
    np.testing.assert_array_equal(loaded.masks["ignore"], box_mask((30, 40), slice(20, 26), slice(0, 6)))


def test_darwin_size_mismatch_missing_image_and_broken_json_are_errors(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", np.zeros((30, 40), dtype=np.uint8))
    lungs = {"name": "Lungs", "polygon": {"paths": [square(4, 4, 10)]}}
    (tmp_path / "a.json").write_text(json.dumps(darwin_v2("a.png", 80, 60, [lungs])))
    (tmp_path / "b.json").write_text(json.dumps(darwin_v2("b.png", 40, 30, [lungs])))
    (tmp_path / "c.json").write_text('{"item": {"name": "c.png"')
    (tmp_path / "d.json").write_text(json.dumps(darwin_v2("a.png", 40, 30, [])))
    resized, missing, broken, empty = darwin.find_cases(tmp_path)
    with pytest.raises(RadiographError, match=r"a\.png: image is 40x30 but a\.json annotates 80x60"):
        resized.load()
    with pytest.raises(RadiographError, match=r"b\.json: annotated image 'b\.png' not found"):
        missing.load()
    with pytest.raises(RadiographError, match=r"c\.json: not valid JSON"):
        broken.load()
    with pytest.raises(UnannotatedImage, match="no polygon annotations"):
        empty.load()


# LabelMe -------------------------------------------------------------------------------------------------------


def labelme_file(image_path: str | None, image_data: str | None, shapes: list[dict], size=(30, 40)) -> dict:
    return {
        "version": "5.2.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": image_data,
        "imageHeight": size[0],
        "imageWidth": size[1],
    }


def polygon_shape(label: str, points: list[list[float]], kind: str = "polygon") -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def test_labelme_embedded_image_and_label_mapping(tmp_path: Path) -> None:
    pixels = np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) % 251
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    shapes = [
        polygon_shape("lung", [[4, 4], [14, 4], [14, 14], [4, 14]]),
        polygon_shape("lung", [[24, 4], [34, 4], [34, 14], [24, 14]]),
        polygon_shape("ground glass", [[5, 5], [8, 5], [8, 8], [5, 8]]),
        polygon_shape("Opacity", [[20, 20], [25, 25]], kind="rectangle"),
        polygon_shape("arrow", [[0, 0], [5, 5]], kind="line"),
    ]
    data = labelme_file("elsewhere/case 7.jpg", base64.b64encode(buffer.getvalue()).decode(), shapes)
    (tmp_path / "case 7.json").write_text(json.dumps(data))
    (case,) = labelme.find_cases(tmp_path, labels={"opacity": "consolidation"})
    loaded = case.load()
    assert case.case == "case_7"
    np.testing.assert_array_equal(loaded.image, pixels.astype(np.float32))
    assert sorted(loaded.masks) == ["consolidation", "ggo", "lungs"]
    np.testing.assert_array_equal(loaded.masks["lungs"], expected_lungs((30, 40)))
    assert loaded.masks["ggo"].sum() == 16
    np.testing.assert_array_equal(loaded.masks["consolidation"], box_mask((30, 40), slice(20, 26), slice(20, 26)))


def test_labelme_side_image_and_its_errors(tmp_path: Path) -> None:
    save_png(tmp_path / "img" / "x1.png", np.full((30, 40), 77, dtype=np.uint8))
    shapes = [polygon_shape("left lung", [[24, 4], [34, 4], [34, 14], [24, 14]])]
    (tmp_path / "x1.json").write_text(json.dumps(labelme_file("img/x1.png", None, shapes)))
    (tmp_path / "x2.json").write_text(json.dumps(labelme_file("img/x1.png", None, shapes, size=(60, 40))))
    (tmp_path / "x3.json").write_text(json.dumps(labelme_file(None, "not base64!", shapes)))
    (tmp_path / "x4.json").write_text(json.dumps(labelme_file("img/absent.png", None, shapes)))
    good, resized, bad_base64, absent = labelme.find_cases(tmp_path)
    loaded = good.load()
    assert loaded.image.shape == (30, 40) and loaded.image.max() == 77
    assert list(loaded.masks) == ["left_lung"] and loaded.masks["left_lung"].sum() == 11 * 11
    with pytest.raises(RadiographError, match=r"x2\.json: states a 40x60 image but the image is 40x30"):
        resized.load()
    with pytest.raises(RadiographError, match=r"x3\.json: imageData is not valid base64"):
        bad_base64.load()
    with pytest.raises(RadiographError, match=r"img/absent\.png: no such file"):
        absent.load()


# DICOM ---------------------------------------------------------------------------------------------------------


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, patient: str = "") -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_dicom_cases_are_in_display_orientation_with_patient_ids(tmp_path: Path, photometric: str) -> None:
    pixels = np.zeros((32, 48), dtype=np.uint16)
    pixels[:, 24:] = 4000  # high stored value: bright in MONOCHROME2, dark in MONOCHROME1
    write_dicom(tmp_path / "dicom" / "study1.dcm", pixels, photometric, patient="P17")
    lungs = box_mask((32, 48), slice(4, 28), slice(4, 44))
    save_png(tmp_path / "masks" / "lungs" / "study1.png", lungs.astype(np.uint8) * 255)
    (case,) = dicom.find_cases(tmp_path / "dicom", masks=str(tmp_path / "masks"))
    loaded = case.load()
    bright_side = loaded.image[:, 24:].mean() > loaded.image[:, :24].mean()
    assert bright_side == (photometric == "MONOCHROME2")
    assert loaded.image.max() == 255.0 and loaded.image.min() == 0.0
    assert case.patient == "P17"
    np.testing.assert_array_equal(loaded.masks["lungs"], lungs)


def test_dicom_missing_mask_and_corrupt_file_are_errors(tmp_path: Path) -> None:
    write_dicom(tmp_path / "dicom" / "a.dcm", np.ones((32, 32)), "MONOCHROME2")
    (tmp_path / "dicom" / "b.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    save_png(tmp_path / "masks" / "lungs" / "b.png", np.zeros((32, 32), dtype=np.uint8))
    unmasked, corrupt = dicom.find_cases(tmp_path / "dicom", masks=str(tmp_path / "masks"))
    assert unmasked.patient == "a"
    with pytest.raises(RadiographError, match=r"lungs/a\.png: missing lungs mask for a\.dcm"):
        unmasked.load()
    with pytest.raises(RadiographError, match=r"b\.dcm"):
        corrupt.load()
    with pytest.raises(ValueError, match="needs --masks"):
        list(dicom.find_cases(tmp_path / "dicom"))
