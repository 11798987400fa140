"""V7 Darwin JSON exports, format 1.0 (``image`` + ``annotations``) and 2.0 (``version: 2.0``, ``item.slots``).

Polygons are read in both spellings: 2.0 ``polygon.paths`` (one or several paths); 1.0 ``polygon.path`` with
optional ``additional_paths``, and 1.0 ``complex_polygon.path`` (a path or a list of paths). Several paths
combine with the even-odd rule (holes), see :func:`tools.readers.polygons.rasterize`. Tags (pneumonia type,
sex, ...) go to the ``tags`` column of metadata.csv; other types (boxes, key points) carry no region and are
ignored. In V7's COVID-19 CXR dataset each lung is a ``Lung`` polygon (both become ``lungs``), lateral views
and CT slices have tags only (left out as unannotated), and instruments are outlined as ``Ignore``, kept as its
own structure ``ignore`` so a bundle can mask those pixels out. Coordinates are pixels of the exported item,
whose width and height the file states and the image must match.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cxrseg.io import SUPPORTED_SUFFIXES, RadiographError, read_radiograph

from .base import LoadedCase, SourceCase, UnannotatedImage, case_id, display_range, index_files, require_dir
from .polygons import add_mask, label_mapping, rasterize, structure_of

LOG = logging.getLogger(__name__)


@dataclass
class DarwinItem:
    """What the preparation needs from one Darwin file: image name and size, labelled polygon paths, and tags."""

    image_name: str
    width: int | None
    height: int | None
    polygons: list[tuple[str, list[list[tuple[float, float]]]]]
    tags: list[str]


def _points(path: list[Mapping]) -> list[tuple[float, float]]:
    return [(float(point["x"]), float(point["y"])) for point in path]


def annotation_paths(annotation: Mapping) -> list[list[tuple[float, float]]] | None:
    """The polygon paths of one annotation in either format version, or ``None`` for non-region annotations."""
    if "polygon" in annotation:
        polygon = annotation["polygon"]
        if "paths" in polygon:
            return [_points(path) for path in polygon["paths"]]
        return [_points(path) for path in [polygon["path"], *polygon.get("additional_paths", [])]]
    if "complex_polygon" in annotation:
        complex_polygon = annotation["complex_polygon"]
        first = complex_polygon["path"]
        paths = first if first and isinstance(first[0], list) else [first]
        return [_points(path) for path in [*paths, *complex_polygon.get("additional_paths", [])]]
    return None


def _v2_item(data: Mapping) -> tuple[str, int | None, int | None]:
    item = data["item"]
    slots = item.get("slots") or [{}]
    if len(slots) > 1:
        raise ValueError(f"item has {len(slots)} slots; only single-image items are supported")
    slot = slots[0]
    if slot.get("type", "image") != "image":
        raise ValueError(f"item slot is a {slot.get('type')!r}, not an image")
    source_files = slot.get("source_files") or [{}]
    return source_files[0].get("file_name") or item["name"], slot.get("width"), slot.get("height")


def _v1_item(data: Mapping) -> tuple[str, int | None, int | None]:
    image = data["image"]
    if "frame_count" in image or "fps" in image:
        raise ValueError("video export; only images are supported")
    return image.get("original_filename") or image["filename"], image.get("width"), image.get("height")


def parse_darwin(path: Path) -> DarwinItem:
    """Parse a Darwin 1.0 or 2.0 file, or raise :class:`RadiographError` saying what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        name, width, height = _v2_item(data) if "item" in data else _v1_item(data)
        polygons, tags = [], []
        for annotation in data.get("annotations", []):
            paths = annotation_paths(annotation)
            if paths is not None:
                polygons.append((str(annotation["name"]), paths))
            elif "tag" in annotation:
                tags.append(str(annotation["name"]))
        width, height = (None if side is None else int(side) for side in (width, height))
    except json.JSONDecodeError as error:
        raise RadiographError(path, f"not valid JSON ({error})") from None
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as error:
        reason = error if isinstance(error, ValueError) else f"missing or malformed field {error}"
        raise RadiographError(path, f"not a Darwin 1.0/2.0 image export: {reason}") from None
    return DarwinItem(name, width, height, polygons, tags)


def find_image(name: str, index: Mapping[str, list[Path]], json_path: Path) -> Path:
    """The image a file annotates, by exact file name or, failing that, by stem with any supported suffix."""
    candidates = index.get(Path(name).name) or [
        path for suffix in SUPPORTED_SUFFIXES for path in index.get(Path(name).stem + suffix, [])
    ]
    if not candidates:
        raise RadiographError(json_path, f"annotated image {name!r} not found")
    if len(candidates) > 1:
        raise RadiographError(json_path, f"annotated image {name!r} is ambiguous: {', '.join(map(str, candidates))}")
    return candidates[0]


def _load(json_path: Path, index: Mapping[str, list[Path]], mapping: Mapping[str, str | None]) -> LoadedCase:
    item = parse_darwin(json_path)
    if not item.polygons:
        raise UnannotatedImage(json_path, "no polygon annotations")
    image_path = find_image(item.image_name, index, json_path)
    image = display_range(read_radiograph(image_path))
    if item.width is not None and item.height is not None and (item.height, item.width) != image.shape:
        rows, cols = image.shape
        raise RadiographError(
            image_path, f"image is {cols}x{rows} but {json_path.name} annotates {item.width}x{item.height}"
        )
    masks = {}
    for label, paths in item.polygons:
        structure = structure_of(label, mapping)
        if structure is not None:
            add_mask(masks, structure, rasterize(paths, image.shape, json_path, label))
    if not masks:
        raise UnannotatedImage(json_path, "no polygon of a mapped label")
    return LoadedCase(image=image, masks=masks)


def _case_name_and_tags(json_path: Path) -> tuple[str, dict[str, str]]:
    """Case id (the image's stem) and tags (e.g. pneumonia type, sex) for metadata.csv; errors surface in ``load``."""
    try:
        item = parse_darwin(json_path)
    except RadiographError:
        return case_id(json_path.stem), {}
    return case_id(Path(item.image_name).stem), {"tags": ";".join(item.tags)}


def find_cases(
    source: Path, images: str | None = None, labels: Mapping[str, str | None] | None = None
) -> Iterator[SourceCase]:
    """Cases from every ``*.json`` below ``source``; images are found by name below ``images`` (default ``source``).

    ``labels`` maps annotation class names to structures (normalised: ``"Left Lung"`` = ``left_lung``), on top of
    :data:`tools.readers.polygons.DEFAULT_LABELS`; unmapped classes keep their normalised name, ``None`` drops one.
    """
    index = index_files(require_dir(images, "images") if images else source, SUPPORTED_SUFFIXES)
    mapping = label_mapping(labels)
    for json_path in sorted(p for p in source.rglob("*.json") if p.is_file()):
        case, metadata = _case_name_and_tags(json_path)
        yield SourceCase(
            case=case,
            patient=case,
            origin=json_path,
            load=lambda j=json_path: _load(j, index, mapping),
            metadata=metadata,
        )
