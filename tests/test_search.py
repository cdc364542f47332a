"""Goodput under an SLO (optbench.slo) and the search for the highest load meeting it
(optbench.search), against hand computations, the capacity mock whose answer is known in
advance (optbench.testing.capacity_model) and the real embedded llama-server."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import optbench
from optbench import slo
from optbench.cli import main
from optbench.report import speed_metrics_from_summary
from optbench.search import FAIL, INCONCLUSIVE, PASS, SearchOptions, judge_level, requirements, run_search
from optbench.testing import MockServer, capacity_model

PROMPTS = [f"question {i}" for i in range(8)]


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's interval by its formula."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _rows() -> pd.DataFrame:
    """A warm-up row, a failure, a cancelled request and six successes with known timings."""
    base = {"warmup": False, "error_kind": None, "tpot_ms": 10.0, "output_tokens": 20}
    rows = [
        {**base, "warmup": True, "ttft_ms": 1.0, "e2e_ms": 50.0, "itl_ms": [1.0]},
        {**base, "error_kind": "http_5xx", "ttft_ms": None, "e2e_ms": None, "itl_ms": [], "output_tokens": None},
        {**base, "error_kind": "cancelled", "ttft_ms": 10.0, "e2e_ms": None, "itl_ms": [1.0]},
        {**base, "ttft_ms": 100.0, "e2e_ms": 300.0, "itl_ms": [10.0, 10.0]},  # good
        {**base, "ttft_ms": 400.0, "e2e_ms": 600.0, "itl_ms": [10.0, 10.0]},  # good
        {**base, "ttft_ms": 600.0, "e2e_ms": 800.0, "itl_ms": [10.0, 10.0]},  # TTFT too slow
        {**base, "ttft_ms": 100.0, "e2e_ms": 900.0, "itl_ms": [20.0, 60.0], "output_tokens": 30},  # mean 40: too slow
        {**base, "ttft_ms": 100.0, "e2e_ms": 300.0, "itl_ms": [5.0, 45.0], "output_tokens": 10},  # mean 25: good
        {**base, "ttft_ms": 200.0, "e2e_ms": 200.0, "itl_ms": [], "tpot_ms": None, "output_tokens": 1},  # good
    ]
    return pd.DataFrame(rows)


def test_attainment_and_goodput_equal_hand_computations():
    s = slo.evaluate(_rows(), {"ttft_ms": 500, "itl_ms": 30}, duration_s=2.0)
    # Finished measured requests: the failure and the six successes (warm-up and cancelled out).
    assert (s["n"], s["good"]) == (7, 4)
    assert s["attainment"] == pytest.approx(4 / 7)
    assert (s["attainment_low"], s["attainment_high"]) == pytest.approx(_wilson(4, 7))
    assert s["goodput_rps"] == pytest.approx(4 / 2.0)
    assert s["goodput_tps"] == pytest.approx((20 + 20 + 10 + 1) / 2.0)
    assert s["shares"] == pytest.approx({"ttft_ms<=500": 5 / 7, "itl_ms<=30": 5 / 7})
    assert s["slo_met"] is None  # no percentile objective
    # The largest gap instead of the mean: the 5/45 request fails too.
    assert slo.evaluate(_rows(), {"itl_max_ms": 30}, duration_s=2.0)["good"] == 4
    # A percentile objective: P50 of the successes' TTFT is 150 ms; 5 of 7 meet 500 ms (71% < 90%).
    p = slo.evaluate(_rows(), {"ttft_ms": {"p50": 500, "p90": 500}}, duration_s=2.0)
    assert p["percentiles"]["ttft_ms:p50<=500"]["value_ms"] == pytest.approx(150.0)
    assert p["percentiles"]["ttft_ms:p50<=500"]["met"] and not p["percentiles"]["ttft_ms:p90<=500"]["met"]
    assert p["slo_met"] is False and p["binding"] == "ttft_ms:p50<=500"


def test_the_smallest_samples_for_a_claim():
    assert (slo.min_requests(0.99), slo.min_requests(0.95), slo.min_requests(0.9)) == (299, 59, 29)
    # Below 299 requests even a perfect record cannot show 99% at 95% (Clopper-Pearson).
    assert 0.05 ** (1 / 298) < 0.99 <= 0.05 ** (1 / 299)


def test_slo_text_and_bad_slos():
    assert slo.parse_slo_text("ttft_ms=500, itl_ms:p99=50,itl_ms:p50=20") == {
        "ttft_ms": 500.0,
        "itl_ms": {"p99": 50.0, "p50": 20.0},
    }
    assert slo.parse_slo_text('{"e2e_ms": 9}') == {"e2e_ms": 9}
    for bad, message in [
        ({"ttft": 1}, "not one of"),
        ({"ttft_ms": 0}, "above 0"),
        ({"ttft_ms": {"p100": 5}}, "percentile"),
        ({"ttft_ms": {}}, "at least one percentile"),
    ]:
        with pytest.raises(optbench.ConfigError, match=message):
            optbench.LoadTestOptions(slo=bad)
    with pytest.raises(ValueError, match="not a number"):
        slo.parse_slo_text("ttft_ms=fast")
    assert main(["search", "--base-url", "http://127.0.0.1:9", "--model", "m", "--no-save"]) == 2  # no --slo


def test_a_load_test_reports_goodput_in_its_summary_row_and_results_csv():
    with MockServer(ttft_ms=5, gap_ms=2, tokens=6) as server:
        r = optbench.load_test(
            server.base_url, "mock", num_requests=8, concurrency=2, output_tokens=6, prompts=PROMPTS,
            progress=False, slo={"ttft_ms": 1000, "tpot_ms": 0.5},
        )  # fmt: skip
    by_hand = slo.evaluate(r.requests, {"ttft_ms": 1000, "tpot_ms": 0.5}, r.summary["duration_s"])
    assert r.summary["slo"] == by_hand and by_hand["good"] == 0 and by_hand["binding"] == "tpot_ms<=0.5"
    row = r.summary_row()
    assert row["attainment"] == 0 and row["goodput_rps"] == 0 and row["slo"] == "ttft_ms<=1000, tpot_ms<=0.5"
    assert "SLO ttft_ms<=1000, tpot_ms<=0.5: attainment 0.000" in str(r)
    # results.csv of `optbench run` (report.py) takes them from the summary in the Parquet metadata.
    assert speed_metrics_from_summary(r.summary)["attainment"] == 0
    assert "attainment" not in speed_metrics_from_summary({**r.summary, "slo": None})


def test_the_interval_is_the_wider_of_wilson_and_t():
    # Three perfect trials: t has no width, Wilson keeps the sample-size uncertainty.
    from optbench.search import share_interval

    share, low, high = share_interval([30, 30, 30], [30, 30, 30], 0.95)
    assert (share, high) == (1.0, 1.0) and low == pytest.approx(_wilson(90, 90)[0])
    # Trials that disagree: t over the trials is wider than Wilson over the pooled requests.
    share, low, high = share_interval([100, 50, 100], [100, 100, 100], 0.95)
    assert low < _wilson(250, 300)[0] - 0.2 and high == 1.0


ITL_MODEL = dict(ttft_ms=5.0, gap_ms=4.0, gap_growth=0.5, tokens=10)


def test_search_finds_the_known_answer_against_the_capacity_mock(tmp_path):
    # Gaps of 4 × (1 + 0.5 (c − 1)) ms: 4, 6, 8, 10, 12... at concurrency 1, 2, 3, 4, 5...
    target, bound = 0.9, {"itl_ms": 11}
    known = max(
        c
        for c in range(1, 17)
        if slo.evaluate(capacity_model(c, 20, **ITL_MODEL), bound, 1.0)["attainment"] >= target
    )
    assert known == 4
    with MockServer(**ITL_MODEL) as server:
        r = optbench.search(
            server.base_url, "mock", slo=bound, target=target, num_requests=20, output_tokens=10,
            prompts=PROMPTS, max_level=16, results_dir=tmp_path,
        )  # fmt: skip
    assert abs(r.highest_passing - known) <= 1 and r.first_failing == r.highest_passing + 1
    assert r.first_failing_verdict == FAIL and r.binding == "itl_ms<=11"
    assert list(r.levels["level"]) == [1, 2, 4, 5, 6, 8] and (r.levels["trials"] == 3).all()
    h = r.at_highest
    assert h["attainment_low"] >= target and h["goodput_rps_low"] <= h["goodput_rps"] <= h["goodput_rps_high"]
    # Every request at concurrency 4 is good: goodput is throughput there.
    assert h["goodput_rps"] == pytest.approx(h["request_throughput"])
    assert r.files["plot"].stat().st_size > 10_000
    assert len(pd.read_csv(r.files["probes"])) == 18
    saved = json.loads(r.files["json"].read_text())
    assert saved["highest_passing"] == r.highest_passing and len(saved["levels"]) == 6
    assert "highest passing concurrency: 4" in str(r) or f"concurrency: {int(r.highest_passing)}" in str(r)


def _one_level(server: MockServer, slo_spec: dict, **search_values) -> optbench.SearchResult:
    return optbench.search(
        server.base_url, "mock", slo=slo_spec, num_requests=10, output_tokens=4, prompts=PROMPTS,
        start=2, max_level=2, results_dir=None, **search_values,
    )  # fmt: skip


def test_an_inconclusive_level_gets_more_trials_and_a_small_sample_is_refused_a_p99_claim():
    with MockServer(ttft_ms=2, gap_ms=1, tokens=4) as server:
        # Every request is good. 3 trials × 10 = 30 requests: Wilson's lower bound 30/33.8 =
        # 0.886 < 0.9, INCONCLUSIVE; a 4th trial (40/43.8 = 0.912) makes it PASS.
        p90 = _one_level(server, {"ttft_ms": {"p90": 1000}})
        # A P99 claim needs 299 requests: 6 trials give 60, so it is refused, not claimed.
        p99 = _one_level(server, {"ttft_ms": {"p99": 1000}}, max_trials=6)
    assert p90.levels["trials"].tolist() == [4] and p90.levels["verdict"].tolist() == [PASS]
    assert p90.highest_passing == 2 and not p90.notes
    assert p99.levels["trials"].tolist() == [6] and p99.levels["verdict"].tolist() == [INCONCLUSIVE]
    assert p99.highest_passing is None and p99.first_failing == 2 and p99.first_failing_verdict == INCONCLUSIVE
    assert p99.levels["attainment"].tolist() == [1.0]
    assert any("60 requests cannot support" in n and "at least 299" in n for n in p99.notes), p99.notes
    assert "note: concurrency 2: ttft_ms:p99<=1000: 60 requests cannot support" in str(p99)


def test_judge_level_fails_on_any_requirement():
    objectives = slo.parse_slo({"ttft_ms": 100, "e2e_ms": {"p50": 50}})
    reqs = requirements(objectives, 0.5)
    assert [r.name for r in reqs] == ["attainment", "e2e_ms:p50<=50"]
    trial = pd.DataFrame({"ttft_ms<=100": [True] * 40, "e2e_ms:p50<=50": [False] * 40})
    verdict, row, _ = judge_level([trial] * 3, reqs, 0.95)
    assert verdict == FAIL and row["attainment_verdict"] == PASS and row["e2e_ms:p50<=50_verdict"] == FAIL


def test_the_search_needs_an_slo_and_sane_options():
    with pytest.raises(optbench.ConfigError, match="needs an SLO"):
        optbench.search("http://127.0.0.1:9", "m", results_dir=None)
    with pytest.raises(optbench.ConfigError, match="max_trials"):
        SearchOptions(trials=5, max_trials=4)
    with pytest.raises(optbench.ConfigError, match="trials must be at least 3"):
        SearchOptions(trials=2)
    with pytest.raises(optbench.ConfigError, match="whole concurrency"):
        SearchOptions(start=1.5)


def test_run_search_bisects_within_the_tolerance_over_request_rates():
    # A stand-in server whose requests are all good up to 37 req/s and none above: the search
    # over rates must bracket 37 within a tenth of the highest passing rate.
    def run_trial(level: float, j: int):
        good = level <= 37
        rows = pd.DataFrame(
            {"warmup": False, "error_kind": None, "ttft_ms": 10.0 if good else 900.0, "e2e_ms": 20.0,
             "tpot_ms": 1.0, "itl_ms": [[1.0]] * 40, "output_tokens": 5}
        )  # fmt: skip
        summary = {"duration_s": 40 / level, "request_throughput": level, "output_token_throughput": 5 * level}
        return optbench.LoadTestResult(rows, summary, {}, "stand-in", "completed", "user")

    opts = SearchOptions(over="request_rate", start=4, max_level=1000, target=0.9)
    r = run_search(run_trial, slo.parse_slo({"ttft_ms": 100}), opts)
    assert r.highest_passing <= 37 < r.first_failing
    assert r.first_failing - r.highest_passing <= 0.1 * r.highest_passing
    assert r.at_highest["goodput_rps"] == pytest.approx(r.highest_passing)
    assert np.isfinite(r.levels["attainment_low"]).all()


@pytest.mark.llama
@pytest.mark.slow
def test_search_against_the_embedded_llama_server(llama_server, tmp_path):
    """Concurrency 1 to 4 of the real server (4 slots), short answers and a loose SLO: every
    level it tries should pass, and the plot is written."""
    r = optbench.search(
        llama_server.base_url,
        llama_server.model,
        slo={"ttft_ms": 20_000, "e2e_ms": 60_000},
        target=0.8,
        num_requests=10,
        input_tokens=32,
        output_tokens=8,
        ignore_eos=True,
        max_level=4,
        results_dir=tmp_path,
    )
    assert r.highest_passing == 4 and r.first_failing is None, str(r)
    assert list(r.levels["level"]) == [1, 2, 4] and (r.levels["verdict"] == PASS).all()
    # Each level's measured prompts are the same (common random numbers): 30 measured rows each.
    assert (r.levels["n"] == 30).all() and (r.probes["failed"] == 0).all()
    assert r.at_highest["request_throughput"] > 0 and r.at_highest["goodput_tps"] > 0
    assert r.files["plot"].exists() and r.files["plot"].stat().st_size > 10_000
