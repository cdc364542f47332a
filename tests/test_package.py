"""The package's public surface: the type stub matches the extension, exceptions nest, the
CLI answers."""

from __future__ import annotations

import subprocess
import sys

import optbench
from optbench import exceptions


def test_stub_matches_the_extension():
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "optbench._core"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_exceptions_share_one_base():
    for name in exceptions.__all__:
        assert issubclass(getattr(exceptions, name), exceptions.OptbenchError)
    assert issubclass(exceptions.ServerStartError, exceptions.ServerError)
    assert issubclass(exceptions.DatasetError, exceptions.ConfigError)


def test_cli_help_and_errors():
    out = subprocess.run([sys.executable, "-m", "optbench.cli", "load-test", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--request-rate" in out.stdout and "--ignore-eos" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "optbench.cli", "load-test", "--model", "m"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "--base-url" in out.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "optbench.cli",
            "load-test",
            "--base-url",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--extra-body",
            "{nope",
            "--no-save",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "extra-body" in out.stderr


def test_version_and_build_profile_are_exposed():
    assert optbench.__version__.count(".") == 2
    assert optbench.build_profile in ("release", "debug")
