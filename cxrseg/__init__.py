"""Code shared by the chest X-ray segmentation bundles.

This package exists once in the repository and is linked into every bundle as
``scripts/cxrseg`` (see README, "Shared code"), so bundle configs reach it as
``scripts.cxrseg.<module>`` while tools and tests import it as ``cxrseg``.
Modules use relative imports only, so both import paths work.
"""
