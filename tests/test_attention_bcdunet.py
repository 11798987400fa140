"""Attention BCDU-Net bundle: the network against MONAI's Attention U-Net, the BiConvLSTM gate by hand, the focal
Tversky loss on hand-computed cases, CLAHE, the label overlap rule, the cardiothoracic ratio, and a short
real-data training run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, bundle_imports, train_bundle
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.networks.nets import AttentionUnet
from PIL import Image
from skimage import exposure

BUNDLE_DIR = REPO_ROOT / "bundles" / "attention_bcdunet"
CONFIGS = BUNDLE_DIR / "configs"
CHANNELS = (16, 32, 64, 128, 256)


@pytest.fixture(scope="module")
def scripts():
    """The bundle's ``scripts`` package, imported as MONAI's runner imports it."""
    with bundle_imports(BUNDLE_DIR):
        import scripts.losses
        import scripts.measurements
        import scripts.network
        import scripts.transforms

        yield scripts


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def bilstm_parameters(in_channels: int, hidden: int, kernel: int = 3) -> int:
    """Two ConvLSTM cells, each one convolution of (input + hidden) to the four gates, with bias."""
    return 2 * ((in_channels + hidden) * 4 * hidden * kernel * kernel + 4 * hidden)


# --- network ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", ["bconvlstm", "add"])
@pytest.mark.parametrize("resample", ["downsample", "upsample"])
def test_output_has_three_class_channels_at_the_input_size(scripts, gate: str, resample: str) -> None:
    network = scripts.network.AttentionBCDUNet(gate=gate, resample=resample)
    assert network(torch.rand(2, 1, 64, 48)).shape == (2, 3, 64, 48)


def test_sides_must_be_multiples_of_sixteen(scripts) -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        scripts.network.AttentionBCDUNet()(torch.rand(1, 1, 72, 64))


def test_addition_gate_is_monai_attention_unet_with_a_coarse_gating_signal(scripts) -> None:
    """With the plain addition and upsampling, the network is MONAI's AttentionUnet except that W_g reads the
    coarse decoder features (channels[i + 1]) rather than the up-convolved ones (channels[i])."""
    ours = scripts.network.AttentionBCDUNet(channels=CHANNELS, gate="add", resample="upsample")
    monai_net = AttentionUnet(spatial_dims=2, in_channels=1, out_channels=3, channels=CHANNELS, strides=(2, 2, 2, 2))
    extra_wg_weights = sum((CHANNELS[i + 1] - CHANNELS[i]) * (CHANNELS[i] // 2) for i in range(4))
    assert parameters(ours) - parameters(monai_net) == extra_wg_weights == 10_880


def test_gate_switches_add_exactly_the_bconvlstm_and_the_strided_wx(scripts) -> None:
    """bconvlstm adds one BiConvLSTM (f_int in, f_int / 2 hidden per direction) per level; the official
    downsampling replaces each 1x1 W_x by a 2x2 convolution. Default network: 2,325,211 weights (9.3 MB)."""
    net = scripts.network.AttentionBCDUNet
    f_int = [c // 2 for c in CHANNELS[:-1]]
    lstm = sum(bilstm_parameters(f, f // 2) for f in f_int)
    strided = sum(3 * c * f for c, f in zip(CHANNELS[:-1], f_int, strict=True))
    add_up = parameters(net(gate="add", resample="upsample"))
    assert parameters(net(gate="bconvlstm", resample="upsample")) - add_up == lstm
    assert parameters(net(gate="add", resample="downsample")) - add_up == strided
    assert parameters(net()) == add_up + lstm + strided == 2_325_211


def test_bconvlstm_merge_is_the_final_states_of_both_directions(scripts) -> None:
    """Forward LSTM reads W_g(g) then W_x(x), backward reads W_x(x) then W_g(g); the merge concatenates the two
    final hidden states, so, unlike an addition, it depends on the order of its inputs."""
    torch.manual_seed(0)
    merge = scripts.network.BiConvLSTMMerge(channels=4).eval()
    gating, skip = torch.rand(2, 4, 5, 6), torch.rand(2, 4, 5, 6)
    forward_cell, backward_cell = merge.lstm.forward_lstm.cell, merge.lstm.backward_lstm.cell
    forward_state = forward_cell(skip, forward_cell(gating, forward_cell.initial_state(gating)))
    backward_state = backward_cell(gating, backward_cell(skip, backward_cell.initial_state(skip)))
    expected = torch.cat([forward_state[0], backward_state[0]], dim=1)
    with torch.no_grad():
        merged = merge(gating, skip)
        assert merged.shape == (2, 4, 5, 6)
        torch.testing.assert_close(merged, expected)
        assert not torch.allclose(merge(skip, gating), merged)


@pytest.mark.parametrize("resample", ["downsample", "upsample"])
def test_gate_scales_the_skip_features_by_coefficients_in_zero_one(scripts, resample: str) -> None:
    gate = scripts.network.ConvLSTMAttentionBlock(f_int=4, f_g=16, f_l=8, resample=resample).eval()
    g, x = torch.rand(1, 16, 6, 8), torch.rand(1, 8, 12, 16) + 0.5
    with torch.no_grad():
        coefficients = gate(g, x) / x
    assert coefficients.shape == x.shape
    assert coefficients.min() > 0 and coefficients.max() < 1
    torch.testing.assert_close(coefficients, coefficients[:, :1].expand_as(coefficients))


def test_unknown_gate_or_resampling_is_rejected(scripts) -> None:
    with pytest.raises(ValueError, match="gate must be one of"):
        scripts.network.AttentionBCDUNet(gate="lstm")
    with pytest.raises(ValueError, match="resample must be one of"):
        scripts.network.AttentionBCDUNet(resample="nearest")


def test_scripted_network_matches_eager(scripts) -> None:
    network = scripts.network.AttentionBCDUNet().eval()
    example = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(network)(example), network(example))


def test_config_switch_selects_the_addition_gate() -> None:
    with bundle_imports(BUNDLE_DIR):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.yaml"))
        parser.update({"bundle_root": str(BUNDLE_DIR), "gate": "add", "resample": "upsample"})
        network = parser.get_parsed_content("network_def")
        merges = {type(m.merge).__name__ for m in network.modules() if hasattr(m, "W_g")}
        assert merges == {"AdditionMerge"} and network.resample == "upsample"


# --- loss ------------------------------------------------------------------------------------------------


def test_focal_tversky_two_pixels_by_hand(scripts) -> None:
    """Probabilities class 1 [0.8, 0.3], class 0 [0.2, 0.7], labels [1, 0], eps 1:
    TI_1 = 1.8 / (0.8 + 0.6 * 0.2 + 0.4 * 0.3 + 1) = 0.88235, TI_0 = 1.7 / (0.7 + 0.6 * 0.3 + 0.4 * 0.2 + 1) = 0.86735,
    FTL = 0.11765 ** (1 / 0.675) + 0.13265 ** (1 / 0.675) = 0.0921398."""
    loss = scripts.losses.FocalTverskyLoss(softmax=False)
    probabilities = torch.tensor([[[[0.2, 0.7]], [[0.8, 0.3]]]])
    label = torch.tensor([[[[1, 0]]]])
    assert loss(probabilities, label).item() == pytest.approx(0.0921398, abs=1e-6)


def test_false_negatives_cost_more_than_false_positives(scripts) -> None:
    """alpha = 0.6 weighs missed pixels, beta = 0.4 spurious ones (the paper's notation, MONAI's reversed)."""
    loss = scripts.losses.FocalTverskyLoss(softmax=False, smooth=1e-6, include_background=False)
    label = torch.tensor([[[[1, 1, 0, 0]]]])
    missing_one = torch.tensor([[[[0.0, 1.0, 1.0, 1.0]], [[1.0, 0.0, 0.0, 0.0]]]])
    one_extra = torch.tensor([[[[0.0, 0.0, 0.0, 1.0]], [[1.0, 1.0, 1.0, 0.0]]]])
    missed, extra = loss(missing_one, label).item(), loss(one_extra, label).item()
    assert missed == pytest.approx((1 - 1 / 1.6) ** (1 / 0.675), rel=1e-5)
    assert extra == pytest.approx((1 - 2 / 2.4) ** (1 / 0.675), rel=1e-5)
    assert missed > extra


def test_unannotated_heart_is_marginalised_into_background_by_hand(scripts) -> None:
    """Two pixels, classes (background, lungs, heart), the heart not annotated (NaN channel): probabilities
    [0.5, 0.2, 0.3] and [0.1, 0.8, 0.1], pixel 0 not lung, pixel 1 lung. Background merges with heart:
    p = [0.8, 0.2], g = [1, 0], TI_0 = 1.8 / (0.8 + 0.6 * 0.2 + 0.4 * 0.2 + 1) = 0.9; lungs p = [0.2, 0.8],
    g = [0, 1], TI_1 = 0.9; heart contributes nothing (TI_2 = 1 / 1). FTL = 2 * 0.1 ** (1 / 0.675) = 0.066006.
    Read as "no heart" instead, the same prediction costs 0.16810 (background TI 1.5 / 1.84, lungs 0.9, heart
    TI 1 / 1.16), teaching a hospital without heart masks to erase the heart."""
    loss = scripts.losses.FocalTverskyLoss(softmax=False)
    probabilities = torch.tensor([[[[0.5, 0.1]], [[0.2, 0.8]], [[0.3, 0.1]]]])
    unannotated = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]], [[float("nan"), float("nan")]]]])
    as_absent = torch.nan_to_num(unannotated)
    assert loss(probabilities, unannotated).item() == pytest.approx(0.066006, abs=1e-5)
    assert loss(probabilities, as_absent).item() == pytest.approx(0.16810, abs=1e-4)


def test_annotated_cases_are_unchanged_by_marginalisation_and_heart_pools_over_annotated_cases(scripts) -> None:
    """In a batch of an annotated and an unannotated case, the heart's index is the annotated case's alone."""
    loss = scripts.losses.FocalTverskyLoss(softmax=False)
    annotated = torch.tensor([[[[0.6, 0.1]], [[0.1, 0.1]], [[0.3, 0.8]]]])
    annotated_target = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]]])
    other = torch.tensor([[[[0.2, 0.2]], [[0.1, 0.7]], [[0.7, 0.1]]]])
    other_target = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]], [[float("nan"), float("nan")]]]])
    probabilities, targets = torch.cat([annotated, other]), torch.cat([annotated_target, other_target])
    merged_p, merged_g = scripts.losses.marginalise_unannotated(probabilities, targets)
    assert torch.equal(merged_p[0], annotated[0]) and torch.equal(merged_g[0], annotated_target[0])
    assert torch.allclose(merged_p[1], torch.tensor([[[0.9, 0.3]], [[0.1, 0.7]], [[0.0, 0.0]]]))
    assert torch.allclose(merged_g[1], torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]))
    assert torch.isfinite(loss(probabilities, targets))


def test_partial_labels_flow_from_masks_through_mixup_to_nan_targets(tmp_path: Path, scripts) -> None:
    """A case with lung masks only says "heart unknown" (LoadLabelMapd), which mixup keeps as NaN."""
    from cxrseg.mixup import MixupPrepareBatch
    from cxrseg.transforms import LoadLabelMapd

    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "masks" / "lungs.png")
    loader = LoadLabelMapd(
        keys="label", classes=[["left_lung", "right_lung", "lungs"], ["heart"]], annotated_key="annotated"
    )
    item = loader({"label": {"lungs": str(tmp_path / "masks" / "lungs.png")}})
    assert item["annotated"].tolist() == [True, True, False]
    batch = {
        "image": torch.zeros(2, 1, 16, 16),
        "label": torch.stack([item["label"], item["label"] * 0]),
        "annotated": torch.tensor([[True, True, False], [True, True, True]]),
    }
    _, target = MixupPrepareBatch(num_classes=3, delta=0.0, annotated_key="annotated")(batch)
    assert torch.isnan(target[0, 2]).all() and not torch.isnan(target[0, :2]).any()
    assert not torch.isnan(target[1]).any()
    _, mixed = MixupPrepareBatch(num_classes=3, delta=0.2, annotated_key="annotated")(batch)
    assert torch.isnan(mixed[:, 2]).all(), "a mixture with an unknown heart has an unknown heart"


def test_soft_one_hot_targets_match_label_maps_and_mix_linearly_inside_the_index(scripts) -> None:
    """A hard one-hot equals its label map; a soft target enters the products p g, (1 - p) g, p (1 - g)."""
    loss = scripts.losses.FocalTverskyLoss(softmax=False, smooth=0.0, include_background=False)
    probabilities = torch.tensor([[[[0.5, 0.5]], [[0.5, 0.5]]]])
    label = torch.tensor([[[[1, 0]]]])
    one_hot = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])
    assert loss(probabilities, label).item() == pytest.approx(loss(probabilities, one_hot).item())
    soft = torch.tensor([[[[0.25, 1.0]], [[0.75, 0.0]]]])
    # class 1: tp = 0.375, fn = 0.375, fp = 0.125 + 0.5 = 0.625 -> TI = 0.375 / (0.375 + 0.225 + 0.25)
    expected = (1 - 0.375 / 0.85) ** (1 / 0.675)
    assert loss(probabilities, soft).item() == pytest.approx(expected, rel=1e-6)


def test_loss_is_near_zero_for_confident_correct_logits_and_pools_the_batch(scripts) -> None:
    label = torch.randint(0, 3, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    logits = 30.0 * torch.nn.functional.one_hot(label[:, 0], 3).permute(0, 3, 1, 2).float()
    pooled = scripts.losses.FocalTverskyLoss()
    assert pooled(logits, label).item() < 1e-6
    assert pooled(-logits, label).item() > 2.0
    per_image = scripts.losses.FocalTverskyLoss(batch=False)
    wrong_second = torch.cat([logits[:1], -logits[1:]])
    assert per_image(wrong_second, label).item() == pytest.approx(per_image(-logits[1:], label[1:]).item() / 2)


def test_loss_rejects_targets_with_wrong_channels(scripts) -> None:
    with pytest.raises(ValueError, match="1 channel"):
        scripts.losses.FocalTverskyLoss()(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4))


# --- transforms and label maps ---------------------------------------------------------------------------


def test_clahe_is_scikit_image_per_channel_and_keeps_metadata(scripts) -> None:
    rng = np.random.default_rng(0)
    low_contrast = (0.45 + 0.1 * rng.random((1, 64, 64))).astype(np.float32)
    image = MetaTensor(torch.from_numpy(low_contrast), meta={"filename_or_obj": "x.png"})
    result = scripts.transforms.CLAHEd(keys="image", clip_limit=0.02)({"image": image})["image"]
    expected = exposure.equalize_adapthist(low_contrast[0].astype(np.float64), clip_limit=0.02)
    assert isinstance(result, MetaTensor) and result.meta["filename_or_obj"] == "x.png"
    assert result.dtype == torch.float32 and result.shape == (1, 64, 64)
    np.testing.assert_allclose(result[0].numpy(), expected, atol=1e-6)
    assert 0.0 <= result.min() and result.max() <= 1.0 and result.std() > 2 * low_contrast.std()


def test_clahe_refuses_unscaled_intensities(scripts) -> None:
    with pytest.raises(ValueError, match=r"intensities in \[0, 1\].*255"):
        scripts.transforms.CLAHEd(keys="image")({"image": torch.full((1, 16, 16), 255.0)})


def test_training_preprocessing_gives_heart_priority_and_clahe_image(tmp_path: Path) -> None:
    """A pixel in both the lung and the heart masks is heart (2) in the label map the network learns."""
    (tmp_path / "images").mkdir()
    for structure in ("left_lung", "right_lung", "heart"):
        (tmp_path / "masks" / structure).mkdir(parents=True)
    image = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "images" / "case.png")
    masks = {name: np.zeros((64, 64), np.uint8) for name in ("left_lung", "right_lung", "heart")}
    masks["right_lung"][10:50, 4:30] = 255
    masks["left_lung"][10:50, 36:60] = 255
    masks["heart"][30:55, 20:44] = 255
    for name, mask in masks.items():
        Image.fromarray(mask).save(tmp_path / "masks" / name / "case.png")
    entry = {
        "image": str(tmp_path / "images" / "case.png"),
        "label": {name: str(tmp_path / "masks" / name / "case.png") for name in masks},
    }
    with bundle_imports(BUNDLE_DIR):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.yaml"))
        parser.update({"bundle_root": str(BUNDLE_DIR), "image_size": [64, 64]})
        item = parser.get_parsed_content("validate#preprocessing")(entry)
    label = item["label"][0].numpy()
    assert label[40, 25] == 2 and label[20, 25] == 1 and label[5, 5] == 0 and label[52, 30] == 2
    assert set(np.unique(label)) == {0, 1, 2}
    assert item["image"].shape == (1, 64, 64) and 0.0 <= item["image"].min() and item["image"].max() <= 1.0


# --- measurements ----------------------------------------------------------------------------------------


def test_cardiothoracic_ratio_by_hand(scripts) -> None:
    """The lungs span 15 px at their widest rows (columns 2..16 and 3..17, mediastinum included), the heart
    8 px (columns 6..13 of row 12)."""
    label_map = np.zeros((20, 20), np.uint8)
    label_map[2:16, 3:8] = 1
    label_map[2:16, 12:17] = 1
    label_map[14, 2] = 1
    label_map[15, 17] = 1
    label_map[10:18, 7:13] = 2
    label_map[12, 6:14] = 2
    result = scripts.measurements.measure_cardiothoracic(label_map)
    assert result == {"heart_width_px": 8, "thorax_width_px": 15, "cardiothoracic_ratio": 8 / 15}


def test_cardiothoracic_ratio_is_nan_without_heart_or_lungs(scripts) -> None:
    empty = scripts.measurements.measure_cardiothoracic(np.zeros((8, 8), np.uint8))
    assert empty["heart_width_px"] == empty["thorax_width_px"] == 0 and math.isnan(empty["cardiothoracic_ratio"])
    lungs_only = np.zeros((8, 8), np.uint8)
    lungs_only[2:6, 1:7] = 1
    assert math.isnan(scripts.measurements.measure_cardiothoracic(lungs_only)["cardiothoracic_ratio"])


# --- real data -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.realdata
def test_short_jsrt_training_lowers_loss_and_raises_dice(jsrt_dir: Path, tmp_path: Path) -> None:
    """20 JSRT training cases at 64x64 (1/8 of the paper's side), 8 validation cases, 8 epochs of batches of 4
    with mixup 0.2 on one CPU core: the mean epoch loss falls and validation Dice rises."""
    torch.set_num_threads(1)
    record = train_bundle(
        BUNDLE_DIR,
        dataset_dir=str(jsrt_dir),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        image_size=[64, 64],
        train_size=20,
        epochs=8,
        batch_size=4,
        num_workers=0,
        **{"validate#dataset#data#limit": 8},
    )
    assert len(record.epoch_losses) == len(record.val_dice) == 8
    assert record.epoch_losses[-1] < record.epoch_losses[0] - 0.2, record.epoch_losses
    assert max(record.val_dice[-2:]) > record.val_dice[0] + 0.1, record.val_dice
    assert (tmp_path / "models" / "model.pt").is_file()
