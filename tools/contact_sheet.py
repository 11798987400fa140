"""Contact sheet of a prepared dataset: the first cases with their mask outlines, as one PNG (a visual check).

A drawing tool, kept out of ``cxrseg`` so that it does not ship inside every bundle; ``python -m tools
contact_sheet`` runs it.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageOps

OVERLAY_COLOURS = {
    "lungs": (60, 170, 255),
    "right_lung": (60, 120, 255),
    "left_lung": (60, 220, 90),
    "heart": (255, 60, 60),
    "right_clavicle": (0, 230, 230),
    "left_clavicle": (255, 230, 0),
    "ggo": (255, 150, 0),
    "consolidation": (230, 0, 230),
}


def _overlay(image: Image.Image, masks: dict[str, Image.Image]) -> Image.Image:
    """Image in RGB with mask outlines in their colours, and opacities also tinted inside."""
    tile = image.convert("RGB")
    for name, mask in masks.items():
        colour = Image.new("RGB", tile.size, OVERLAY_COLOURS[name])
        if name in ("ggo", "consolidation"):
            tile = Image.composite(colour, tile, mask.point(lambda value: 70 if value > 127 else 0))
        outline = mask.filter(ImageFilter.FIND_EDGES).point(lambda value: 255 if value > 0 else 0)
        tile = Image.composite(colour, tile, outline)
    return tile


def contact_sheet(
    dataset_dir: str | Path, out_png: str | Path, count: int = 8, columns: int = 4, tile: int = 256
) -> Path:
    """A PNG grid of the first ``count`` cases of a prepared dataset with their mask outlines, ``tile`` px each.

    The sheet is ``columns * tile`` wide and ``ceil(count / columns) * tile`` high (fewer when the dataset has
    fewer cases); images keep their aspect ratio, padded with black. Colours: right lung blue, left lung green,
    joint lungs light blue, heart red, clavicles cyan (right) and yellow (left), ground-glass orange,
    consolidation magenta. Saved with a 256-colour palette, which keeps an 8-phantom sheet under 300 KB.
    """
    root = Path(dataset_dir)
    images = sorted((root / "images").glob("*.png"))[:count]
    if not images:
        raise FileNotFoundError(f"{root / 'images'}: no PNG images to show")
    columns = min(columns, len(images))
    sheet = Image.new("RGB", (columns * tile, math.ceil(len(images) / columns) * tile))
    for index, path in enumerate(images):
        with Image.open(path) as image:
            masks = {}
            for name in OVERLAY_COLOURS:
                mask_path = root / "masks" / name / path.name
                if mask_path.is_file():
                    with Image.open(mask_path) as mask:
                        masks[name] = mask.convert("L").resize(image.size, Image.NEAREST)
            framed = ImageOps.pad(_overlay(image.convert("L"), masks), (tile, tile), Image.BILINEAR)
        ImageDraw.Draw(framed).text((4, 2), path.stem, fill=(255, 255, 255))
        sheet.paste(framed, ((index % columns) * tile, (index // columns) * tile))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out
