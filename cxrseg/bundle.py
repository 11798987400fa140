"""Where a bundle lives, and which bundle's ``scripts`` package a process imports."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType


def bundle_root() -> str:
    """Return the bundle folder that holds this copy of ``scripts/cxrseg``.

    Configs use it as the default ``bundle_root`` so that
    ``python -m monai.bundle run --config_file bundles/<b>/configs/train.yaml`` works from any
    working directory. The path is taken from ``__file__`` without resolving the symbolic link,
    because the link (``bundles/<b>/scripts/cxrseg``) is what tells the bundles apart.
    """
    this_file = Path(__file__)
    if this_file.parent.parent.name != "scripts":
        raise RuntimeError(
            f"bundle_root() must be called through a bundle's scripts/cxrseg link, not from {this_file.parent}"
        )
    return str(this_file.parent.parent.parent.absolute())


SCRIPTS_PACKAGE = "scripts"


def _loaded_scripts_modules() -> dict[str, ModuleType]:
    return {
        name: module
        for name, module in sys.modules.items()
        if name == SCRIPTS_PACKAGE or name.startswith(SCRIPTS_PACKAGE + ".")
    }


@contextlib.contextmanager
def bundle_imports(bundle_dir: str | Path) -> Iterator[None]:
    """Let ``import scripts`` mean ``bundle_dir``'s code package inside the block, and what it meant before after.

    Every bundle names its code package ``scripts`` (the Model Zoo convention), so a process that uses several
    bundles (the tests, the two-stage opacity pipeline, exports, benchmarks) must swap the package per bundle,
    as MONAI Label does. Objects built inside the block keep working after it: they hold their modules.
    """
    previous = _loaded_scripts_modules()
    for name in previous:
        del sys.modules[name]
    sys.path.insert(0, str(bundle_dir))
    try:
        yield
    finally:
        sys.path.remove(str(bundle_dir))
        for name in _loaded_scripts_modules():
            del sys.modules[name]
        sys.modules.update(previous)


def as_flag(value: bool | str) -> bool:
    """A yes/no config value as a bool: ``python -m monai.bundle run --skip_existing false`` passes the string
    "false" (Python Fire reads only ``False`` as a bool), which would otherwise count as true."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"expected true or false, got {value!r}")
