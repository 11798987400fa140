"""Benchmarks and studies of the bundles: ``python -m benchmarks <command> ...`` from the repository root.

Not needed to use the bundles (``tools/`` holds what a user runs); these commands measure them: accuracy and
speed of the shipped weights, robustness to other hospitals' radiographs, old against new checkouts. The
commands are listed in ``benchmarks/__main__.py`` and described in ``benchmarks/README.md``.
"""
