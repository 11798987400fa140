"""Speed of the ONNX Runtime backend against eager PyTorch: ``python -m benchmarks backends``.

Both backends run the bundle's own ``inference.yaml`` over the same folder, one after the other in one process
with the same thread count, so the figures differ only by the backend: images per second from the evaluator's
start to its end (reading, preprocessing, network, postprocessing, writing), and the network's own time per
image (forward hooks). The ONNX model is exported first with ``tools.export`` (and so checked against eager).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from cxrseg.bundle import bundle_imports
from cxrseg.phantoms import default_dataset_dir
from tools.export import export_bundle
from tools.package import resolve_bundle

BACKEND_NAMES = ("pytorch", "onnxruntime")


def copy_images(source: Path, count: int, target: Path) -> Path:
    """``count`` radiographs from ``source`` (repeated as needed) as ``target/image<i>.png``."""
    images = sorted(path for path in source.iterdir() if path.suffix.lower() == ".png")
    if not images:
        raise FileNotFoundError(f"{source} holds no PNG images")
    target.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shutil.copy(images[index % len(images)], target / f"image{index:05d}.png")
    return target


def time_backend(bundle_dir: Path, images: Path, out_dir: Path, backend: str, onnx_path: Path) -> dict[str, float]:
    """Images per second of the evaluator's run and milliseconds of network per image, for one backend."""
    with bundle_imports(bundle_dir):
        workflow = ConfigWorkflow(
            config_file=str(bundle_dir / "configs" / "inference.yaml"),
            workflow_type="infer",
            bundle_root=str(bundle_dir),
            dataset_dir=str(images),
            output_dir=str(out_dir),
            backend=backend,
            onnx_path=str(onnx_path),
            device="$torch.device('cpu')",
        )
        workflow.initialize()
        evaluator = workflow.parser.get_parsed_content("evaluator")
        network = workflow.parser.get_parsed_content("network")
        spent: list[float] = []
        network.register_forward_pre_hook(lambda module, args: spent.append(-time.perf_counter()))
        network.register_forward_hook(lambda module, args, output: spent.append(time.perf_counter()))
        start = time.perf_counter()
        evaluator.run()
        elapsed = time.perf_counter() - start
    count = evaluator.state.iteration
    return {"images": count, "images_per_s": count / elapsed, "network_ms": 1000 * sum(spent) / max(count, 1)}


def backends(bundle: str = "lung_vae", images: str | None = None, count: int = 200, threads: int = 1) -> None:
    """Time BUNDLE's inference with eager PyTorch and with ONNX Runtime over the same COUNT radiographs (copied
    from IMAGES, default the synthetic phantoms, into a temporary folder), THREADS threads each; prints a table."""
    torch.set_num_threads(threads)
    bundle_dir = resolve_bundle(bundle)
    with tempfile.TemporaryDirectory(prefix="cxrseg-backends-") as scratch:
        work = Path(scratch)
        folder = copy_images(Path(images) if images else Path(default_dataset_dir()) / "images", count, work / "in")
        export = export_bundle(bundle_dir, work / "export", formats=("onnx",))["onnx"]
        results = {
            name: time_backend(bundle_dir, folder, work / name, name, Path(str(export["path"])))
            for name in BACKEND_NAMES
        }
    print(
        f"{bundle}: {count} radiographs, {threads} thread(s); ONNX export max |onnx - eager| = "
        f"{export['max_abs_diff']:.3g}"
    )
    print("| backend | images | images/s | network ms per image |")
    print("|---|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['images']} | {result['images_per_s']:.2f} | {result['network_ms']:.1f} |")
