"""Entry point of ``python -m benchmarks``: one ``fire`` command per entry of :data:`COMMANDS`.

Dispatch is ``tools.__main__.main``'s: only the module of the command that runs is imported.
"""

from __future__ import annotations

import sys

from tools.__main__ import main

COMMANDS = {
    "benchmark": "benchmarks.benchmark:main",
    "memory": "benchmarks.memory:memory",
    "strauss": "benchmarks.strauss:strauss",
    "backends": "benchmarks.backends:backends",
    "compare_inference": "benchmarks.compare_inference:COMMANDS",
    "compare_training": "benchmarks.compare_training:COMMANDS",
    "robustness": "benchmarks.robustness:robustness",
    "abdomen": "benchmarks.abdomen:abdomen",
}

if __name__ == "__main__":
    main(sys.argv[1:], COMMANDS, "benchmarks")
