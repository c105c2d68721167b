#!/usr/bin/env bash
# Installs everything optc needs on a fresh machine (idempotent; quick when already done).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --disable-pip-version-check -q -e ".[test]"
