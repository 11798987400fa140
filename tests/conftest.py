"""Fixtures shared by the test suite: repository paths, the real shared data, tiny phantom datasets, and
the bundles to test, and one short training run of a bundle; and the suite's two tiers.

``python -m pytest -q`` runs the fast tier (minutes on 2 cores); ``python -m pytest -q --all-tiers`` runs every
test, as CI does (``.ci/run``). The slow tier is named here by file and by test, from the durations of the whole
suite (``--durations``), rather than by folders, so that a test moves between tiers without moving its file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import set_determinism

from cxrseg.bundle import bundle_imports

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ZOO_SCHEMA = REPO_ROOT / "tools" / "zoo" / "meta_schema_20240725.json"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


# the slow tier: whole files, and single tests of other files (every parameter of them), by their measured cost
SLOW_FILES = frozenset(
    {
        "test_abdomen_in_view.py",
        "test_archive_inference.py",
        "test_bundles.py",
        "test_determinism.py",
        "test_monailabel.py",
        "test_multi_gpu.py",
        "test_readme_commands.py",
        "test_reliability.py",
        "test_resume.py",
        "test_zoo.py",
    }
)
SLOW_TESTS = frozenset(
    {
        "test_ci.py::test_a_plain_run_leaves_the_slow_tier_out_and_all_tiers_runs_it",
        "test_compare_training.py::test_recipes_trains_before_and_after_side_by_side_on_phantoms",
        "test_conventions.py::test_bundle_copied_with_its_link_fails_saying_how_to_copy_it",
        "test_opacity_unet.py::test_inference_from_lung_mask_files_reports_images_without_mask",
        "test_opacity_unet.py::test_inference_reports_an_implausible_lung_field_and_scores_the_other_images",
        "test_opacity_unet.py::test_two_stage_inference_writes_label_map_overlay_and_severity",
        "test_prepare.py::test_jsrt_prepared_at_default_512",
        "test_settings.py::test_inference_with_an_image_size_other_than_the_weights_stops_before_any_image",
    }
)
ALL_TIERS = "--all-tiers"
LEFT_OUT = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        ALL_TIERS, action="store_true", help="run the slow tier as well (CI); without it, only the fast tier runs"
    )


def listed_as_slow(item: pytest.Item) -> bool:
    """Whether the slow tier lists ``item``'s file or its test (a test marked ``slow`` in its file is slow too)."""
    name = getattr(item, "originalname", item.name)
    return item.path.name in SLOW_FILES or f"{item.path.name}::{name}" in SLOW_TESTS


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tier ``slow``, and leave it out of a plain run of the suite. Files or tests named on the
    command line run in full, and so does ``-m``, which chooses for itself."""
    for item in items:
        if listed_as_slow(item):
            item.add_marker(pytest.mark.slow)
    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS
    if config.getoption(ALL_TIERS) or config.option.markexpr or not whole_suite:
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]
        config.stash[LEFT_OUT] = len(slow)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if config.stash.get(LEFT_OUT, 0):
        terminalreporter.write_line(
            f"fast tier: {config.stash[LEFT_OUT]} tests of the slow tier left out (python -m pytest -q {ALL_TIERS})"
        )


def shared_dataset(name: str) -> Path:
    """Path of a dataset in ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA / name
    if not (path / "images").is_dir():
        pytest.skip(f"real data not available: {path} is missing (it sits beside the repository in CI)")
    return path


@pytest.fixture(scope="session")
def jsrt_dir() -> Path:
    return shared_dataset("jsrt")


@pytest.fixture(scope="session")
def covid_dir() -> Path:
    return shared_dataset("covid_opacity")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny prepared phantom dataset (16 cases, 256x256, half with opacities) with its datalist."""
    from cxrseg.phantoms import generate_dataset

    return Path(generate_dataset(tmp_path_factory.mktemp("phantoms") / "data", count=16, size=256, seed=7))


def bundle_names() -> list[str]:
    """Every bundle folder, so a new bundle is covered by adding its folder."""
    return sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "metadata.json").is_file())


@dataclass
class TrainingRecord:
    """What a short training run did: the mean training loss of each epoch and the validation Dice of each
    validation (the first one of the untrained network when ``validate_first`` was asked)."""

    epoch_losses: list[float]
    val_dice: list[float]


def train_bundle(bundle_dir: Path, validate_first: bool = False, **overrides: Any) -> TrainingRecord:
    """Run a bundle's ``train.yaml`` on CPU with ``overrides`` through MONAI's ``ConfigWorkflow``, as
    ``monai.bundle run`` does, recording the loss of every iteration and the key validation metric.

    The real-data training tests of every bundle share this, so that they differ only in their settings and
    in what they require of the record."""
    losses: dict[int, list[float]] = {}
    val_dice: list[float] = []
    with bundle_imports(bundle_dir):
        workflow = ConfigWorkflow(
            config_file=str(bundle_dir / "configs" / "train.yaml"),
            workflow_type="train",
            bundle_root=str(bundle_dir),
            device="$torch.device('cpu')",
            **overrides,
        )
        workflow.initialize()
        # seeded before the engines (and the network in them) are built, as `run` seeds before building them
        # under `python -m monai.bundle run`; unseeded, the initial weights would differ from run to run
        set_determinism(seed=workflow.parser.get_parsed_content("seed"))
        trainer = workflow.parser.get_parsed_content("train#trainer")
        evaluator = workflow.parser.get_parsed_content("validate#evaluator")
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED,
            lambda e: losses.setdefault(e.state.epoch, []).append(float(e.state.output[0]["loss"])),
        )
        evaluator.add_event_handler(Events.COMPLETED, lambda e: val_dice.append(e.state.metrics["val_mean_dice"]))
        if validate_first:
            evaluator.run()
        workflow.run()
        workflow.finalize()
    return TrainingRecord([float(np.mean(losses[epoch])) for epoch in sorted(losses)], val_dice)


def save_untrained_weights(bundle_dir: Path, out_file: Path, config: str = "inference.yaml") -> Path:
    """Save a freshly initialised ``network_def`` state dict as ``out_file``: a checkpoint for tests of file
    handling, where the weights do not matter."""
    with bundle_imports(bundle_dir):
        parser = ConfigParser()
        parser.read_config(str(bundle_dir / "configs" / config))
        parser["bundle_root"] = str(bundle_dir)
        network = parser.get_parsed_content("network_def")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out_file)
    return out_file
