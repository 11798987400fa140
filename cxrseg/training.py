"""Training helpers for bundle configs: checkpoints that survive a kill, the best model's settings file, and
finding the checkpoint to resume from."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointSaver

from .bundle import as_flag
from .library_internals import make_checkpoints_atomic
from .settings import write_settings

CHECKPOINT_GLOB = "checkpoint_*.pt"
logger = logging.getLogger(__name__)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose every file is written to a temporary file in the same folder and then
    renamed over the target, so a process killed mid-write (SIGKILL, full disk) never leaves a half-written
    ``model.pt`` or ``checkpoint_*.pt``.

    MONAI builds Ignite's ``DiskSaver`` with ``atomic=False`` only because Ignite's temporary files used to be
    readable by their owner alone; Ignite now adds group and other read permission after the rename, so the
    atomic mode is switched back on here. Ignite removes the oldest checkpoint before writing the next one, so
    resumable training also needs ``n_saved`` of at least 2.

    With ``settings`` (the config's ``weights_settings``: the ids that define the network and its input, with their
    values), every time it writes the best model ``key_metric_filename`` it writes their values beside it
    (``model.pt`` -> ``model.json``, :mod:`cxrseg.settings`), which evaluation and inference check their configs
    against and take as their last config file for these weights.
    """

    def __init__(self, *args: Any, settings: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        make_checkpoints_atomic(self)
        self.settings = None if settings is None else dict(settings)
        self.best_model_file = kwargs.get("key_metric_filename")
        if self.settings is not None and self.best_model_file is None:
            raise ValueError("settings are written beside the best model, which needs a fixed key_metric_filename")
        self._settings_written_for: tuple[int, int] | None = None

    def metrics_completed(self, engine: Engine) -> None:
        """Save the best model when the key metric improved (MONAI's handler), then its settings beside it."""
        super().metrics_completed(engine)
        if self.settings is not None:
            self._write_settings_of_best_model()

    def _write_settings_of_best_model(self) -> None:
        """Write the settings file once per file the best model was (re)written to: each atomic write makes a new
        file, told apart by inode and modification time."""
        best_model = Path(self.save_dir) / str(self.best_model_file)
        if not best_model.is_file():
            return
        status = best_model.stat()
        written_for = (status.st_ino, status.st_mtime_ns)
        if written_for != self._settings_written_for:
            write_settings(best_model, self.settings or {})
            self._settings_written_for = written_for


def _checkpoint_order(path: Path) -> tuple[int, float]:
    """Sort key: the epoch/iteration number Ignite puts at the end of the name, then the write time."""
    numbers = re.findall(r"(\d+)", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.stat().st_mtime)


def resuming(resume: bool | str, ckpt_dir: str | Path) -> bool:
    """Whether a run continues from a checkpoint in ``ckpt_dir``: ``--resume true`` and one is there. With none
    yet, the run starts from the beginning and says so, so that one command both starts and continues a run."""
    if not as_flag(resume):
        return False
    if latest_checkpoint(ckpt_dir) is None:
        logger.warning(f"--resume true: no {CHECKPOINT_GLOB} in {ckpt_dir} yet; training starts from the beginning")
        return False
    return True


def latest_checkpoint(ckpt_dir: str | Path) -> str | None:
    """Newest resumable checkpoint (trainer, optimizer and network states) in ``ckpt_dir``, or None.

    The trainers save ``checkpoint_*.pt`` through :class:`AtomicCheckpointSaver`, so any file found here is
    complete even if training was killed mid-write.
    """
    candidates = sorted(Path(ckpt_dir).glob(CHECKPOINT_GLOB), key=_checkpoint_order)
    return str(candidates[-1]) if candidates else None
