#!/usr/bin/env bash
# Install the package with its test extras into the active Python, then run the whole test suite.
# tests/deploy/test_paddlex.py and test_fastdeploy.py build their own venvs (cached in ~/.cache/ppdet_rtdetr/venvs:
# ~3 min and ~1 min the first time) and skip, naming why, when they cannot.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[cpu,test,onnx,openvino]"
# one thread per op: the tests are many small models, and 2-core CI machines thrash with more
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec python -m pytest -q "$@"
