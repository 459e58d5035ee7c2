#!/usr/bin/env bash
# The main job: install into ./.venv and generate pictures from a prompt with the bundled `shapes`
# pipeline (no download). Prints the paths of the images it writes.
# Usage: bash scripts/quickstart.sh ["a prompt"]   (PIPELINE=emoji for the emoji model)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/dalle generate "${1:-a small green triangle above a large red circle}" \
    --pipeline "${PIPELINE:-shapes}" --out outputs/quickstart --candidates 16 --overwrite
