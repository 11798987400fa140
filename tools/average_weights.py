"""Average the weights of fine-tunes of one network (a uniform "model soup").

Two fine-tunes that start from the same weights and pull towards different data (attention_bcdunet: JSRT +
COVID-19 for the heart and dense opacity, JSRT + Shenzhen for Shenzhen's lung outline) sit in one basin of the
loss, so their mean keeps most of what each one gained, where a third run on all the data trades one gain for
the other (Wortsman et al., *Model soups*, ICML 2022). Inputs are ``model.pt`` state dicts or the trainer's
``checkpoint_*.pt`` files (their ``model`` entry); the output is a state dict, as every bundle ships.
"""

from __future__ import annotations

from pathlib import Path

import torch

StateDict = dict[str, torch.Tensor]


def load_state_dict(path: Path) -> StateDict:
    """The network weights that ``path`` holds, whether a bare state dict or a training checkpoint."""
    content = torch.load(path, map_location="cpu", weights_only=True)
    return content.get("model", content)


def mean_state_dict(state_dicts: list[StateDict]) -> StateDict:
    """Entry-wise mean of floating-point tensors; other entries (batch counters) from the first.

    Raises ``ValueError`` naming the entries that differ when the state dicts are not of one network.
    """
    first = state_dicts[0]
    for other in state_dicts[1:]:
        if other.keys() != first.keys():
            raise ValueError(f"not the same network: entries differ: {sorted(other.keys() ^ first.keys())[:5]}")
        shapes = [key for key in first if other[key].shape != first[key].shape]
        if shapes:
            raise ValueError(f"not the same network: shapes differ at {shapes[:5]}")
    return {
        key: torch.stack([sd[key].float() for sd in state_dicts]).mean(0).to(tensor.dtype)
        if tensor.is_floating_point()
        else tensor.clone()
        for key, tensor in first.items()
    }


def average_weights(output: str, *inputs: str) -> None:
    """Write the mean of the weights in ``inputs`` (two or more ``model.pt`` or checkpoint files) to ``output``."""
    if len(inputs) < 2:
        print("average_weights: give an output file and at least two weight files to average")
        raise SystemExit(2)
    try:
        averaged = mean_state_dict([load_state_dict(Path(path)) for path in inputs])
    except ValueError as error:
        print(f"average_weights: {', '.join(inputs)}: {error}")
        raise SystemExit(1) from error
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    torch.save(averaged, output)
    print(f"{output}: mean of {len(inputs)} weight files")
