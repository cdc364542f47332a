"""The search for the highest load constrained by quality (optbench.search_quality): against a
mock whose answers change when more than 2 requests are active the answer steps down to 2,
bound by quality; against a steady mock it is the SLO's answer. Both with a quality slice whose
gold answers are the mock's own answers alone, so every answer scores 1 at concurrency 1."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import optbench
from optbench.cli import main
from optbench.datasets import build_test_dataset
from optbench.search import PASS, SearchOptions
from optbench.search_quality import DROPS, KEEPS, REFERENCE, is_drop
from optbench.testing import MockServer

SMALL = {"qa": 14, "reasoning": 3, "chat": 3, "code": 3}
PROMPTS = [f"question {i}" for i in range(8)]
MOCK = dict(ttft_ms=1, gap_ms=2, tokens=6)
#: Every level from 1 to 4 passes: 3 trials x 10 requests, all good, Wilson's lower bound 0.886 >= 0.8.
LENIENT = dict(
    slo={"ttft_ms": 10_000}, target=0.8, num_requests=10, output_tokens=6, prompts=PROMPTS, start=1, max_level=4
)
QUALITY = dict(quality_categories=["qa"], quality_limit=12)


@pytest.fixture(scope="module")
def quality_slice(shared_dir, tmp_path_factory):
    """A dataset whose QA gold answers are the mock's answers at concurrency 1."""
    folder = tmp_path_factory.mktemp("data")
    built = folder / "built.json"
    build_test_dataset(str(shared_dir / "datasets"), output=built, counts=SMALL)
    doc = json.loads(built.read_text())
    with MockServer(**MOCK) as server:
        alone = optbench.evaluate(
            server.base_url, "mock", dataset=built, categories=["qa"], limit=12, concurrency=1, progress=False
        )
    gold = dict(zip(alone.samples["id"], alone.samples["output"].str.strip()))
    doc["items"] = [
        {**it, "answers": [gold[it["id"]]], "reference": [gold[it["id"]]], "is_impossible": False}
        if it["id"] in gold
        else it
        for it in doc["items"]
    ]
    path = folder / "slice.json"
    path.write_text(json.dumps(doc))
    return path


def test_answers_that_change_above_2_in_flight_bind_the_search_at_2(quality_slice, tmp_path):
    with MockServer(**MOCK, diverge_above=2, diverge_at=2) as server:
        r = optbench.search(
            server.base_url, "mock", **LENIENT, quality_dataset=str(quality_slice), **QUALITY, results_dir=tmp_path
        )
    assert r.highest_passing == 4 and list(r.levels["level"]) == [1, 2, 4] and (r.levels["verdict"] == PASS).all()
    assert r.quality_level == 2 and r.bound_by == "quality", str(r)
    checked = r.quality["checked"]
    assert [checked[k]["verdict"] for k in ("1", "2", "4")] == [REFERENCE, KEEPS, DROPS]
    at4 = checked["4"]
    assert at4["score_1"] == 1.0 and at4["score"] < 0.95 and at4["change_high"] < 0
    assert checked["2"]["score"] == 1.0 and checked["2"]["identical_share"] == 1.0
    levels = pd.read_csv(r.files["levels"])
    assert list(levels["quality_verdict"]) == [REFERENCE, KEEPS, DROPS]
    assert levels["quality_score"].iloc[2] == pytest.approx(at4["score"])
    # Each checked level's answers, both passes item by item.
    pairs = pd.read_parquet(r.files["quality_4"])
    assert len(pairs) == 12 and not pairs["identical"].all()
    assert pd.read_parquet(r.files["quality_2"])["identical"].all()
    saved = json.loads(r.files["json"].read_text())
    assert saved["quality_level"] == 2 and saved["bound_by"] == "quality"
    assert "meeting the SLO and keeping quality: 2 (bound by quality)" in str(r)
    assert r.files["plot"].stat().st_size > 10_000


def test_a_steady_server_is_bound_by_the_slo_at_the_unconstrained_level(quality_slice):
    with MockServer(**MOCK) as server:
        plain = optbench.search(server.base_url, "mock", **LENIENT, results_dir=None)
        r = optbench.search(server.base_url, "mock", **LENIENT, quality_dataset=str(quality_slice), **QUALITY,
                            results_dir=None)  # fmt: skip
    assert plain.quality_level is None and plain.bound_by == "slo" and not plain.quality
    assert r.highest_passing == plain.highest_passing == 4
    assert r.quality_level == 4 and r.bound_by == "slo"
    assert r.quality["checked"]["4"]["verdict"] == KEEPS and list(r.quality_results) == [4.0]
    # Every level up to max_level passed: the answer is max_level's, not a limit the SLO found.
    assert r.first_failing is None
    assert "keeping quality: 4 (no level up to max_level failed the SLO)" in str(r)


def test_cli_exits_1_when_no_level_meets_both(quality_slice, tmp_path, capsys):
    # Only concurrency 2 is tried; its answers change (more than 1 in flight), and concurrency 1
    # was never judged against the SLO: nothing meets both.
    with MockServer(**MOCK, diverge_above=1, diverge_at=0) as server:
        code = main(
            ["search", "--base-url", server.base_url, "--model", "mock", "--slo", "ttft_ms=10000",
             "--target", "0.8", "--num-requests", "10", "--output-tokens", "6", "--start", "2", "--max-level", "2",
             "--quality-dataset", str(quality_slice), "--quality-categories", "qa", "--quality-limit", "12",
             "--results-dir", str(tmp_path), "--no-progress"]
        )  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "no level meets both the SLO and the quality rule" in out and "quality drop" in out


def test_the_drop_rule_needs_both_the_5_percent_and_the_interval():
    def summary(score_1, score_n, low, high):
        return {"overall": {"score_1": score_1, "score_n": score_n, "low": low, "high": high}}

    assert is_drop(summary(1.0, 0.90, -0.15, -0.05), 0.05)
    assert not is_drop(summary(1.0, 0.90, -0.20, 0.01), 0.05)  # below 95% but the interval reaches 0
    assert not is_drop(summary(1.0, 0.97, -0.04, -0.02), 0.05)  # a real loss, within 5%
    assert is_drop(summary(1.0, 0.97, -0.04, -0.02), 0.02)


def test_a_quality_constraint_needs_a_concurrency_search():
    with pytest.raises(optbench.ConfigError, match="quality_dataset.*needs over='concurrency'"):
        SearchOptions(over="request_rate", quality_dataset="data/test_dataset.json")
    with pytest.raises(optbench.ConfigError, match="quality_max_drop"):
        SearchOptions(quality_max_drop=1.5)
