"""AnatomyFilterd: what anatomy implies, on hand-made label maps (0 background, 1 lung, 2 heart)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Resized

from cxrseg.postprocess import AnatomyFilterd, plausible_lungs

LUNG, HEART = 1, 2


def chest(rows: int = 100, cols: int = 100) -> np.ndarray:
    """Two lungs either side of the midline and a heart between them, low in the chest."""
    label = np.zeros((rows, cols), np.int64)
    label[20:80, 15:42] = LUNG
    label[20:80, 58:85] = LUNG
    label[55:80, 42:58] = HEART
    return label


def filtered(label: np.ndarray, **options) -> np.ndarray:
    transform = AnatomyFilterd("pred", lung_labels=[LUNG], heart_label=HEART, **options)
    return np.asarray(transform({"pred": MetaTensor(torch.from_numpy(label[None]).float())})["pred"])[0]


def test_a_plausible_chest_is_left_as_it_is() -> None:
    np.testing.assert_array_equal(filtered(chest()), chest())


def test_shoulder_blob_beside_a_lung_is_removed() -> None:
    """The case seen through MONAI Label: a 'lung' on the shoulder, high and lateral, as large as a real lung
    part would be; it sits on the same side as a lung, which wins."""
    label = chest()
    label[3:15, 2:25] = LUNG
    np.testing.assert_array_equal(filtered(label), chest())


def test_blob_in_the_top_margin_is_removed_even_where_its_side_has_no_lung() -> None:
    label = chest()
    label[20:80, 58:85] = 0
    label[1:8, 60:80] = LUNG
    expected = chest()
    expected[20:80, 58:85] = 0
    np.testing.assert_array_equal(filtered(label), expected)


def test_third_component_is_dropped_and_each_side_keeps_its_largest() -> None:
    label = chest()
    label[35:50, 44:48] = LUNG  # a sliver between the lungs, above the heart; big enough to pass the area rule
    result = filtered(label, min_relative_area=0.0)
    np.testing.assert_array_equal(result, chest())
    assert plausible_lungs(label == LUNG, min_relative_area=0.0).sum() == (chest() == LUNG).sum()


def test_specks_under_the_relative_area_are_dropped() -> None:
    label = chest()
    label[30, 30] = 0
    lung = label == LUNG
    speck_free = plausible_lungs(lung)
    assert speck_free.sum() == lung.sum()
    lung_with_speck = lung.copy()
    lung_with_speck[50, 10] = True  # detached, on the right lung's side but a single pixel
    assert not plausible_lungs(lung_with_speck)[50, 10]


def test_lungs_touching_across_the_mediastinum_stay_whole() -> None:
    label = chest()
    label[20:30, 42:58] = LUNG  # the apices joined above the heart: one component, both sides
    np.testing.assert_array_equal(filtered(label), label)


def test_holes_are_filled_in_lung_and_heart_but_not_over_the_other_label() -> None:
    label = chest()
    label[40:45, 25:30] = 0  # hole in the right lung
    label[65:70, 48:52] = 0  # hole in the heart
    np.testing.assert_array_equal(filtered(label), chest())
    np.testing.assert_array_equal(filtered(label, fill_holes=False), label)
    enclosed = chest()
    enclosed[40:45, 25:30] = HEART  # a heart fragment inside a lung is not a hole of the lung
    assert (filtered(enclosed)[40:45, 25:30] != 0).all()


def test_heart_keeps_one_component() -> None:
    label = chest()
    label[85:90, 45:50] = HEART
    np.testing.assert_array_equal(filtered(label), chest())


def test_empty_and_heart_only_maps() -> None:
    empty = np.zeros((40, 40), np.int64)
    np.testing.assert_array_equal(filtered(empty), empty)
    heart_only = np.where(chest() == HEART, HEART, 0)
    np.testing.assert_array_equal(filtered(heart_only), heart_only)


def test_metadata_survives_so_invertd_restores_the_input_size() -> None:
    preprocessing = Compose([Resized("image", (50, 50))])
    data = preprocessing({"image": MetaTensor(torch.zeros(1, 100, 100))})
    small = chest()[::2, ::2].copy()
    small[1:4, 1:10] = LUNG
    data["pred"] = MetaTensor(torch.from_numpy(small[None]).float(), meta=data["image"].meta)
    data = AnatomyFilterd("pred", lung_labels=[LUNG], heart_label=HEART)(data)
    assert isinstance(data["pred"], MetaTensor) and data["pred"].dtype == torch.float32
    restored = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=True)(data)["pred"]
    assert tuple(restored.shape) == (1, 100, 100)
    np.testing.assert_array_equal(np.asarray(restored[0]), chest()[::2, ::2].repeat(2, axis=0).repeat(2, axis=1))


def test_rejects_scores() -> None:
    with pytest.raises(ValueError, match="label map"):
        AnatomyFilterd("pred", lung_labels=[LUNG])({"pred": torch.zeros(3, 8, 8)})
