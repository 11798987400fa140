"""Training helpers for bundle configs: checkpoints that survive a kill, and finding the one to resume from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from monai.handlers import CheckpointSaver

from .library_internals import make_checkpoints_atomic

CHECKPOINT_GLOB = "checkpoint_*.pt"


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose every file is written to a temporary file in the same folder and then
    renamed over the target, so a process killed mid-write (SIGKILL, full disk) never leaves a half-written
    ``model.pt`` or ``checkpoint_*.pt``.

    MONAI builds Ignite's ``DiskSaver`` with ``atomic=False`` only because Ignite's temporary files used to be
    readable by their owner alone; Ignite now adds group and other read permission after the rename, so the
    atomic mode is switched back on here. Ignite removes the oldest checkpoint before writing the next one, so
    resumable training also needs ``n_saved`` of at least 2.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        make_checkpoints_atomic(self)


def _checkpoint_order(path: Path) -> tuple[int, float]:
    """Sort key: the epoch/iteration number Ignite puts at the end of the name, then the write time."""
    numbers = re.findall(r"(\d+)", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.stat().st_mtime)


def latest_checkpoint(ckpt_dir: str | Path) -> str | None:
    """Newest resumable checkpoint (trainer, optimizer and network states) in ``ckpt_dir``, or None.

    The trainers save ``checkpoint_*.pt`` through :class:`AtomicCheckpointSaver`, so any file found here is
    complete even if training was killed mid-write.
    """
    candidates = sorted(Path(ckpt_dir).glob(CHECKPOINT_GLOB), key=_checkpoint_order)
    return str(candidates[-1]) if candidates else None
