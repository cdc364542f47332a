#!/usr/bin/env bash
# vLLM and SGLang on the H200 machine (issue 12, part 3). Every device command runs this script from
# the repository root, carrying ONE piece of an engine's wheel tar (engine_wheels.py pack) plus the
# two checksum lists; the pieces, the installs and the results live in $OPTBENCH_GPU_WORK (default
# ~/optbench-gpu-work), outside the repository, which the device re-syncs before each command.
#
#   bash benches/gpu/engines.sh step "$OUT" [DEADLINE_EPOCH]
#       takes the carried piece(s); when all of an engine's pieces are there: verifies their sha256,
#       reassembles, installs (pip install --no-index --no-deps --target $WORK/site-<engine>; for
#       vLLM's tar also the optbench wheel into $WORK/site and the model folder into $WORK/hf-model);
#       once vLLM is installed and DEADLINE_EPOCH is given, starts engines_run.py in the background
#       (setsid: it outlives this command) unless it runs already; prints the driver's progress;
#       puts the results packed since the last command into $OUT.
#   bash benches/gpu/engines.sh wait "$OUT" SECONDS
#       follows the driver for up to SECONDS (or until it finishes), then the same export.
#
# Local check on a CPU machine: OPTBENCH_GPU_WORK=/tmp/w PYTHON=python3.12 bash benches/gpu/engines.sh step /tmp/o
# (pieces from benches/gpu/carry/pieces; installs, starts nothing without DEADLINE_EPOCH).
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/../.."
ROOT=$PWD
CMD=${1:?step or wait}
OUT=${2:?the output folder}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/engines.log") 2>&1
export PYTHONUNBUFFERED=1
WORK=${OPTBENCH_GPU_WORK:-$HOME/optbench-gpu-work}
PY=${PYTHON:-python3}
CARRIED=$ROOT/benches/gpu/carry/pieces
mkdir -p "$WORK/pieces" "$WORK/export"
log() { echo "[engines $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }

environment_once() {
  [ -f "$WORK/.environment" ] && return 0
  {
    echo "date: $(date -u +%FT%TZ) epoch $(date +%s)"
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>&1
    echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"
    "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|triton|transformers|tokenizers|numpy|numba|llvmlite|huggingface.hub|safetensors|protobuf|aiohttp|setuptools|pydantic|fastapi|uvicorn|cuda-bindings|cuda-python|nvidia-nccl|nvidia-cudnn|pillow|requests|psutil|pyzmq|sentencepiece|tiktoken|regex|jinja2|scipy|pandas|pyarrow|typer) ' | tr -s ' ' | paste -sd';'
    echo "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
    echo "libnuma: $(ldconfig -p | grep -c libnuma.so.1) entries; cpus $(nproc); disk $(df -h "$WORK" | awk 'NR==2{print $4" free"}')"
  } > "$WORK/.environment" 2>&1
  sed 's/^/    /' "$WORK/.environment"
}

receive() {
  local n=0
  for f in "$CARRIED"/*; do
    [ -f "$f" ] || continue
    cp -f "$f" "$WORK/pieces/" && n=$((n + 1))
  done
  log "received $n file(s): $(cd "$CARRIED" 2>/dev/null && ls | tr '\n' ' ')"
}

install_engine() {  # $1 = vllm | sglang
  local e=$1 site=$WORK/site-$1 t=$(date +%s) rc
  [ -f "$site/.installed" ] && return 0
  [ -f "$WORK/pieces/$e.sha256" ] || return 0
  "$PY" "$ROOT/benches/gpu/engine_wheels.py" verify "$WORK/pieces" "$e" --assemble "$WORK/$e.tar"
  rc=$?
  [ $rc = 3 ] && return 0  # pieces still missing
  [ $rc = 0 ] || { log "FAIL: $e's pieces do not verify (rc $rc)"; return 1; }
  rm -rf "$WORK/unpack-$e" "$site"
  mkdir -p "$WORK/unpack-$e"
  tar -xf "$WORK/$e.tar" -C "$WORK/unpack-$e" && rm -f "$WORK/$e.tar"
  log "$e: installing $(ls "$WORK/unpack-$e/wheels" | wc -l) wheels into $site"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WORK/unpack-$e"/wheels/*.whl; then
    log "FAIL: pip install of $e's wheels"; return 1
  fi
  if [ "$e" = vllm ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$WORK/unpack-$e"/extra/*.whl || { log "FAIL: optbench wheel"; return 1; }
    mkdir -p "$WORK/hf-model"
    cp "$WORK/unpack-$e"/extra/*.json "$WORK/unpack-$e"/extra/README.md "$WORK/hf-model/"
    ls -la "$WORK/hf-model" | sed 's/^/    /'
  fi
  if [ "$e" = sglang ] && [ -d "$site/kernels" ]; then
    # transformers 5.6.0 (SGLang's pin) calls the hub-kernels package `kernels` (0.17.2, unpinned
    # by SGLang) in a way 0.17 rejects ("Either a revision or a version must be specified"), at
    # import. SGLang itself imports it only to fetch kernels from the hub (no network here), so
    # it is moved aside and transformers skips its hub-kernels integration.
    mkdir -p "$WORK/disabled" && mv "$site/kernels" "$site"/kernels-*.dist-info "$WORK/disabled/"
  fi
  rm -rf "$WORK/unpack-$e" "$WORK/pieces/$e.tar."*
  PYTHONPATH=$site "$PY" -c "import importlib.metadata as m; print('    $e', m.version('$e'), '| transformers', m.version('transformers'), '| tokenizers', m.version('tokenizers'))"
  touch "$site/.installed"
  log "$e installed in $(( $(date +%s) - t ))s ($(du -sh "$site" | cut -f1))"
}

driver_alive() {  # the driver writes its own pid (setsid may fork)
  local pid
  pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' "$WORK/driver-status.json" 2>/dev/null | head -1)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

start_driver() {  # $1 = deadline epoch
  [ -f "$WORK/site-vllm/.installed" ] || return 0
  [ -f "$WORK/driver.pid" ] && return 0
  # The driver runs from a copy: the device re-syncs the repository before every command.
  rm -rf "$WORK/code"; mkdir -p "$WORK/code/benches/gpu" "$WORK/code/configs"
  cp "$ROOT"/benches/gpu/*.py "$WORK/code/benches/gpu/"; cp "$ROOT"/configs/*.toml "$WORK/code/configs/"
  log "starting engines_run.py (deadline $(date -u -d "@$1" +%H:%M:%S), $(( $1 - $(date +%s) )) s from now)"
  (cd "$WORK" && PYTHONPATH=$WORK/site setsid nohup "$PY" "$WORK/code/benches/gpu/engines_run.py" --work "$WORK" \
      --deadline-epoch "$1" ${DRIVER_ARGS:-} >"$WORK/driver.log" 2>&1 </dev/null & echo $! >"$WORK/driver.pid")
  sleep 1
}

report() {
  for e in vllm sglang; do
    [ -f "$WORK/pieces/$e.sha256" ] || continue
    if [ -f "$WORK/site-$e/.installed" ]; then log "$e: installed"; else
      log "$e: $(ls "$WORK/pieces" | grep -c "^$e.tar.") of $(grep -c "$e.tar\." "$WORK/pieces/$e.sha256") pieces here"; fi
  done
  if [ -f "$WORK/driver.log" ]; then
    log "driver $(driver_alive && echo running || echo 'not running'): $(tr -d '\n ' < "$WORK/driver-status.json" 2>/dev/null | cut -c1-300)"
    tail -n "${TAIL:-6}" "$WORK/driver.log" | cut -c1-400 | sed 's/^/    /'
  fi
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader 2>/dev/null | sed 's/^/    gpu: /'
}

export_results() {
  local n=0
  for f in "$WORK"/export/*.tar.gz; do
    [ -f "$f" ] || continue
    [ -f "$f.delivered" ] && [ "$f.delivered" -nt "$f" ] && continue
    [ $n -lt 6 ] || break
    cp "$f" "$OUT/" && touch "$f.delivered" && n=$((n + 1))
  done
  cp "$WORK/driver.log" "$OUT/driver.log" 2>/dev/null || true
  log "exported $n result file(s): $(ls "$OUT" | tr '\n' ' ')"
}

case "$CMD" in
  step)
    environment_once
    receive
    install_engine vllm || true
    install_engine sglang || true
    [ -n "${3:-}" ] && start_driver "$3"
    report
    export_results
    ;;
  wait)
    LIMIT=${3:-500}
    while [ $(( $(date +%s) - T0 )) -lt "$LIMIT" ]; do
      grep -q '"state": "finished"' "$WORK/driver-status.json" 2>/dev/null && break
      driver_alive || { [ $(( $(date +%s) - T0 )) -gt 20 ] && { log "the driver is not running"; break; }; }
      sleep 10
      [ $(( ($(date +%s) - T0) % 60 )) -lt 10 ] && TAIL=2 report
    done
    TAIL=15 report
    export_results
    ;;
  *) echo "usage: engines.sh step|wait OUT [...]"; exit 2 ;;
esac
