"""``tools.contact_sheet``: the visual check of a prepared dataset (``python -m tools contact_sheet``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrseg.phantoms import generate_dataset
from tools.contact_sheet import contact_sheet


def test_contact_sheet_has_expected_size_and_colour_overlays(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "phantoms", count=6, size=96, seed=0)

    out = contact_sheet(root, tmp_path / "sheet" / "phantoms.png", count=6, columns=4, tile=80)

    with Image.open(out) as sheet:
        assert sheet.format == "PNG" and sheet.size == (4 * 80, 2 * 80)
        pixels = np.asarray(sheet.convert("RGB")).astype(int)
    assert (np.abs(pixels[..., 0] - pixels[..., 1]) > 60).any()
    assert (pixels[80:, 160:] < 10).all()


def test_contact_sheet_rejects_folder_without_images(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no PNG images"):
        contact_sheet(tmp_path, tmp_path / "sheet.png")
