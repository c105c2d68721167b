#!/usr/bin/env bash
# Sets up, then runs every test tier this machine can run (fast + slow; arm64/cuda need
# their toolchain or a GPU and are selected when present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
markers="not arm64 and not cuda"
exec python3 -m pytest -m "$markers" -n 2 -q "$@"
