"""Every ```bash block of the documentation runs as written, so that the pages cannot drift from the code.

The pages are README.md, docs/*.md, benchmarks/README.md and the model cards (:data:`PAGES`; the cards' blocks
are slow); the results log is a dated record of what was run, its blocks are ``text`` and it is only checked for
that.

Each block runs as one bash script (``set -euo pipefail``) in its own fresh copy of the repository in a
temporary folder (the commands write ``runs/``, ``dist/``, ``data/``, exports and ``docs/phantoms.png`` there,
never into the checkout; a user may run any block alone), with ``python`` being this interpreter, ``.venv``
this environment and ``.venv-monailabel`` the MONAI Label one when ``CXRSEG_MONAILABEL_PYTHON`` names it.
Every command of a block (a logical line: continuation lines joined, comment lines dropped) must match exactly
one entry of :data:`RULES`, which says how it runs here:

- as written, README's placeholders (:data:`PLACEHOLDERS`: ``IN``, ``OUT``, ``<b>``, ...) filled in;
- shortened: ``shorten`` replaces a part of the command (fewer images, epochs, processes) and says so;
- not at all: ``skip`` gives the reason (it builds environments, which ``.ci/run`` does; it needs a download,
  a second machine or hours), and the rest of the block still runs.

A command without a rule fails its block's test, so a block added to a page later is covered, not ignored.
A block that needs something absent (``../shared/data``, the MONAI Label environment, curl, onnx) is skipped
with the reason. ``data/jsrt`` and ``data/shenzhen``, which the commands expect the user to prepare from
downloads, are small phantom sets here; ``--dataset_dir ../shared/data/montgomery`` reads 4 of its cases.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SHARED_DATA

from cxrseg.phantoms import generate_dataset

README = REPO_ROOT / "README.md"
# the pages whose commands run here; the results log (a dated record) holds no bash block
RECORDS = (REPO_ROOT / "docs" / "results-log.md",)
MODEL_CARDS = tuple(sorted((REPO_ROOT / "bundles").glob("*/docs/README.md")))
PAGES = (
    README,
    *sorted(set((REPO_ROOT / "docs").glob("*.md")) - set(RECORDS)),
    REPO_ROOT / "benchmarks" / "README.md",
    *MODEL_CARDS,
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BLOCK_TIMEOUT_S = 1200
SERVER_START_TIMEOUT_S = 600
MONAILABEL_ENV = "CXRSEG_MONAILABEL_PYTHON"
# the bundle that README's generic commands (bundles/<b>/...) run here
GENERIC_BUNDLE = "res_cr_net"
# what a copy of the repository leaves out: version control, environments, run products and prepared data
COPY_LEFT_OUT_AT_TOP = {"runs", "dist", "data"}
COPY_LEFT_OUT = ("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", "eval", "checkpoint_*.pt", "*.ts", "*.onnx")

# resources a command may need, and how to tell whether this machine has them
NEEDS = {
    "shared_data": lambda: (SHARED_DATA / "montgomery" / "images").is_dir() and (SHARED_DATA / "jsrt").is_dir(),
    "monailabel": lambda: bool(os.environ.get(MONAILABEL_ENV)),
    "curl": lambda: shutil.which("curl") is not None,
    "onnx": lambda: all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime")),
}
NEEDS_REASON = {
    "shared_data": f"real data not available: {SHARED_DATA} is missing (it sits beside the repository in CI)",
    "monailabel": f"{MONAILABEL_ENV} is not set: tools/setup_monailabel_env.sh builds the environment (.ci/run does)",
    "curl": "curl is not installed",
    "onnx": "onnx and onnxruntime are not installed (requirements-export.txt; .ci/run installs them)",
}

# README's placeholders and what stands in for them here (fields of Workspace.values)
PLACEHOLDERS = {
    r"<b>": "{bundle}",
    r"(?<![\w/])IN(?![\w/])": "{inputs}",
    r"(?<![\w/])OUT(?![\w/])": "{outputs}",
    r"(?<![\w/])ARCHIVE(?![\w/])": "{archive}",
    r"(?<![\w/])IMAGES_DIR(?![\w/])": "{studies}",
    r"(?<![\w/])CASE(?![A-Za-z0-9/])": "{case}",
    r"127\.0\.0\.1:8000": "127.0.0.1:{port}",
    r"--port 8000": "--port {port}",
}


@dataclass(frozen=True)
class Rule:
    """How the README commands that ``pattern`` matches (``re.match``, placeholders not yet filled) run here.

    ``skip``: why they do not run (they are dropped from the block). ``shorten``: ``(old, new)`` replacements
    that make them fit the test's time, ``why`` says what was shortened. ``needs``: keys of :data:`NEEDS`.
    ``slow``: the block is marked slow (and ``realdata`` with ``shared_data``). ``server``: the command serves
    until stopped; it runs in the background until ``ready`` (a shell condition) holds, and is stopped when the
    block ends. ``expect``: globs (relative to the copy) that must match a file once the block has run, so
    what README says a command writes stays true.
    """

    pattern: str
    skip: str | None = None
    shorten: tuple[tuple[str, str], ...] = ()
    why: str = ""
    needs: tuple[str, ...] = ()
    slow: bool = False
    server: bool = False
    ready: str = ""
    expect: tuple[str, ...] = ()


ENVIRONMENT_BUILT_BY_CI = ".ci/run builds the environments (and CI with it); a test does not install packages"
SECOND_MACHINE = "needs a second machine (HOST); test_multi_gpu.py runs two ranks on one machine"
SHIPPED_RECIPE = "the shipped weights' training: CPU hours on the real data"
ONE_EPOCH = '--epochs 1 --train_size 2 --batch_size 2 --num_workers 0 --image_size "[128,128]"'
SMALL_BENCHMARK = f"--bundle {GENERIC_BUNDLE} --dataset_dir data/jsrt --out {{tmp}}/benchmark --plots false"

RULES = (
    # Quick start
    Rule(r"python3 -m venv \.venv && \.venv/bin/pip install", skip=ENVIRONMENT_BUILT_BY_CI),
    Rule(r"source \.venv/bin/activate", skip="the block runs in this environment already (python is its interpreter)"),
    Rule(
        r"python -m monai\.bundle run --config_file bundles/lung_vae/configs/inference\.yaml "
        r"--output_dir runs/quickstart",
        shorten=(("--output_dir runs/quickstart", "--output_dir runs/quickstart --dataset_dir {few_phantoms}"),),
        why="3 of the 100 phantoms",
        expect=(
            "runs/quickstart/measurements.csv",
            "runs/quickstart/phantom_*_seg.png",
            "runs/quickstart/phantom_*_overlay.png",
        ),
    ),
    Rule(
        r"python -m monai\.bundle run --config_file bundles/lung_vae/configs/train\.yaml --epochs 2",
        shorten=(("--epochs 2", ONE_EPOCH),),
        why="one epoch of 2 phantoms at 128 x 128",
        slow=True,
        expect=("runs/lung_vae/models/model.pt",),
    ),
    # docs/training.md: A first run on the built-in phantoms, its weights scored with their settings file
    Rule(
        r"python -m monai\.bundle run --config_file \"\['bundles/lung_vae/configs/train\.yaml',"
        r"'bundles/lung_vae/configs/evaluate\.yaml','runs/lung_vae/models/model\.json'\]\"",
        expect=("runs/lung_vae/eval/metrics_summary.json",),
    ),
    Rule(r"python -m pytest", skip="the test suite itself, this test included (.ci/run runs it)"),
    # docs/training.md: Evaluation
    Rule(r"E=\"\['bundles/<b>/configs/train\.yaml','bundles/<b>/configs/evaluate\.yaml'\]\""),
    Rule(
        r"python -m monai\.bundle run --config_file \"\$E\" --dataset_dir \.\./shared/data/montgomery",
        shorten=(("../shared/data/montgomery", "{montgomery_subset}"),),
        why="4 of the 138 Montgomery cases",
        needs=("shared_data",),
        expect=("eval/montgomery/metrics_summary.json",),
    ),
    # benchmarks/README.md: Other hospitals' radiographs
    Rule(
        r"python -m benchmarks robustness --out /tmp/cxrseg-robustness",
        shorten=(
            (
                "--out /tmp/cxrseg-robustness",
                "--out {tmp}/robustness --bundles \"['res_cr_net']\" --shifts \"['grey']\" --limit 2",
            ),
        ),
        why="res_cr_net on 2 Montgomery cases, one shift",
        needs=("shared_data",),
        expect=("{tmp}/robustness/robustness.json",),
    ),
    # benchmarks/README.md: The abdomen in view
    Rule(
        r"python -m benchmarks abdomen --out /tmp/cxrseg-abdomen",
        shorten=(("--out /tmp/cxrseg-abdomen", "--out {tmp}/abdomen --bundles \"['res_cr_net']\" --floor 0.6"),),
        why="res_cr_net on the COVID-QU-Ex val cases whose lungs end above 60 % of the height",
        needs=("shared_data",),
        expect=("{tmp}/abdomen/abdomen.json",),
    ),
    # docs/inference.md: Inference contract
    Rule(
        r"python -m monai\.bundle run --config_file bundles/<b>/configs/inference\.yaml",
        expect=("{outputs}/measurements.csv",),
    ),
    # docs/packaging.md: Versions
    Rule(r"python -m tools bundle_hashes --record"),
    # docs/inference.md: Inference at scale
    Rule(
        r"python -m monai\.bundle run --config_file bundles/lung_vae/configs/inference\.yaml .*--recursive true",
        expect=("{outputs}/study*/*_seg.png",),
    ),
    Rule(
        r"torchrun --nproc_per_node 8 -m monai\.bundle run .*multi_gpu_inference\.yaml",
        shorten=(("--nproc_per_node 8", "--nproc_per_node 2"),),
        why="2 CPU processes",
        slow=True,
    ),
    Rule(r"torchrun --nnodes 2 ", skip=SECOND_MACHINE),
    # docs/data.md: Preparing the public datasets
    Rule(r"python -m tools prepare ", skip="needs the publisher's download (--source), which is not redistributed"),
    Rule(
        r"python -m tools datalist --dataset_dir \.\./shared/data/jsrt",
        shorten=(("/tmp/jsrt_datalist.json", "{tmp}/jsrt_datalist.json"),),
        why="output in the test's folder",
        needs=("shared_data",),
    ),
    Rule(
        r"python -m tools phantoms --out data/phantoms --count 100",
        shorten=(("--count 100", "--count 4"),),
        why="4 phantoms",
        expect=("data/phantoms/datalist.json",),
    ),
    Rule(r"python -m tools contact_sheet --dataset_dir data/"),
    # docs/monai-label.md
    Rule(r"bash tools/setup_monailabel_env\.sh", skip=ENVIRONMENT_BUILT_BY_CI),
    Rule(
        r"PATH=\"\$PWD/\.venv-monailabel/bin:\$PATH\" monailabel start_server ",
        needs=("monailabel", "curl"),
        slow=True,
        server=True,
        ready="curl -sf http://127.0.0.1:{port}/info/ >/dev/null",
    ),
    Rule(r"curl ", needs=("curl",), expect=("{case}_label.png",)),
    # docs/packaging.md: Packaging and export
    Rule(r"python -m tools package lung_vae", expect=("dist/lung_vae_v*.zip",)),
    Rule(
        r"python -m tools export lung_vae",
        needs=("onnx",),
        expect=("bundles/lung_vae/models/model.ts", "bundles/lung_vae/models/model.onnx"),
    ),
    Rule(r"python -m monai\.bundle verify_metadata "),
    Rule(r"cd bundles/lung_vae && python -m monai\.bundle verify_net_in_out "),
    # docs/training.md: Training on several hospitals
    Rule(
        r"python -m monai\.bundle run --config_file bundles/lung_vae/configs/train\.yaml .*'data/jsrt',",
        shorten=(("--epochs 12", ONE_EPOCH),),
        why="one epoch of 2 phantoms per source at 128 x 128",
        slow=True,
        expect=("runs/lung_vae/eval/*",),
    ),
    # docs/training.md: Multi-GPU and multi-node training, Train on a remote GPU
    Rule(
        r"torchrun --nproc_per_node 8 -m monai\.bundle run .*multi_gpu_train\.yaml",
        shorten=(
            ("--nproc_per_node 8", "--nproc_per_node 2"),
            ("--dataset_dir data/jsrt", f"--dataset_dir data/jsrt {ONE_EPOCH}"),
        ),
        why="2 CPU processes, one epoch of 2 phantoms at 128 x 128",
        slow=True,
    ),
    Rule(r"timeout 6h python -m monai\.bundle run ", skip="the paper's settings: hours, meant for a GPU"),
    # benchmarks/README.md: Benchmark of the shipped weights
    Rule(
        r"python -m benchmarks benchmark --budget shipped",
        shorten=(("--budget shipped", f"--budget shipped {SMALL_BENCHMARK}"),),
        why=f"{GENERIC_BUNDLE} alone, on 16 phantoms, no plots",
        slow=True,
    ),
    Rule(
        r"python -m benchmarks benchmark --budget quick",
        shorten=(("--budget quick", f"--budget quick {SMALL_BENCHMARK} --compare_cache false"),),
        why=f"{GENERIC_BUNDLE} alone, on 16 phantoms, no plots",
        slow=True,
    ),
    Rule(r"python -m benchmarks benchmark --budget paper", skip="the papers' settings: hours, meant for a GPU"),
    Rule(
        r"python -m benchmarks memory ",
        shorten=(
            (
                "--bundle res_cr_net",
                "--bundle res_cr_net --steps 1 --batch_size 2 --dataset_dir data/jsrt --out {tmp}/memory",
            ),
        ),
        why="one step of 2 phantoms",
        slow=True,
    ),
    Rule(
        r"python -m benchmarks strauss",
        shorten=(("python -m benchmarks strauss", "python -m benchmarks strauss --repeats 3"),),
        why="3 repeats",
    ),
    # model cards: bundles/<name>/docs/README.md
    Rule(
        r"python -m monai\.bundle run --config_file bundles/\w+/configs/inference\.yaml --bundle_root bundles/\w+ "
        r"--dataset_dir IN --output_dir OUT$",
        expect=("{outputs}/measurements.csv",),
    ),
    Rule(
        r"python -m monai\.bundle run --config_file \"\['bundles/(lung_vae|res_cr_net|attention_bcdunet)/configs/train"
        r"\.yaml','bundles/\w+/configs/evaluate\.yaml'\]\" --dataset_dir \.\./shared/data/montgomery",
        shorten=(("../shared/data/montgomery", "{montgomery_subset}"),),
        why="4 of the 138 Montgomery cases",
        needs=("shared_data",),
        expect=("{outputs}/metrics_summary.json",),
    ),
    Rule(r"(C|D)=\.\./shared/data(/covid_opacity)?$"),
    Rule(r"(J|D)=\.\./shared/data\S* \w=.* R=runs/\w+$"),
    Rule(
        r"python -m tools abdomen_subset \$R/abdomen --source \$Q$",
        needs=("shared_data",),
        expect=("runs/res_cr_net/abdomen/covid_qu_ex/metadata.csv", "runs/res_cr_net/abdomen/covid_qu_ex/images/*.png"),
    ),
    Rule(r"A=\$R/abdomen/covid_qu_ex$"),
    Rule(r"T=\"python -m monai\.bundle run --config_file bundles/\w+/configs/train\.yaml"),
    Rule(
        r"python -m monai\.bundle run --config_file \"\['bundles/opacity_unet/configs/train\.yaml','bundles/"
        r"opacity_unet/configs/evaluate\.yaml'\]\" --dataset_dir \$D/covid_opacity",
        skip="scores fold 0 through the whole pipeline (127 cases and their lung fields): tests/test_opacity_unet.py "
        "evaluates on phantoms",
    ),
    Rule(
        r"(python -m monai\.bundle run --config_file (bundles/\w+/configs/train\.yaml --dataset_dir "
        r"(\"\['\.\./shared|\"\['\$J|\$J|\$D)|\"\['bundles/opacity_unet/configs/train\.yaml','bundles/opacity_unet/"
        r"configs/pretrain_)|\$T |python -m tools average_weights (\$R|runs)/|cp \$R/)",
        skip=SHIPPED_RECIPE,
    ),
    Rule(r"python -m tools export (attention_bcdunet|opacity_unet|res_cr_net)$", needs=("onnx",)),
    Rule(r"python -m tools package (attention_bcdunet|opacity_unet|res_cr_net)$", expect=("dist/*_v*.zip",)),
)


@dataclass(frozen=True)
class Block:
    """One ```bash block of a page: the page, the section it is in, its place there, and its commands."""

    page: str
    section: str
    index: int
    commands: tuple[str, ...]

    @property
    def name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", f"{self.page} {self.section}".lower()).strip("-")
        return f"{slug}-{self.index}"


def fenced_blocks(text: str) -> Iterator[tuple[str, str, list[str]]]:
    """``(section heading, info string, lines)`` of every fenced block of a Markdown text."""
    section, language, lines = "", None, []
    for line in text.splitlines():
        if language is None and line.startswith("#"):
            section = line.lstrip("#").strip()
        elif line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                yield section, language, lines
                language = None
        elif language is not None:
            lines.append(line)


def commands_of(lines: list[str]) -> tuple[str, ...]:
    """The logical lines of a shell block: continuation lines joined, comment and empty lines dropped."""
    commands, current = [], ""
    for line in lines:
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        commands.append(re.sub(r"\s+", " ", current + line.strip()))
        current = ""
    return tuple(commands)


def readme_blocks() -> list[Block]:
    blocks = []
    for page in PAGES:
        name, per_section = page.relative_to(REPO_ROOT).with_suffix("").as_posix(), {}
        for section, language, lines in fenced_blocks(page.read_text(encoding="utf-8")):
            if language == "bash":
                per_section[section] = per_section.get(section, 0) + 1
                blocks.append(Block(name, section, per_section[section], commands_of(lines)))
    return blocks


def rules_of(command: str) -> list[Rule]:
    return [rule for rule in RULES if re.match(rule.pattern, command)]


def block_rules(block: Block) -> list[Rule]:
    """The rule of each command (commands without exactly one rule are the test's failure, not collection's)."""
    return [rules[0] for rules in map(rules_of, block.commands) if len(rules) == 1]


def block_marks(block: Block) -> list[pytest.MarkDecorator]:
    running = [rule for rule in block_rules(block) if rule.skip is None]
    slow = any(rule.slow for rule in running) or block.page.startswith("bundles/")  # the model cards' blocks
    marks = [pytest.mark.slow] if slow else []
    return marks + ([pytest.mark.realdata] if any("shared_data" in rule.needs for rule in running) else [])


@dataclass
class Workspace:
    """The repository copy a block runs in, and what stands in for README's placeholders."""

    root: Path
    values: dict[str, str]

    def fill(self, text: str) -> str:
        return text.format(**self.values)


def copy_repository(target: Path) -> Path:
    """The files a user's checkout has (no .git, environments or run products), links kept as links."""

    def left_out(folder: str, names: list[str]) -> set[str]:
        top = Path(folder) == REPO_ROOT
        return {
            name
            for name in names
            if (top and (name.startswith(".") and name != ".ci" or name in COPY_LEFT_OUT_AT_TOP))
            or any(Path(name).match(pattern) for pattern in COPY_LEFT_OUT)
        }

    return Path(shutil.copytree(REPO_ROOT, target, symlinks=True, ignore=left_out))


def link_environments(root: Path) -> None:
    """``.venv`` (README's quick start) is this interpreter's environment; ``.venv-monailabel`` the MONAI Label
    one when it is known."""
    if sys.prefix != sys.base_prefix:
        (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    else:
        (root / ".venv" / "bin").mkdir(parents=True)
        (root / ".venv" / "bin" / "python").symlink_to(sys.executable)
    monailabel_python = os.environ.get(MONAILABEL_ENV)
    if monailabel_python:
        (root / ".venv-monailabel").symlink_to(Path(monailabel_python).parent.parent, target_is_directory=True)


def subset_of(dataset: Path, target: Path, count: int) -> Path:
    """Links to the first ``count`` cases of a prepared dataset (images and masks), in a folder of the same name
    (the source name that reports carry); no metadata, so one patient per image."""
    cases = sorted(path.stem for path in (dataset / "images").glob("*.png"))[:count]
    for case in cases:
        for source in [dataset / "images" / f"{case}.png", *dataset.glob(f"masks/*/{case}.png")]:
            link = target / source.relative_to(dataset)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)
    return target


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What README's commands read, made once: the stand-ins for data/jsrt and data/shenzhen, folders of
    phantom radiographs for IN, ARCHIVE and IMAGES_DIR, and 4 Montgomery cases when the real data is here."""
    tmp = tmp_path_factory.mktemp("readme-inputs")
    for seed, name in enumerate(("jsrt", "shenzhen")):  # README's data/<name>, prepared from downloads
        generate_dataset(tmp / "data" / name, count=16, size=256, seed=seed)
    phantoms = sorted((tmp / "data" / "jsrt" / "images").glob("*.png"))
    few, studies, images = tmp / "few_phantoms", tmp / "studies", tmp / "inputs"
    for folder, count in ((few, 3), (studies, 3), (images, 2)):
        folder.mkdir()
        for image in phantoms[:count]:
            shutil.copy(image, folder)
    archive = tmp / "archive"
    for study, members in (("study0", phantoms[:2]), ("study1", phantoms[2:4])):
        (archive / study).mkdir(parents=True)
        for image in members:
            shutil.copy(image, archive / study)
    if (SHARED_DATA / "montgomery" / "images").is_dir():
        subset_of(SHARED_DATA / "montgomery", tmp / "montgomery", 4)
    return {
        "data": str(tmp / "data"),
        "few_phantoms": str(few),
        "studies": str(studies),
        "inputs": str(images),
        "archive": str(archive),
        "case": phantoms[0].stem,
        "montgomery_subset": str(tmp / "montgomery"),
        "bundle": GENERIC_BUNDLE,
    }


@pytest.fixture
def workspace(inputs: dict[str, str], tmp_path: Path) -> Workspace:
    """A fresh copy of the repository for each block, as a user may run any block on its own (two blocks
    that write the same folder must not meet), with ../shared/data beside it as beside the checkout."""
    root = copy_repository(tmp_path / "repo")
    link_environments(root)
    shutil.copytree(inputs["data"], root / "data")
    if SHARED_DATA.is_dir():
        (tmp_path / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    return Workspace(root, inputs | {"tmp": str(tmp_path), "outputs": str(tmp_path / "out"), "port": str(free_port())})


def with_placeholders(command: str, workspace: Workspace) -> str:
    for pattern, template in PLACEHOLDERS.items():
        command = re.sub(pattern, lambda match, template=template: workspace.fill(template), command)
    return command


def script_line(command: str, rule: Rule, workspace: Workspace) -> str:
    """The command as the block's script runs it: shortened, placeholders filled; a server in the background."""
    for old, new in rule.shorten:
        assert old in command, f"README's command no longer contains {old!r} (rule {rule.pattern!r}): {command}"
        command = command.replace(old, workspace.fill(new), 1)
    command = with_placeholders(command, workspace)
    if rule.why:
        command = f"echo {shlex.quote(f'readme test: shortened to {rule.why}')}\n{command}"
    if not rule.server:
        return command
    ready = workspace.fill(rule.ready)
    return "\n".join(
        [
            f"{command} &",
            "server=$!",
            "trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT",
            f"for _ in $(seq {SERVER_START_TIMEOUT_S}); do {ready} && break; kill -0 $server; sleep 1; done",
            ready,
            f"echo 'readme test: the server answers: {ready}'",
        ]
    )


def run_script(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a block in its own process group, so a timeout stops its servers and workers too."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "CUDA_VISIBLE_DEVICES": "",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
    }
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the block took over {BLOCK_TIMEOUT_S} s; shorten it in RULES:\n{output[-5000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def expected_files(root: Path, pattern: str) -> list[Path]:
    """Files matching a glob relative to the repository copy, or an absolute one."""
    base, relative = (Path("/"), pattern.lstrip("/")) if pattern.startswith("/") else (root, pattern)
    return [path for path in base.glob(relative) if path.is_file()]


@pytest.mark.parametrize("page", [*PAGES, *RECORDS], ids=lambda page: page.relative_to(REPO_ROOT).as_posix())
def test_every_fenced_block_is_bash_or_text(page: Path) -> None:
    """Untagged blocks would escape the run below: commands are ```bash, layouts and listings ```text; a record
    holds no bash block (what it quotes was run once, with the tools of its day)."""
    languages = {language for _, language, _ in fenced_blocks(page.read_text(encoding="utf-8"))}
    allowed = {"text"} if page in RECORDS else {"bash", "text"}
    assert languages <= allowed, (
        f"tag every fenced block of {page.name} {' or '.join(sorted(allowed))}, not {languages}"
    )


def test_every_rule_is_used() -> None:
    """A rule no command matches is left over from an edit of a page: remove it or fix its pattern."""
    commands = [command for block in readme_blocks() for command in block.commands]
    unused = [rule.pattern for rule in RULES if not any(re.match(rule.pattern, command) for command in commands)]
    assert not unused, f"rules that match no command of the pages: {unused}"


@pytest.mark.parametrize("block", [pytest.param(b, id=b.name, marks=block_marks(b)) for b in readme_blocks()])
def test_readme_block_runs_as_written(block: Block, workspace: Workspace) -> None:
    unmatched = [(command, len(rules_of(command))) for command in block.commands if len(rules_of(command)) != 1]
    assert not unmatched, (
        "every documented command needs exactly one rule in tests/test_readme_commands.py RULES (run as written, "
        f"shortened or skipped with a reason); (command, rules matching): {unmatched}"
    )
    rules = [rules_of(command)[0] for command in block.commands]
    running = [(command, rule) for command, rule in zip(block.commands, rules, strict=True) if rule.skip is None]
    if not running:
        pytest.skip("; ".join(sorted({rule.skip for rule in rules if rule.skip})))
    missing = sorted({need for _, rule in running for need in rule.needs if not NEEDS[need]()})
    if missing:
        pytest.skip("; ".join(NEEDS_REASON[need] for need in missing))
    lines = ["set -euo pipefail"] + [script_line(command, rule, workspace) for command, rule in running]
    result = run_script("\n".join(lines), workspace.root)
    script = "\n".join(lines)
    assert result.returncode == 0, f"block {block.name} failed:\n{script}\n\n{result.stdout[-6000:]}"
    for _, rule in running:
        for pattern in map(workspace.fill, rule.expect):
            written = expected_files(workspace.root, pattern)
            assert written, f"{block.name}: README's command wrote no {pattern}"
            broken = [path for path in written if path.suffix == ".png" and path.read_bytes()[:8] != PNG_SIGNATURE]
            assert not broken, f"{block.name}: not PNG images: {broken}"
    shutil.rmtree(workspace.root)  # the copy's weights alone are 50 MB; kept when the block failed
