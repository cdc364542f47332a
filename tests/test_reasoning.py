"""Reasoning models against the mock server with known truth: the thinking
(``delta.reasoning_content``) is timed and counted apart from the answer, with and without the
usage's ``completion_tokens_details``; runs without reasoning are unchanged."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import optbench
from optbench.loadtest import REASONING_METRICS
from optbench.report import render_markdown, run_speed_metrics, speed_metrics, speed_metrics_from_summary
from optbench.results import load_journal
from optbench.testing import MockServer

PROMPTS = [f"prompt {i}" for i in range(4)]
#: The client's own `stream_options` without `include_usage`: the mock's usage then has no
#: `completion_tokens_details` (as vLLM's), while chunks still carry the cumulative usage.
NO_DETAILS = {"stream_options": {"continuous_usage_stats": True}}
REASONING_COLUMNS = (
    "first_reasoning_token_ns",
    "last_reasoning_token_ns",
    "ttft_reasoning_ms",
    "reasoning_tokens",
    "answer_tokens",
    "reasoning_token_source",
    "reasoning_tokens_per_s",
    "answer_tokens_per_s",
)


def run(base_url: str, **kw):
    kw.setdefault("num_requests", 8)
    kw.setdefault("concurrency", 2)
    kw.setdefault("output_tokens", 20)
    kw.setdefault("prompts", PROMPTS)
    kw.setdefault("progress", False)
    kw.setdefault("endpoint", "chat")
    return optbench.load_test(base_url, "mock", **kw)


def _words(text: str) -> list[str]:
    return [w.rstrip("0123456789") for w in text.split()]


def test_time_to_first_answer_token_within_1ms_of_the_truth_and_counts_from_usage():
    with MockServer(ttft_ms=30, gap_ms=5, tokens=20, reasoning_tokens=12) as server:
        r = run(server.base_url)
        log = server.log()
    assert r.summary["num_succeeded"] == 8
    truth_answer = float(np.median([(e["first_answer_token_sent_s"] - e["received_s"]) * 1e3 for e in log]))
    truth_first = float(np.median([(e["first_token_sent_s"] - e["received_s"]) * 1e3 for e in log]))
    assert abs(truth_answer - (30 + 12 * 5)) < 1.0  # the 13th token, 12 gaps after the first
    assert abs(r.metric("ttft_answer_ms") - truth_answer) < 1.0, (r.metric("ttft_answer_ms"), truth_answer)
    assert abs(r.metric("ttft_reasoning_ms") - truth_first) < 1.0
    assert all(e["reasoning_tokens_sent"] == 12 and e["tokens_sent"] == 20 for e in log)
    df = r.requests
    # TTFT is the first token of any kind: here the first reasoning token.
    assert (df["ttft_ms"] == df["ttft_reasoning_ms"]).all()
    assert (df["first_answer_token_ns"] > df["last_reasoning_token_ns"]).all()
    assert (df["output_tokens"] == 20).all() and (df["token_count_source"] == "usage").all()
    assert (df["reasoning_tokens"] == 12).all() and (df["answer_tokens"] == 8).all()
    assert (df["reasoning_token_source"] == "usage").all()
    # The answer is output_text (what quality scoring reads); the thinking is kept apart.
    assert all(_words(t) == ["tok"] * 8 for t in df["output_text"])
    assert all(_words(t) == ["think"] * 12 for t in df["reasoning_text"])
    # Rates: 12 reasoning tokens over 11 gaps of 5 ms; 8 answer tokens over 7 gaps.
    assert r.metric("reasoning_tokens_per_s") == pytest.approx(12 / 0.055, rel=0.05)
    assert r.metric("answer_tokens_per_s") == pytest.approx(8 / 0.035, rel=0.08)
    reasoning = r.summary["reasoning"]
    assert reasoning["num_with_reasoning"] == 8 and reasoning["num_reasoning_counts_from_chunks"] == 0
    assert (reasoning["total_reasoning_tokens"], reasoning["total_answer_tokens"]) == (96, 64)
    window = r.summary["duration_s"]
    assert reasoning["reasoning_token_throughput"] == pytest.approx(96 / window)
    assert reasoning["answer_token_throughput"] == pytest.approx(64 / window)
    text = str(r)
    assert "ttft_answer_ms" in text and "reasoning: 8/8 requests reasoned" in text
    assert "(reasoning counts from usage)" in text
    assert not any("completion_tokens_details" in w for w in r.warnings)
    row = r.summary_row()
    assert row["ttft_answer_p50_ms"] == r.metric("ttft_answer_ms")
    assert row["total_reasoning_tokens"] == 96


@pytest.mark.parametrize(
    "fault,extra_body",
    [("none", NO_DETAILS), ("no_usage", None)],
    ids=["usage_without_details", "no_usage_at_all"],
)
def test_without_usage_details_tokens_are_counted_per_chunk(fault, extra_body):
    with MockServer(ttft_ms=10, gap_ms=3, tokens=20, reasoning_tokens=12, fault=fault) as server:
        r = run(server.base_url, extra_body=extra_body, num_requests=4)
    df = r.requests
    assert r.summary["num_succeeded"] == 4
    assert (df["reasoning_tokens"] == 12).all() and (df["answer_tokens"] == 8).all()
    assert (df["reasoning_token_source"] == "chunks").all()
    assert (df["output_tokens"] == 20).all()
    assert (df["token_count_source"] == ("usage" if fault == "none" else "chunks")).all()
    assert r.summary["reasoning"]["num_reasoning_counts_from_chunks"] == 4
    assert any("4 responses' usage had no completion_tokens_details.reasoning_tokens" in w for w in r.warnings)
    assert "(4 reasoning counts per chunk)" in str(r)


def test_a_chunk_straddling_reasoning_and_answer_counts_as_answer_unless_usage_says():
    # 3 tokens per chunk, 10 of 20 reasoning: the 4th chunk carries 1 reasoning and 2 answer tokens.
    with MockServer(ttft_ms=5, gap_ms=3, tokens=20, tokens_per_chunk=3, reasoning_tokens=10) as server:
        exact = run(server.base_url, num_requests=2)
        per_chunk = run(server.base_url, num_requests=2, extra_body=NO_DETAILS)
    for df in (exact.requests, per_chunk.requests):
        assert all(_words(t) == ["think"] * 10 for t in df["reasoning_text"])
        assert all(_words(t) == ["tok"] * 10 for t in df["output_text"])
    assert (exact.requests["reasoning_tokens"] == 10).all() and (exact.requests["answer_tokens"] == 10).all()
    assert (per_chunk.requests["reasoning_tokens"] == 9).all() and (per_chunk.requests["answer_tokens"] == 11).all()
    # The straddling chunk is the first answer chunk and the last reasoning chunk.
    df = per_chunk.requests
    assert (df["first_answer_token_ns"] == df["last_reasoning_token_ns"]).all()


def test_a_run_without_reasoning_has_no_reasoning_columns_or_summary():
    with MockServer(ttft_ms=10, gap_ms=2, tokens=10) as server:
        r = run(server.base_url, num_requests=4, output_tokens=10)
        # A reasoning server on /v1/completions: no split, all of the text is answer.
    with MockServer(ttft_ms=10, gap_ms=2, tokens=10, reasoning_tokens=4) as server:
        completions = run(server.base_url, num_requests=4, output_tokens=10, endpoint="completions")
    for result in (r, completions):
        df = result.requests
        assert df[list(REASONING_COLUMNS)].isna().all().all()
        assert (df["reasoning_text"] == "").all()
        assert (df["ttft_answer_ms"] == df["ttft_ms"]).all()
        assert result.summary["reasoning"] is None
        assert not set(REASONING_METRICS) & set(result.summary["metrics"])
        assert "reasoning" not in str(result)
        assert not any(k.startswith(("ttft_answer", "reasoning", "answer")) for k in result.summary_row())
        assert not any(
            k.startswith(("ttft_answer", "reasoning", "answer")) for k in speed_metrics_from_summary(result.summary)
        )
    assert all(_words(t) == ["tok"] * 10 for t in completions.requests["output_text"])


def test_the_journal_keeps_the_reasoning_columns(tmp_path):
    journal = tmp_path / "requests.journal.jsonl"
    with MockServer(ttft_ms=5, gap_ms=2, tokens=10, reasoning_tokens=6) as server:
        r = run(server.base_url, num_requests=4, output_tokens=10, journal=journal)
    rows, summary, bad = load_journal(journal)
    assert bad == []
    rows = rows.to_pandas().sort_values("request_id").reset_index(drop=True)
    live = r.requests.sort_values("request_id").reset_index(drop=True)
    for col in (*REASONING_COLUMNS, "first_answer_token_ns", "ttft_answer_ms", "reasoning_text", "output_text"):
        pd.testing.assert_series_equal(rows[col], live[col], check_dtype=False)
    assert summary["reasoning"] == r.summary["reasoning"]


def test_report_reasoning_columns_agree_with_pandas_and_appear_in_results_md(tmp_path):
    with MockServer(ttft_ms=5, gap_ms=2, tokens=10, reasoning_tokens=6) as server:
        r = run(server.base_url, num_requests=6, output_tokens=10, warmup=1)
    path = r.to_parquet(tmp_path / "requests.parquet")
    from_rust = run_speed_metrics(path)
    from_rows = speed_metrics(pd.read_parquet(path))
    assert from_rust.keys() == from_rows.keys()
    for k, v in from_rust.items():
        if isinstance(v, str):  # chunk_tokens_source
            assert v == from_rows[k], k
        else:
            assert v == pytest.approx(from_rows[k], rel=1e-12) or (math.isnan(v) and math.isnan(from_rows[k])), k
    assert from_rust["reasoning_tokens_p50"] == 6 and from_rust["ttft_answer_p50_ms"] > from_rust["ttft_p50_ms"]
    table = pd.DataFrame([{"configuration": "a", "status": "ok", "baseline": True, "acceptable": True, **from_rust}])
    text, _ = render_markdown(table, [{"name": "a", "status": "ok", "engine": "mock", "model": "mock"}])
    assert "| P50 TTFT answer (ms) | P99 TTFT answer (ms) | P50 reasoning tokens |" in text
    assert "TTFT answer is the time to the first answer token" in text
    plain = table.drop(columns=[k for k in from_rust if k.startswith(("ttft_answer", "reasoning", "answer"))])
    text, _ = render_markdown(plain, [{"name": "a", "status": "ok", "engine": "mock", "model": "mock"}])
    assert "answer" not in text.split("## Results")[1].split("\n\n")[1]
    assert "TTFT answer" not in text
