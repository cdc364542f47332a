#!/usr/bin/env bash
# Step 2 on the GPU machine, right after step1.sh on the same warm machine: start llama-server
# through optbench's orchestrator, run the reference load test and the concurrency sweep, and
# write GPU_RESULTS.md, summary.csv, requests.parquet, PNG plots and extras.tar.gz into $OUT.
#
#   bash benches/gpu/step2.sh "$OUT"
#
# Overrides: SWEEP_ARGS (more sweep.py arguments, e.g. "--extra-args='--cache-ram 0'"),
# OPTBENCH_GPU_MODEL, OPTBENCH_LLAMA_SERVER, PYTHON, OPTBENCH_GPU_SKIP_WHEELS=1, STEP2_BUDGET_S.
set -euo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${1:-${OUT:-/tmp/optbench-gpu-out}}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/step2.log") 2>&1
export PYTHONUNBUFFERED=1

BUDGET=${STEP2_BUDGET_S:-570}
CARRY=$ROOT/benches/gpu/carry
# Outside the repository: the device re-syncs the working tree before each command and removes
# untracked files there (.git/info/exclude does not travel), so a build inside it is lost.
WORK=${OPTBENCH_GPU_WORK:-$HOME/optbench-gpu-work}
PY=${PYTHON:-python3}
MODEL=${OPTBENCH_GPU_MODEL:-$WORK/model/llama31-8b-shapes-random-f16.gguf}
BIN=${OPTBENCH_LLAMA_SERVER:-$WORK/build/bin/llama-server}
log() { echo "[step2 $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
die() { log "FAIL: $*"; exit 1; }

[ -x "$BIN" ] || die "$BIN not found: run step1.sh first, on the same machine while it is warm"
[ -s "$MODEL" ] || die "$MODEL not found: run step1.sh first, on the same machine while it is warm"
if [ "${OPTBENCH_GPU_SKIP_WHEELS:-0}" != 1 ]; then
  SITE=$WORK/site
  if [ ! -d "$SITE/optbench" ]; then
    log "installing the carried wheels into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/*.whl \
      || for w in "$CARRY"/*.whl; do "$PY" -m zipfile -e "$w" "$SITE"; done
  fi
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version,temperature.gpu,clocks.sm --format=csv | sed 's/^/    /'
fi
export OPTBENCH_LLAMA_SERVER=$BIN
DEADLINE=$(( BUDGET - ($(date +%s) - T0) ))
COMMANDS="# on the CPU machine, at the repository root (fills benches/gpu/carry: sdist, wheels, tokenizer)
bash benches/gpu/prepare.sh
# on the GPU machine, at the repository root, carrying benches/gpu/carry; one command each
bash benches/gpu/step1.sh \"\$OUT\"    # wheels, llama-server (CUDA, sm_90), random GGUF
bash benches/gpu/step2.sh \"\$OUT\"    # this sweep; it ran:
$PY benches/gpu/sweep.py --model $MODEL --out \$OUT --binary $BIN --build-info $WORK/build_info.json --deadline-s $DEADLINE ${SWEEP_ARGS:-}"
log "running sweep.py (deadline ${DEADLINE}s)"
set +e
# shellcheck disable=SC2086
eval "\"$PY\" benches/gpu/sweep.py --model \"$MODEL\" --out \"$OUT\" --binary \"$BIN\" --build-info \"$WORK/build_info.json\" --deadline-s $DEADLINE --commands \"\$COMMANDS\" ${SWEEP_ARGS:-}"
RC=$?
set -e
ls -la "$OUT" | sed 's/^/    /'
log "step 2 done in $(( $(date +%s) - T0 ))s (rc $RC); copy GPU_RESULTS.md, summary.csv and the PNGs from \$OUT into benches/gpu/results/<date>-<label>/ (benches/run.py shows the newest)"
exit $RC
