"""Lung Dice of the shipped weights on a source no bundle trained on, as it is and as other hospitals show it.

Other hospitals' archives differ from the public ones in known ways: grey, low-contrast exposures (where
attention_bcdunet 0.1 fell to 0.64), wide fields of view with small lungs, tilted or off-centre patients, other
detectors' noise and blur, burned-in text, markers and borders. Each difference can be put onto radiographs we
do hold, with their masks moved along where the geometry changes. Each shift here is one fixed, strong setting
(not a random draw), at or past the edge of the range that the training's hospital augmentation
(``cxrseg/appearance.py``) draws, so that the table says how much of that invariance the weights learnt.

Every shifted copy is a prepared dataset written under ``--out`` (derived data: never inside the repository),
scored by the bundle's own ``train.yaml`` + ``evaluate.yaml`` on all its cases, anatomy post-processing on::

    python -m benchmarks robustness --out /tmp/cxrseg-robustness
    python -m benchmarks robustness --bundles "['res_cr_net']" --shifts "['as is','grey']" --limit 20
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import (
    AdjustContrastd,
    Affined,
    Compose,
    GaussianSmoothd,
    MapTransform,
    RandGaussianNoised,
    RandScaleIntensityFixedMeand,
    Zoomd,
)
from PIL import Image

from benchmarks.bundle_runs import REPO_ROOT, SHARED_DATA
from benchmarks.compare_inference import evaluate
from cxrseg.appearance import RandBorderd, RandBurnedInMarksd
from cxrseg.data import discover_cases
from cxrseg.io import read_radiograph

LUNG_BUNDLES = ("lung_vae", "attention_bcdunet", "res_cr_net")
IMAGE_KEY = "image"
ALL_CASES = {"eval_split": "all"}
SEED = 0


def _grey(mask_keys: Sequence[str], shape: tuple[int, int]) -> list[MapTransform]:
    """Contrast squeezed to 30 % about the mean, then gamma 1.3: hospital B's grey, flat radiographs (the
    training squeezes to 40 % at most)."""
    squeeze = RandScaleIntensityFixedMeand(IMAGE_KEY, prob=1.0, factors=(-0.7, -0.7))
    return [squeeze, AdjustContrastd(IMAGE_KEY, gamma=1.3)]


def _wide_field_of_view(mask_keys: Sequence[str], shape: tuple[int, int]) -> list[MapTransform]:
    """Everything shrunk to 65 % about the centre and padded black: lungs that filled 75 % of the height fill
    about 50 % (the smallest zoom of the default hospital augmentation)."""
    keys = [IMAGE_KEY, *mask_keys]
    modes = ["area"] + ["nearest-exact"] * len(mask_keys)
    return [Zoomd(keys, zoom=0.65, mode=modes, padding_mode="constant", keep_size=True)]


def _tilted_off_centre(mask_keys: Sequence[str], shape: tuple[int, int]) -> list[MapTransform]:
    """Rotated by 10 degrees and moved by 10 % of the height down and 8 % of the width sideways (the training's
    largest rotation and shift)."""
    keys = [IMAGE_KEY, *mask_keys]
    return [
        Affined(
            keys,
            rotate_params=0.17,
            translate_params=(0.10 * shape[0], -0.08 * shape[1]),
            mode=["bilinear"] + ["nearest"] * len(mask_keys),
            padding_mode="zeros",
        )
    ]


def _noise_and_blur(mask_keys: Sequence[str], shape: tuple[int, int]) -> list[MapTransform]:
    """Gaussian blur of 1.2 pixels at 256 pixels wide, then noise of 3 % of the range (the training's largest)."""
    return [GaussianSmoothd(IMAGE_KEY, sigma=1.2), RandGaussianNoised(IMAGE_KEY, prob=1.0, std=0.03)]


def _marks_and_borders(mask_keys: Sequence[str], shape: tuple[int, int]) -> list[MapTransform]:
    """Up to three burned-in strings or lead markers and black or white bands on one to four sides."""
    return [RandBurnedInMarksd(IMAGE_KEY, prob=1.0), RandBorderd(IMAGE_KEY, prob=1.0)]


SHIFTS: dict[str, Callable[[Sequence[str], tuple[int, int]], list[MapTransform]]] = {
    "as is": lambda mask_keys, shape: [],
    "grey": _grey,
    "wide field of view": _wide_field_of_view,
    "tilted, off-centre": _tilted_off_centre,
    "noise and blur": _noise_and_blur,
    "marks and borders": _marks_and_borders,
}


def shift_chain(name: str, mask_keys: Sequence[str], shape: tuple[int, int]) -> Compose:
    """The transforms of shift ``name`` for an image of ``shape`` and the masks under ``mask_keys``, seeded so
    that every run writes the same pixels."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; choose from {list(SHIFTS)}")
    chain = Compose(SHIFTS[name](mask_keys, shape))
    chain.set_random_state(seed=SEED)
    return chain


def shifted_case(name: str, image: np.ndarray, masks: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """Shift ``name`` applied to one radiograph (8-bit values, ``(rows, cols)``) and its 0/255 masks: the image
    back in 0..255 and the masks in 0/255, same size."""
    chain = shift_chain(name, list(masks), image.shape)
    binary = {key: (mask[None] > 127).astype(np.float32) for key, mask in masks.items()}
    data = {IMAGE_KEY: (image[None] / 255.0).astype(np.float32), **binary}
    shifted = chain(data)
    pixels = np.clip(np.asarray(shifted[IMAGE_KEY])[0] * 255.0, 0, 255).round().astype(np.uint8)
    moved = {key: ((np.asarray(shifted[key])[0] > 0.5) * 255).astype(np.uint8) for key in masks}
    return pixels, moved


def write_shifted_dataset(source: Path, name: str, target: Path, limit: int | None = None) -> Path:
    """A prepared dataset at ``target`` with ``source``'s cases (the first ``limit``) under shift ``name``."""
    for entry in discover_cases(source)[:limit]:
        image = read_radiograph(source / entry["image"])
        masks = {structure: read_radiograph(source / path) for structure, path in entry["label"].items()}
        pixels, moved = shifted_case(name, image, masks)
        (target / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target / "images" / f"{entry['case']}.png")
        for structure, mask in moved.items():
            (target / "masks" / structure).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(target / "masks" / structure / f"{entry['case']}.png")
    return target


def _lung_dice(summary: Mapping[str, Any]) -> dict[str, float]:
    """Mean and worst Dice of the lung structure (the first label the evaluation scored)."""
    stats = next(iter(summary["labels"].values()))["all"]["dice"]
    return {"mean": float(stats["mean"]), "worst": float(stats["worst"])}


def score_shifts(
    out_dir: Path,
    source_dir: Path,
    bundles: Sequence[str],
    shifts: Sequence[str],
    limit: int | None = None,
    threads: int = 1,
    weights: Mapping[str, str] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Lung Dice (mean, worst) per bundle and shift: each shifted copy of ``source_dir`` written once under
    ``out_dir/data``, each bundle's evaluation under ``out_dir/runs``; ``weights`` maps a bundle to the folder of
    candidate weights (``model.pt`` and ``model.json``) scored instead of its shipped ones."""
    scores: dict[str, dict[str, dict[str, float]]] = {bundle: {} for bundle in bundles}
    for shift in shifts:
        folder = shift.replace(" ", "_").replace(",", "")
        dataset = write_shifted_dataset(source_dir, shift, out_dir / "data" / folder, limit)
        for bundle in bundles:
            overrides = ALL_CASES | ({"ckpt_dir": weights[bundle]} if bundle in (weights or {}) else {})
            summary = evaluate(REPO_ROOT, bundle, dataset, out_dir / "runs" / bundle / folder, overrides, threads)
            scores[bundle][shift] = _lung_dice(summary)
    return scores


def robustness(
    out: str = "/tmp/cxrseg-robustness",
    source: str = "montgomery",
    bundles: Sequence[str] = LUNG_BUNDLES,
    shifts: Sequence[str] = tuple(SHIFTS),
    limit: int | None = None,
    threads: int = 1,
    weights: Mapping[str, str] | None = None,
) -> None:
    """Lung Dice (mean, worst) of each bundle's shipped weights on every case (or the first ``limit``) of
    ``source`` (a dataset under ``../shared/data``, or a path) under each shift: a markdown table on stdout and
    ``robustness.json`` in ``out``. ``weights``: bundle -> folder of candidate weights to score instead, e.g.
    ``--weights "{'res_cr_net': 'runs/res_cr_net/models'}"``."""
    source_dir = Path(source) if Path(source).is_dir() else SHARED_DATA / source
    out_dir = Path(out)
    scores = score_shifts(out_dir, source_dir, bundles, shifts, limit, threads, weights)
    (out_dir / "robustness.json").write_text(json.dumps(scores, indent=1), encoding="utf-8")
    print(f"Lung Dice, mean (worst), {source_dir.name}, {limit or 'all'} cases\n")
    print("| shift | " + " | ".join(bundles) + " |\n|---|" + "---|" * len(bundles))
    for shift in shifts:
        cells = [f"{scores[bundle][shift]['mean']:.3f} ({scores[bundle][shift]['worst']:.3f})" for bundle in bundles]
        print(f"| {shift} | " + " | ".join(cells) + " |")
