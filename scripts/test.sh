#!/usr/bin/env bash
# Install the package with its test extras into the active Python, then run the whole test suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[cpu,test,onnx]"
# one thread per op: the tests are many small models, and 2-core CI machines thrash with more
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec python -m pytest -q "$@"
