"""Entry point of ``python -m tools``: one ``fire`` command per entry of :data:`COMMANDS`.

To add a command, write a function with a docstring (it becomes the ``--help`` text) in a module of
``tools/``, import the module here and add one line ``"name": module.function`` below. A command reports
failure by raising ``SystemExit(code)`` after printing what went wrong.
"""

import fire

from tools import bench_backends, bench_memory, bench_strauss, benchmark, export, package, prepare, synthetic

COMMANDS = {
    "prepare": prepare.prepare,
    "datalist": prepare.datalist,
    "phantoms": synthetic.phantoms,
    "contact_sheet": synthetic.contact_sheet,
    "package": package.package,
    "export": export.export,
    "benchmark": benchmark.main,
    "memory": bench_memory.memory,
    "strauss": bench_strauss.strauss,
    "backends": bench_backends.backends,
}

if __name__ == "__main__":
    fire.Fire(COMMANDS, name="tools")
