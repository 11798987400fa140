"""Stage one of the pipeline: the lung field of a radiograph, from a lung bundle of this collection or from
mask files.

The opacity network sees only the lungs, so at inference another bundle (default ``lung_vae``) segments them
first. It runs in-process from its own ``inference.yaml`` (network, preprocessing, inferer, postprocessing),
not from a copy of its code. Both bundles call their code package ``scripts``;
:func:`~cxrseg.bundle.bundle_imports` swaps the other bundle's package in only while its config is parsed, as
MONAI Label does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged, MapTransform

from .cxrseg.bundle import as_flag, bundle_imports
from .cxrseg.io import RadiographError, read_radiograph
from .cxrseg.lungs import lung_field_problem
from .cxrseg.settings import read_settings


def lung_label_values(bundle_dir: str | Path) -> list[int]:
    """Label values of the lung bundle's output that are lung (``channel_def`` names containing "lung"), so a
    bundle that also segments the heart or clavicles still gives the lung field alone."""
    metadata_file = Path(bundle_dir) / "configs" / "metadata.json"
    channel_def = json.loads(metadata_file.read_text())["network_data_format"]["outputs"]["pred"]["channel_def"]
    values = [int(value) for value, name in channel_def.items() if int(value) > 0 and "lung" in name.lower()]
    if not values:
        raise ValueError(f"{metadata_file}: no output label named like a lung in channel_def {channel_def}")
    return values


@dataclass
class LungBundle:
    """The parts of a lung bundle's inference config needed to segment one radiograph.

    ``preprocessing`` starts from a file path; ``loaded_preprocessing`` is the same without its ``LoadImaged``, for a
    radiograph the caller has already read (the opacity stage reads it once for both stages).
    """

    network: torch.nn.Module
    preprocessing: Compose
    inferer: Callable[[torch.Tensor, torch.nn.Module], Any]
    postprocessing: Callable[[dict], dict]
    lung_values: list[int]
    device: torch.device

    @property
    def loaded_preprocessing(self) -> Compose:
        return Compose([t for t in self.preprocessing.transforms if not isinstance(t, LoadImaged)])

    @torch.no_grad()
    def segment(self, image: str | torch.Tensor) -> np.ndarray:
        """Boolean lung field at the radiograph's own size, as the lung bundle's own inference would give it, of a
        file path or of a radiograph as ``LoadImaged`` with the collection's ``RadiographReader`` returns it."""
        if isinstance(image, torch.Tensor):
            item = self.loaded_preprocessing({"image": image.clone()})
        else:
            item = self.preprocessing({"image": image})
        pred = self.inferer(item["image"][None].to(self.device), self.network)
        pred = pred[0] if isinstance(pred, (tuple, list)) else pred
        item["pred"] = MetaTensor(pred[0].detach().cpu(), meta=item["image"].meta)
        label_map = np.asarray(self.postprocessing(item)["pred"])
        label_map = label_map.argmax(0) if label_map.ndim == 3 and label_map.shape[0] > 1 else np.squeeze(label_map)
        return np.isin(np.rint(label_map).astype(np.int64), self.lung_values)


def load_lung_bundle(
    bundle_dir: str | Path,
    device: torch.device | str = "cpu",
    ckpt_path: str | Path | None = None,
    config_file: str = "inference.yaml",
    overrides: Mapping[str, Any] | None = None,
) -> LungBundle:
    """Build the lung bundle's network (weights loaded) and transforms from its inference config, with
    ``overrides`` of its config ids. Its network and input follow the settings file of the weights, merged into the
    config before the overrides (``cxrseg/settings.py``: the config states the shipped weights' settings, and
    ``lung_ckpt_path`` may name others); an override that disagrees with that file raises before any radiograph is
    segmented."""
    bundle_dir = Path(bundle_dir).resolve()
    config_path = bundle_dir / "configs" / config_file
    if not config_path.is_file():
        raise FileNotFoundError(f"lung bundle config {config_path} not found; set lung_bundle_dir")
    device = torch.device(device)
    overrides = dict(overrides or {})
    with bundle_imports(bundle_dir):
        parser = ConfigParser()
        parser.read_config(str(config_path))
        parser.update({"bundle_root": str(bundle_dir), "device": f"$torch.device('{device}')", **overrides})
        if ckpt_path is not None:
            parser["ckpt_path"] = str(ckpt_path)
        ckpt = Path(ckpt_path) if ckpt_path is not None else Path(parser.get_parsed_content("ckpt_path"))
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"lung bundle weights {ckpt} not found: train {bundle_dir.name} first or set lung_ckpt_path"
            )
        settings = read_settings(ckpt) or {}
        parser.update({name: value for name, value in settings.items() if name not in overrides})
        if "settings_check" in parser:
            parser.get_parsed_content("settings_check")
        network = parser.get_parsed_content("network_def").to(device).eval()
        network.load_state_dict(torch.load(ckpt, map_location=device, weights_only=True))
        return LungBundle(
            network=network,
            preprocessing=parser.get_parsed_content("preprocessing"),
            inferer=parser.get_parsed_content("inferer"),
            postprocessing=parser.get_parsed_content("postprocessing"),
            lung_values=lung_label_values(bundle_dir),
            device=device,
        )


def _source(image: str | torch.Tensor) -> str:
    """The file a radiograph came from, for error messages."""
    if isinstance(image, torch.Tensor):
        return str(getattr(image, "meta", {}).get("filename_or_obj", "?"))
    return str(image)


def _as_lung_field(mask: np.ndarray, image_path: str, check: bool) -> MetaTensor:
    """``(1, rows, cols)`` lung field; an empty one is an error of this image (nothing to crop or measure), and so,
    with ``check``, is one that is not two plausible lungs (:func:`cxrseg.lungs.lung_field_problem`): opacity
    measured inside it would be a figure about something else."""
    if not mask.any():
        raise RadiographError(image_path, "no lung field found, so no opacity can be measured")
    problem = lung_field_problem(mask) if check else None
    if problem is not None:
        raise RadiographError(image_path, f"implausible lung field, so no opacity is measured: {problem}")
    return MetaTensor(torch.from_numpy(mask.astype(np.uint8)[None]))


# held while a LungFieldd loads its lung bundle (module level: a lock attribute would stop the transform pickling)
_LUNG_BUNDLE_LOADING = threading.Lock()


class LungFieldd(MapTransform):
    """Add ``lung_key``: the lung field of the radiograph ``data[key]`` (a file path, or the image ``LoadImaged``
    has read, which is then not read and decoded a second time), from a lung bundle.

    The bundle is loaded on first use, so a config that lists this transform as an unused alternative
    (``lung_source: dataset``) neither needs the lung bundle nor pays for it; once, also when several threads call
    it first at the same time (``CacheDataset`` fills its cache from a pool of ``num_workers`` threads), because
    loading swaps the process-wide ``scripts`` package (:func:`~cxrseg.bundle.bundle_imports`), which two
    concurrent loads would corrupt. ``check`` rejects a field that is not
    two plausible lungs with a :class:`RadiographError`; it is off unless the config asks, so that training and
    evaluation, which must score every case, are not changed by it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        bundle_dir: str | Path,
        lung_key: str = "lung",
        device: torch.device | str = "cpu",
        ckpt_path: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        check: bool | str = False,
    ) -> None:
        super().__init__(keys)
        self.bundle_dir, self.lung_key, self.device, self.ckpt_path = bundle_dir, lung_key, device, ckpt_path
        self.overrides = dict(overrides or {})
        self.check = as_flag(check)
        self._bundle: LungBundle | None = None

    def lung_bundle(self) -> LungBundle:
        """The lung bundle, loaded by the first caller while any others wait for it."""
        with _LUNG_BUNDLE_LOADING:
            if self._bundle is None:
                self._bundle = load_lung_bundle(self.bundle_dir, self.device, self.ckpt_path, overrides=self.overrides)
        return self._bundle

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        bundle = self.lung_bundle()
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key] if isinstance(d[key], torch.Tensor) else str(d[key])
            d[self.lung_key] = _as_lung_field(bundle.segment(image), _source(d[key]), self.check)
        return d


class LungMaskFiled(MapTransform):
    """Add ``lung_key``: the lung field read from ``<mask_dir>/<stem>.png`` for the radiograph ``data[key]`` (a file
    path or the loaded image, whose metadata names its file): ground-truth or precomputed lung masks instead of
    the lung bundle. ``check`` as for :class:`LungFieldd`."""

    def __init__(
        self, keys: KeysCollection, mask_dir: str | Path | None, lung_key: str = "lung", check: bool | str = False
    ) -> None:
        super().__init__(keys)
        self.mask_dir, self.lung_key, self.check = mask_dir, lung_key, as_flag(check)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.mask_dir is None:
            raise ValueError("lung_source 'masks' needs lung_mask_dir, the folder of <stem>.png lung masks")
        d = dict(data)
        for key in self.key_iterator(d):
            source = _source(d[key])
            mask_path = Path(self.mask_dir) / f"{Path(source).stem}.png"
            if not mask_path.is_file():
                raise RadiographError(source, f"no lung mask {mask_path}")
            pixels = read_radiograph(mask_path)
            d[self.lung_key] = _as_lung_field(pixels > pixels.max() / 2, source, self.check)
        return d
