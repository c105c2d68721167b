#!/usr/bin/env bash
# Sets up, then runs the main job on the bundled default model (all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 bench/minilm.py "$@"
