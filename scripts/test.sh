#!/usr/bin/env bash
# Command 2 of the README (and CI's .ci/run): set everything up, then run the whole test suite:
# the Rust core's unit and integration tests (optimised build: some measure timing), then
# pytest (the Python API, the CLI and end-to-end runs against the real llama-server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
# Gates: one formatting (rustfmt.toml) and a lint-clean workspace (undocumented unsafe denied).
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --profile quick-release -p optbench-core
python -m pytest "$@"
