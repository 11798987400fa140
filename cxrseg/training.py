"""Training helpers for bundle configs: finding the checkpoint to resume from."""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT_GLOB = "checkpoint_*.pt"


def _checkpoint_order(path: Path) -> tuple[int, float]:
    """Sort key: the epoch/iteration number Ignite puts at the end of the name, then the write time."""
    numbers = re.findall(r"(\d+)", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.stat().st_mtime)


def latest_checkpoint(ckpt_dir: str | Path) -> str | None:
    """Newest resumable checkpoint (trainer, optimizer and network states) in ``ckpt_dir``, or None.

    The trainers save ``checkpoint_*.pt`` through Ignite's ``DiskSaver``, which writes to a temporary file
    and renames it, so any file found here is complete even if training was killed mid-write.
    """
    candidates = sorted(Path(ckpt_dir).glob(CHECKPOINT_GLOB), key=_checkpoint_order)
    return str(candidates[-1]) if candidates else None
