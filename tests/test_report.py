"""The report's speed figures come from the Rust summary stored with each run; recomputed from
the rows with pandas they are the same numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import optbench
from optbench.report import run_speed_metrics, speed_metrics, speed_metrics_from_summary
from optbench.testing import MockServer

PROMPTS = [f"prompt {i}" for i in range(4)]


def _same(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        elif isinstance(a[k], str):  # chunk_tokens_source
            assert a[k] == b[k], k
        else:
            assert a[k] == pytest.approx(b[k], rel=1e-12), k


@pytest.mark.parametrize("fault,arg", [("none", 0), ("reset", 2), ("status", 503)])
def test_stored_summary_and_pandas_recomputation_agree(tmp_path, fault, arg):
    with MockServer(ttft_ms=3, gap_ms=2, tokens=6, fault=fault, fault_arg=arg) as server:
        r = optbench.load_test(
            server.base_url,
            "mock",
            num_requests=9,
            concurrency=3,
            warmup=2,
            output_tokens=6,
            prompts=PROMPTS,
            progress=False,
        )
    path = r.to_parquet(tmp_path / "requests.parquet")
    from_rust = run_speed_metrics(path)
    _same(from_rust, speed_metrics_from_summary(r.summary))
    _same(from_rust, speed_metrics(pd.read_parquet(path)))
    assert from_rust["num_requests"] == 9
    if fault == "none":
        assert from_rust["num_failed"] == 0 and from_rust["output_token_throughput"] > 0
    else:
        assert from_rust["num_failed"] == 9 and math.isnan(from_rust["ttft_p50_ms"])


def test_a_file_without_a_stored_summary_is_recomputed(tmp_path):
    with MockServer(ttft_ms=3, gap_ms=2, tokens=6) as server:
        r = optbench.load_test(
            server.base_url, "mock", num_requests=5, concurrency=2, output_tokens=6, prompts=PROMPTS, progress=False
        )
    bare = tmp_path / "bare.parquet"
    r.requests.to_parquet(bare)
    _same(run_speed_metrics(bare), speed_metrics_from_summary(r.summary))
