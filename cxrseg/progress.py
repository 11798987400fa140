"""Progress bars for inference over a folder and for training epochs (Ignite's tqdm ``ProgressBar``).

A run over tens of thousands of radiographs needs to say how far it is and when it will end; a batch job's log
must not fill with bar redraws. So the bar shows count, rate and ETA, only when stderr is a terminal (tqdm's
``disable=None``), and only on rank 0 of a multi-process run, whose share is a fair estimate of the whole.
"""

from __future__ import annotations

import sys
from typing import TextIO

import torch.distributed as dist
from ignite.handlers import ProgressBar

BAR_FORMAT = "{desc}[{n_fmt}/{total_fmt}] {percentage:3.0f}%|{bar}| {rate_fmt}{postfix} [{elapsed}<{remaining}]"


def progress_bar(description: str = "", stream: TextIO | None = None) -> ProgressBar:
    """An Ignite ``ProgressBar`` (a handler: list it in ``val_handlers``/``train_handlers``) with rate and ETA,
    off when ``stream`` (default stderr) is not a terminal and on every rank but 0."""
    first_rank = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    return ProgressBar(
        persist=True,
        bar_format=BAR_FORMAT,
        desc=description,
        file=stream or sys.stderr,
        disable=None if first_rank else True,
    )
