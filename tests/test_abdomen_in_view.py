"""No lung below the diaphragm: the shipped lung bundles on real AP radiographs that show the upper abdomen.

Portable ICU radiographs often show the abdomen; a lung field that runs below both hemidiaphragms inflates the
lung area and hands opacity_unet abdomen to read as opacity. The cases are the eight of covid_qu_ex's held-out split
(reference lungs ending above 70 % of the image height, 188 cases) where the weights shipped before covid_qu_ex
ran furthest into the abdomen (lung_vae 0.4.2: up to 12 % of the field, attention_bcdunet 0.6.1: up to 41 %),
through each bundle's own inference.yaml and shipped weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLES_DIR, shared_dataset
from PIL import Image

from cxrseg.data import load_split
from cxrseg.evaluation import spill_below

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

# res_cr_net 0.6 ran into the abdomen (mean 9.6 % on these eight, one case 44 %; 1.0 % over all 188) and 0.7's
# second look at the lungs still does here (0.7 % over 174 abdomen-in-view cases, the same 44 % worst): strict,
# so that the day it stops, the test says so
LUNG_BUNDLES = (
    "lung_vae",
    "attention_bcdunet",
    pytest.param(
        "res_cr_net",
        marks=pytest.mark.xfail(strict=True, reason="res_cr_net 0.7's lung field still runs below the diaphragm"),
    ),
)
ABDOMEN_IN_VIEW = (
    "non_covid_val_non_COVID4946",
    "non_covid_val_non_COVID4988",
    "covid19_val_covid_2240",
    "covid19_val_covid_2229",
    "normal_val_Normal10279",
    "covid19_val_covid_1923",
    "covid19_val_covid_2614",
    "normal_val_Normal10258",
)
# the largest share of a predicted lung field allowed below the diaphragm, per case and on average
MAX_SPILL = 0.10
MAX_MEAN_SPILL = 0.035


@pytest.mark.parametrize("bundle", LUNG_BUNDLES)
def test_lung_field_stops_at_the_diaphragm(bundle: str, tmp_path: Path) -> None:
    cases = [e for e in load_split(shared_dataset("covid_qu_ex"), "test") if e["case"] in ABDOMEN_IN_VIEW]
    assert len(cases) == len(ABDOMEN_IN_VIEW)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for entry in cases:
        (inputs / Path(entry["image"]).name).symlink_to(entry["image"])
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    command += [str(BUNDLES_DIR / bundle / "configs" / "inference.yaml"), "--bundle_root", str(BUNDLES_DIR / bundle)]
    command += ["--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "out"), "--num_workers", "0"]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    spill = {}
    for entry in cases:
        lungs = np.asarray(Image.open(tmp_path / "out" / f"{entry['case']}_seg.png")) == 1
        spill[entry["case"]] = spill_below(lungs, np.asarray(Image.open(entry["label"]["lungs"])) > 0)
    assert max(spill.values()) <= MAX_SPILL, spill
    assert np.mean(list(spill.values())) <= MAX_MEAN_SPILL, spill
