"""MONAI Label's bundle tasks, adapted to 2-D radiograph bundles saved as PNG.

MONAI Label's ``BundleInferTask`` and ``BundleTrainTask`` are written for 3-D volumes; with a 2-D PNG bundle
they fail in four ways, each handled here rather than in the bundles:

* ``Restored`` leaves the predicted label as ``(1, rows, cols)``; the writer cannot save that stray channel
  as a PNG, so it is squeezed;
* the writer transposes the label for ITK (MONAI's ITK reader yields ``(cols, rows)`` arrays), but the
  collection's ``RadiographReader`` yields row-major ``(rows, cols)``, so the label is transposed first and
  the PNG comes out the same way up as the radiograph;
* the writer takes the input's extension and dtype: a JPEG input would get a lossy JPEG label, and float
  labels cannot be written as PNG, so every result is a ``.png`` of ``uint8``;
* ``pretrained=False`` makes ``BundleTrainTask`` call ``os.path.exists(None)`` and crash.

The network and transforms of a bundle follow the settings its training run wrote beside ``models/model.pt``
(``models/model.json``, docs/conventions.md "Weights carry their settings"): ``inference.yaml`` states the shipped
weights' settings, so the inference task reads that file as the last config file, whose ids replace the config's.
``BundleInferTask`` parses the config once and only reloads the weights when the file changes, so after a training
request it would load new weights into a network built for the old ones; the inference task parses the config again
whenever the weights file is replaced.

Training also needs a datalist in the collection's form: MONAI Label hands over one label map per image,
whose values are the bundle's ``channel_def``, while the bundles read one mask per structure
(``LoadLabelMapd``). Each label map is split into per-class masks named after the bundle's ``label_classes``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import MapTransform
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.class_utils import unload_module
from PIL import Image

RESULT_CONFIG = {"result_extension": ".png", "result_dtype": "uint8"}


def bundle_folders(bundles_dir: str | Path) -> list[Path]:
    """The bundle folders (those with ``configs/metadata.json``) of ``bundles_dir``, sorted by name."""
    return sorted(path for path in Path(bundles_dir).iterdir() if (path / "configs" / "metadata.json").is_file())


class SqueezeTransposeLabeld(MapTransform):
    """Turn a ``(1, rows, cols)`` label into the ``(cols, rows)`` array MONAI Label's ITK writer expects.

    Runs after ``Restored``; the writer transposes again, so the saved PNG has the radiograph's rows and columns.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            label = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
            label = np.squeeze(label)
            if label.ndim != 2:
                raise ValueError(f"expected a 2-D label map after squeezing, got shape {np.shape(d[key])}")
            d[key] = np.ascontiguousarray(np.rint(label).astype(np.uint8).T)
        return d


def file_version(path: Path) -> tuple[int, int] | None:
    """Inode and modification time of a file (None when it does not exist): an atomic replacement, as the
    bundles' checkpoint saver writes ``model.pt``, changes the inode even within one clock tick."""
    if not path.is_file():
        return None
    status = path.stat()
    return status.st_ino, status.st_mtime_ns


class RadiographInferTask(BundleInferTask):
    """``BundleInferTask`` writing 8-bit PNG label maps the same way up as the input radiograph, with a network and
    transforms built for the weights it loads.

    Label names and values come from the metadata ``channel_def`` of the bundle's output (MONAI Label reads it).
    """

    def __init__(self, path: str, conf: dict[str, str]) -> None:
        super().__init__(path, conf, type=InferType.SEGMENTATION, load_strict=True, config=dict(RESULT_CONFIG))
        self.weights_file = Path(path) / "models" / "model.pt"
        self.weights_version = file_version(self.weights_file)

    def follow_weights(self) -> None:
        """Parse ``inference.yaml`` again and rebuild the network when ``models/model.pt`` was replaced since the
        config was parsed, so that the settings beside the new weights take effect (MONAI Label reloads the
        weights into a copy of ``self.network`` when the file changes)."""
        version = file_version(self.weights_file)
        if not self.is_valid() or version == self.weights_version:
            return
        sys.path.insert(0, self.bundle_path)
        unload_module("scripts")
        try:
            self.bundle_config = self._load_bundle_config(self.bundle_path, self.bundle_config_path)
            self.network = self.bundle_config.get_parsed_content("network_def", instantiate=True)
        finally:
            sys.path.remove(self.bundle_path)
        self.weights_version = version

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        """The inference config with the settings file of the served ``models/model.pt`` as the last config file
        (``cxrseg/settings.py``, from the bundle's own ``scripts``: called with the bundle first on ``sys.path``)."""
        from scripts.cxrseg.settings import settings_config_files

        return super()._load_bundle_config(path, settings_config_files([config], Path(path) / "models" / "model.pt"))

    def pre_transforms(self, data: Any = None) -> Sequence[Any]:
        self.follow_weights()
        return super().pre_transforms(data)

    def post_transforms(self, data: Any = None) -> Sequence[Any]:
        return [*super().post_transforms(data), SqueezeTransposeLabeld(keys=self.key_pred)]


def read_label_map(path: str | Path) -> np.ndarray:
    """A saved label map as ``(rows, cols)`` integers; a colour image is not a label map."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16", "1"):
            raise ValueError(f"{path}: label map must be a single-channel image, got mode {image.mode}")
        return np.asarray(image).astype(np.int64)


def split_label_map(
    label_path: str | Path, label_classes: Sequence[Sequence[str]], out_dir: Path, case: str
) -> dict[str, str]:
    """Write one 0/255 mask per class of a label map and return the datalist ``label`` entry.

    Value ``k`` is class ``label_classes[k - 1]``; its mask is named after the class's first structure, which
    ``LoadLabelMapd`` with the same ``label_classes`` reads back as value ``k``. Every class gets a mask, empty
    where the annotator drew none, so an absent structure is learnt as absent.
    """
    label_map = read_label_map(label_path)
    unknown = sorted(set(np.unique(label_map).tolist()) - set(range(len(label_classes) + 1)))
    if unknown:
        raise ValueError(f"{label_path}: label values {unknown} are not among the bundle's 0..{len(label_classes)}")
    entry = {}
    for value, structures in enumerate(label_classes, start=1):
        mask_path = out_dir / structures[0] / f"{case}.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(((label_map == value) * 255).astype(np.uint8)).save(mask_path)
        entry[structures[0]] = str(mask_path)
    return entry


class RadiographTrainTask(BundleTrainTask):
    """``BundleTrainTask`` for the collection's bundles: label maps become structure masks, and training from
    scratch (``pretrained: false``) works."""

    def __init__(self, path: str, conf: dict[str, str]) -> None:
        super().__init__(path, conf, load_strict=True)
        self._mask_dir: Path | None = None

    def _load_checkpoint(self, model_pytorch: str | None, pretrained: bool, train_handlers: list) -> None:
        if pretrained and model_pytorch and Path(model_pytorch).exists():
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)

    def _fetch_datalist(self, request: dict, datastore: Datastore) -> list[dict]:
        if self._mask_dir is None:
            raise RuntimeError("_fetch_datalist runs only inside a training request")
        label_classes = self.bundle_config.get_parsed_content("label_classes")
        datalist = []
        for item in datastore.datalist():
            case = Path(item["image"]).stem
            label = split_label_map(item["label"], label_classes, self._mask_dir, case)
            datalist.append({"case": case, "image": item["image"], "label": label})
        if not datalist:
            raise ValueError(f"no labelled images in the datastore {datastore}: save final labels before training")
        return datalist

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        self._mask_dir = Path(tempfile.mkdtemp(prefix="cxrseg-monailabel-masks-"))
        try:
            return super().__call__(request, datastore)
        finally:
            shutil.rmtree(self._mask_dir, ignore_errors=True)
            self._mask_dir = None
