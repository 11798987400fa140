"""Entry point of ``python -m tools``: one ``fire`` command per entry of :data:`COMMANDS`.

To add a command, write a function with a docstring (it becomes the ``--help`` text) in a module of
``tools/`` and add one line ``"name": "tools.module:function"`` below (or ``"tools.module:COMMANDS"`` for a dict
of subcommands). A command reports failure by raising ``SystemExit(code)`` after printing what went wrong.

Only the module of the command that runs is imported, so each command needs only its own packages: the GPU
training runs on a machine that has torch and MONAI's core but not what the benchmark's plots or the data
preparation import. ``python -m tools --help`` imports them all to list them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import fire

COMMANDS = {
    "prepare": "tools.prepare:prepare",
    "datalist": "tools.prepare:datalist",
    "phantoms": "tools.synthetic:phantoms",
    "contact_sheet": "tools.synthetic:contact_sheet",
    "package": "tools.package:package",
    "bundle_hashes": "tools.bundle_hashes:bundle_hashes",
    "export": "tools.export:export",
    "benchmark": "tools.benchmark:main",
    "memory": "tools.bench_memory:memory",
    "strauss": "tools.bench_strauss:strauss",
    "backends": "tools.bench_backends:backends",
    "compare_inference": "tools.compare_inference:COMMANDS",
    "compare_training": "tools.compare_training:COMMANDS",
    "gpu_train": "tools.gpu_train:COMMANDS",
    "average_weights": "tools.average_weights:average_weights",
    "robustness": "tools.robustness:robustness",
}


def load_command(target: str) -> Any:
    """The function (or dict of subcommands) that ``"module:attribute"`` names, importing its module."""
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def main(arguments: list[str]) -> None:
    name = arguments[0] if arguments else None
    if name in COMMANDS:
        fire.Fire(load_command(COMMANDS[name]), command=arguments[1:], name=f"tools {name}")
    else:
        fire.Fire({command: load_command(target) for command, target in COMMANDS.items()}, arguments, "tools")


if __name__ == "__main__":
    main(sys.argv[1:])
