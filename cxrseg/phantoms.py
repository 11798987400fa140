"""Synthetic chest radiograph phantoms with ground truth: the collection's embedded default data.

Every bundle trains, evaluates and infers out of the box on these phantoms, so tests and quick starts need no
download and no licence. A phantom is drawn as a map of X-ray attenuation (soft tissue, bone, air) in an
anatomical frame (x from image left to image right, y from top to bottom, both 0..1, patient's right on the
image left), placed with a random pose, turned into a radiograph with random exposure and detector noise, and
its masks come from the same geometry, so image and ground truth always agree. Everything is vectorised numpy,
scipy.ndimage and PIL drawing (smooth anatomy at half resolution): a 512 x 512 phantom takes about 0.1 s of one
CPU core, PNG writing included.

Mask conventions follow the SCR annotations of JSRT: lung fields are the visible lungs, so the heart and the
mediastinum are cut out of them (heart and lungs touch but do not overlap; SCR's shared border is a one-pixel
line); the clavicle masks cover the part of each clavicle that projects over its lung's width, overlapping
the apex; ground-glass opacity and consolidation are disjoint and lie inside the lung masks.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.interpolate import CubicSpline

from .data import write_datalist

VERSION = "v1"
STRUCTURES = ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle", "ggo", "consolidation")
METADATA_COLUMNS = ("case", "patientid", "opacity_percent", "went_icu", "survival")
CACHE_ENV = "CXRSEG_CACHE"
UNKNOWN_OUTCOME_RATE = 0.25


@dataclass(frozen=True)
class Pose:
    """Where the patient lies in the image: scale, rotation and shift of the anatomical frame about the centre."""

    size: int
    scale: float
    angle: float
    shift_x: float
    shift_y: float

    def grid(self, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical (x, y) of the pixel centres of the image shrunk by ``step``, each a square array."""
        cells = self.size // step
        centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        dx = centres[None, :] - 0.5 - self.shift_x
        dy = centres[:, None] - 0.5 - self.shift_y
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return 0.5 + (cos * dx + sin * dy) / self.scale, 0.5 + (cos * dy - sin * dx) / self.scale

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Anatomical points to ``(N, 2)`` pixel (row, col) coordinates."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        px, py = np.asarray(x) - 0.5, np.asarray(y) - 0.5
        qx = 0.5 + self.shift_x + self.scale * (cos * px - sin * py)
        qy = 0.5 + self.shift_y + self.scale * (sin * px + cos * py)
        return np.stack([qy * self.size - 0.5, qx * self.size - 0.5], axis=1)

    def polygon(self, outline: np.ndarray) -> np.ndarray:
        """Boolean mask inside a closed anatomical ``(N, 2)`` (x, y) outline (PIL rasterises it: fast)."""
        canvas = Image.new("L", (self.size, self.size))
        ImageDraw.Draw(canvas).polygon([(c, r) for r, c in self.to_pixels(*outline.T).tolist()], fill=255)
        return np.asarray(canvas) > 0

    def pixels(self, length: float) -> float:
        """An anatomical length in pixels."""
        return length * self.size * self.scale


def _smoothstep(value: np.ndarray) -> np.ndarray:
    clipped = np.clip(value, 0.0, 1.0)
    return clipped * clipped * (3.0 - 2.0 * clipped)


def _bezier(points: Sequence[tuple[float, float]], samples: int = 48) -> np.ndarray:
    """Points along a Bezier curve with the given control points, as an ``(samples, 2)`` array of (x, y)."""
    control = np.asarray(points, dtype=np.float64)
    t = np.linspace(0.0, 1.0, samples)[:, None]
    degree = len(control) - 1
    weights = [math.comb(degree, k) * t**k * (1 - t) ** (degree - k) for k in range(degree + 1)]
    return sum(w * p for w, p in zip(weights, control, strict=True))


def _spline(points: Sequence[tuple[float, float]], samples: int = 160) -> np.ndarray:
    """A smooth curve through the given (x, y) points, parametrised by chord length."""
    knots = np.asarray(points, dtype=np.float64)
    chord = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(knots, axis=0).T))])
    return CubicSpline(chord, knots, bc_type="natural")(np.linspace(0.0, chord[-1], samples))


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """Bilinear enlargement of a low-resolution float rendering to ``(size, size)``, pixel centres aligned."""
    return np.array(Image.fromarray(coarse.astype(np.float32)).resize((size, size), Image.BILINEAR))


def _smooth_noise(rng: np.random.Generator, size: int, correlation: float) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over ``correlation`` (fraction of the side), made at low resolution."""
    low = min(size, max(8, int(round(3.0 / correlation))))
    white = rng.standard_normal((low, low), dtype=np.float32)
    field = _upsample(ndimage.gaussian_filter(white, low * correlation / 2.0, mode="wrap"), size)
    return (field - field.mean()) / (field.std() + 1e-8)


def _lung_outline(rng: np.random.Generator, side: int, dome_drop: float) -> tuple[np.ndarray, float]:
    """Closed outline of one lung (apex, chest wall, costophrenic angle, diaphragm dome, medial border).

    ``side`` is -1 for the image-left lung (patient's right) and +1 for the image-right lung; shapes are drawn
    for the image-left side and mirrored. The lateral outline is a spline; the diaphragm is a separate curve
    meeting it at an angle, which keeps the costophrenic and cardiophrenic angles sharp. Returns the outline as
    an ``(N, 2)`` array of (x, y) and the height of the cardiophrenic angle, where the heart meets the diaphragm.
    """
    half_width = rng.uniform(0.33, 0.41)
    lateral_x, lateral_y = 0.5 - half_width, rng.uniform(0.55, 0.68)
    apex_x, apex_y = 0.5 - rng.uniform(0.15, 0.21), rng.uniform(0.05, 0.11)
    medial_top_x = 0.5 - rng.uniform(0.06, 0.09)
    costophrenic = (lateral_x + rng.uniform(0.0, 0.025), rng.uniform(0.8, 0.88) + dome_drop)
    dome = (0.5 - rng.uniform(0.15, 0.22), costophrenic[1] - rng.uniform(0.09, 0.16))
    medial_base = (0.5 - rng.uniform(0.035, 0.06), dome[1] + rng.uniform(0.02, 0.06))
    if side < 0:  # superior vena cava, then the right hilum and atrium
        mediastinum = [(0.5 - rng.uniform(0.065, 0.09), rng.uniform(0.25, 0.3)), (0.5 - rng.uniform(0.08, 0.11), 0.46)]
    else:  # aortic knob bulging into the lung, then the concavity of the pulmonary trunk above the heart
        mediastinum = [(0.5 - rng.uniform(0.09, 0.115), rng.uniform(0.25, 0.3)), (0.5 - rng.uniform(0.07, 0.095), 0.44)]
    upper = _spline(
        [
            costophrenic,
            (lateral_x, lateral_y),
            (lateral_x + rng.uniform(0.01, 0.03), 0.5 * (lateral_y + apex_y) - 0.02),
            (0.5 * (lateral_x + apex_x) + rng.uniform(-0.01, 0.02), apex_y + rng.uniform(0.04, 0.06)),
            (apex_x, apex_y),
            (0.5 * (apex_x + medial_top_x), apex_y + 0.02),
            (medial_top_x, apex_y + rng.uniform(0.07, 0.1)),
            *mediastinum,
            medial_base,
        ]
    )
    base = _bezier([medial_base, 2 * np.asarray(dome) - 0.5 * (np.asarray(medial_base) + costophrenic), costophrenic])
    outline = np.concatenate([upper, base[1:]])
    if side > 0:
        outline[:, 0] = 1.0 - outline[:, 0]
    return outline, medial_base[1]


def _heart(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, base_y: float, lung_edge: float) -> np.ndarray:
    """Heart silhouette: a tilted egg whose lowest point is ``base_y``, its apex to the image right (patient's left).

    ``lung_edge`` is the lateral edge of the left lung; the heart stays 0.08 inside it, so lung remains beside it.
    """
    right_border = 0.5 - rng.uniform(0.06, 0.11)
    left_border = min(0.5 + rng.uniform(0.2, 0.28), lung_edge - 0.08)
    centre_x = 0.5 * (right_border + left_border)
    semi_x = 0.5 * (left_border - right_border)
    semi_y = rng.uniform(0.15, 0.19)
    tilt = rng.uniform(0.2, 0.45)
    cos, sin = math.cos(tilt), math.sin(tilt)
    centre_y = base_y - math.hypot(1.1 * semi_x * sin, 1.1 * semi_y * cos)
    u, v = cos * (x - centre_x) + sin * (y - centre_y), cos * (y - centre_y) - sin * (x - centre_x)
    egg = 1.0 + 0.18 * np.clip(v / semi_y, -1.0, 1.0)
    return (u / (semi_x * egg)) ** 2 + (v / semi_y) ** 2 <= 1.0


def _band(distance: np.ndarray, half_width: np.ndarray | float) -> np.ndarray:
    """Bone cross-section: dense cortex at both edges and lighter marrow, zero outside ``half_width``."""
    ratio = np.abs(distance) / half_width
    return np.where(ratio < 1.0, 0.5 + 0.5 * ratio**4, 0.0) * _smoothstep((1.0 - ratio) * 5.0)


def _ribs(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, thorax_top: float, thorax_bottom: float
) -> np.ndarray:
    """Posterior ribs (arching from the spine out and down) plus fainter anterior ribs (running down medially)."""
    density = np.zeros_like(x)
    count = 10
    spacing = (thorax_bottom - thorax_top) / (count - 0.5)
    lateral = np.abs(x - 0.5) / 0.42
    outward = _smoothstep((lateral - 0.06) * 8.0) * _smoothstep((1.08 - lateral) * 6.0)
    for index in range(count):
        root = thorax_top + (index + rng.uniform(-0.1, 0.1)) * spacing
        drop, peak = rng.uniform(0.15, 0.22) * (1.0 - 0.3 * index / count), rng.uniform(0.25, 0.35)
        centre = root + drop * (lateral**2 - 2 * peak * lateral) / (1.0 - 2 * peak)
        density += outward * _band(y - centre, spacing * rng.uniform(0.2, 0.25) * (1.0 + 0.4 * lateral))
        front = thorax_top + 0.1 + (index + rng.uniform(-0.1, 0.1)) * spacing * 0.8
        anterior_centre = front + rng.uniform(0.15, 0.22) * np.clip(0.98 - lateral, 0.0, None) ** 1.2
        fade = _smoothstep((lateral - 0.3) * 5.0) * _smoothstep((1.02 - lateral) * 8.0)
        density += 0.45 * fade * _band(y - anterior_centre, spacing * 0.3)
    return density


def _clavicle(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    """Clavicle density: an S-curved bone from the sternum up and out to the shoulder on one side.

    Only the rows the bone can reach are evaluated: the clavicle spans a sixth of the image height.
    """
    medial_x, medial_y = 0.5 + side * rng.uniform(0.04, 0.07), rng.uniform(0.15, 0.2)
    lateral_x, lateral_y = 0.5 + side * rng.uniform(0.3, 0.38), medial_y - rng.uniform(0.03, 0.08)
    amplitude, thickness = rng.uniform(0.006, 0.014), rng.uniform(0.012, 0.016)
    density = np.zeros_like(x)
    reach = np.flatnonzero((y.min(axis=1) < medial_y + 0.05) & (y.max(axis=1) > lateral_y - 0.05))
    if reach.size == 0:
        return density
    rows = slice(reach[0], reach[-1] + 1)
    t = (x[rows] - medial_x) / (lateral_x - medial_x)
    centre = medial_y + (lateral_y - medial_y) * t + amplitude * np.sin(2 * np.pi * t)
    half_width = thickness * (1.25 - 0.35 * t) * np.sqrt(np.clip(1.0 - (2 * t - 1) ** 8, 0.0, 1.0))
    density[rows] = np.where((t >= 0) & (t <= 1), _band(y[rows] - centre, np.maximum(half_width, 1e-4)), 0.0)
    return density


def _spine(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vertebral column in the midline: bodies with bright end plates and pedicles, one per 4.5 % of height."""
    half_width = rng.uniform(0.032, 0.042)
    period = rng.uniform(0.042, 0.05)
    phase = (y / period + rng.uniform(0, 1)) % 1.0
    lateral = np.abs(x - 0.5)
    body = _smoothstep((half_width - lateral) / 0.012)
    end_plates = np.exp(-(((phase - 0.5) / 0.06) ** 2))
    pedicles = np.exp(-((((lateral - 0.75 * half_width) / 0.008) ** 2) + ((phase - 0.25) / 0.12) ** 2))
    spinous = np.exp(-(((lateral) / 0.005) ** 2 + ((phase - 0.7) / 0.15) ** 2))
    return body * (0.55 + 0.3 * end_plates) + 0.25 * pedicles + 0.2 * spinous


def _gas(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, dome_y: float) -> np.ndarray:
    """Air outside the lungs: the trachea in the upper mediastinum and, mostly, a gastric bubble under the left dome."""
    trachea = _smoothstep((rng.uniform(0.012, 0.018) - np.abs(x - 0.505)) / 0.006) * _smoothstep((0.3 - y) / 0.04)
    if rng.random() > 0.7:
        return 0.5 * trachea
    bubble_x, bubble_y = 0.5 + rng.uniform(0.17, 0.25), dome_y + rng.uniform(0.03, 0.06)
    bubble = _smoothstep(1.0 - ((x - bubble_x) / 0.05) ** 2 - ((y - bubble_y) / 0.035) ** 2) ** 0.3
    return 0.5 * trachea + bubble


def _body(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft-tissue thickness (0..1): neck, shoulders, an elliptic torso, and sometimes the arms beside it."""
    neck, torso = rng.uniform(0.11, 0.16), rng.uniform(0.47, 0.6)
    shoulder_y = rng.uniform(0.0, 0.06)
    half_width = neck + (torso - neck) / (1.0 + np.exp(-(y - shoulder_y) / 0.03))
    half_width = half_width * (1.0 - rng.uniform(0.0, 0.06) * np.clip(y - 0.6, 0.0, None) / 0.4)
    lateral = np.abs(x - 0.5)
    thickness = np.sqrt(np.clip(1.0 - (lateral / half_width) ** 2, 0.0, 1.0))
    if rng.random() < 0.35:
        gap, arm = rng.uniform(0.01, 0.04), rng.uniform(0.06, 0.1)
        across = (lateral - half_width - gap - arm / 2) / (arm / 2)
        arms = np.sqrt(np.clip(1.0 - across**2, 0.0, 1.0)) * _smoothstep((y - shoulder_y - 0.06) / 0.05)
        thickness = np.maximum(thickness, 0.55 * arms)
    return thickness


def _vessel_tree(rng: np.random.Generator, side: int) -> tuple[np.ndarray, list[int]]:
    """One lung's vessel tree, hilum outward: ``(branches, 4, 2)`` anatomical polylines and their generations."""
    hilum_x, hilum_y = 0.5 + side * rng.uniform(0.09, 0.13), rng.uniform(0.38, 0.46)
    lateral = 0.0 if side > 0 else math.pi
    spread = np.linspace(-1.4, 1.4, 7) + rng.uniform(-0.15, 0.15, 7)
    stack = [((hilum_x, hilum_y + 0.04 * t), lateral + side * t, rng.uniform(0.05, 0.08), 0) for t in spread.tolist()]
    polylines, generations = [], []
    while stack:
        start, angle, length, depth = stack.pop()
        polyline = [start]
        for bend in rng.uniform(-0.2, 0.2, 3).tolist():
            angle += bend
            x, y = polyline[-1]
            polyline.append((x + length / 3 * math.cos(angle), y + length / 3 * math.sin(angle)))
        polylines.append(polyline)
        generations.append(depth)
        if depth < 4:
            turns, shrinks = rng.uniform(0.15, 0.5, 2).tolist(), rng.uniform(0.65, 0.85, 2).tolist()
            for sign, turn, shrink in zip((-1, 1), turns, shrinks, strict=True):
                stack.append((polyline[-1], angle + sign * turn, length * shrink, depth + 1))
    return np.array(polylines), generations


def _vessels(rng: np.random.Generator, pose: Pose, lungs: np.ndarray) -> np.ndarray:
    """Lung markings: branching, slightly curving vessels from both hila, thinning and fading outward."""
    widths = (pose.pixels(0.006), pose.pixels(0.003), 0.6)  # hilar trunks, lobar branches, peripheral twigs
    canvases = [Image.new("L", (pose.size, pose.size)) for _ in widths]
    draws = [ImageDraw.Draw(canvas) for canvas in canvases]
    for side in (-1, 1):
        polylines, generations = _vessel_tree(rng, side)
        pixels = pose.to_pixels(polylines[..., 0].ravel(), polylines[..., 1].ravel())[:, ::-1]
        for depth, points in zip(generations, pixels.reshape(len(generations), -1).tolist(), strict=True):
            draws[min(depth, 2)].line(points, fill=int(255 * (1.0 - 0.17 * depth)))
    weights = (3.5 * widths[0], 4.0, 0.8)
    markings = sum(
        weight / 255.0 * ndimage.gaussian_filter(np.asarray(canvas, np.float32), sigma, truncate=3.0)
        for weight, canvas, sigma in zip(weights, canvases, widths, strict=True)
    )
    return markings * lungs


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def _opacity_fraction(rng: np.random.Generator, opacity: bool | float) -> float:
    """Fraction of lung area to make opaque: 0 for none, a random severity for ``True``, else the number given."""
    if isinstance(opacity, (bool, np.bool_)):
        return float(np.clip(rng.beta(1.6, 2.4), 0.03, 0.85)) if opacity else 0.0
    fraction = float(opacity)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"opacity must be a bool or a lung fraction in [0, 1], got {opacity!r}")
    return fraction


def _opacities(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, lungs: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-glass and consolidation masks covering ``fraction`` of the lungs, and how much air they displace.

    Opacities grow from a smooth random field biased toward the lower and peripheral zones (as in COVID-19
    pneumonia); consolidation is the densest part of the field. Returns (ggo, consolidation, air filled 0..1).
    """
    size = lungs.shape[0]
    empty = np.zeros_like(lungs)
    if fraction <= 0.0 or not lungs.any():
        return empty, empty, np.zeros(lungs.shape, np.float32)
    unilateral = rng.random() < 0.25
    field = _smooth_noise(rng, size, rng.uniform(0.05, 0.1))
    field += rng.uniform(1.0, 3.0) * y + rng.uniform(0.5, 2.5) * np.abs(x - 0.5)
    if unilateral:
        field += np.where(x < 0.5, 1.0, -1.0) * rng.choice([-1.5, 1.5])
    threshold = np.quantile(field[lungs], 1.0 - fraction)
    region = lungs & (field > threshold)
    consolidation = empty
    if rng.random() < 0.7 and region.any():
        dense = field + 0.5 * _smooth_noise(rng, size, 0.03)
        share = rng.uniform(0.1, 0.6)
        consolidation = region & (dense > np.quantile(dense[region], 1.0 - share))
    ggo = region & ~consolidation
    haze = _smoothstep((field - threshold + 0.25) / 1.0) * rng.uniform(0.35, 0.55)
    haze *= 1.0 + 0.1 * _smooth_noise(rng, size, 0.03)
    solid = _upsample(ndimage.gaussian_filter(consolidation[::2, ::2].astype(np.float32), size * 0.005), size)
    solid *= rng.uniform(0.6, 0.85)
    return ggo, consolidation, np.maximum(haze, solid) * lungs


def _expose(density: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Density to an 8-bit radiograph: random exposure curve, field non-uniformity, quantum noise and blur."""
    size = density.shape[0]
    contrast, level, gamma = rng.uniform(1.6, 2.6), rng.uniform(-0.12, 0.05), rng.uniform(0.7, 1.2)
    rows = np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None]
    heel = 1.0 + rng.uniform(-0.06, 0.06) * rows
    signal = np.tanh(np.clip(contrast * (density - level) * heel, 0.0, None)) ** gamma
    noise_level = rng.uniform(0.008, 0.03)
    signal = signal + noise_level * np.sqrt(signal + 0.05) * rng.standard_normal(signal.shape, dtype=np.float32)
    signal = ndimage.gaussian_filter(signal, rng.uniform(0.5, 0.9) * size / 512)
    image = np.clip(signal * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, {"contrast": contrast, "level": level, "gamma": gamma, "noise": noise_level}


def _air_column(pose: Pose, masks: dict[str, np.ndarray], behind_heart: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Relative thickness of air (0..1.15) traversed by each ray, less the air that opacities displace.

    Each lung is thin at its lateral border, where the chest wall curves away, and thick medially, where it
    wraps around the heart, so the lateral edge fades while heart and diaphragm borders stay crisp; the lung
    behind the heart darkens the heart shadow (ribs show through it, as on real films). Smooth parts are
    computed at half resolution.
    """
    size = pose.size
    columns = np.arange(size // 2)[None, :]
    thickness = np.zeros((size // 2, size // 2), np.float32)
    for name, lateral_first in (("right_lung", True), ("left_lung", False)):
        half = masks[name][::2, ::2]
        if lateral_first:
            inward = columns - np.argmax(half, axis=1)[:, None]
        else:
            inward = size // 2 - 1 - np.argmax(half[:, ::-1], axis=1)[:, None] - columns
        ramp = np.sqrt(np.clip(inward / pose.pixels(0.035), 0.0, 1.0))
        thickness += half * (0.3 + 0.7 * ramp)
    lungs = masks["right_lung"] | masks["left_lung"]
    bulk = ndimage.gaussian_filter(lungs[::2, ::2].astype(np.float32), pose.pixels(0.04) / 2.0, truncate=2.5)
    thickness = ndimage.gaussian_filter(thickness * (0.85 + 0.3 * bulk), 0.7)
    hidden = ndimage.gaussian_filter(behind_heart[::2, ::2].astype(np.float32), pose.pixels(0.02) / 2.0)
    edge = ndimage.gaussian_filter(lungs.astype(np.float32), pose.pixels(0.003), truncate=3.0)
    return edge * _upsample(thickness, size) * (1.0 - filled) + 0.3 * _upsample(hidden, size)


def _width(mask: np.ndarray) -> float:
    """Horizontal extent of a mask in pixels (0 when empty)."""
    columns = np.flatnonzero(mask.any(axis=0))
    return float(columns[-1] - columns[0] + 1) if columns.size else 0.0


def _lungs_and_heart(
    rng: np.random.Generator, pose: Pose, x: np.ndarray, y: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """Visible lung fields, heart, and the lung envelopes (lungs including the part behind the heart).

    Returns ({"right_lung", "left_lung", "heart"} masks, union of envelopes, diaphragm dome height). The left
    hemidiaphragm (image right) lies a little lower, as usual; the heart sits on the diaphragm (no lung below
    it).
    """
    right_outline, _ = _lung_outline(rng, -1, 0.0)
    left_outline, cardiophrenic_y = _lung_outline(rng, 1, rng.uniform(0.0, 0.04))
    right, left = pose.polygon(right_outline), pose.polygon(left_outline)
    dome_y = float(np.quantile(y[right | left], 0.92))
    heart = _heart(x, y, rng, cardiophrenic_y + rng.uniform(0.0, 0.03), float(left_outline[:, 0].max()))
    below_heart = np.maximum.accumulate(heart, axis=0)
    masks = {
        "right_lung": _largest_component(right & ~below_heart & (x < 0.5)),
        "left_lung": _largest_component(left & ~below_heart & (x > 0.5)),
        "heart": heart,
    }
    return masks, right | left, dome_y


def generate_phantom(
    rng: np.random.Generator, size: int = 512, opacity: bool | float = False
) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """One synthetic PA chest radiograph with its masks.

    ``opacity``: ``False``/0 draws healthy lungs, ``True`` a random extent of ground-glass opacity and
    consolidation, a number in (0, 1] that fraction of the lung area. Returns the ``(size, size)`` uint8 image
    (bone bright, air dark), boolean masks for every name in ``STRUCTURES``, and an info dictionary with the
    measured opacity fraction, cardiothoracic ratio (heart width over the width of both lung fields) and the
    exposure parameters.
    """
    if size < 32 or size % 2:
        raise ValueError(f"size must be an even number of at least 32 pixels, got {size}")
    fraction = _opacity_fraction(rng, opacity)
    scale, angle = rng.uniform(0.9, 1.02), rng.uniform(-0.05, 0.05)
    pose = Pose(size, scale, angle, rng.uniform(-0.03, 0.03), rng.uniform(-0.02, 0.04))
    x, y = pose.grid()
    masks, envelopes, dome_y = _lungs_and_heart(rng, pose, x, y)
    lungs = masks["right_lung"] | masks["left_lung"]
    masks["ggo"], masks["consolidation"], filled = _opacities(rng, x, y, lungs, fraction)

    # Smooth anatomy is rendered at half resolution: a quarter of the work, invisible after detector blur.
    coarse_x, coarse_y = pose.grid(2)
    body = _upsample(_body(coarse_x, coarse_y, rng), size)
    ribs = _upsample(_ribs(coarse_x, coarse_y, rng, float(y[lungs].min()) + 0.01, dome_y), size)
    spine = _upsample(_spine(coarse_x, coarse_y, rng), size)
    gas = _upsample(_gas(coarse_x, coarse_y, rng, dome_y), size) * ~lungs
    clavicles = np.zeros_like(body)
    for side, sign in (("right", -1), ("left", 1)):
        clavicle = _upsample(_clavicle(coarse_x, coarse_y, rng, sign), size)
        columns = x[masks[f"{side}_lung"]]
        masks[f"{side}_clavicle"] = (clavicle > 0.3) & (x >= columns.min() - 0.01) & (x <= columns.max() + 0.01)
        clavicles += clavicle

    air_column = _air_column(pose, masks, masks["heart"] & envelopes, filled)
    markings = _vessels(rng, pose, lungs)
    texture = (0.012 * _smooth_noise(rng, size, 0.012) + 0.01 * _smooth_noise(rng, size, 0.05)) * lungs
    density = (
        body * (0.62 - rng.uniform(0.3, 0.36) * air_column + 0.1 * spine)
        + (0.09 * ribs + 0.2 * clavicles) * (0.35 + 0.6 * np.minimum(air_column, 1.0))
        + 0.06 * markings * (1.0 - filled)
        + texture
        + 0.07 * body * _smoothstep((float(y[lungs].min()) + 0.14 - y) / 0.12)
        - 0.14 * gas
    )
    image, exposure = _expose(density.astype(np.float32), rng)
    lung_area = max(int(lungs.sum()), 1)
    opaque = masks["ggo"] | masks["consolidation"]
    info = {
        "opacity_fraction": float(opaque.sum() / lung_area),
        "ggo_fraction": float(masks["ggo"].sum() / lung_area),
        "consolidation_fraction": float(masks["consolidation"].sum() / lung_area),
        "cardiothoracic_ratio": _width(masks["heart"]) / max(_width(lungs), 1.0),
        **exposure,
    }
    return image, {name: masks[name] for name in STRUCTURES}, info


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def _outcomes(rng: np.random.Generator, opacity_fraction: float) -> tuple[str, str]:
    """ICU admission and survival drawn from logistic functions of the opacity fraction; some left unknown ("")."""
    went_icu = "Y" if rng.random() < _sigmoid(-3.0 + 8.0 * opacity_fraction) else "N"
    survived = "Y" if rng.random() < _sigmoid(3.5 - 7.0 * opacity_fraction) else "N"
    return (
        "" if rng.random() < UNKNOWN_OUTCOME_RATE else went_icu,
        "" if rng.random() < UNKNOWN_OUTCOME_RATE else survived,
    )


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def case_name(index: int) -> str:
    """The case id of phantom ``index``."""
    return f"phantom_{index:04d}"


def generate_dataset(
    out_dir: str | Path, count: int = 100, size: int = 512, seed: int = 0, opacity_fraction: float = 0.5
) -> Path:
    """Write ``count`` phantoms in the prepared layout (images, masks, metadata.csv, datalist.json); return the folder.

    Case ``i`` depends only on ``(seed, i)``, so a larger dataset extends a smaller one with the same seed.
    ``opacity_fraction`` is the share of cases with opacities. ``datalist.json`` is written last. ``out_dir``
    must be new or empty: left-over cases of another run would otherwise join the datalist.
    """
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    if not 0.0 <= opacity_fraction <= 1.0:
        raise ValueError(f"opacity_fraction must be in [0, 1], got {opacity_fraction}")
    root = Path(out_dir)
    if root.is_dir() and any(root.iterdir()):
        raise FileExistsError(f"{root}: folder is not empty; write phantoms into a new folder")
    for folder in ["images"] + [f"masks/{name}" for name in STRUCTURES]:
        (root / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        case = case_name(index)
        rng = np.random.default_rng([seed, index])
        image, masks, info = generate_phantom(rng, size, opacity=bool(rng.random() < opacity_fraction))
        _save_png(image, root / "images" / f"{case}.png")
        for name, mask in masks.items():
            _save_png(mask.astype(np.uint8) * 255, root / "masks" / name / f"{case}.png")
        went_icu, survival = _outcomes(np.random.default_rng([seed, index, 1]), info["opacity_fraction"])
        rows.append([case, f"patient_{index:04d}", f"{100 * info['opacity_fraction']:.2f}", went_icu, survival])
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(METADATA_COLUMNS)
        writer.writerows(rows)
    write_datalist(root, seed=seed)
    return root


def cache_root() -> Path:
    """Where default phantom datasets are cached: ``$CXRSEG_CACHE`` or ``~/.cache/cxrseg``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cxrseg")


def default_dataset_dir(count: int = 100, size: int = 512, seed: int = 0) -> str:
    """The phantom dataset of bundles' default ``dataset_dir``, generated into the cache on first use.

    Generation goes to a private temporary folder renamed into place in one step, so concurrent first uses
    (several tests or DDP ranks at once) never see a half-written dataset; the loser of the race discards its
    copy and uses the winner's.
    """
    root = cache_root()
    target = root / f"phantoms-{VERSION}-{count}-{size}-{seed}"
    if (target / "datalist.json").is_file():
        return str(target)
    if target.exists():
        raise FileExistsError(f"{target}: incomplete phantom dataset (no datalist.json); delete the folder")
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        generate_dataset(scratch, count=count, size=size, seed=seed)
        scratch.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be read by everyone
        os.rename(scratch, target)
    except OSError:
        if not (target / "datalist.json").is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(target)
