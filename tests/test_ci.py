"""CI runs README's command for every tier of the suite, and a plain run of the suite leaves the slow tier out
(``tests/conftest.py``), so that the two commands README gives do what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ALL_TIERS, REPO_ROOT

FAST_COMMAND = "python -m pytest -q"
CI_COMMAND = f"{FAST_COMMAND} {ALL_TIERS}"


def readme_commands() -> list[str]:
    """The commands of README's ``bash`` blocks, trailing comments dropped."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]


def test_ci_runs_every_tier_with_the_command_of_readme() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    runs = [line.split("||")[0].strip() for line in ci.splitlines() if line.startswith("python -m pytest")]
    assert runs == [CI_COMMAND]
    assert {FAST_COMMAND, CI_COMMAND} <= set(readme_commands())


def collected(*options: str) -> str:
    """What ``python -m pytest --collect-only -q`` collects from the repository root with ``options``."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *options]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_a_plain_run_leaves_the_slow_tier_out_and_all_tiers_runs_it() -> None:
    fast, every = collected(), collected(ALL_TIERS)
    assert "deselected" in fast and "deselected" not in every
    fast_tests = {line for line in fast.splitlines() if "::" in line}
    every_tests = {line for line in every.splitlines() if "::" in line}
    assert fast_tests < every_tests
    assert not any("test_bundles.py::" in line for line in fast_tests), "training every bundle is in the slow tier"
