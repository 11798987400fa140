#!/usr/bin/env bash
# Builds the MONAI Label environment in VENV_DIR from requirements-monailabel.txt.
# Two steps because sam2, a monailabel dependency, is built from source: its isolated build would download a torch of
# its own, so torch, numpy and setuptools go in first and the rest is installed with --no-build-isolation.
# Usage: tools/setup_monailabel_env.sh VENV_DIR
set -euo pipefail
venv="${1:?usage: tools/setup_monailabel_env.sh VENV_DIR}"
requirements="$(cd "$(dirname "$0")/.." && pwd)/requirements-monailabel.txt"

python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
build_deps=$(sed -n '1,/^# --- everything else ---/p' "$requirements" | grep -v -E '^\s*(#|$)')
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet $build_deps
"$venv/bin/python" -m pip install --quiet --no-build-isolation -r "$requirements"
# the server's own imports (monailabel.interfaces.app pulls in the DICOM stack), not just the package
"$venv/bin/python" - <<'PY'
import monai, monailabel, monailabel.interfaces.app, numpy, torch, torchvision

print("monailabel", monailabel.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__,
      "numpy", numpy.__version__, "monai", monai.__version__)
PY
