"""Self-calibration against the mock server (a child process) with known timings."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

import optbench
from optbench.calibration import LARGE_ERROR_SHARE, _compare, default_num_requests, large_error_warnings
from optbench.exceptions import ConfigError


@pytest.mark.timeout(120)
def test_calibration_measures_the_client_against_the_mocks_truth():
    c = optbench.calibrate(4, output_tokens=12, gap_ms=5.0, ttft_ms=20.0, num_requests=12)
    assert (c.succeeded, c.failed, c.concurrency) == (12, 0, 4)
    assert c.tokens == 12 * 12  # every token the mock wrote
    # The mock's own account: TTFT and gap as configured (a late first token shortens the mean gap).
    assert 20.0 <= c.truth_ttft_p50_ms < 40.0 and 4.0 <= c.truth_itl_p50_ms < 10.0
    # The client reads the same streams: its P50 TTFT cannot precede the mock's writing, and on
    # loopback it trails by far less than the streams' own timings.
    assert c.ttft_err_p50_ms is not None and -1.0 < c.ttft_err_p50_ms < 20.0, c
    # The ITL truth is each request's mean gap: the median of the single gaps may sit below it
    # when a few gaps run long (a loaded machine), by less than one gap.
    assert c.itl_err_p50_ms is not None and -5.0 < c.itl_err_p50_ms < 20.0, c
    assert c.ttft_err_p99_ms is not None and c.itl_err_p99_ms is not None
    assert 0 < c.cpu_s and c.cpu_ms_per_1k_tokens == pytest.approx(1e6 * c.cpu_s / c.tokens)
    assert c.offered_tokens_per_s == pytest.approx(4 * 200)
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d and "TTFT error" in c.line()


def test_bad_values_are_named_before_anything_starts():
    for kwargs, name in (
        ({"concurrency": 0}, "concurrency"),
        ({"gap_ms": -1.0}, "gap_ms"),
        ({"output_tokens": 1}, "output_tokens"),
        ({"num_requests": 0}, "num_requests"),
        ({"endpoint": "embeddings"}, "endpoint"),
    ):
        with pytest.raises(ConfigError, match=name):
            optbench.calibrate(**kwargs)


def test_default_length_is_a_few_seconds_of_streams():
    # 50 ms + 63 x 10 ms = 0.68 s per stream: three waves for ~2 s.
    assert default_num_requests(8, 64, 50.0, 10.0) == 24
    assert default_num_requests(2, 4096, 50.0, 10.0) == 4  # long streams: still two per slot


def test_errors_are_client_percentile_minus_truth_percentile():
    rows = pd.DataFrame(
        {
            "success": [True, True, False],
            "error_kind": [None, None, "connect"],
            "ttft_ms": [21.0, 23.0, None],
            "itl_ms": [[5.5, 5.5], [6.0, 5.0], None],
        }
    )
    truth = [
        {"received_s": 0.0, "first_token_sent_s": 0.020, "last_token_sent_s": 0.030, "tokens_sent": 3},
        {"received_s": 1.0, "first_token_sent_s": 1.022, "last_token_sent_s": 1.032, "tokens_sent": 3},
    ]
    c = _compare(rows, truth, 0.002, 2, 3, 3, 20.0, 5.0, "completions")
    assert c.succeeded == 2 and c.failed == 1 and c.tokens == 6 and c.window_s == pytest.approx(1.032)
    assert c.ttft_err_p50_ms == pytest.approx(22.0 - 21.0)  # client P50 22 ms, truth P50 21 ms
    assert c.itl_err_p50_ms == pytest.approx(5.5 - 5.0)
    # Client gaps sorted 5.0, 5.5, 5.5, 6.0: numpy's linear P99 sits at rank 2.97, 5.985 ms.
    assert c.itl_err_p99_ms == pytest.approx(5.985 - 5.0)
    assert c.cpu_ms_per_1k_tokens == pytest.approx(2e6 / 6 / 1e3)


def test_a_large_error_against_the_measured_values_is_named():
    cal = {"ttft_err_p99_ms": 0.5, "itl_err_p99_ms": 2.0}
    assert large_error_warnings(cal, ttft_p50_ms=100.0, itl_p50_ms=40.0) == []
    warns = large_error_warnings(cal, ttft_p50_ms=100.0, itl_p50_ms=2.0 / LARGE_ERROR_SHARE - 1)
    assert len(warns) == 1 and "ITL" in warns[0] and "saturated" in warns[0]
    assert large_error_warnings({"error": "no mock"}, 1.0, 1.0) == []


@pytest.mark.timeout(120)
def test_cli_calibrate_prints_json():
    out = subprocess.run(
        [sys.executable, "-m", "optbench.cli", "calibrate", "--concurrency", "2", "--output-tokens", "8"]
        + ["--num-requests", "4", "--gap-ms", "5", "--ttft-ms", "10", "--json"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["succeeded"] == 4 and d["concurrency"] == 2 and d["cpu_ms_per_1k_tokens"] > 0
    bad = subprocess.run(
        [sys.executable, "-m", "optbench.cli", "calibrate", "--concurrency", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--concurrency" in bad.stderr and "Traceback" not in bad.stderr
