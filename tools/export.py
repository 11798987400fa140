"""Export a bundle's trained network to TorchScript and ONNX, each checked against the eager network.

Both exports go through MONAI's bundle commands (``ckpt_export``, ``onnx_export``) as the Model Zoo runs them.
TorchScript is scripted unless the metadata says ``"torchscript_export": "trace"`` (with the reason in
``"torchscript_note"``). ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``): the dynamo
exporter would need ``onnxscript`` as well, and the traced graph is what the TorchScript check already covers.
Each export is run on one random input in the metadata's value range and compared with the eager network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser, ckpt_export, onnx_export

from cxrseg.backends import onnx_session, run_session
from cxrseg.bundle import bundle_imports
from cxrseg.settings import settings_config_files
from tools.package import resolve_bundle

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}


def config_files(bundle_dir: Path, ckpt_file: Path) -> tuple[str, list[str]]:
    """The metadata and the configs the Zoo's export commands read: the inference config, then the settings file of
    the checkpoint, whose ids replace the config's (``cxrseg/settings.py``), where it has one."""
    inference = bundle_dir / "configs" / "inference.yaml"
    return str(bundle_dir / "configs" / "metadata.json"), settings_config_files([inference], ckpt_file)


def example_input(metadata: dict, seed: int = 0) -> torch.Tensor:
    """A batch of one input in the value range and shape the metadata declares for the network."""
    image = next(iter(metadata["network_data_format"]["inputs"].values()))
    low, high = (image.get("value_range") or [0.0, 1.0])[:2]
    shape = [1, int(image["num_channels"]), *(int(size) for size in image["spatial_shape"])]
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=generator)


def eager_network(bundle_dir: Path, ckpt_file: Path) -> torch.nn.Module:
    """``network_def`` of the inference config with the checkpoint's weights, in eval mode on the CPU; built with
    the checkpoint's settings (:func:`config_files`)."""
    meta_file, config_file = config_files(bundle_dir, ckpt_file)
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.read_meta(meta_file)
    parser["bundle_root"] = str(bundle_dir)
    network = parser.get_parsed_content("network_def")
    state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state))
    return network.eval()


def _first_output(output: object) -> np.ndarray:
    while isinstance(output, (list, tuple)):
        output = output[0]
    if isinstance(output, dict):
        output = next(iter(output.values()))
    return output.detach().cpu().numpy() if isinstance(output, torch.Tensor) else np.asarray(output)


def export_arguments(bundle_dir: Path, ckpt_file: Path, filepath: Path) -> dict[str, Any]:
    """What MONAI's ``ckpt_export`` and ``onnx_export`` both need: the network id and the files (the configs with the
    checkpoint's settings, :func:`config_files`, which the export also stores beside the network)."""
    meta_file, config_file = config_files(bundle_dir, ckpt_file)
    return {
        "net_id": "network_def",
        "filepath": str(filepath),
        "ckpt_file": str(ckpt_file),
        "meta_file": meta_file,
        "config_file": config_file,
        "bundle_root": str(bundle_dir),
    }


def export_torchscript(
    bundle_dir: Path, ckpt_file: Path, filepath: Path, metadata: dict, example: torch.Tensor
) -> None:
    trace = metadata.get("torchscript_export", "script") == "trace"
    ckpt_export(
        **export_arguments(bundle_dir, ckpt_file, filepath),
        use_trace=trace,
        input_shape=list(example.shape) if trace else None,
    )


def export_onnx(bundle_dir: Path, ckpt_file: Path, filepath: Path, metadata: dict, example: torch.Tensor) -> None:
    onnx_export(
        **export_arguments(bundle_dir, ckpt_file, filepath),
        use_trace=True,
        input_shape=list(example.shape),
        converter_kwargs={
            "dynamo": False,
            "opset_version": ONNX_OPSET,
            "input_names": ["image"],
            "output_names": ["pred"],
            "verify": False,
        },
    )


def run_exported(fmt: str, filepath: Path, example: torch.Tensor) -> np.ndarray:
    """The exported network's output on ``example``: TorchScript through torch.jit, ONNX through onnxruntime as the
    bundles' ``--backend onnxruntime`` runs it."""
    if fmt == "torchscript":
        with torch.no_grad():
            return _first_output(torch.jit.load(str(filepath), map_location="cpu")(example))
    return run_session(onnx_session(filepath), example)


def export_bundle(
    bundle: str | Path,
    out_dir: str | Path | None = None,
    formats: tuple[str, ...] = FORMATS,
    ckpt_file: str | Path | None = None,
) -> dict[str, dict[str, float | str]]:
    """Export ``bundle`` in each format to ``out_dir`` (default ``<bundle>/models``) and compare with eager.

    Returns ``{format: {"path": ..., "max_abs_diff": ...}}``; the difference is over all outputs of one
    example input of the metadata's shape.
    """
    bundle_dir = resolve_bundle(bundle)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export formats {sorted(unknown)}; choose from {FORMATS}")
    ckpt = Path(ckpt_file) if ckpt_file else bundle_dir / "models" / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no trained weights to export")
    target_dir = Path(out_dir) if out_dir else bundle_dir / "models"
    target_dir.mkdir(parents=True, exist_ok=True)
    metadata = json.loads((bundle_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))
    example = example_input(metadata)
    exporters = {"torchscript": export_torchscript, "onnx": export_onnx}
    results: dict[str, dict[str, float | str]] = {}
    with bundle_imports(bundle_dir):
        with torch.no_grad():
            reference = _first_output(eager_network(bundle_dir, ckpt)(example))
        for fmt in formats:
            filepath = target_dir / f"model{SUFFIXES[fmt]}"
            exporters[fmt](bundle_dir, ckpt, filepath, metadata, example)
            exported = run_exported(fmt, filepath, example)
            if exported.shape != reference.shape:
                raise ValueError(f"{filepath}: output shape {exported.shape} differs from eager {reference.shape}")
            results[fmt] = {"path": str(filepath), "max_abs_diff": float(np.abs(exported - reference).max())}
    return results


def export(bundle: str, formats: str = ",".join(FORMATS), out_dir: str | None = None, ckpt_file: str | None = None):
    """Export BUNDLE's models/model.pt to TorchScript (model.ts) and ONNX (model.onnx) and print each export's
    maximum absolute difference from the eager network. FORMATS: comma-separated, torchscript and/or onnx."""
    chosen = tuple(fmt.strip() for fmt in (formats.split(",") if isinstance(formats, str) else formats))
    try:
        results = export_bundle(bundle, out_dir, chosen, ckpt_file)
    except (FileNotFoundError, ValueError) as error:
        print(f"export: {error}")
        raise SystemExit(1) from error
    for fmt, result in results.items():
        print(f"{fmt}: {result['path']} max |exported - eager| = {result['max_abs_diff']:.3g}")
