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


class FirstInput(torch.nn.Module):
    """Records the first input it is given; answers "no lung", so that the lung crop takes no second pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.seen is None:
            self.seen = images.detach().clone()
        return torch.full((images.shape[0], 2, *images.shape[2:]), -1.0)


def network_input(parser: ConfigParser, preprocessing: str, inferer: str, data: dict) -> torch.Tensor:
    """What the network is given first, the inferer's own resizing and normalisation included."""
    item = parser.get_parsed_content(preprocessing)(data)
    network = FirstInput()
    parser.get_parsed_content(inferer)(torch.as_tensor(item["image"])[None], network)
    return network.seen[0]


@pytest.mark.parametrize("lung_crop", [False, True])
@pytest.mark.parametrize("bundle", LUNG_BUNDLES)
def test_inference_training_and_evaluation_prepare_the_image_alike(
    phantom_dir: Path, tmp_path: Path, bundle: str, lung_crop: bool
) -> None:
    """With the lung crop the image is cropped from a grid twice as fine, then shrunk by area averaging: the first
    pass sees nearly the image of training; without it, exactly that image."""
    bundle_dir = BUNDLES_DIR / bundle
    image, masks = enlarged_case(phantom_dir, tmp_path)
    with bundle_imports(bundle_dir):
        image_size = parsed(bundle_dir, ["inference.yaml"], "image_size")
        parser = ConfigParser()
        parser.read_config(str(bundle_dir / "configs" / "train.yaml"))
        parser.update({"bundle_root": str(bundle_dir), "image_size": image_size})
        validation = parser.get_parsed_content("validate#preprocessing")({"image": str(image), "label": masks})
        validation = torch.as_tensor(validation["image"])
        chains = {}
        for name, files, preprocessing, inferer, data in (
            ("inference", ["inference.yaml"], "preprocessing", "inferer", {"image": str(image)}),
            (
                "evaluation",
                ["train.yaml", "evaluate.yaml"],
                "validate#preprocessing",
                "validate#inferer",
                {"image": str(image), "label": masks},
            ),
        ):
            chain_parser = ConfigParser()
            chain_parser.read_config([str(bundle_dir / "configs" / n) for n in files])
            chain_parser.update({"bundle_root": str(bundle_dir), "image_size": image_size, "lung_crop": lung_crop})
            chains[name] = network_input(chain_parser, preprocessing, inferer, data)
    for name, seen in chains.items():
        assert seen.shape == validation.shape, name
        if lung_crop:
            assert (seen - validation).abs().mean() < 0.03, name  # CLAHE (attention_bcdunet) adds most of it
        else:
            assert torch.allclose(seen, validation, atol=1e-5), name


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
