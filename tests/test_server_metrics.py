"""The server's view: Prometheus /metrics over a run's window (a known exposition, the real
llama-server) and llama.cpp's per-request timings against the client's numbers."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest

import optbench
from optbench.server_metrics import (
    MetricsScraper,
    client_vs_server,
    parse_metrics,
    server_timing_columns,
    summarize,
    summary_line,
)
from optbench.testing import MockServer

LABELS = 'model_name="m",engine="0"'


def vllm_text(ttft_buckets: list[float], kv: float, hits: float, queries: float, waiting: float) -> str:
    """A vLLM exposition: a TTFT histogram over le 0.01, 0.02, 0.04, +Inf (cumulative counts
    given), KV-cache use, prefix-cache counters, requests waiting."""
    les = ["0.01", "0.02", "0.04", "+Inf"]
    buckets = "\n".join(
        f'vllm:time_to_first_token_seconds_bucket{{le="{le}",{LABELS}}} {c}' for le, c in zip(les, ttft_buckets)
    )
    return f"""# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
{buckets}
vllm:time_to_first_token_seconds_count{{{LABELS}}} {ttft_buckets[-1]}
vllm:time_to_first_token_seconds_sum{{{LABELS}}} {0.025 * ttft_buckets[-1]}
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{{LABELS}}} {kv}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{LABELS}}} {waiting}
# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{{{LABELS}}} {hits}
# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{{{LABELS}}} {queries}
"""


def test_window_deltas_bucket_percentiles_gauges_and_prefix_hits():
    # Before: 5 observations already (another run). After: 40 more, 10 in (0.01, 0.02], 20 in
    # (0.02, 0.04], 10 above 0.04.
    before = parse_metrics(vllm_text([5, 5, 5, 5], kv=0.0, hits=100, queries=1000, waiting=0), at=0.0)
    during = [parse_metrics(vllm_text([5, 10, 20, 25], kv=0.6, hits=150, queries=1500, waiting=3), at=1.0)]
    after = parse_metrics(vllm_text([5, 15, 35, 45], kv=0.2, hits=400, queries=2000, waiting=0), at=2.0)
    s = summarize(before, during, after)
    assert s["available"] and s["engine"] == "vllm" and s["window_s"] == 2.0
    ttft = s["histograms"]["ttft_ms"]
    assert ttft["metric"] == "vllm:time_to_first_token_seconds" and ttft["count"] == 40
    assert ttft["mean"] == pytest.approx(25.0)  # 0.025 s x 40 / 40
    # P50: rank 20 of 40 lies in (20 ms, 40 ms], 10 of its 20 observations in: 30 ms.
    assert ttft["p50"] == pytest.approx(30.0) and ttft["p50_bucket"] == [20.0, 40.0]
    # P99: rank 39.6 lies in the +Inf bucket: the highest finite bound, unbounded above.
    assert ttft["p99"] == pytest.approx(40.0) and ttft["p99_bucket"] == [40.0, None]
    kv = s["gauges"]["kv_cache_usage"]
    assert kv["max"] == 0.6 and kv["mean"] == pytest.approx(0.8 / 3) and kv["samples"] == 3
    assert s["gauges"]["requests_waiting"]["max"] == 3
    assert s["counters"]["prefix_cache_hits"] == 300 and s["prefix_cache_hit_rate"] == pytest.approx(300 / 1000)
    assert "TTFT P50 30.0 ms" in summary_line(s) and "prefix-cache hits 30%" in summary_line(s)


def test_the_measured_window_uses_the_reads_nearest_its_edges():
    """Reads every 2 s from 0 s to 8 s; warm-up until 1.5 s, measured window 2.2 s .. 5.8 s: the
    deltas run from the read at 2 s to the one at 6 s, leaving out the warm-up's observations."""
    ttft = [[0, 0, 0, 0], [0, 3, 3, 3], [0, 3, 10, 10], [0, 3, 20, 20], [0, 3, 25, 25], [0, 3, 25, 25]]
    reads = [
        parse_metrics(vllm_text(b, kv=0.1 * i, hits=0, queries=0, waiting=0), at=2.0 * i)
        for i, b in enumerate(ttft[:5])
    ]
    scraper = MetricsScraper("http://127.0.0.1:9")
    scraper.before, scraper.during, scraper.after = reads[0], reads[1:4], reads[4]
    whole = scraper.summary()
    assert whole["window"] == "load test" and whole["histograms"]["ttft_ms"]["count"] == 25
    measured = scraper.summary(window=(2.2, 5.8))
    assert measured["window"] == "measured" and measured["window_s"] == 4.0
    assert measured["start_offset_s"] == pytest.approx(-0.2) and measured["end_offset_s"] == pytest.approx(0.2)
    # The 3 warm-up observations (read at 2 s) are out; the 17 of the window are in.
    assert measured["histograms"]["ttft_ms"]["count"] == 17
    assert measured["gauges"]["kv_cache_usage"]["samples"] == 3  # the reads at 2, 4 and 6 s
    # The client side of the comparison is then the measured requests only.
    rows = pd.DataFrame(
        {
            "success": [True, True],
            "warmup": [True, False],
            "ttft_ms": [900.0, 30.0],
            "itl_ms": [[], []],
            "tpot_ms": [None, None],
            "e2e_ms": [950.0, 40.0],
        }
    )

    def client_ttft_p50(server):
        return {r["quantity"]: r for r in client_vs_server(rows, server, None)}["TTFT P50"]["client"]

    assert client_ttft_p50(measured) == 30.0 and client_ttft_p50(whole) == 465.0


def test_sglang_and_llama_cpp_names_are_recognised():
    sglang = parse_metrics(
        '# TYPE sglang:token_usage gauge\nsglang:token_usage{model_name="m"} 0.25\n'
        '# TYPE sglang:cache_hit_rate gauge\nsglang:cache_hit_rate{model_name="m"} 0.5\n'
    )
    s = summarize(sglang, [], sglang)
    assert s["engine"] == "sglang" and s["gauges"]["kv_cache_usage"]["max"] == 0.25
    assert s["prefix_cache_hit_rate"] == 0.5
    llama = "# TYPE llamacpp:{0} counter\nllamacpp:{0} {1}\n"
    before = parse_metrics(
        llama.format("prompt_tokens_total", 10)
        + llama.format("prompt_tokens_cached_total", 0)
        + llama.format("prompt_seconds_total", 1)
    )
    after = parse_metrics(
        llama.format("prompt_tokens_total", 110)
        + llama.format("prompt_tokens_cached_total", 300)
        + llama.format("prompt_seconds_total", 3)
    )
    s = summarize(before, [], after)
    assert s["engine"] == "llama.cpp" and s["prompt_ms_per_token"] == pytest.approx(2000 / 100)
    assert s["prefix_cache_hit_rate"] == pytest.approx(300 / 400)  # llama.cpp's prompt tokens exclude cached ones


def test_a_server_without_metrics_is_reported_and_never_raises():
    with MockServer(ttft_ms=1, gap_ms=1, tokens=2) as server:  # answers 404 to /metrics
        with MetricsScraper(server.base_url + "/v1", interval_s=0.05, timeout_s=1.0) as scraper:
            time.sleep(0.2)
    s = scraper.summary()
    assert s == {
        "available": False,
        "reason": "no /metrics",
        "url": server.base_url + "/metrics",
        "scrapes": 1,  # a server without /metrics is not polled again
        "failed_scrapes": 1,
        "last_error": f"HTTP 404 from {server.base_url}/metrics",
    }
    assert summary_line(s).startswith("server metrics: none (no /metrics")


def test_an_unreachable_server_costs_at_most_the_timeout():
    started = time.monotonic()
    with MetricsScraper("http://10.255.255.1:9", timeout_s=0.3) as scraper:
        pass
    assert time.monotonic() - started < 2.0
    assert scraper.summary()["available"] is False and scraper.failures >= 1


def test_timings_become_columns_and_are_compared_with_the_client():
    rows = pd.DataFrame(
        {
            "success": [True, True, True],
            "warmup": [True, False, False],
            "ttft_ms": [30.0, 25.0, 35.0],
            "tpot_ms": [10.0, 10.5, 11.0],
            "e2e_ms": [120.0, 120.0, 140.0],
            "itl_ms": [[10.0], [10.5], [11.0]],
            "server_timings": [
                '{"prompt_n": 10, "cache_n": 0, "prompt_ms": 28.0, "predicted_n": 10, "predicted_ms": 90.0}',
                '{"prompt_n": 6, "cache_n": 4, "prompt_ms": 20.0, "predicted_n": 10, "predicted_ms": 94.5}',
                None,
            ],
        }
    )
    cols = server_timing_columns(rows)
    assert cols["server_prompt_ms"].tolist()[:2] == [28.0, 20.0] and math.isnan(cols["server_prompt_ms"][2])
    assert cols["ttft_minus_server_prompt_ms"].tolist()[:2] == [2.0, 5.0]
    assert cols["server_cached_tokens"].tolist()[:2] == [0, 4]
    cal = {"ttft_err_p50_ms": 0.5, "ttft_err_p99_ms": 1.0, "itl_err_p50_ms": 0.2}
    by = {r["quantity"]: r for r in client_vs_server(rows, None, cal)}
    # Warm-up included on both sides: client TTFT P50 30 ms (3 rows), server prompt P50 24 ms (2 rows).
    assert by["TTFT P50"]["client"] == 30.0 and by["TTFT P50"]["server"] == 24.0
    assert by["TTFT P50"]["tolerance"] == 0.5 and by["TTFT P50"]["beyond"]
    # TPOT: predicted_ms / (predicted_n - 1) = 10 and 10.5 ms; client P50 10.5 ms.
    assert by["TPOT P50"]["server"] == pytest.approx(10.25) and by["TPOT P50"]["difference"] == pytest.approx(0.25)
    assert by["TPOT P50"]["tolerance"] == 0.2 and by["TPOT P50"]["beyond"]


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_llama_server_metrics_and_timings_agree_with_the_client(llama_server):
    # Long enough answers that a quiet machine still takes several scrape intervals over them.
    with MetricsScraper(llama_server.base_url, interval_s=0.05) as scraper:
        r = optbench.load_test(
            llama_server.base_url,
            llama_server.model,
            num_requests=2,
            concurrency=2,
            input_tokens=32,
            output_tokens=48,
            ignore_eos=True,
            progress=False,
        )
    assert r.summary["num_succeeded"] == 2, r.requests["error_message"].tolist()
    s = scraper.summary()
    assert s["available"] and s["engine"] == "llama.cpp" and s["failed_scrapes"] == 0, s
    assert len(scraper.during) >= 1  # the background thread read it while the requests ran
    df = r.requests
    # The server's counters over the window hold exactly these requests' tokens.
    assert s["counters"]["generation_tokens"] == df["output_tokens"].sum() == 96
    assert s["counters"]["prompt_tokens"] + s["counters"]["cached_prompt_tokens"] == df["prompt_tokens"].sum()
    assert s["decode_ms_per_token"] > 0 and s["prompt_ms_per_token"] > 0
    assert s["gauges"]["requests_running"]["max"] >= 1
    # Per-request timings: columns, the summary, and the client's TTFT never below the prompt time.
    assert (df["server_output_tokens"] == df["output_tokens"]).all()
    assert (df["ttft_minus_server_prompt_ms"] >= 0).all()
    t = r.summary["server_timings"]
    assert t["count"] == 2 and t["ttft_minus_server_prompt_ms"]["p50"] >= 0
    assert "TTFT minus the server's prompt time" in r.summary_table()
    # The client's TPOT and the server's (predicted_ms over the same n - 1 gaps) within 10%.
    tpot = {row["quantity"]: row for row in client_vs_server(df, s, None)}["TPOT P50"]
    assert abs(tpot["difference"]) <= 0.1 * tpot["server"] + 1.0, tpot
