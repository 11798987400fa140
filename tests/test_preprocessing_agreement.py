"""Training, evaluation and inference must hand the network the same image: the lung bundles build every chain
from the named pieces of train.yaml (loading, resizing, normalisation), and inference.yaml, which stands alone,
must agree with them. A transform inserted in one place and not the other fails here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLES_DIR, bundle_imports
from monai.bundle import ConfigParser
from PIL import Image

LUNG_BUNDLES = ["lung_vae", "attention_bcdunet", "res_cr_net"]


def parsed(bundle_dir: Path, files: list[str], item: str) -> object:
    parser = ConfigParser()
    parser.read_config([str(bundle_dir / "configs" / name) for name in files])
    parser.update({"bundle_root": str(bundle_dir)})
    return parser.get_parsed_content(item)


def enlarged_case(phantom_dir: Path, out: Path) -> tuple[Path, dict[str, str]]:
    """A phantom and its masks at 520 x 410, so that every chain must resize (and where it normalises matters)."""
    source = sorted((phantom_dir / "images").glob("*.png"))[0]
    out.mkdir(parents=True, exist_ok=True)
    image = out / source.name
    Image.open(source).resize((410, 520), Image.BILINEAR).save(image)
    masks = {}
    for structure in ("left_lung", "right_lung", "heart"):
        masks[structure] = str(out / f"{structure}.png")
        Image.open(phantom_dir / "masks" / structure / source.name).resize((410, 520), Image.NEAREST).save(
            masks[structure]
        )
    return image, masks


@pytest.mark.parametrize("bundle", LUNG_BUNDLES)
def test_inference_training_and_evaluation_prepare_the_image_alike(
    phantom_dir: Path, tmp_path: Path, bundle: str
) -> None:
    bundle_dir = BUNDLES_DIR / bundle
    image, masks = enlarged_case(phantom_dir, tmp_path)
    with bundle_imports(bundle_dir):
        image_size = parsed(bundle_dir, ["inference.yaml"], "image_size")
        parser = ConfigParser()
        parser.read_config(str(bundle_dir / "configs" / "train.yaml"))
        parser.update({"bundle_root": str(bundle_dir), "image_size": image_size})
        validation = parser.get_parsed_content("validate#preprocessing")({"image": str(image), "label": masks})
        inference = parsed(bundle_dir, ["inference.yaml"], "preprocessing")({"image": str(image)})
        evaluation_parser = ConfigParser()
        evaluation_parser.read_config([str(bundle_dir / "configs" / n) for n in ("train.yaml", "evaluate.yaml")])
        evaluation_parser.update({"bundle_root": str(bundle_dir), "image_size": image_size})
        evaluation = evaluation_parser.get_parsed_content("validate#preprocessing")(
            {"image": str(image), "label": masks}
        )
    assert inference["image"].shape == validation["image"].shape == evaluation["image"].shape
    assert torch.allclose(torch.as_tensor(inference["image"]), torch.as_tensor(validation["image"]), atol=1e-5)
    assert torch.allclose(torch.as_tensor(evaluation["image"]), torch.as_tensor(validation["image"]), atol=1e-5)


def test_opacity_lung_crop_is_the_same_in_training_evaluation_and_inference(phantom_dir: Path, tmp_path: Path) -> None:
    """opacity_unet: the lung crop that training caches, that evaluation scores and that inference segments (with
    the same lung field, given as a mask file) are one image."""
    bundle_dir = BUNDLES_DIR / "opacity_unet"
    image, masks = enlarged_case(phantom_dir, tmp_path / "case")
    lung_dir = tmp_path / "lungs"
    lung_dir.mkdir()
    lung_field = np.maximum(*(np.asarray(Image.open(masks[side])) for side in ("left_lung", "right_lung")))
    Image.fromarray(np.where(lung_field > 127, 255, 0).astype(np.uint8)).save(lung_dir / image.name)
    entry = {"image": str(image), "label": {"left_lung": masks["left_lung"], "right_lung": masks["right_lung"]}}
    with bundle_imports(bundle_dir):
        image_size = parsed(bundle_dir, ["inference.yaml"], "image_size")
        chains = {}
        for name, files in (("training", ["train.yaml"]), ("evaluation", ["train.yaml", "evaluate.yaml"])):
            parser = ConfigParser()
            parser.read_config([str(bundle_dir / "configs" / n) for n in files])
            parser.update({"bundle_root": str(bundle_dir), "image_size": image_size})
            chains[name] = parser.get_parsed_content("validate#preprocessing")(dict(entry))["image"]
        parser = ConfigParser()
        parser.read_config(str(bundle_dir / "configs" / "inference.yaml"))
        parser.update({"bundle_root": str(bundle_dir), "lung_source": "masks", "lung_mask_dir": str(lung_dir)})
        inference = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"]
    assert inference.shape == chains["training"].shape == chains["evaluation"].shape
    assert torch.as_tensor(inference).abs().sum() > 0
    for chain in chains.values():
        assert torch.allclose(torch.as_tensor(inference), torch.as_tensor(chain), atol=1e-5)
