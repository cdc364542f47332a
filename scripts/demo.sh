#!/usr/bin/env bash
# Command 1 of the README: set everything up, then run the demo (the embedded llama-server
# with SmolLM2-135M on CPU under a short load test; results go to results/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
optbench demo "$@"
