"""Train every bundle at its paper's settings on a lent GPU, inside a fixed budget, and bring back weights and logs.

A GPU is lent to some sessions only, for minutes (README, "Training on a lent GPU"), so the run is prepared and
tested here on CPU at tiny settings (``--tiny``), and on the GPU it does one thing: train the bundles side by side
on the one device, each through its own ``train.yaml`` (the paper's image size, epochs and batch are its
defaults), each stopped by a wall-clock budget, and copy ``model.pt``, its settings file ``model.json`` and the
training log of each into the output folder. Validation saves the best ``model.pt`` atomically after every epoch,
so a run the budget stops still brings back its best weights, with the settings they were trained at.

    python -m tools.gpu_train carry --to .gpu             # here: wheels and data into an ignored folder
    python -m tools.gpu_train device_command              # the command line to give the device tool
    python -m tools.gpu_train train --tiny --out /tmp/gpu-dry-run               # here: the CPU dry run

It runs as ``python -m tools.gpu_train`` or as ``python -m tools gpu_train``: the entry point imports only the
module of the command it runs, never what the other commands import (the benchmark's plotting), which the
carried wheels do not bring.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES = ("lung_vae", "attention_bcdunet", "res_cr_net")
DEFAULT_SOURCES = ("jsrt", "montgomery", "shenzhen")
# what a fresh Python 3.12 with torch needs besides it to run the bundles (ITK is too big to carry: PNG and DICOM
# reading never needs it)
CARRIED_WHEELS = ("monai==1.6.1", "pytorch-ignite==0.5.5", "nibabel==5.4.2", "fire==0.7.1")
# the smallest sizes each network accepts, for the CPU dry run
TINY_IMAGE_SIZES = {
    "lung_vae": [64, 64],
    "attention_bcdunet": [32, 32],
    "res_cr_net": [32, 32],
    "opacity_unet": [64, 64],
}


def bundle_command(bundle: str, dataset_dirs: list[str], run_dir: Path, tiny: bool, workers: int) -> list[str]:
    """``monai.bundle run`` of one bundle's ``train.yaml`` at its defaults (the paper's settings), writing
    checkpoints and logs under ``run_dir``; ``tiny`` shrinks it to one epoch of four images."""
    bundle_dir = REPO_ROOT / "bundles" / bundle
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle_dir / "configs" / "train.yaml"),
        "--bundle_root",
        str(bundle_dir),
        "--dataset_dir",
        json.dumps(dataset_dirs),
        "--ckpt_dir",
        str(run_dir / "models"),
        "--output_dir",
        str(run_dir / "eval"),
        "--num_workers",
        str(workers),
    ]
    if tiny:
        command += ["--epochs", "1", "--train_size", "4", "--image_size", json.dumps(TINY_IMAGE_SIZES[bundle])]
    return command


def collect(bundle: str, run_dir: Path, out: Path) -> dict[str, object]:
    """Copy the best weights with their settings file and the log of one run to ``out/<bundle>/`` and say what
    came of it."""
    target = out / bundle
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run_dir / "train.log", target / "train.log")
    weights = run_dir / "models" / "model.pt"
    if weights.is_file():
        shutil.copy2(weights, target / "model.pt")
    # the settings file beside the weights (cxrseg.settings.settings_path; not imported: this module stays stdlib)
    settings = weights.with_suffix(".json")
    if settings.is_file():
        shutil.copy2(settings, target / settings.name)
    return {"bundle": bundle, "weights": weights.is_file()}


def train(
    out: str,
    data_root: str = str(REPO_ROOT.parent / "shared" / "data"),
    bundles: tuple[str, ...] | list[str] = DEFAULT_BUNDLES,
    sources: tuple[str, ...] | list[str] = DEFAULT_SOURCES,
    minutes: float = 9.0,
    workers: int = 3,
    tiny: bool = False,
    work_dir: str | None = None,
) -> None:
    """Train ``bundles`` side by side, each for at most ``minutes``, on ``sources`` under ``data_root``; copy each
    one's ``model.pt``, ``model.json`` and ``train.log`` to ``out/<bundle>/`` and write ``out/summary.json``.

    ``--tiny`` is the CPU dry run: synthetic phantoms, one epoch of four images at the smallest size. Exits 1 when
    a bundle brought back no weights.
    """
    out_dir = Path(out)
    runs = Path(work_dir) if work_dir else out_dir.parent / f"{out_dir.name}-runs"
    if tiny:
        from cxrseg.phantoms import default_dataset_dir

        dataset_dirs = [default_dataset_dir(count=16, size=128)]
        workers = 0
    else:
        dataset_dirs = [str(Path(data_root) / source) for source in sources]
    started = time.monotonic()
    processes = {}
    for bundle in bundles:
        run_dir = runs / bundle
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir / "train.log", "w", encoding="utf-8")
        command = ["timeout", "--signal=INT", "--kill-after=60", f"{int(minutes * 60)}"]
        command += bundle_command(bundle, dataset_dirs, run_dir, tiny, workers)
        processes[bundle] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT), log)
    results = []
    for bundle, (process, log) in processes.items():
        returncode = process.wait()
        log.close()
        result = collect(bundle, runs / bundle, out_dir)
        result |= {"exit_status": returncode, "stopped_by_budget": returncode == 124}
        results.append(result)
        print(json.dumps(result), flush=True)
    summary = {"minutes": round((time.monotonic() - started) / 60, 2), "tiny": tiny, "bundles": results}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if not all(result["weights"] for result in results):
        raise SystemExit(1)


def carry(
    to: str = ".gpu",
    sources: tuple[str, ...] | list[str] = DEFAULT_SOURCES,
    data_root: str = str(REPO_ROOT.parent / "shared" / "data"),
) -> None:
    """Put what the GPU machine lacks into ``to`` (an ignored folder of the repository, named in the device call's
    ``carry``): wheels of the bundles' pure-Python requirements for Python 3.12, and the ``sources`` datasets
    (read in place here, never committed). Prints the size, which must stay under the 64 MiB a call carries."""
    target = REPO_ROOT / to
    exclude = REPO_ROOT / ".git" / "info" / "exclude"
    if f"/{to}/" not in exclude.read_text(encoding="utf-8"):
        with open(exclude, "a", encoding="utf-8") as handle:
            handle.write(f"/{to}/\n")
    wheels = target / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "-d",
            str(wheels),
            *CARRIED_WHEELS,
        ],
        check=True,
    )
    for source in sources:
        shutil.copytree(Path(data_root) / source, target / "data" / source, dirs_exist_ok=True)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"{target}: {size / 2**20:.1f} MiB")


def device_command(minutes: float = 9.0, to: str = ".gpu") -> str:
    """The one command line to give the device tool (with ``carry: [<to>]``): install the wheels, train, report."""
    return (
        f"python3 -m pip install -q --no-index --no-deps --target /tmp/site {to}/wheels/*.whl && "
        f"export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && "
        f"python3 -m tools.gpu_train train --data_root {to}/data --out $OUT --minutes {minutes}"
    )


COMMANDS = {"train": train, "carry": carry, "device_command": device_command}

if __name__ == "__main__":
    import fire

    fire.Fire(COMMANDS, name="tools.gpu_train")
