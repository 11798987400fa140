"""Shipping weights: the best-validation state dict stored in half precision, so the ResNet18 U-Net
(12.1 M parameters, 48 MB in float32) fits the Model Zoo's 25 MB. ``load_state_dict`` casts back to float32.

    python -m scripts.weights models/model.pt models/model.pt    (from the bundle folder; the source may also
                                                                be a training checkpoint)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def state_dict_of(source: str | Path) -> dict[str, torch.Tensor]:
    """The network weights in ``source``: a state dict, or a training checkpoint's ``model`` entry (e.g. the last
    epoch of a run, as the cross-validation scores it and as a start for the next stage)."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    return state.get("model", state)


def save_half_precision(source: str | Path, target: str | Path) -> int:
    """Write ``source``'s weights (``state_dict_of``) with floating-point tensors as float16 to ``target``;
    returns its size."""
    state = state_dict_of(source)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, target)
    return Path(target).stat().st_size


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m scripts.weights SOURCE.pt TARGET.pt")
    print(f"{sys.argv[2]}: {save_half_precision(sys.argv[1], sys.argv[2])} bytes")
