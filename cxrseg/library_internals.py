"""Every use of a private attribute of MONAI or Ignite in the collection, in one place: each does a job no
public API does (its docstring says why).

``tests/test_library_internals.py`` checks each against the installed libraries by what it does, so an upgrade
that renames or changes one fails there, naming it, rather than silently changing the bundles' behaviour.
"""

from __future__ import annotations

from typing import Any

from monai.engines import Workflow
from monai.handlers import CheckpointSaver


def default_iteration(engine: Workflow, batchdata: dict) -> Any:
    """Run the engine's own MONAI iteration (e.g. ``SupervisedEvaluator._iteration``) from a custom
    ``iteration_update``. MONAI documents that ``iteration_update`` replaces ``self._iteration()`` but offers no
    public way to call the original from the replacement, which is what a wrapper around it needs."""
    return engine._iteration(engine, batchdata)


def make_checkpoints_atomic(saver: CheckpointSaver) -> None:
    """Switch on Ignite's atomic writes (temporary file, then rename) in every checkpoint a MONAI
    ``CheckpointSaver`` writes. MONAI builds its ``DiskSaver``s with ``atomic=False`` and exposes neither an
    option nor the savers; replacing the whole handler would mean re-implementing MONAI's file naming."""
    for checkpoint in (saver._final_checkpoint, saver._key_metric_checkpoint, saver._interval_checkpoint):
        if checkpoint is not None:
            checkpoint.save_handler._atomic = True
