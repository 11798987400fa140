"""Running bundles as a user runs them, for the tools and the tests that drive whole bundles.

A run is ``python -m monai.bundle run`` in a subprocess with ``--id value`` overrides, so whatever measures or
checks it pays for everything a user pays for; an in-process run parses a bundle config inside
:func:`cxrseg.bundle.bundle_imports`. Also here: what a finished run wrote (its JSON records, the cases its
evaluation scored).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def available_bundles() -> list[str]:
    """The bundle folders that can train (have ``configs/train.yaml``), sorted by name."""
    return sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "train.yaml").is_file())


def read_bundle_yaml(bundle_dir: Path, config: str) -> dict[str, Any]:
    """A bundle config as plain YAML (no references resolved): for reading literal defaults cheaply."""
    return yaml.safe_load((bundle_dir / "configs" / config).read_text(encoding="utf-8"))


def read_metadata(bundle_dir: Path) -> dict[str, Any]:
    """A bundle's ``configs/metadata.json``: the Model Zoo's keys and the collection's own (``held_out``)."""
    return json.loads((bundle_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))


def subprocess_env(threads: int = 1, bundle_dir: Path | None = None) -> dict[str, str]:
    """Environment of bundle subprocesses: repository importable, thread count pinned (the machine is shared).

    ``bundle_dir`` is put on the path from the start, for override configs whose ``initialize`` names bundle
    code (MONAI adds the bundle root itself only when ``run`` starts).
    """
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(bundle_dir) if bundle_dir else None, env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def override_arguments(overrides: Mapping[str, Any]) -> list[str]:
    """``--id value`` pairs for ``monai.bundle run``; values are written as Python literals, which fire parses."""
    arguments = []
    for key, value in overrides.items():
        if isinstance(value, Path):
            value = str(value)
        text = value if isinstance(value, str) else repr(value)
        arguments += [f"--{key}", text]
    return arguments


def monai_run(
    config_files: Sequence[str | Path],
    overrides: Mapping[str, Any],
    timeout: float | None = None,
    threads: int = 1,
    log_file: Path | None = None,
    bundle_on_path: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run`` on ``config_files`` (merged in order) with ``overrides``, from the
    repository root; capture its output (and copy it to ``log_file``). ``bundle_on_path``: see
    :func:`subprocess_env` (the bundle is the folder above the first config file)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr([str(f) for f in config_files])]
    result = subprocess.run(
        command + override_arguments(overrides),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(threads, Path(config_files[0]).parents[1] if bundle_on_path else None),
        timeout=timeout,
    )
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}", encoding="utf-8")
    return result


def output_tail(result: subprocess.CompletedProcess, lines: int = 25) -> str:
    """The last ``lines`` of a run's output: where a failing run says why."""
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])


def read_json(path: Path) -> dict | None:
    """A JSON record a run wrote, or None when the run stopped before writing it."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def parse_bundle_config(
    bundle_dir: Path, config: str, overrides: Mapping[str, Any] | None = None, weights: Path | None = None
) -> Any:
    """A ``ConfigParser`` of one of the bundle's configs with ``bundle_root`` and ``overrides`` set, and the settings
    file of ``weights`` (other weights than the ones the config states) read after the config; use it inside
    :func:`cxrseg.bundle.bundle_imports` of the same bundle, which makes its ``scripts`` importable."""
    from monai.bundle import ConfigParser

    from cxrseg.settings import settings_config_files

    files = [bundle_dir / "configs" / config]
    parser = ConfigParser()
    parser.read_config(settings_config_files(files, weights) if weights is not None else str(files[0]))
    parser["bundle_root"] = str(bundle_dir)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def scored_cases(dataset_dir: str | Path, cases: Sequence[str]) -> list[dict]:
    """Datalist entries (absolute paths) of the named cases of a prepared dataset, in the given order: the
    cases an evaluation scored, whatever split or fold they came from."""
    from cxrseg.data import absolute_entry, discover_cases

    by_case = {entry["case"]: entry for entry in discover_cases(dataset_dir)}
    return [absolute_entry(by_case[case], dataset_dir) for case in cases if case in by_case]


def evaluated_case_names(eval_dir: Path) -> list[str]:
    """The cases of an evaluation's ``metrics_per_case.csv`` in ``eval_dir``."""
    with open(eval_dir / "metrics_per_case.csv", newline="", encoding="utf-8") as handle:
        return [row["case"] for row in csv.DictReader(handle)]
