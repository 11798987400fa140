"""Inference backends: eager PyTorch, or ONNX Runtime (``--backend onnxruntime``), which runs the
``models/model.onnx`` that ``python -m tools export <bundle>`` writes, inside the bundle's own ``inference.yaml``.

The exported graph is traced at the metadata's input shape, so it takes exactly that shape (batch 1, the
bundle's ``image_size``). Before the first image the export is checked against the eager network with the
checkpoint's weights, with the tolerance the export's own check uses: a ``model.onnx`` left over from other
weights stops the run instead of segmenting an archive with the wrong model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_dst_type
from torch import nn

BACKENDS = ("pytorch", "onnxruntime")
ONNX_TOLERANCE = 1e-3
logger = logging.getLogger(__name__)


def onnx_session(onnx_path: str | Path, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU (and CUDA where onnxruntime has it), using ``threads``
    intra-op threads (default: as many as torch uses, so that the backends compare fairly)."""
    try:
        import onnxruntime  # optional (requirements-export.txt): only this backend and the export need it
    except ImportError as error:
        raise ImportError(
            "--backend onnxruntime needs the onnxruntime package (pip install -r requirements-export.txt)"
        ) from error
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ONNX model; write it with `python -m tools export <bundle>`")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    providers = [
        p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()
    ]
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


def run_session(session: Any, inputs: torch.Tensor) -> np.ndarray:
    """The first output of ``session`` on ``inputs``."""
    feed = {session.get_inputs()[0].name: inputs.detach().cpu().numpy().astype(np.float32)}
    return session.run(None, feed)[0]


class OnnxRuntimeNetwork(nn.Module):
    """Stands in for the eager network in the evaluator: ``forward`` runs the ONNX model.

    It holds the eager network as ``reference``, so that ``CheckpointLoader`` loads the checkpoint as it would
    for the eager backend (``load_state_dict``/``state_dict`` are the reference's); loading it runs the parity
    check, so a stale export fails the run at start-up, naming both files.

    Args:
        onnx_path: the exported model.
        reference: the bundle's eager ``network_def`` (weights are loaded into it).
        spatial_size: the ``image_size`` of the inference config, which the export's input must have.
        tolerance: largest absolute difference from the eager network accepted by the parity check.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        reference: nn.Module,
        spatial_size: Sequence[int] | None = None,
        tolerance: float = ONNX_TOLERANCE,
    ) -> None:
        super().__init__()
        self.onnx_path = Path(onnx_path)
        self.reference = reference
        self.tolerance = tolerance
        self.session = onnx_session(onnx_path)
        self.input_shape = [int(size) for size in self.session.get_inputs()[0].shape]
        if spatial_size is not None and self.input_shape[2:] != [int(size) for size in spatial_size]:
            raise ValueError(
                f"{self.onnx_path} takes {self.input_shape[2:]} images but image_size is "
                f"{list(spatial_size)}; export again at this image_size"
            )
        self.max_abs_diff: float | None = None

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.reference.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        result = self.reference.load_state_dict(state_dict, strict=strict, assign=assign)
        self.check_parity()
        return result

    def check_parity(self, seed: int = 0) -> float:
        """Largest absolute difference between the ONNX and the eager network on one random input in [0, 1] (the
        networks' input range) of the export's shape; raises when it exceeds the tolerance."""
        example = torch.rand(self.input_shape, generator=torch.Generator().manual_seed(seed))
        device = next(self.reference.parameters()).device
        with torch.no_grad():
            eager = self.reference.eval()(example.to(device))
        while isinstance(eager, (list, tuple)):
            eager = eager[0]
        self.max_abs_diff = float(np.abs(run_session(self.session, example) - eager.cpu().numpy()).max())
        if self.max_abs_diff > self.tolerance:
            raise ValueError(
                f"{self.onnx_path} differs from the eager network with the loaded checkpoint by "
                f"{self.max_abs_diff:.3g} (> {self.tolerance:g}): it was exported from other weights; run "
                "`python -m tools export <bundle>` again"
            )
        logger.info("ONNX Runtime backend: %s, max |onnx - eager| = %.3g", self.onnx_path, self.max_abs_diff)
        return self.max_abs_diff

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if list(inputs.shape) != self.input_shape:
            raise ValueError(
                f"{self.onnx_path} takes inputs of shape {self.input_shape}, got {list(inputs.shape)} "
                "(the ONNX export has a fixed shape: batch 1 at the bundle's image_size)"
            )
        # as the eager network's output, a MetaTensor carrying the input's metadata and transforms, which Invertd needs
        return convert_to_dst_type(run_session(self.session, inputs), inputs)[0]


def inference_network(
    network: nn.Module,
    backend: str = "pytorch",
    onnx_path: str | Path | None = None,
    spatial_size: Sequence[int] | None = None,
) -> nn.Module:
    """The network the inference evaluator runs: ``network`` itself, or the ONNX Runtime stand-in for it."""
    if backend == "pytorch":
        return network
    if backend == "onnxruntime":
        if onnx_path is None:
            raise ValueError("--backend onnxruntime needs onnx_path")
        return OnnxRuntimeNetwork(onnx_path, network, spatial_size)
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
