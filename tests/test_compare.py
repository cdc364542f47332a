"""Compare with confidence: bootstrap intervals that call identical mock runs "no real
difference" and a known 20% gap "real"; `optbench run --trials`, results.csv medians and the
recommendation's sentence; the statistics' building blocks against their exact values."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import optbench
from optbench import bootstrap
from optbench.cli import main
from optbench.compare import Measurements, compare, row_quantiles, trial_files
from optbench.config import parse_config
from optbench.exceptions import ConfigError
from optbench.report import run_speed_metrics
from optbench.testing import MockServer

#: Each request: the first token 20 ms after it is read, then 15 more `gap` ms apart.
TTFT_MS, TOKENS = 20, 16
#: E2E is 170 ms with 10 ms gaps and 200 ms with 12 ms gaps: an SLO between them.
SLO_E2E_MS = 185


def _trials(servers: dict[str, MockServer], trials: int, requests: int = 16) -> dict[str, list]:
    """``trials`` load tests of each server, interleaved (a, b, c, a, b, c...) so that the
    machine's other load falls on every configuration alike."""
    out: dict[str, list] = {name: [] for name in servers}
    for _ in range(trials):
        for name, server in servers.items():
            out[name].append(
                optbench.load_test(
                    server.base_url,
                    "mock",
                    num_requests=requests,
                    concurrency=4,
                    prompts=["hi"],
                    output_tokens=TOKENS,
                    warmup=1,
                    label=name,
                    slo={"e2e_ms": SLO_E2E_MS},
                    progress=False,
                )
            )
    return out


def test_identical_runs_differ_by_nothing_real_and_a_20_percent_gap_is_real():
    with (
        MockServer(ttft_ms=TTFT_MS, gap_ms=10, tokens=TOKENS) as a,
        MockServer(ttft_ms=TTFT_MS, gap_ms=10, tokens=TOKENS) as same,
        MockServer(ttft_ms=TTFT_MS, gap_ms=12, tokens=TOKENS) as slower,
    ):
        runs = _trials({"a": a, "same": same, "slower": slower}, trials=3)
    c = compare(runs["a"], runs["same"], runs["slower"])
    assert c.names == ["a", "same", "slower"]
    # The same settings: no metric differs for real.
    for metric in ("ttft_p50_ms", "tokens_per_s_p50", "output_token_throughput"):
        row = c.row("same", metric)
        assert not row["real"] and row["verdict"] == "no real difference", (metric, row)
        assert row["low"] <= 0 <= row["high"]
    # Gaps 20% longer: the decode rate is 10/12 of a's (-16.7%), throughput nearly as much lower.
    rate = c.row("slower", "tokens_per_s_p50")
    assert rate["real"] and rate["verdict"] == "worse"
    assert rate["relative_low"] <= 10 / 12 - 1 + 0.01 and rate["relative_high"] >= 10 / 12 - 1 - 0.01
    assert c.real("slower", "output_token_throughput")
    sentence = c.sentence("slower")
    assert sentence.startswith("slower is slower than a by ") and "(95% bootstrap interval)" in sentence
    assert c.sentence("same").startswith("no real difference between same and a in output tokens/s")
    # TTFT is set alike on all three: not a real difference either.
    assert not c.real("slower", "ttft_p50_ms")
    # Under the SLO (E2E <= 185 ms) the slower server's requests are never good: goodput and
    # attainment are worse for real.
    for metric in ("goodput_rps", "goodput_tps", "attainment"):
        row = c.row("slower", metric)
        assert row["real"] and row["verdict"] == "worse" and row["candidate_value"] == 0, (metric, row)
    assert c.row("same", "attainment")["baseline_value"] > 0.9
    # Seeded: the same inputs give the same intervals; another seed moves them only a little.
    again = compare(runs["a"], runs["same"], runs["slower"])
    pd.testing.assert_frame_equal(again.table, c.table)
    assert "P99 from fewer than 299" in " ".join(c.notes)


def test_run_with_trials_then_compare_and_the_recommendation(tmp_path):
    def cfg(name, server, baseline=False):
        return parse_config(
            {
                "name": name,
                "engine": "openai",
                "model": "mock",
                "baseline": baseline,
                "server": {"base_url": server.base_url},
                "load_test": {"num_requests": 12, "concurrency": 4, "output_tokens": TOKENS, "prompts": ["hi"]},
            },
            name,
        )

    with (
        MockServer(ttft_ms=TTFT_MS, gap_ms=12, tokens=TOKENS) as a,
        MockServer(ttft_ms=TTFT_MS, gap_ms=10, tokens=TOKENS) as b,
    ):
        report = optbench.run(
            [cfg("a", a, baseline=True), cfg("b", b)],
            profile="quick",
            dataset=None,
            results_dir=tmp_path / "results",
            report_path=tmp_path / "RESULTS.md",
            run_id="trials",
            progress=False,
            trials=3,
        )
    run_dir = tmp_path / "results" / "runs" / "trials"
    files = trial_files(run_dir / "b")
    assert [f.name for f in files] == ["requests.parquet", "requests_trial2.parquet", "requests_trial3.parquet"]
    assert json.loads((run_dir / "b" / "meta.json").read_text())["trials"] == 3
    # results.csv: each speed figure is the median over the trials, the counts their sum.
    table = pd.read_csv(tmp_path / "results" / "results.csv").set_index("configuration")
    per_trial = pd.DataFrame([run_speed_metrics(f) for f in files])
    assert table.loc["b", "trials"] == 3 and table.loc["b", "num_requests"] == 36
    for col in ("ttft_p50_ms", "tokens_per_s_p50", "output_token_throughput"):
        assert table.loc["b", col] == pytest.approx(per_trial[col].median())
    # The recommendation (b, the faster) says by how much, with the interval.
    md = (tmp_path / "RESULTS.md").read_text()
    assert report["findings"]["recommended"] == "b"
    assert "Output-token throughput: b is faster than a by " in md and "Each load test ran 3 times" in md
    # `optbench compare` on the run folder: the baseline first, the gap real.
    out = tmp_path / "diff.csv"
    assert main(["compare", str(run_dir), "--csv", str(out)]) == 0
    diff = pd.read_csv(out)
    row = diff[(diff["candidate"] == "b") & (diff["metric"] == "tokens_per_s_p50")].iloc[0]
    assert row["baseline"] == "a" and bool(row["real"]) and row["verdict"] == "better"
    assert row["trials_baseline"] == 3
    # Two configuration folders give the same comparison.
    pd.testing.assert_frame_equal(compare(run_dir / "a", run_dir / "b").table, compare(run_dir).table)


def test_quality_differences_are_paired_by_item():
    rng = np.random.default_rng(0)
    n = 40
    ids = [f"q{i}" for i in range(n)]
    base = rng.uniform(0.4, 0.9, n)

    def side(name, scores, order=None):
        s = pd.DataFrame({"id": ids, "category": "qa", "score": scores})
        s = s.iloc[order] if order is not None else s
        return Measurements(name, [_rows()], samples=s)

    # A small drop on every item (0.03) is real when the items are paired, whatever their order.
    c = compare(side("a", base), side("b", base - 0.03, order=rng.permutation(n)))
    row = c.row("b", "quality_qa")
    assert row["paired"] and row["real"] and row["verdict"] == "worse"
    assert row["difference"] == pytest.approx(-0.03)
    assert c.row("b", "quality_overall")["real"]
    # The same scores: no real difference (the interval is exactly 0).
    same = compare(side("a", base), side("b", base.copy()))
    assert not same.real("b", "quality_qa")


def _rows(n: int = 8) -> pd.DataFrame:
    """Request rows of a trial: n successful requests, 100 ms apart."""
    t = np.arange(n) * 100_000_000
    return pd.DataFrame(
        {
            "warmup": False,
            "success": True,
            "ttft_ms": 20.0 + np.arange(n),
            "tokens_per_s": 100.0,
            "output_tokens": 16,
            "scheduled_ns": t,
            "sent_ns": t,
            "last_token_ns": t + 90_000_000,
            "done_ns": t + 95_000_000,
        }
    )


def test_the_building_blocks_equal_their_exact_values():
    # Student's t quantiles (tables) and the small-sample widening.
    for df, p, exact in [(1, 0.975, 12.7062), (2, 0.975, 4.3027), (10, 0.975, 2.2281), (2, 0.9995, 31.599)]:
        assert bootstrap.student_t_quantile(p, df) == pytest.approx(exact, abs=2e-3)
    assert bootstrap.expansion(3, 0.95) == pytest.approx(np.sqrt(1.5) * 4.3027 / 1.95996, rel=1e-3)
    assert bootstrap.expansion(10_000, 0.95) == pytest.approx(1.0, abs=1e-3)
    # Row quantiles equal numpy's nanquantile (linear interpolation), NaNs left out.
    x = np.random.default_rng(1).random((300, 23))
    x[np.random.default_rng(2).random(x.shape) < 0.3] = np.nan
    x[5] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for q in (0.0, 0.5, 0.99, 1.0):
            np.testing.assert_allclose(row_quantiles(x, q), np.nanquantile(x, q, axis=1), equal_nan=True)
    # Point figures are the summary's: P50 TTFT of 20..27 ms is 23.5 ms.
    c = compare(Measurements("a", [_rows()]), Measurements("b", [_rows()]))
    assert c.row("b", "ttft_p50_ms")["baseline_value"] == pytest.approx(23.5)


def test_bad_comparisons_are_clear_errors(tmp_path, capsys):
    one = Measurements("a", [_rows()])
    with pytest.raises(ConfigError, match="at least two"):
        compare(one)
    with pytest.raises(ConfigError, match="level must be"):
        compare(one, one, level=95)
    with pytest.raises(ConfigError, match="resamples must be"):
        compare(one, one, resamples=10)
    with pytest.raises(ConfigError, match="no such run"):
        compare(tmp_path / "nowhere", one)
    with pytest.raises(ConfigError, match="no configuration with a requests.parquet"):
        compare(tmp_path, one)
    assert main(["compare", str(tmp_path / "nowhere"), str(tmp_path)]) == 2
    assert "optbench: error:" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="trials must be"):
        optbench.run(["configs/embedded.toml"], trials=0, dataset=None)
