#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
timeout 1800 .venv/bin/python -m pytest -q --durations=15 "$@"
