#!/usr/bin/env bash
# Sets up, then runs every test tier this machine can run: fast + slow always; arm64 when the
# aarch64 cross toolchain and qemu are installed (scripts/setup.sh installs them); cuda when an
# NVIDIA GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
skip=()
{ command -v aarch64-linux-gnu-g++ && command -v qemu-aarch64; } >/dev/null || skip+=("not arm64")
nvidia-smi -L >/dev/null 2>&1 || skip+=("not cuda")
markers=$(IFS=,; echo "${skip[*]}" | sed 's/,/ and /g')
exec python3 -m pytest -m "$markers" -n 2 --dist worksteal -q --durations=40 "$@"  # "" selects every tier, slow included
