"""Package a bundle as the Model Zoo distributes it: ``<name>_v<version>.zip`` holding the folder ``<name>/``.

The zip is self-contained: the ``scripts/cxrseg`` link to the shared package becomes a real folder, and what
a run leaves behind (``eval/``, resumable checkpoints, exports, caches) stays out. Files over the Zoo's 25 MB
limit are refused, since the Zoo would refuse them (large weights belong in ``large_files.yml``).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
ZOO_MAX_FILE_BYTES = 25 * 1024 * 1024
EXCLUDED_NAMES = ("eval", "__pycache__", ".pytest_cache", "*.pyc", "checkpoint_*.pt", "*.ts", "*.onnx", ".DS_Store")


def resolve_bundle(bundle: str | Path) -> Path:
    """A bundle folder from its name (a folder of ``bundles/``) or its path."""
    path = Path(bundle)
    if not path.is_dir():
        path = BUNDLES_DIR / str(bundle)
    if not (path / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{path}: not a bundle folder (no configs/metadata.json)")
    return path.resolve()


def bundle_version(bundle_dir: Path) -> str:
    """The metadata ``version``, which the Zoo requires to have an entry in ``changelog``."""
    metadata_file = bundle_dir / "configs" / "metadata.json"
    metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    version = metadata.get("version")
    if not version:
        raise ValueError(f"{metadata_file}: no version")
    if version not in metadata.get("changelog", {}):
        raise ValueError(f"{metadata_file}: version {version} has no entry in changelog")
    return str(version)


def is_excluded(name: str) -> bool:
    """Whether a file or folder of this name stays out of a package (a run product or a cache)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in EXCLUDED_NAMES)


def _ignored(folder: str, names: list[str]) -> set[str]:
    return {name for name in names if is_excluded(name)}


def copy_bundle(bundle_dir: str | Path, destination: str | Path) -> Path:
    """Copy a bundle with its symbolic links materialised into real files, leaving out run products.

    The copy runs anywhere (``bundle_root`` is found from ``scripts/cxrseg`` inside it), which is what the
    Zoo, MONAI Label and tests need.
    """
    return Path(shutil.copytree(Path(bundle_dir), Path(destination), symlinks=False, ignore=_ignored))


def oversized_files(folder: Path, limit: int = ZOO_MAX_FILE_BYTES) -> list[str]:
    """Files above the Zoo's size limit, as ``path (N MB)``."""
    return [
        f"{path.relative_to(folder)} ({path.stat().st_size / 2**20:.1f} MB)"
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.stat().st_size > limit
    ]


def build_zip(bundle: str | Path, out_dir: str | Path = REPO_ROOT / "dist") -> Path:
    """Write ``<out_dir>/<name>_v<version>.zip`` and return its path; raise ValueError on a Zoo violation."""
    bundle_dir = resolve_bundle(bundle)
    version = bundle_version(bundle_dir)
    archive = Path(out_dir) / f"{bundle_dir.name}_v{version}.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        staged = copy_bundle(bundle_dir, Path(scratch) / bundle_dir.name)
        too_large = oversized_files(staged)
        if too_large:
            raise ValueError(f"{bundle_dir}: files over the Model Zoo's 25 MB limit: {', '.join(too_large)}")
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
            for path in sorted(staged.rglob("*")):
                if path.is_file():
                    handle.write(path, path.relative_to(staged.parent).as_posix())
    return archive


def package(bundle: str, out_dir: str = str(REPO_ROOT / "dist")) -> str:
    """Package BUNDLE (a name in bundles/ or a path) as OUT_DIR/<name>_v<version>.zip in the Model Zoo layout."""
    try:
        archive = build_zip(bundle, out_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"package: {error}")
        raise SystemExit(1) from error
    return str(archive)
