"""LoadLabelMapd (class union and overlap rule, size checks) and FitResized (aspect ratio, inverse)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, SpatialPadd
from PIL import Image

from cxrseg.io import RadiographError, RadiographReader
from cxrseg.transforms import FitResized, LoadLabelMapd, fit_size


def save_mask(path: Path, mask: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return str(path)


def test_label_map_unites_structures_and_later_class_wins(tmp_path: Path) -> None:
    left, right, heart = (np.zeros((16, 20), bool) for _ in range(3))
    left[:, :6], right[:, 14:], heart[4:12, 4:16] = True, True, True
    paths = {
        "left_lung": save_mask(tmp_path / "l.png", left),
        "right_lung": save_mask(tmp_path / "r.png", right),
        "heart": save_mask(tmp_path / "h.png", heart),
    }
    label = LoadLabelMapd("label", [["left_lung", "right_lung", "lungs"], ["heart"]])({"label": paths})["label"]
    expected = np.zeros((16, 20), np.uint8)
    expected[left | right] = 1
    expected[heart] = 2
    assert tuple(label.shape) == (1, 16, 20)
    np.testing.assert_array_equal(label[0].numpy(), expected)


def test_mask_of_another_size_names_the_file(tmp_path: Path) -> None:
    paths = {"lungs": save_mask(tmp_path / "lungs.png", np.ones((16, 16), bool))}
    data = {"image": MetaTensor(torch.zeros(1, 20, 20)), "label": paths}
    with pytest.raises(RadiographError, match="lungs.png.*16x16.*20x20"):
        LoadLabelMapd("label", [["lungs"]])(data)


@pytest.mark.parametrize(
    "shape, box, expected", [((2048, 2048), (640, 512), (512, 512)), ((300, 600), (64, 64), (32, 64))]
)
def test_fit_size_keeps_aspect(shape, box, expected) -> None:
    assert fit_size(shape, box) == expected


def test_fit_resize_pad_and_invert_restore_the_input_size(tmp_path: Path) -> None:
    Image.fromarray((np.random.default_rng(0).random((90, 60)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    preprocessing = Compose(
        [
            LoadImaged("image", reader=RadiographReader()),
            EnsureChannelFirstd("image"),
            FitResized("image", (64, 64)),
            SpatialPadd("image", (64, 64)),
        ]
    )
    data = preprocessing({"image": str(tmp_path / "a.png")})
    assert tuple(data["image"].shape) == (1, 64, 64)
    data["pred"] = MetaTensor(torch.ones(1, 64, 64))
    restored = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=True)(data)
    assert tuple(restored["pred"].shape) == (1, 90, 60)


def test_fit_resize_does_not_blur_labels() -> None:
    label = torch.zeros(1, 100, 100)
    label[:, 40:60, 40:60] = 2
    resized = FitResized("label", (50, 50), mode="nearest")({"label": MetaTensor(label)})["label"]
    assert set(resized.unique().tolist()) == {0.0, 2.0}


def test_fit_resize_averages_when_shrinking() -> None:
    """A one-pixel checkerboard shrunk 16 times is uniform grey: no aliasing (a plain bilinear resize samples
    it into a pattern of black and white)."""
    board = torch.from_numpy((np.indices((512, 512)).sum(axis=0) % 2).astype(np.float32))[None]
    small = FitResized("image", (32, 32))({"image": MetaTensor(board)})["image"]
    assert tuple(small.shape) == (1, 32, 32)
    torch.testing.assert_close(small, torch.full((1, 32, 32), 0.5), atol=1e-6, rtol=0)


def test_fit_resize_without_aspect_ratio_fills_the_box_and_inverts() -> None:
    """The opacity bundle's lung crop: 90 x 60 squashed to 64 x 64 (rows shrink by area, columns grow), and
    Invertd brings a prediction back to 90 x 60."""
    image = MetaTensor(torch.rand(1, 90, 60))
    transform = FitResized("image", (64, 64), keep_aspect_ratio=False)
    data = transform({"image": image})
    assert tuple(data["image"].shape) == (1, 64, 64)
    data["pred"] = MetaTensor(torch.ones(1, 64, 64))
    restored = Invertd("pred", transform=transform, orig_keys="image", nearest_interp=True)(data)
    assert tuple(restored["pred"].shape) == (1, 90, 60)
