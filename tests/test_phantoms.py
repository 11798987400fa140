"""Behaviour of the synthetic CXR phantoms: determinism, anatomy and mask consistency, layout, metadata, caching."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrseg import phantoms
from cxrseg.data import load_split
from cxrseg.phantoms import STRUCTURES, default_dataset_dir, generate_dataset, generate_phantom


def _phantoms(count: int, size: int = 256, opacity: bool | float = True) -> list[tuple]:
    return [generate_phantom(np.random.default_rng([11, index]), size, opacity) for index in range(count)]


def _folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _centroid_column(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean())


def test_same_seed_gives_identical_phantom_and_other_seed_differs() -> None:
    first_image, first_masks, first_info = generate_phantom(np.random.default_rng(5), 128, opacity=True)
    again_image, again_masks, again_info = generate_phantom(np.random.default_rng(5), 128, opacity=True)
    other_image, _, _ = generate_phantom(np.random.default_rng(6), 128, opacity=True)

    assert first_image.dtype == np.uint8 and first_image.shape == (128, 128)
    assert np.array_equal(first_image, again_image)
    assert all(np.array_equal(first_masks[name], again_masks[name]) for name in STRUCTURES)
    assert first_info == again_info
    assert not np.array_equal(first_image, other_image)


def test_same_seed_gives_identical_dataset_files(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "a", count=4, size=64, seed=3)
    again = generate_dataset(tmp_path / "b", count=4, size=64, seed=3)
    other = generate_dataset(tmp_path / "c", count=4, size=64, seed=4)

    first_bytes = _folder_bytes(first)
    assert first_bytes == _folder_bytes(again)
    assert first_bytes["images/phantom_0000.png"] != _folder_bytes(other)["images/phantom_0000.png"]


def test_masks_are_anatomically_consistent() -> None:
    for image, masks, _ in _phantoms(10):
        lungs = masks["left_lung"] | masks["right_lung"]
        opaque = masks["ggo"] | masks["consolidation"]
        for name in ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle"):
            assert masks[name].sum() > 0.001 * image.size, name
        assert not (masks["left_lung"] & masks["right_lung"]).any()
        assert not (masks["heart"] & lungs).any()
        assert not (masks["ggo"] & masks["consolidation"]).any()
        assert not (opaque & ~lungs).any()
        # Patient's right is the image left; the heart bulges to the patient's left (image right).
        assert _centroid_column(masks["right_lung"]) < image.shape[1] / 2 < _centroid_column(masks["left_lung"])
        assert _centroid_column(masks["heart"]) > image.shape[1] / 2
        # Clavicles cross the lung apices, above the lungs' centres.
        for side in ("left", "right"):
            clavicle, lung = masks[f"{side}_clavicle"], masks[f"{side}_lung"]
            assert (clavicle & lung).any()
            assert np.nonzero(clavicle)[0].mean() < np.nonzero(lung)[0].mean()


def test_intensities_follow_radiographic_display() -> None:
    """Air-filled lungs darker than heart and mediastinum, the spine bright in the midline, outside air darkest."""
    for image, masks, _ in _phantoms(8, opacity=False):
        lungs = masks["left_lung"] | masks["right_lung"]
        lung_level = image[lungs].mean()
        assert image[masks["heart"]].mean() > lung_level + 40
        rows = np.flatnonzero(lungs.any(axis=1))
        mediastinum = image[rows[0] : rows[-1], image.shape[1] // 2 - 4 : image.shape[1] // 2 + 4]
        assert mediastinum.mean() > lung_level + 40
        assert np.percentile(image, 1) < lung_level - 40


def test_opacity_fraction_is_honoured_and_opacities_are_visible() -> None:
    for fraction in (0.1, 0.4, 0.7):
        image, masks, info = generate_phantom(np.random.default_rng(int(fraction * 10)), 256, opacity=fraction)
        lungs = masks["left_lung"] | masks["right_lung"]
        opaque = masks["ggo"] | masks["consolidation"]
        assert info["opacity_fraction"] == pytest.approx(opaque.sum() / lungs.sum())
        assert info["opacity_fraction"] == pytest.approx(fraction, abs=0.02)
        assert image[opaque].mean() > image[lungs & ~opaque].mean() + 5
    _, clear, clear_info = generate_phantom(np.random.default_rng(0), 128, opacity=False)
    assert not clear["ggo"].any() and not clear["consolidation"].any() and clear_info["opacity_fraction"] == 0.0


def test_consolidation_is_denser_than_ground_glass() -> None:
    pairs = []
    for image, masks, _ in _phantoms(12):
        if masks["consolidation"].sum() > 200 and masks["ggo"].sum() > 200:
            pairs.append((image[masks["consolidation"]].mean(), image[masks["ggo"]].mean()))
    assert len(pairs) >= 3
    assert np.mean([dense - hazy for dense, hazy in pairs]) > 0


@pytest.mark.parametrize(("kwargs", "message"), [({"opacity": 1.5}, "opacity"), ({"size": 31}, "size")])
def test_bad_arguments_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_phantom(np.random.default_rng(0), **{"size": 64, **kwargs})


def test_dataset_has_prepared_layout_and_datalist(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "phantoms", count=7, size=64, seed=1)

    cases = [f"phantom_{index:04d}" for index in range(7)]
    assert sorted(path.stem for path in (root / "images").glob("*.png")) == cases
    for case in cases:
        with Image.open(root / "images" / f"{case}.png") as image:
            assert image.mode == "L" and image.size == (64, 64)
        for name in STRUCTURES:
            with Image.open(root / "masks" / name / f"{case}.png") as mask:
                values = set(np.unique(np.asarray(mask)).tolist())
            assert mask.size == (64, 64) and values <= {0, 255}, (case, name)
    splits = json.loads((root / "datalist.json").read_text())
    assert sorted(entry["case"] for split in splits.values() for entry in split) == cases
    entry = splits["training"][0]
    assert entry["image"] == f"images/{entry['case']}.png"
    assert set(entry["label"]) == set(STRUCTURES)
    assert all(Path(path).is_file() for path in load_split(root, "training")[0]["label"].values())


def test_metadata_outcomes_depend_on_opacity(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "phantoms", count=200, size=64, seed=2)
    with open(root / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))

    assert list(rows[0]) == ["case", "patientid", "opacity_percent", "went_icu", "survival"]
    assert len(rows) == 200 and len({row["patientid"] for row in rows}) == 200
    percent = {row["case"]: float(row["opacity_percent"]) for row in rows}
    assert 0.3 < np.mean([value > 0 for value in percent.values()]) < 0.7
    assert {row["went_icu"] for row in rows} == {"Y", "N", ""} == {row["survival"] for row in rows}

    def mean_percent(column: str, value: str) -> float:
        return float(np.mean([percent[row["case"]] for row in rows if row[column] == value]))

    assert mean_percent("went_icu", "Y") > mean_percent("went_icu", "N") + 10
    assert mean_percent("survival", "N") > mean_percent("survival", "Y") + 10
    with (
        Image.open(root / "masks" / "ggo" / "phantom_0000.png") as ggo,
        Image.open(root / "masks" / "consolidation" / "phantom_0000.png") as consolidation,
        Image.open(root / "masks" / "left_lung" / "phantom_0000.png") as left,
        Image.open(root / "masks" / "right_lung" / "phantom_0000.png") as right,
    ):
        opaque = (np.asarray(ggo) > 0) | (np.asarray(consolidation) > 0)
        lungs = (np.asarray(left) > 0) | (np.asarray(right) > 0)
    assert percent["phantom_0000"] == pytest.approx(100 * opaque.sum() / lungs.sum(), abs=0.01)


def test_dataset_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("something else")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(tmp_path, count=1, size=64)


def test_numpy_bool_opacity_means_yes_or_no() -> None:
    _, masks, _ = generate_phantom(np.random.default_rng(1), 64, opacity=np.bool_(False))
    assert not (masks["ggo"] | masks["consolidation"]).any()
    _, _, info = generate_phantom(np.random.default_rng(1), 64, opacity=np.bool_(True))
    assert 0.0 < info["opacity_fraction"] < 0.9


def test_larger_dataset_extends_smaller_one(tmp_path: Path) -> None:
    small = generate_dataset(tmp_path / "small", count=2, size=64, seed=9)
    large = generate_dataset(tmp_path / "large", count=3, size=64, seed=9)
    for name in ("images/phantom_0000.png", "images/phantom_0001.png", "masks/heart/phantom_0001.png"):
        assert (small / name).read_bytes() == (large / name).read_bytes()


def test_default_dataset_dir_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSEG_CACHE", str(tmp_path))

    first = Path(default_dataset_dir(count=3, size=64, seed=1))
    stamps = {path: path.stat().st_mtime_ns for path in first.rglob("*.png")}
    monkeypatch.setattr(phantoms, "generate_dataset", lambda *args, **kwargs: pytest.fail("regenerated"))
    second = default_dataset_dir(count=3, size=64, seed=1)

    assert first == tmp_path / "phantoms-v1-3-64-1" and second == str(first)
    assert (first / "datalist.json").is_file() and len(stamps) == 3 * (1 + len(STRUCTURES))
    assert {path: path.stat().st_mtime_ns for path in first.rglob("*.png")} == stamps
    assert sorted(os.listdir(tmp_path)) == [first.name]
    assert first.stat().st_mode & 0o777 == 0o755


def test_default_dataset_dir_loser_of_a_race_uses_the_winners_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process finishes the same dataset while this one generates: its copy is kept, ours discarded."""
    monkeypatch.setenv("CXRSEG_CACHE", str(tmp_path))
    target = tmp_path / "phantoms-v1-2-64-0"
    real_generate = phantoms.generate_dataset

    def generate_while_another_process_wins(out_dir: Path, **kwargs) -> Path:
        real_generate(target, **kwargs)
        (target / "winner").write_text("kept")
        return real_generate(out_dir, **kwargs)

    monkeypatch.setattr(phantoms, "generate_dataset", generate_while_another_process_wins)

    assert default_dataset_dir(count=2, size=64, seed=0) == str(target)
    assert (target / "winner").read_text() == "kept"
    assert sorted(os.listdir(tmp_path)) == [target.name]


def test_default_dataset_dir_refuses_an_incomplete_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSEG_CACHE", str(tmp_path))
    (tmp_path / "phantoms-v1-2-64-0" / "images").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="phantoms-v1-2-64-0.*incomplete"):
        default_dataset_dir(count=2, size=64, seed=0)


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as mask:
        return np.asarray(mask) > 127


def _anatomy(masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Lung and heart area fractions and the cardiothoracic ratio (heart width over the lung fields' width)."""
    lungs = masks["left_lung"] | masks["right_lung"]
    widths = [np.ptp(np.flatnonzero(mask.any(axis=0))) + 1 for mask in (masks["heart"], lungs)]
    return {"lungs": lungs.mean(), "heart": masks["heart"].mean(), "ratio": widths[0] / widths[1]}


@pytest.mark.realdata
def test_phantom_anatomy_is_within_the_range_of_real_jsrt_radiographs(jsrt_dir: Path) -> None:
    """Lung and heart areas and the cardiothoracic ratio of phantoms lie inside what the 200 JSRT cases show."""
    real = [
        _anatomy({name: _read_mask(jsrt_dir / "masks" / name / f"{case}.png") for name in STRUCTURES[:3]})
        for case in json.loads((jsrt_dir / "cases.json").read_text())
    ]
    for _, masks, info in _phantoms(12, size=512, opacity=False):
        phantom = _anatomy(masks)
        assert phantom["ratio"] == pytest.approx(info["cardiothoracic_ratio"])
        for key, value in phantom.items():
            assert min(case[key] for case in real) <= value <= max(case[key] for case in real), key
