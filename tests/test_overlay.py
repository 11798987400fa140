"""The overlay pictures of cxrseg.overlay: what is drawn where, and the outline width on large images."""

from __future__ import annotations

import numpy as np

from cxrseg.overlay import OUTLINE_PIXELS_PER_WIDTH, PALETTE, display_gray, draw_overlay, label_overlay, outline


def test_outline_is_the_inner_border_of_the_given_width() -> None:
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    border = outline(mask)
    assert border.sum() == 16 and not border[3:6, 3:6].any() and not (border & ~mask).any()
    assert outline(mask, width=2).sum() == 24


def test_fill_blends_and_outline_covers_inside_the_region_only() -> None:
    image = np.tile(np.linspace(0, 255, 12), (12, 1))
    mask = np.zeros((12, 12), bool)
    mask[3:9, 3:9] = True
    red, green = (255, 0, 0), (0, 255, 0)
    picture = np.asarray(draw_overlay(image, fills=[(mask, red)], outlines=[(mask, green)], alpha=0.5))
    assert picture.shape == (12, 12, 3) and picture.dtype == np.uint8
    outside = picture[~mask]
    assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all()
    assert (picture[outline(mask)] == green).all()
    inside = picture[4:8, 4:8]
    assert (inside[..., 0] >= 127).all() and (inside[..., 1] == inside[..., 2]).all()


def test_label_overlay_colours_each_label_and_widens_the_outline_on_large_images() -> None:
    side = 4 * OUTLINE_PIXELS_PER_WIDTH
    label_map = np.zeros((side, side), np.uint8)
    label_map[100:1000, 100:900] = 1
    label_map[1200:1800, 1200:1800] = 2
    picture = np.asarray(label_overlay(np.full((side, side), 80.0), label_map))
    assert tuple(picture[100, 500]) == PALETTE[0] and tuple(picture[103, 500]) == PALETTE[0]
    assert tuple(picture[104, 500]) != PALETTE[0], "4 px wide at 2048 px"
    assert tuple(picture[1200, 1500]) == PALETTE[1]


def test_display_window_of_a_large_16_bit_image_ignores_a_few_saturated_pixels() -> None:
    side = 2048
    image = np.tile(np.linspace(1000, 3000, side), (side, 1)).astype(np.uint16)
    image[:20, :20] = 65535
    gray = display_gray(image)
    assert gray.dtype == np.uint8
    assert gray[100, 5] == 0 and gray[100, side - 5] == 255
    assert 120 <= gray[100, side // 2] <= 135, "the middle of the range sits mid-grey"
