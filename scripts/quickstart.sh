#!/usr/bin/env bash
# The main job, end to end on a CPU: install, make the shapes data, train a small dVAE, write a
# reconstruction grid and print its metrics. STEPS=10000 (the default) takes about 20 minutes on 2
# cores; STEPS=1000 gives a rough model in about 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
STEPS="${STEPS:-10000}"
RUN="${RUN:-runs/quickstart}"
dalle() { .venv/bin/dalle "$@"; }
dalle data shapes --out data/shapes --train 20000 --test-seen 1000 --test-zero-shot 1000
dalle train-vae --data data/shapes/train --out "$RUN/vae" --steps "$STEPS"
dalle reconstruct --vae "$RUN/vae/model" --data data/shapes/test-zero-shot --out "$RUN/reconstructions.png"
dalle eval-vae --vae "$RUN/vae/model" --data data/shapes/test-zero-shot --json "$RUN/metrics.json"
