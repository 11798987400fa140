"""Commands around the synthetic phantoms of :mod:`cxrseg.phantoms` (imported lazily: it is large) and the
contact sheet that shows them or any prepared dataset."""

from __future__ import annotations


def phantoms(out: str, count: int = 100, size: int = 512, seed: int = 0, opacity_fraction: float = 0.5) -> str:
    """Write COUNT synthetic chest X-ray phantoms of SIZE x SIZE pixels into OUT, in the prepared layout.

    Case i depends only on (SEED, i), so a larger set extends a smaller one. OPACITY_FRACTION is the share of
    cases with ground-glass and consolidation. Prints the dataset folder.
    """
    from cxrseg.phantoms import generate_dataset

    return str(generate_dataset(out, count=count, size=size, seed=seed, opacity_fraction=opacity_fraction))


def contact_sheet(dataset_dir: str, out: str, count: int = 8, columns: int = 4, tile: int = 256) -> str:
    """Draw the first COUNT cases of the prepared dataset DATASET_DIR with mask outlines into the PNG file OUT.

    Works for any prepared dataset (phantoms or `prepare` output), as a visual check of images and masks.
    Prints the PNG path.
    """
    from tools.contact_sheet import contact_sheet as draw_contact_sheet

    return str(draw_contact_sheet(dataset_dir, out, count=count, columns=columns, tile=tile))
