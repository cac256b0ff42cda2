#!/usr/bin/env bash
# Set up (idempotent), then run the main job. Arguments go to `revela train` (e.g. --config FILE, overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/revela train "$@"
