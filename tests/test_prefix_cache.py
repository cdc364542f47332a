"""Shared-prefix workloads: the intended prefix-cache hit rate against the server's own account,
on the mock (whose prefix cache is known truth) and on the real llama-server."""

from __future__ import annotations

import pytest

import optbench
from optbench.exceptions import ConfigError
from optbench.prefix_cache import PrefixWorkload, arrangement
from optbench.testing import MockServer

SMALL = dict(prefix_tokens=40, suffix_tokens=10, output_tokens=2, progress=False)


def test_arrangements_order_prefixes_and_suffixes():
    assert arrangement(2, 3, "grouped") == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert arrangement(2, 3, "interleaved") == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]


def test_intended_cached_tokens_follow_the_arrangement():
    # Two prefixes (10 and 20 tokens) x 2 suffixes, interleaved, sent 6 times (2 repeats).
    w = PrefixWorkload(
        texts=["a", "b", "c", "d"],
        prefix_ids=[0, 1, 0, 1],
        suffix_ids=[0, 0, 1, 1],
        prefix_tokens=[10, 20, 10, 20],
        prompt_tokens=[15, 25, 16, 26],
    )
    # First of each prefix misses, the next hits its prefix, a repeated prompt all but one token.
    assert w.intended_cached(6) == [0, 0, 10, 20, 14, 24]


@pytest.mark.parametrize("order", ["interleaved", "grouped"])
def test_mock_hit_rate_is_exactly_the_intended_one(order):
    # 3 prefixes x 3 suffixes = 9 prompts; 2 warm-up + 12 measured requests, so the run also
    # repeats prompts 0-4 whole. Two in flight: the mock remembers prompts as they are read.
    with MockServer(ttft_ms=60, gap_ms=1, tokens=2, tokenize="words", prefix_cache=100) as server:
        result = optbench.load_test(
            server.base_url,
            "mock",
            num_requests=12,
            warmup=2,
            concurrency=2,
            shared_prefixes=3,
            suffixes=3,
            prefix_order=order,
            **SMALL,
        )
    rows = result.requests
    assert rows["success"].all()
    # Per prefix: the server's cached tokens are what the workload intends, to the token. (Per
    # request only up to arrival order: two requests of one prefix sent together may reach the
    # server in either order, and then the second sent is the one that misses.)
    by_prefix = rows.groupby("prefix_id")[["cached_tokens", "intended_cached_tokens"]].sum()
    assert (by_prefix["cached_tokens"] == by_prefix["intended_cached_tokens"]).all(), by_prefix
    assert (rows["prompt_tokens"] == rows["intended_prompt_tokens"]).all()
    assert set(rows["intended_cached_tokens"][rows["request_id"] >= 9]) == {
        t - 1 for t in rows["intended_prompt_tokens"][rows["request_id"] >= 9]
    }
    pc = result.summary["prefix_cache"]
    assert pc["source"] == "usage"
    assert pc["achieved_hit_rate"] == pytest.approx(pc["intended_hit_rate"], abs=1e-12)
    assert 0.5 < pc["intended_hit_rate"] < 1.0
    assert pc["within_margin"] is True
    assert not any("prefix cache" in w for w in result.warnings)
    assert "hit rate intended" in result.summary_table()
    assert result.summary_row()["prefix_cache_achieved"] == pc["achieved_hit_rate"]
    # The mock's TTFT shrinks to ttft x uncached / total: a miss waits the whole 60 ms, a hit a
    # fraction; the client adds well under 15 ms on a loaded machine, and is never early.
    measured = rows[~rows["warmup"]]
    share = 1 - measured["cached_tokens"] / measured["prompt_tokens"]
    expected = 60 * share
    assert (measured["ttft_ms"] >= expected - 0.5).all()
    assert (measured["ttft_ms"] <= expected + 15).all(), measured[["ttft_ms"]].assign(expected=expected)


def test_a_cache_too_small_is_reported_beside_the_intended_rate():
    # The mock remembers one prompt; interleaving 3 prefixes means each prefix returns after two
    # others, so nothing is reused while the workload intends most of the prefix tokens to be.
    with MockServer(ttft_ms=5, gap_ms=1, tokens=2, tokenize="words", prefix_cache=1) as server:
        result = optbench.load_test(
            server.base_url, "mock", num_requests=9, concurrency=1, shared_prefixes=3, suffixes=3, **SMALL
        )
    pc = result.summary["prefix_cache"]
    assert pc["achieved_hit_rate"] == 0.0
    assert pc["intended_hit_rate"] > 0.4
    assert pc["within_margin"] is False
    assert any("differ by more than 0.05" in w for w in result.warnings), result.warnings


def test_a_server_that_reports_no_cache_gets_a_warning():
    with MockServer(ttft_ms=5, gap_ms=1, tokens=2, tokenize="words") as server:
        result = optbench.load_test(
            server.base_url, "mock", num_requests=4, concurrency=1, shared_prefixes=1, suffixes=4, **SMALL
        )
    pc = result.summary["prefix_cache"]
    assert pc["source"] is None and pc["achieved_hit_rate"] is None
    assert pc["intended_hit_rate"] > 0.5
    assert any("achieved hit rate is unknown" in w for w in result.warnings), result.warnings


def test_bad_shared_prefix_options_are_clear_errors():
    with pytest.raises(ConfigError, match="shared_prefixes builds its own prompts"):
        optbench.LoadTestOptions(shared_prefixes=2, prompts=["hi"])
    with pytest.raises(ConfigError, match="suffixes must be at least 1"):
        optbench.LoadTestOptions(shared_prefixes=2, suffixes=0)
    with pytest.raises(ConfigError, match="prefix_order must be one of"):
        optbench.LoadTestOptions(shared_prefixes=2, prefix_order="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="hit_rate_margin must be at most 1"):
        optbench.LoadTestOptions(hit_rate_margin=2.0)


def test_llama_server_reports_the_reuse_the_workload_intends(llama_server):
    """The real llama-server's own count of reused prompt tokens (its usage, its timings'
    ``cache_n`` and its /metrics) moves with the arrangement: one prefix under four suffixes is
    served mostly from its slots' cache, four prefixes under one suffix each are not. Requests go
    one at a time, so each finds the one before it in a slot (4 slots, 2048 tokens each); the
    prompts are short (about 100 tokens) because the machine's 2 cores are shared. Each run has
    its own seed, so no prefix of one run is in the cache from another."""
    common = dict(num_requests=4, concurrency=1, prefix_tokens=96, suffix_tokens=8, output_tokens=1, progress=False)
    reuse = optbench.load_test(
        llama_server.base_url, llama_server.model, shared_prefixes=1, suffixes=4, seed=101, **common
    )
    fresh = optbench.load_test(
        llama_server.base_url, llama_server.model, shared_prefixes=4, suffixes=1, seed=202, **common
    )
    high, none = reuse.summary["prefix_cache"], fresh.summary["prefix_cache"]
    assert high["source"] in ("usage", "server_timings"), high
    assert high["intended_hit_rate"] > 0.6 and none["intended_hit_rate"] == 0.0
    # The server agrees with each within the margin (a shared space token or BOS at most).
    assert high["within_margin"] and none["within_margin"], (high, none)
    assert high["achieved_hit_rate"] > none["achieved_hit_rate"] + 0.5
    # Every source the server offers tells the same story.
    for name, source in high["sources"].items():
        assert source["achieved"] > 0.6, (name, source)
