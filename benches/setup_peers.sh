#!/usr/bin/env bash
# Installs the peer load generators into their own virtual environments under benches/.venvs/
# (each tool pins its own dependencies, so they never share one), idempotently. A tool that
# fails to install is recorded in benches/.venvs/<tool>.error with pip's exact output, and the
# benchmark reports it instead of a measurement.
#   guidellm, aiperf: the peers the issue names; vllm: only if it installs (its wheel pulls
#   PyTorch with CUDA libraries, several GB; set OPTBENCH_BENCH_SKIP_VLLM=1 to skip it).
set -uo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
mkdir -p .venvs

install() {  # install <venv name> <pip requirement...>
  local name=$1; shift
  local venv=.venvs/$name
  if [ -f "$venv/.installed" ] && [ "$(cat "$venv/.installed")" = "$*" ]; then
    return 0
  fi
  rm -rf "$venv" ".venvs/$name.error"
  echo "setup_peers: installing $* into benches/$venv ..." >&2
  local started=$SECONDS
  if "$PYTHON" -m venv "$venv" && "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 \
    && "$venv/bin/python" -m pip install --quiet "$@" >".venvs/$name.log" 2>&1; then
    echo "$*" >"$venv/.installed"
    echo "setup_peers: $name ready in $((SECONDS - started)) s" >&2
  else
    cp ".venvs/$name.log" ".venvs/$name.error" 2>/dev/null || echo "venv creation failed" >".venvs/$name.error"
    echo "setup_peers: $name did not install (benches/.venvs/$name.error)" >&2
  fi
}

# A plain Python load-test script (aiohttp), the way such scripts are usually written.
install aiohttp "aiohttp==3.14.5"
install guidellm "guidellm==0.8.1"
install aiperf "aiperf==0.13.0"
if [ "${OPTBENCH_BENCH_SKIP_VLLM:-0}" != 1 ]; then
  install vllm "vllm==0.33.0"
fi
exit 0
