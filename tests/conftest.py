"""Fixtures shared by the test suite: repository paths, the real shared data, tiny phantom datasets, and
clean imports of one bundle's ``scripts`` package at a time."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ZOO_SCHEMA = REPO_ROOT / "tools" / "zoo" / "meta_schema_20240725.json"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


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


@contextlib.contextmanager
def bundle_imports(bundle_dir: Path) -> Iterator[None]:
    """Make ``import scripts`` mean this bundle's scripts for the duration, as MONAI's runner does.

    Every bundle names its code package ``scripts`` (the Model Zoo convention), so one process that runs
    several bundles must drop the previous bundle's modules before importing the next one's.
    """
    def unload() -> None:
        for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
            del sys.modules[name]

    unload()
    sys.path.insert(0, str(bundle_dir))
    try:
        yield
    finally:
        sys.path.remove(str(bundle_dir))
        unload()


def bundle_names() -> list[str]:
    """Every bundle folder, so a new bundle is covered by adding its folder."""
    return sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "metadata.json").is_file())
