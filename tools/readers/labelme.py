"""LabelMe JSON annotations: ``shapes`` of labelled polygons over an embedded or a neighbouring image.

The image is the base64 ``imageData`` when present (exactly what was annotated; LabelMe itself prefers it),
else the file ``imagePath`` relative to the JSON file. ``imageHeight``/``imageWidth``, when stated, must match it.
Polygons and rectangles are regions; other shape types (lines, points, circles) are ignored with a warning.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from cxrseg.io import RadiographError, read_radiograph

from .base import LoadedCase, SourceCase, UnannotatedImage, case_id, display_range
from .polygons import add_mask, label_mapping, rasterize, structure_of

LOG = logging.getLogger(__name__)
REGION_SHAPES = ("polygon", "rectangle")


def _embedded_image(json_path: Path, image_data: str, suffix: str) -> np.ndarray:
    try:
        encoded = base64.b64decode(image_data, validate=True)
    except (binascii.Error, ValueError):
        raise RadiographError(json_path, "imageData is not valid base64") from None
    with tempfile.TemporaryDirectory() as folder:
        embedded = Path(folder) / f"imageData{suffix}"
        embedded.write_bytes(encoded)
        try:
            return read_radiograph(embedded)
        except RadiographError as error:
            raise RadiographError(json_path, f"embedded imageData: {error.reason}") from None


def read_labelme_image(json_path: Path, data: Mapping) -> np.ndarray:
    """The annotated image of a LabelMe file, embedded or beside it, in the display range 0..255."""
    image_path = data.get("imagePath")
    if data.get("imageData"):
        suffix = Path(image_path).suffix if image_path else ".png"
        pixels = _embedded_image(json_path, data["imageData"], suffix)
    elif image_path:
        pixels = read_radiograph(json_path.parent / image_path)
    else:
        raise RadiographError(json_path, "neither imageData nor imagePath is given")
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if height is not None and width is not None and (int(height), int(width)) != pixels.shape:
        raise RadiographError(
            json_path, f"states a {width}x{height} image but the image is {pixels.shape[1]}x{pixels.shape[0]}"
        )
    return display_range(pixels)


def shape_paths(shape: Mapping) -> list[list[tuple[float, float]]] | None:
    """The region of one LabelMe shape as polygon paths; ``None`` for shapes without an area."""
    kind = shape.get("shape_type") or "polygon"
    points = [(float(x), float(y)) for x, y in shape["points"]]
    if kind == "polygon":
        return [points]
    if kind == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        return [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)]]
    return None


def _load(json_path: Path, mapping: Mapping[str, str | None]) -> LoadedCase:
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        shapes = [(str(shape["label"]), shape_paths(shape), shape.get("shape_type")) for shape in data["shapes"]]
    except json.JSONDecodeError as error:
        raise RadiographError(json_path, f"not valid JSON ({error})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise RadiographError(json_path, f"not a LabelMe file: missing or malformed field {error}") from None
    if not shapes:
        raise UnannotatedImage(json_path, "no shapes")
    image = read_labelme_image(json_path, data)
    masks = {}
    for label, paths, kind in shapes:
        structure = structure_of(label, mapping)
        if paths is None:
            LOG.warning("%s: %s shape %r has no area; ignored", json_path, kind, label)
        elif structure is not None:
            add_mask(masks, structure, rasterize(paths, image.shape, json_path, label))
    if not masks:
        raise UnannotatedImage(json_path, "no region of a mapped label")
    return LoadedCase(image=image, masks=masks)


def find_cases(source: Path, labels: Mapping[str, str | None] | None = None) -> Iterator[SourceCase]:
    """Cases from every ``*.json`` below ``source``, named after the JSON file (LabelMe names it after the image).

    ``labels`` maps LabelMe labels to structures on top of :data:`tools.readers.polygons.DEFAULT_LABELS`
    (e.g. ``{"ground glass": "ggo"}``); unmapped labels keep their normalised name, ``None`` drops a label.
    """
    mapping = label_mapping(labels)
    for json_path in sorted(p for p in source.rglob("*.json") if p.is_file()):
        case = case_id(json_path.stem)
        yield SourceCase(case=case, patient=case, origin=json_path, load=lambda j=json_path: _load(j, mapping))
