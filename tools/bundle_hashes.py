"""A content hash of what each bundle packages, recorded per version in ``tests/bundle_versions.json``.

The Model Zoo asks that every change to a bundle come with a new metadata ``version`` and a ``changelog``
entry for it, so that two copies of one version are the same bundle. What a bundle ships is its folder as
``python -m tools package`` zips it: its own files, weights included, and the shared ``cxrseg`` code that its
``scripts/cxrseg`` link carries, without run products and caches (``tools.package.EXCLUDED_NAMES``).
``tests/test_bundle_versions.py`` compares each bundle's hash with the one recorded for its current version,
so a change without a new version fails there, with what to do.

The hash is the same on every machine: files in sorted order of their path inside the bundle (``/``
separated, links resolved), each contributing its path, its size and its bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tools.package import BUNDLES_DIR, REPO_ROOT, is_excluded

RECORD = REPO_ROOT / "tests" / "bundle_versions.json"
RECORD_COMMAND = "python -m tools bundle_hashes --record"


def packaged_files(bundle_dir: Path) -> list[tuple[str, Path]]:
    """``(path inside the bundle, file)`` of everything the bundle's package holds, sorted by the first."""
    files = []
    for folder, subfolders, names in os.walk(bundle_dir, followlinks=True):
        subfolders[:] = [name for name in subfolders if not is_excluded(name)]
        for name in names:
            if not is_excluded(name):
                path = Path(folder) / name
                files.append((path.relative_to(bundle_dir).as_posix(), path))
    return sorted(files)


def content_hash(bundle_dir: Path) -> str:
    digest = hashlib.sha256()
    for relative, path in packaged_files(bundle_dir):
        data = path.read_bytes()
        digest.update(f"{relative}\0{len(data)}\0".encode())
        digest.update(data)
    return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class BundleState:
    """A bundle's current version and content hash against the record; ``problem`` says what to do, if anything."""

    name: str
    version: str
    current: str
    recorded: str | None
    has_changelog: bool

    @property
    def problem(self) -> str | None:
        metadata = f"bundles/{self.name}/configs/metadata.json"
        if not self.has_changelog:
            return f"{self.name}: version {self.version} has no `changelog` entry in {metadata}; add one"
        if self.recorded is None:
            return (
                f"{self.name} {self.version} is not recorded in {RECORD.relative_to(REPO_ROOT)}: run "
                f"`{RECORD_COMMAND}` and commit the file"
            )
        if self.recorded != self.current:
            return (
                f"{self.name}: what the bundle packages changed, but its version is still {self.version} "
                f"(recorded {self.recorded}, now {self.current}). Bump `version` in {metadata}, add a "
                f"`changelog` entry for it, then run `{RECORD_COMMAND}`"
            )
        return None


def read_record(record: Path = RECORD) -> dict[str, dict[str, str]]:
    return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}


def bundle_dirs(bundles_dir: Path = BUNDLES_DIR) -> list[Path]:
    return sorted(path for path in bundles_dir.iterdir() if (path / "configs" / "metadata.json").is_file())


def bundle_state(bundle_dir: Path, record: dict[str, dict[str, str]]) -> BundleState:
    metadata = json.loads((bundle_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))
    version = str(metadata["version"])
    return BundleState(
        name=bundle_dir.name,
        version=version,
        current=content_hash(bundle_dir),
        recorded=record.get(bundle_dir.name, {}).get(version),
        has_changelog=version in metadata.get("changelog", {}),
    )


def record_versions(states: list[BundleState], record: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The record with every unrecorded current version added. A recorded version whose content changed is
    never rewritten: that change needs a new version (an entry of a version never released, added on the
    same branch, may be deleted by hand and recorded again)."""
    refused = [
        state.problem for state in states if state.problem and (state.recorded is not None or not state.has_changelog)
    ]
    if refused:
        raise ValueError("\n".join(refused))
    updated = {name: dict(versions) for name, versions in record.items()}
    for state in states:
        updated.setdefault(state.name, {})[state.version] = state.current
    return {name: dict(sorted(versions.items())) for name, versions in sorted(updated.items())}


def bundle_hashes(record: bool = False) -> None:
    """Print each bundle's version and content hash against tests/bundle_versions.json; exit 1 on a mismatch.

    --record: add the current version of every bundle that is not recorded yet (refused for a recorded version
    whose content changed: bump its version and add a changelog entry first)."""
    recorded = read_record()
    states = [bundle_state(bundle_dir, recorded) for bundle_dir in bundle_dirs()]
    if record:
        try:
            recorded = record_versions(states, recorded)
        except ValueError as error:
            print(error)
            raise SystemExit(1) from error
        RECORD.write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")
        states = [bundle_state(bundle_dir, recorded) for bundle_dir in bundle_dirs()]
    for state in states:
        print(f"{state.name:20} {state.version:8} {state.current}  {state.problem or 'recorded'}")
    if any(state.problem for state in states):
        raise SystemExit(1)
