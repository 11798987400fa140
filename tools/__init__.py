"""Command-line tools of the collection: ``python -m tools <command> ...`` from the repository root.

The commands are listed in ``tools/__main__.py``; ``python -m tools <command> --help`` describes one.
"""
