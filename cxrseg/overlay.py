"""Overlay pictures: the radiograph with its segmentation drawn on, so that a person can check a result at a
glance (a label map PNG of values 0, 1, 2 looks black in an image viewer).

``draw_overlay`` is the drawing every overlay shares (filled regions, then outlines, on the radiograph in a
display window); ``label_overlay`` draws each label of a label map in its own colour; ``save_label_overlay``
is the ``<stem>_overlay.png`` that :class:`cxrseg.inference.SegmentationWriter` writes with ``overlay: true``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .io import read_radiograph, save_png

RGB = tuple[int, int, int]
# colours of label values 1, 2, 3, ...: the lungs (value 1 in every lung bundle) green, the heart (2) red
PALETTE: tuple[RGB, ...] = ((0, 220, 0), (255, 40, 40), (40, 140, 255), (255, 200, 0), (220, 0, 220))
OVERLAY_SUFFIX = "_overlay.png"
# zlib level of overlay PNGs: a picture to look at, not data; level 1 encodes a 2048 x 2048 overlay in 0.14 s
# instead of 0.32 s (the default 6) for a file half as large again
OVERLAY_COMPRESS_LEVEL = 1
# outline width of the label overlay: one pixel per this many pixels of the shorter side (2 px at 1024)
OUTLINE_PIXELS_PER_WIDTH = 512
# pixels sampled for the display window's percentiles
PERCENTILE_SAMPLE_PIXELS = 2**20


def display_gray(image: np.ndarray) -> np.ndarray:
    """The radiograph as 8-bit grey levels in a window of its 0.5-99.5 percentiles, so a 16-bit or dim 8-bit
    image shows its contrast and a few saturated pixels do not wash it out. The percentiles come from about a
    million evenly spaced pixels: a display window, not a measurement."""
    image = np.asarray(image)
    step = max(1, int(np.sqrt(image.size / PERCENTILE_SAMPLE_PIXELS)))
    low, high = np.percentile(image[::step, ::step], (0.5, 99.5))
    gray = (image.astype(np.float32) - np.float32(low)) * np.float32(255 / max(high - low, 1e-6))
    return np.rint(np.clip(gray, 0, 255, out=gray)).astype(np.uint8)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The inner border of ``mask``, ``width`` pixels wide: drawn inside the region, so the outline never
    covers what lies just outside it. Eroded within the mask's bounding box only, which is exact (all
    outside it is background) and spares most of a large radiograph."""
    mask = np.asarray(mask, dtype=bool)
    border = np.zeros_like(mask)
    boxes = ndimage.find_objects(mask.view(np.uint8))
    if boxes:
        inside = mask[boxes[0]]
        border[boxes[0]] = inside & ~ndimage.binary_erosion(inside, iterations=width, border_value=0)
    return border


def draw_overlay(
    image: np.ndarray,
    fills: Sequence[tuple[np.ndarray, RGB]] = (),
    outlines: Sequence[tuple[np.ndarray, RGB]] = (),
    alpha: float = 0.45,
    width: int = 1,
) -> Image.Image:
    """RGB picture of a 2-D radiograph with each ``(mask, colour)`` of ``fills`` blended in at ``alpha`` and
    each of ``outlines`` drawn opaque on top, in list order (masks at the image's size)."""
    gray = display_gray(image)
    # one contiguous plane per colour channel: whole-plane lookups are much faster than indexing pixel rows
    planes = [gray.copy() for _ in range(3)]
    levels = np.arange(256, dtype=np.float64)
    for mask, colour in fills:
        region = np.asarray(mask, dtype=bool)
        for plane, value in zip(planes, colour, strict=True):
            # each grey level's blend with the colour, looked up rather than computed per pixel
            blended = np.rint((1 - alpha) * levels + alpha * value).astype(np.uint8)
            np.copyto(plane, blended[plane], where=region)
    for mask, colour in outlines:
        border = outline(mask, width)
        for plane, value in zip(planes, colour, strict=True):
            plane[border] = value
    return Image.merge("RGB", [Image.fromarray(plane) for plane in planes])


def label_overlay(
    image: np.ndarray, label_map: np.ndarray, palette: Sequence[RGB] = PALETTE, alpha: float = 0.25
) -> Image.Image:
    """Every non-background label of ``label_map`` lightly filled and outlined in its palette colour (value
    ``v`` takes ``palette[(v - 1) % len(palette)]``), the outline wider on larger images."""
    labels = [int(value) for value in np.unique(label_map) if value > 0]
    regions = [(label_map == value, palette[(value - 1) % len(palette)]) for value in labels]
    width = max(1, round(min(label_map.shape) / OUTLINE_PIXELS_PER_WIDTH))
    return draw_overlay(image, fills=regions, outlines=regions, alpha=alpha, width=width)


def overlay_path(output_dir: Path, stem: str) -> Path:
    return Path(output_dir) / f"{stem}{OVERLAY_SUFFIX}"


def save_label_overlay(source: str | Path, label_map: np.ndarray, output_dir: Path, stem: str) -> Path:
    """Write ``<stem>_overlay.png`` of the original radiograph ``source`` (read again at its own size, as the
    label map is) and return its path."""
    image = read_radiograph(source)
    if image.shape != label_map.shape:
        raise ValueError(f"{source}: the image is {image.shape} but its label map {label_map.shape}")
    path = overlay_path(output_dir, stem)
    save_png(label_overlay(image, label_map), path, compress_level=OVERLAY_COMPRESS_LEVEL)
    return path
