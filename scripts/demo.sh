#!/usr/bin/env bash
# Command 1 of the README: set everything up, then run the demo (the embedded llama-server
# with SmolLM2-135M on CPU under a short load test; results go to results/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
# A local copy of the evaluation sources and the embedding model, when this checkout sits beside
# one (../shared on the project's machines); otherwise the demo uses the Hugging Face hub.
if [ -z "${OPTBENCH_DATASET_SOURCE:-}" ] && [ -f ../shared/datasets/gsm8k_test.jsonl ]; then
  export OPTBENCH_DATASET_SOURCE=../shared/datasets
fi
if [ -z "${OPTBENCH_EMBEDDING_MODEL:-}" ] && [ -f ../shared/models/all-MiniLM-L6-v2/model.onnx ]; then
  export OPTBENCH_EMBEDDING_MODEL=../shared/models/all-MiniLM-L6-v2
fi
optbench demo "$@"
