"""Entry point of ``python -m tools``: one ``fire`` command per entry of :data:`COMMANDS`.

To add a command, write a function with a docstring (it becomes the ``--help`` text) in a module of
``tools/`` and add one line ``"name": "tools.module:function"`` below (or ``"tools.module:COMMANDS"`` for a dict
of subcommands). A command reports failure by raising ``SystemExit(code)`` after printing what went wrong.

Only the module of the command that runs is imported, so each command needs only its own packages (the data
preparation's readers, for instance, are not imported by ``export``). ``python -m tools --help`` imports them all
to list them. The benchmarks and studies have their own entry point, ``python -m benchmarks``, which uses
:func:`main` with its own commands.
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
    "average_weights": "tools.average_weights:average_weights",
    "abdomen_subset": "tools.subsets:abdomen_subset",
}


def load_command(target: str) -> Any:
    """The function (or dict of subcommands) that ``"module:attribute"`` names, importing its module."""
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def main(arguments: list[str], commands: dict[str, str] = COMMANDS, program: str = "tools") -> None:
    """Run ``python -m <program> <command> ...``, importing only the module of ``command`` (all of them for
    ``--help``)."""
    name = arguments[0] if arguments else None
    if name in commands:
        fire.Fire(load_command(commands[name]), command=arguments[1:], name=f"{program} {name}")
    else:
        fire.Fire({command: load_command(target) for command, target in commands.items()}, arguments, program)


if __name__ == "__main__":
    main(sys.argv[1:])
