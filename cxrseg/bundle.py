"""Where a bundle lives, found from the code rather than from the working directory."""

from pathlib import Path


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
