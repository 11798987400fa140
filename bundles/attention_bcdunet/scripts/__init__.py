"""Attention BCDU-Net bundle code: the network, the focal Tversky loss, CLAHE and the cardiothoracic ratio."""

# A bundle copied with `cp -r` keeps scripts/cxrseg as a relative link to the repository's cxrseg/, which dangles
# outside the repository: fail on the first import of the bundle's code and say how to copy it (README, "Layout").
import pathlib

_shared_code = pathlib.Path(__file__).parent / "cxrseg"
if not (_shared_code / "__init__.py").is_file():
    raise ImportError(
        f"{_shared_code} does not resolve: it links to the repository's shared code, which this copy of the bundle "
        f"lacks. Copy a bundle with `python -m tools package {_shared_code.parents[1].name}` (a Model Zoo zip) or "
        "`cp -rL`, which carry the shared code along."
    )
