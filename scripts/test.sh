#!/usr/bin/env bash
# Install dalle with its test extras and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/python -m pytest "$@"
