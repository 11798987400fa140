"""AnatomyFilterd: what anatomy implies, on hand-made label maps (0 background, 1 lung, 2 heart);
ScoresWithinLabelsd: class scores confined to the post-processed label map, then enlarged bilinearly;
ChannelArgmaxd: MONAI's argmax, faster."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Compose, Invertd, Resized

from cxrseg.lungs import midline_column
from cxrseg.postprocess import AnatomyFilterd, ChannelArgmaxd, ScoresWithinLabelsd, plausible_lungs
from cxrseg.transforms import FitResized

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


def test_blob_outside_a_lung_at_its_height_is_removed_though_larger() -> None:
    """The air between arm and chest called lung, beside the right lung (image left) at the same height and
    larger than it: area alone would keep the blob and drop the lung."""
    label = np.zeros((100, 160), np.int64)
    label[:, 30:130] = chest()
    expected = label.copy()
    label[20:80, 12:42] = LUNG  # 1,800 pixels against the lung's 1,620, centroid within the lateral margin
    np.testing.assert_array_equal(filtered(label), expected)


def test_blob_outside_a_tilted_lung_is_removed_row_by_row() -> None:
    """The same radiograph tilted by 10 degrees (``python -m tools robustness``): lung and blob lean, so their
    bounding boxes overlap in columns although the blob lies outside the lung in every row they share."""
    label = np.zeros((100, 140), np.int64)
    for row in range(20, 80):
        shift = (row - 20) // 4
        label[row, 50 - shift : 77 - shift] = LUNG
    label[20:80, 90:117] = LUNG
    label[55:80, 77:90] = HEART
    expected = label.copy()
    for row in range(25, 85):
        shift = (row - 20) // 4
        label[row, 15 - shift : 45 - shift] = LUNG  # 1,800 pixels against the lung's 1,620
    np.testing.assert_array_equal(filtered(label), expected)


def test_a_lopsided_field_still_splits_at_the_mediastinum() -> None:
    """Montgomery MCUCXR_0080_0 through attention_bcdunet 0.6: blobs in the air beside the chest on both sides,
    the one on the image's right beyond the lateral margin. The remaining field's centre lies nearer the gap
    between the left blob and the right lung than the mediastinum, which split there and kept the blob and the
    right lung, dropping the left lung; the gap nearest the image's centre is the mediastinum."""
    label = np.zeros((100, 200), np.int64)
    label[20:80, 62:112] = LUNG
    label[20:80, 125:160] = LUNG
    label[55:80, 112:125] = HEART
    expected = label.copy()
    label[30:80, 10:50] = LUNG
    label[30:80, 185:199] = LUNG
    np.testing.assert_array_equal(filtered(label), expected)


def test_a_lung_is_not_pushed_out_by_the_other_lung_reaching_across_the_split() -> None:
    """Shenzhen CHNCXR_0455_1 through res_cr_net 0.5: a "lung" low in the abdomen fills the columns between the
    lungs, so the split falls in the left lung's thin medial edge (column 151). The right lung lies wholly
    outside that edge, but the left lung is centred on the other side and must not count against it."""
    lung = np.zeros((256, 256), bool)
    lung[36:162, 68:124] = True  # the patient's right lung
    lung[35:126, 161:211] = True  # the left lung ...
    lung[100:106, 144:161] = True  # ... with a thin medial edge
    abdomen = np.zeros_like(lung)
    abdomen[163:214, 100:151] = True
    assert midline_column(lung | abdomen, centre=127.5) == 151
    np.testing.assert_array_equal(plausible_lungs(lung | abdomen), lung)


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


def test_scores_are_zeroed_where_the_label_map_has_no_such_class_within_one_pixel() -> None:
    label_map = torch.tensor([[0, 0, 1, 1, 1]] * 3)[None].float()
    scores = torch.full((2, 3, 5), 0.5)
    confined = ScoresWithinLabelsd("pred", label_key="label_map")({"pred": scores, "label_map": label_map})["pred"]
    np.testing.assert_array_equal(np.asarray(confined[0, 1]), [0.5, 0.5, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(confined[1, 1]), [0.0, 0.5, 0.5, 0.5, 0.5])


def enlarged_label_map(lung_probability: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """The inference path of the softmax bundles on a (rows, cols) lung probability at network resolution:
    confine the [background, lung] scores to ``label_map``, enlarge them 4 times bilinearly with ``Invertd``, argmax."""
    rows, cols = lung_probability.shape
    preprocessing = Compose([FitResized("image", (rows, cols), keep_aspect_ratio=False)])
    data = preprocessing({"image": MetaTensor(torch.zeros(1, 4 * rows, 4 * cols))})
    probability = torch.from_numpy(lung_probability).float()
    data["pred"] = MetaTensor(torch.stack([1 - probability, probability]), meta=data["image"].meta)
    data["label_map"] = torch.from_numpy(label_map[None]).float()
    data = ScoresWithinLabelsd("pred", label_key="label_map")(data)
    restored = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False)(data)["pred"]
    assert tuple(restored.shape) == (2, 4 * rows, 4 * cols)
    return np.asarray(restored.argmax(0))


def test_the_border_falls_where_the_scores_cross_not_on_the_network_grid() -> None:
    # lung probability 0.4 at column 3 and 0.9 at column 4: bilinear scores cross 0.5 at column 3.2 of the
    # network, i.e. between columns 14 and 15 of the 4-times larger image (nearest neighbours would say 16)
    lung_probability = np.tile(np.array([0.0, 0.0, 0.0, 0.4, 0.9, 1.0, 1.0, 1.0]), (4, 1))
    label_map = (lung_probability > 0.5).astype(np.int64)
    enlarged = enlarged_label_map(lung_probability, label_map)
    np.testing.assert_array_equal(enlarged[5], [0] * 15 + [1] * 17)


def test_what_post_processing_removed_or_filled_stays_so() -> None:
    lung_probability = np.zeros((12, 12))
    lung_probability[2:10, 2:10] = 0.9
    lung_probability[4:8, 4:8] = 0.1  # a hole the filter filled
    lung_probability[0, 11] = 0.9  # a speck the filter removed
    label_map = np.zeros((12, 12), np.int64)
    label_map[2:10, 2:10] = LUNG
    enlarged = enlarged_label_map(lung_probability, label_map)
    assert enlarged[16:32, 16:32].all()
    assert not enlarged[:4, 40:].any()


def test_scores_and_label_map_of_different_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="label map"):
        ScoresWithinLabelsd("pred", label_key="label_map")(
            {"pred": torch.zeros(2, 8, 8), "label_map": torch.zeros(1, 4, 4)}
        )


def test_channel_argmax_is_monais_argmax_ties_included() -> None:
    scores = MetaTensor(torch.randint(0, 3, (3, 40, 50)).float(), meta={"filename_or_obj": "x.png"})
    expected = AsDiscreted("pred", argmax=True)({"pred": scores})["pred"]
    label_map = ChannelArgmaxd("pred")({"pred": scores})["pred"]
    assert isinstance(label_map, MetaTensor) and label_map.meta["filename_or_obj"] == "x.png"
    assert label_map.dtype == expected.dtype and label_map.shape == (1, 40, 50)
    assert torch.equal(label_map.as_tensor(), expected.as_tensor())
