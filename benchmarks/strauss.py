"""Benchmark of the Strauss diffuse-noise generator (cxrseg/augment.py) against the simple approach.

The simple approach draws 10-20 random overlapping circles at full resolution with scikit-image and blurs the
full-resolution mask; the Strauss generator samples and draws on a coarse grid and upsamples the smooth field.
Both run in this process on one thread, so the ratio holds on any machine even when absolute times vary.

    python -m benchmarks strauss [--rows 640 --cols 512 --repeats 200]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage
from skimage.draw import disk

from cxrseg.augment import draw_disks, sample_strauss, strauss_field


def simple_disk_field(rng: np.random.RandomState, shape: tuple[int, int], smoothing: float = 0.02) -> np.ndarray:
    """10-20 random circles (radius 2-8 % of the height) drawn at full size with skimage, then a Gaussian blur."""
    rows, cols = shape
    mask = np.zeros(shape, dtype=np.float32)
    for _ in range(rng.randint(10, 21)):
        centre = (rng.uniform(0, rows), rng.uniform(0, cols))
        mask[disk(centre, rng.uniform(0.02, 0.08) * rows, shape=shape)] = 1.0
    return ndimage.gaussian_filter(mask, smoothing * rows)


def milliseconds_per_call(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time of ``function`` in ms, after two warm-up calls.

    CPU time (of this single-threaded process) is what the generator costs; wall time also counts the
    time other processes held the core, which on a shared machine can be several times larger.
    """
    for _ in range(2):
        function()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return float(np.median(wall)), float(np.median(cpu))


def stage_times(rng: np.random.RandomState, shape: tuple[int, int], repeats: int) -> dict[str, float]:
    """Median CPU ms of each stage of the Strauss generator at its defaults (downsample 8): where time goes."""
    coarse = (-(-shape[0] // 8), -(-shape[1] // 8))
    scale = coarse[0] / shape[0]
    centres = sample_strauss(rng, coarse, 12.0, 0.3, 0.1 * coarse[0], 120)
    radii = rng.uniform(0.02, 0.08, len(centres)) * coarse[0]
    disks = draw_disks(coarse, centres, radii)
    blurred = ndimage.gaussian_filter(disks, 0.02 * shape[0] * scale)
    return {
        "sample_strauss (birth-death chain, 120 proposals)": milliseconds_per_call(
            lambda: sample_strauss(rng, coarse, 12.0, 0.3, 0.1 * coarse[0], 120), repeats
        )[1],
        "draw_disks (coarse grid)": milliseconds_per_call(lambda: draw_disks(coarse, centres, radii), repeats)[1],
        "gaussian_filter (coarse grid)": milliseconds_per_call(
            lambda: ndimage.gaussian_filter(disks, 0.02 * shape[0] * scale), repeats
        )[1],
        "bilinear upsampling to full size": milliseconds_per_call(
            lambda: torch.nn.functional.interpolate(
                torch.from_numpy(blurred)[None, None], size=shape, mode="bilinear", align_corners=False
            ),
            repeats,
        )[1],
    }


def strauss(rows: int = 640, cols: int = 512, repeats: int = 200) -> dict[str, float]:
    """Time the Strauss diffuse-noise generator against 10-20 full-size circles on a ROWS x COLS mask, one thread.

    Prints the median wall and CPU ms of both, the speed-up and where the generator's time goes; returns the
    median CPU ms of each.
    """
    torch.set_num_threads(1)
    shape = (rows, cols)
    rng = np.random.RandomState(0)
    strauss_wall, strauss_cpu = milliseconds_per_call(lambda: strauss_field(rng, shape), repeats)
    simple_wall, simple_cpu = milliseconds_per_call(lambda: simple_disk_field(rng, shape), repeats)
    print(f"diffuse-noise mask {rows}x{cols}, {repeats} repeats, 1 thread")
    print(
        f"  Strauss process, coarse grid + upsampling: wall {strauss_wall:7.2f} ms   CPU {strauss_cpu:7.2f} ms (median)"
    )
    print(f"  10-20 skimage circles + full-size blur:   wall {simple_wall:7.2f} ms   CPU {simple_cpu:7.2f} ms (median)")
    print(f"  speed-up: {simple_wall / strauss_wall:.1f}x (wall), {simple_cpu / strauss_cpu:.1f}x (CPU)")
    print("  Strauss stages (median CPU ms):")
    for stage, milliseconds in stage_times(rng, shape, repeats).items():
        print(f"    {stage:52s} {milliseconds:6.2f}")
    return {"strauss_cpu_ms": strauss_cpu, "simple_cpu_ms": simple_cpu}
