#!/usr/bin/env bash
# Build a separate virtual environment holding DeePMD-kit 3.2.0 (PyTorch backend only) on torch 2.13.0,
# used as the baseline by scripts/bench/bench_model.py (--deepmd-python VENV/bin/python).
#
# The deepmd-kit 3.2.0 wheel pins an older torch and its compiled ops refuse torch 2.13, so deepmd-kit is
# built from its source distribution against the torch already in the venv (no TensorFlow).
#
# Usage: scripts/bench/setup_deepmd_venv.sh [VENV_DIR]      (default /tmp/dpvenv)
# The venv must live outside the repository.
set -euo pipefail

VENV="${1:-/tmp/dpvenv}"
PYTHON="${PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

VENV_ABS="$(mkdir -p "$VENV" && cd "$VENV" && pwd)"
case "$VENV_ABS/" in
  "$REPO_ROOT"/*) echo "error: venv '$VENV_ABS' is inside the repository $REPO_ROOT; choose a path outside" >&2
                  exit 2 ;;
esac

if [ ! -x "$VENV_ABS/bin/python" ]; then
  "$PYTHON" -m venv "$VENV_ABS"
fi
PY="$VENV_ABS/bin/python"

"$PY" -m pip install --upgrade pip
# TORCH_INDEX_URL (optional) selects a wheel index for torch, e.g. https://download.pytorch.org/whl/cpu for
# CPU-only wheels; by default pip's configured indexes / find-links are used.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$PY" -m pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL"
else
  "$PY" -m pip install torch==2.13.0
fi
"$PY" -m pip install scikit-build-core dependency_groups setuptools_scm hatch-fancy-pypi-readme cmake ninja
DP_ENABLE_TENSORFLOW=0 DP_ENABLE_PYTORCH=1 \
  "$PY" -m pip install --no-build-isolation --no-binary deepmd-kit deepmd-kit==3.2.0
# deepmd.pt imports e3nn at import time (its "torch" extra; the other extras are not needed here)
"$PY" -m pip install "e3nn>=0.5.9"

"$PY" - <<'EOF'
import torch
import deepmd
from deepmd.pt.model.model import get_model  # noqa: F401

print(f"deepmd-kit {deepmd.__version__} on torch {torch.__version__}: OK")
EOF
echo "DeePMD-kit venv ready: $PY"
