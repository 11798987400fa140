"""A change to what a bundle packages comes with a new version: the content hash of each bundle's current
metadata ``version`` must be the one recorded for it in tests/bundle_versions.json (tools/bundle_hashes.py).

Each failure says what to do: bump ``version`` and add a ``changelog`` entry, or record a new version with
``python -m tools bundle_hashes --record``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BUNDLES_DIR, bundle_names

from tools.bundle_hashes import bundle_state, content_hash, packaged_files, read_record, record_versions
from tools.package import copy_bundle


@pytest.mark.parametrize("bundle", bundle_names())
def test_packaged_content_matches_the_version_recorded(bundle: str) -> None:
    state = bundle_state(BUNDLES_DIR / bundle, read_record())
    assert state.problem is None, state.problem


def test_hash_covers_the_package_and_nothing_else(tmp_path: Path) -> None:
    """The hash reads what the zip holds: the shared code through the link, the weights, not run products;
    a copy with the link materialised (as the zip has it) hashes the same."""
    bundle = BUNDLES_DIR / "res_cr_net"
    files = [relative for relative, _ in packaged_files(bundle)]
    assert "models/model.pt" in files and "scripts/cxrseg/inference.py" in files
    assert not any("__pycache__" in name or name.endswith(".pyc") or name.startswith("eval/") for name in files)
    copy = copy_bundle(bundle, tmp_path / "res_cr_net")
    (copy / "eval").mkdir()
    (copy / "eval" / "measurements.csv").write_text("run product\n")
    assert content_hash(copy) == content_hash(bundle)
    (copy / "scripts" / "cxrseg" / "inference.py").write_text("# changed\n", encoding="utf-8")
    assert content_hash(copy) != content_hash(bundle)


def test_a_change_needs_a_new_version(tmp_path: Path) -> None:
    """Changed content at a recorded version is refused with what to do; a new version with its changelog
    entry is recorded beside the old one."""
    copy = copy_bundle(BUNDLES_DIR / "res_cr_net", tmp_path / "res_cr_net")
    record = {"res_cr_net": {bundle_state(copy, {}).version: content_hash(copy)}}
    (copy / "docs" / "README.md").write_text("changed\n", encoding="utf-8")
    changed = bundle_state(copy, record)
    assert "Bump `version`" in changed.problem and "changelog" in changed.problem
    with pytest.raises(ValueError, match="Bump `version`"):
        record_versions([changed], record)
    metadata = copy / "configs" / "metadata.json"
    text = metadata.read_text(encoding="utf-8")
    bumped = text.replace(f'"version": "{changed.version}"', '"version": "99.0.0"', 1)
    bumped = bumped.replace('"changelog": {', '"changelog": {\n        "99.0.0": "a test change",', 1)
    metadata.write_text(bumped, encoding="utf-8")
    new = bundle_state(copy, record)
    assert new.version == "99.0.0" and new.has_changelog and "not recorded" in new.problem
    updated = record_versions([new], record)
    assert updated["res_cr_net"] == record["res_cr_net"] | {"99.0.0": new.current}
