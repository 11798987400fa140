"""Augmentation for other hospitals' radiographs (cxrseg/appearance.py) and per-source validation scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.transforms import Compose
from monai.utils import set_determinism

from cxrseg.appearance import RandBorderd, RandBurnedInMarksd, hospital_augmentation
from cxrseg.evaluation import PerSourceDice


def lung_case(size: int = 64) -> dict[str, torch.Tensor]:
    """A radiograph-like image in [0, 1] whose two dark lungs are exactly the label."""
    label = torch.zeros(1, size, size)
    label[:, 12:52, 8:28] = 1
    label[:, 12:52, 36:56] = 1
    image = 0.8 - 0.6 * label + 0.05 * torch.rand(1, size, size)
    return {"image": image, "label": label}


def test_marks_change_some_pixels_to_an_extreme_and_leave_the_label() -> None:
    case = lung_case()
    marked = RandBurnedInMarksd(keys="image", prob=1.0)
    marked.set_random_state(3)
    out = marked(dict(case))
    changed = out["image"] != case["image"]
    assert 0 < changed.sum() < 0.2 * changed.numel()
    extremes = {case["image"].max().item(), case["image"].min().item()}
    assert {round(v, 6) for v in out["image"][changed].unique().tolist()} <= {round(v, 6) for v in extremes}
    assert torch.equal(out["label"], case["label"])


def test_border_bands_run_along_the_edges() -> None:
    case = lung_case()
    border = RandBorderd(keys="image", prob=1.0, width=(0.1, 0.1))
    border.set_random_state(0)
    out = border(dict(case))["image"][0]
    bands = [out[:6].flatten(), out[-6:].flatten(), out[:, :6].flatten(), out[:, -6:].flatten()]
    uniform_bands = [b for b in bands if torch.all(b == b[0])]
    assert uniform_bands, "at least one side is a uniform band"
    assert torch.equal(out[20:44, 20:44], case["image"][0, 20:44, 20:44]), "the centre is untouched"


def test_hospital_augmentation_keeps_image_and_label_aligned() -> None:
    """Whatever the field of view does, the dark lung pixels stay where the label is."""
    set_determinism(0)
    chain = Compose(hospital_augmentation(image_size=(64, 64), prob=1.0))
    chain.set_random_state(5)
    for _ in range(5):
        case = lung_case()
        case["image"] = case["label"].clone()
        out = chain(case)
        assert out["image"].shape == out["label"].shape == (1, 64, 64)
        assert set(out["label"].unique().tolist()) <= {0.0, 1.0}
    geometric = Compose(hospital_augmentation(image_size=(64, 64), prob=1.0)[:2])
    geometric.set_random_state(7)
    case = lung_case()
    case["image"] = case["label"].clone()
    out = geometric(case)
    disagreement = ((out["image"] > 0.5) != (out["label"] > 0.5)).float().mean()
    assert out["label"].sum() != case["label"].sum(), "the field of view changed"
    assert disagreement < 0.02
    set_determinism(None)


def test_per_source_dice_scores_each_hospital_and_only_annotated_labels() -> None:
    """Source a: lung Dice 1 and 2/3, heart Dice 0; source b: lung 1, no heart reference (not scored)."""
    engine = Engine(lambda e, b: None)
    handler = PerSourceDice(label_names=["background", "lungs", "heart"])
    handler.attach(engine)

    def item(pred: list[int], label: list[int]) -> dict[str, torch.Tensor]:
        return {"pred": torch.tensor([pred, pred]).T[None], "label": torch.tensor([label, label]).T[None]}

    outputs = [item([1, 1, 0, 0], [1, 1, 0, 0]), item([1, 0, 2, 0], [1, 1, 0, 2]), item([1, 2, 0, 0], [1, 0, 0, 0])]
    batch = [{"source": "a"}, {"source": "a"}, {"source": "b"}]
    engine.state.metrics = {}
    engine.state.output, engine.state.batch = outputs, batch
    handler.scores.clear()
    handler._collect(engine)
    handler._publish(engine)
    metrics = engine.state.metrics
    assert metrics["val_dice/a/lungs"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics["val_dice/a/heart"] == pytest.approx(0.0)
    assert metrics["val_dice/b/lungs"] == pytest.approx(1.0)
    assert "val_dice/b/heart" not in metrics
    assert metrics["val_dice/a"] == pytest.approx(np.mean([(1 + 2 / 3) / 2, 0.0]))


@pytest.mark.parametrize("bundle", ["lung_vae", "res_cr_net"])
def test_intensity_normalisation_undoes_a_grey_low_contrast_exposure(tmp_path, phantom_dir, bundle: str) -> None:
    """Hospital B's grey radiographs: the same image with its contrast squeezed to 30 % about a grey level
    (and a gamma) must reach the network almost unchanged, as histogram equalisation guarantees. (The paper's
    CLAHE, which attention_bcdunet applies after equalising, re-amplifies the quantisation of the squeezed
    image; its model card gives the figure, and its training sees such exposures through augmentation.)"""
    from pathlib import Path

    from conftest import BUNDLES_DIR, bundle_imports
    from monai.bundle import ConfigParser
    from PIL import Image

    source = sorted(Path(phantom_dir, "images").glob("*.png"))[0]
    pixels = np.asarray(Image.open(source).convert("L"), dtype=np.float64) / 255.0
    grey = np.clip(np.rint(255 * (0.35 + 0.3 * pixels**1.3)), 0, 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    bundle_dir = BUNDLES_DIR / bundle
    with bundle_imports(bundle_dir):
        parser = ConfigParser()
        parser.read_config(str(bundle_dir / "configs" / "train.yaml"))
        parser.update({"bundle_root": str(bundle_dir), "image_size": [128, 128]})
        chain = parser.get_parsed_content("validate#preprocessing")
        masks = {s: str(p) for s in ("left_lung", "right_lung") for p in [Path(phantom_dir, "masks", s, source.name)]}
        original = chain({"image": str(source), "label": masks})["image"]
        squeezed = chain({"image": str(tmp_path / "grey.png"), "label": masks})["image"]
    assert float((original - squeezed).abs().mean()) < 0.01, "min-max scaling alone leaves 0.034"


def test_replicated_keys_keep_their_edge_values_where_the_field_of_view_pads() -> None:
    """A loss weight map zoomed out keeps positive weights in the new border; the image gets black there."""
    set_determinism(0)
    chain = Compose(
        hospital_augmentation(
            keys=("image", "label", "weight"),
            modes=("bilinear", "nearest", "bilinear"),
            image_size=(64, 64),
            prob=1.0,
            zoom_in=0.0,
            replicate_keys=("weight",),
        )[:2]
    )
    chain.set_random_state(2)
    case = lung_case() | {"weight": torch.ones(1, 64, 64)}
    out = chain(case)
    assert out["image"][0, 0, 0] == 0 and out["weight"].min() > 0.99
    set_determinism(None)
