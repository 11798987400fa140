"""What the bundles' configs share stays shared: the post-processing chain of the lung bundles is built once
(``cxrseg/chains.py``) with the same arguments by ``inference.yaml`` and ``evaluate.yaml``, the multi-GPU
inference override is one file in four copies, and no config reads a yes/no value from the command line
itself (``cxrseg.bundle.as_flag`` does, in the code that takes it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from conftest import BUNDLES_DIR, bundle_names

CHAIN_BUILDER = "scripts.cxrseg.chains.label_map_steps"


def raw_config(bundle: str, name: str) -> dict[str, Any]:
    return yaml.safe_load((BUNDLES_DIR / bundle / "configs" / name).read_text(encoding="utf-8"))


def builder_calls(config: Any) -> Iterator[dict[str, Any]]:
    """Every mapping of ``config`` (nested anywhere) that calls the post-processing builder."""
    if isinstance(config, dict):
        if config.get("_target_") == CHAIN_BUILDER:
            yield config
        children = config.values()
    elif isinstance(config, list):
        children = config
    else:
        return
    for child in children:
        yield from builder_calls(child)


def lung_bundles() -> list[str]:
    """The bundles whose inference.yaml builds its post-processing with the builder."""
    return [bundle for bundle in bundle_names() if list(builder_calls(raw_config(bundle, "inference.yaml")))]


def test_every_lung_bundle_builds_its_post_processing() -> None:
    assert {"attention_bcdunet", "lung_vae", "res_cr_net"} <= set(lung_bundles())


@pytest.mark.parametrize("bundle", lung_bundles())
def test_evaluation_post_processes_as_inference(bundle: str) -> None:
    """One call of the builder in each config, with the same arguments but the preprocessing it inverts."""
    (inference,) = builder_calls(raw_config(bundle, "inference.yaml"))
    (evaluation,) = builder_calls(raw_config(bundle, "evaluate.yaml"))
    assert inference.pop("preprocessing") == "@preprocessing"
    assert evaluation.pop("preprocessing") == "@validate#preprocessing"
    assert inference == evaluation


def test_multi_gpu_inference_is_the_same_file_in_every_bundle() -> None:
    texts = {
        bundle: (BUNDLES_DIR / bundle / "configs" / "multi_gpu_inference.yaml").read_bytes()
        for bundle in bundle_names()
    }
    assert len(set(texts.values())) == 1, f"multi_gpu_inference.yaml differs between bundles: {sorted(texts)}"


@pytest.mark.parametrize("bundle", bundle_names())
def test_no_config_reads_a_flag_itself(bundle: str) -> None:
    for path in sorted((BUNDLES_DIR / bundle / "configs").glob("*.yaml")):
        assert ".lower()" not in path.read_text(encoding="utf-8"), f"{path}: read the flag with as_flag"
