"""Load tests over several base URLs (replicas): routing, per-request attribution, the
per-base-URL breakdown, and the URLs checked before anything is sent (API, CLI, TOML, report)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

import optbench
from optbench.cli import main
from optbench.config import parse_config
from optbench.exceptions import ConfigError
from optbench.replicas import breakdown
from optbench.run import run
from optbench.testing import MockServer


def _quiet_load_test(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optbench.load_test(*args, progress=False, **kwargs)


def test_round_robin_splits_exactly_and_each_row_names_its_server() -> None:
    with (
        MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=4) as a,
        MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=4) as b,
    ):
        secret = b.base_url.replace("http://", "http://alice:s3cret@")
        result = _quiet_load_test(
            [a.base_url, secret], "mock", num_requests=12, concurrency=4, warmup=2, prompts=["hi"]
        )
        served = (len(a.log()), len(b.log()))
    df = result.requests
    assert served == (7, 7), "12 measured + 2 warm-up, alternating"
    assert df["base_url_index"].value_counts().to_dict() == {0: 7, 1: 7}
    # Round robin in send order: request k went to k mod 2 (warm-up ones first, sent one at a time here).
    assert set(df["base_url"]) == {a.base_url, b.base_url}, "URLs without credentials"
    assert result.config["base_url"] == [a.base_url, b.base_url]
    entries = result.summary["by_base_url"]
    assert [(e["index"], e["num_requests"], e["num_failed"]) for e in entries] == [(0, 6, 0), (1, 6, 0)]
    assert entries[1]["base_url"] == b.base_url
    total = result.summary["output_token_throughput"]
    assert sum(e["output_token_throughput"] for e in entries) == pytest.approx(total)
    assert all(e["ttft_ms"]["count"] == 6 and e["ttft_ms"]["p50"] >= 2.0 for e in entries)
    assert all(e["itl_ms"]["count"] == 6 * 3 for e in entries), "3 gaps per 4-token answer"
    text = result.summary_table()
    assert f"base_url[1] {b.base_url}: 6/6 succeeded" in text and "s3cret" not in text
    assert "s3cret" not in result.label and "s3cret" not in json.dumps(result.config)


def test_least_outstanding_sends_more_to_the_fast_server() -> None:
    # Index 0 is the slow one, so ties (which go to the lowest index) favour it: the fast one must
    # win on requests in flight alone.
    with (
        MockServer(model="mock", ttft_ms=300, gap_ms=1, tokens=4) as slow,
        MockServer(model="mock", ttft_ms=5, gap_ms=1, tokens=4) as fast,
    ):
        result = _quiet_load_test(
            [slow.base_url, fast.base_url],
            "mock",
            num_requests=24,
            concurrency=4,
            prompts=["hi"],
            routing="least_outstanding",
        )
        n_slow, n_fast = len(slow.log()), len(fast.log())
    assert n_slow + n_fast == 24 and result.summary["num_failed"] == 0
    assert n_fast >= 2 * n_slow, (n_slow, n_fast)
    counts = result.requests["base_url_index"].value_counts().to_dict()
    assert counts == {0: n_slow, 1: n_fast}, "the rows say what the servers saw"


def test_round_robin_ignores_load() -> None:
    """The same setting under round robin splits evenly: the check above is the policy's doing."""
    with (
        MockServer(model="mock", ttft_ms=100, gap_ms=1, tokens=2) as slow,
        MockServer(model="mock", ttft_ms=5, gap_ms=1, tokens=2) as fast,
    ):
        _quiet_load_test([slow.base_url, fast.base_url], "mock", num_requests=8, concurrency=4, prompts=["hi"])
        assert (len(slow.log()), len(fast.log())) == (4, 4)


def test_a_failing_server_shows_on_its_own_line_only() -> None:
    with (
        MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=4) as good,
        MockServer(model="mock", fault="status", fault_arg=503) as bad,
    ):
        result = _quiet_load_test([good.base_url, bad.base_url], "mock", num_requests=10, concurrency=2, prompts=["hi"])
    s = result.summary
    assert s["num_failed"] == 5 and s["failures_by_kind"] == {"http_5xx": 5}
    ok_line, bad_line = s["by_base_url"]
    assert (ok_line["num_succeeded"], ok_line["num_failed"], ok_line["failures_by_kind"]) == (5, 0, {})
    assert (bad_line["num_succeeded"], bad_line["num_failed"], bad_line["failures_by_kind"]) == (0, 5, {"http_5xx": 5})
    assert bad_line["ttft_ms"] == {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None}
    assert bad_line["request_throughput"] == 0.0 and ok_line["request_throughput"] > 0


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        (["GOOD", "ftp://127.0.0.1:1"], 'base_url[1]: base_url "ftp://127.0.0.1:1" must start with http://'),
        (["GOOD", "http://u:pw@h:1/v1/chat/completions"], 'base_url[1]: base_url "http://h:1/v1/chat/completions"'),
        (["GOOD", 5], "base_url[1] must be a string"),
        ([], "the list of base URLs is empty"),
    ],
)
def test_every_url_is_checked_before_any_request(urls: list, message: str) -> None:
    with MockServer(model="mock") as good:
        urls = [good.base_url if u == "GOOD" else u for u in urls]
        with pytest.raises(ConfigError) as e:
            optbench.load_test(urls, "mock", num_requests=2, prompts=["hi"], progress=False)
        assert good.log() == [], "nothing was sent"
    assert message in str(e.value)
    assert "pw" not in str(e.value)


def test_routing_is_an_option_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="routing must be one of 'round_robin', 'least_outstanding'"):
        optbench.LoadTestOptions(routing="random")


def test_breakdown_matches_the_whole_run_with_one_url() -> None:
    with MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=5) as server:
        result = _quiet_load_test(server.base_url, "mock", num_requests=6, concurrency=2, prompts=["hi"])
    assert "by_base_url" not in result.summary, "one URL: no breakdown"
    assert set(result.requests["base_url_index"]) == {0} and set(result.requests["base_url"]) == {server.base_url}
    (entry,) = breakdown(result.requests, [server.base_url], result.summary["duration_s"])
    whole = result.summary["metrics"]
    for metric in ("ttft_ms", "itl_ms"):
        for stat in ("mean", "p50", "p90", "p99"):
            assert entry[metric][stat] == pytest.approx(whole[metric][stat]), (metric, stat)
    assert entry["request_throughput"] == pytest.approx(result.summary["request_throughput"])


def test_cli_takes_base_url_repeatedly(capsys: pytest.CaptureFixture[str]) -> None:
    with (
        MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=3) as a,
        MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=3) as b,
    ):
        argv = ["load-test", "--base-url", a.base_url, "--base-url", b.base_url, "--model", "mock"]
        argv += ["--num-requests", "4", "--concurrency", "2", "--output-tokens", "3", "--input-tokens", "4"]
        argv += ["--routing", "least_outstanding", "--no-save", "--no-progress", "--json"]
        assert main(argv) == 0
        assert len(a.log()) + len(b.log()) == 4 and a.log() and b.log()
    summary = json.loads(capsys.readouterr().out)
    assert [e["base_url"] for e in summary["by_base_url"]] == [a.base_url, b.base_url]


def test_cli_refuses_several_base_urls_where_one_is_meant(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["search", "--slo", "ttft_ms=500", "--base-url", "http://127.0.0.1:9", "--base-url", "http://127.0.0.1:10"]
    argv += ["--model", "m"]
    assert main(argv) != 0
    assert "give --base-url once here (2 given" in capsys.readouterr().err


def test_toml_replicas_run_and_report(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"r.toml: key 'server.base_url': base_url\[1\]: base_url \"nope\""):
        parse_config({"engine": "openai", "model": "m", "server": {"base_url": ["http://h:1", "nope"]}}, "r.toml")
    with pytest.raises(ConfigError, match="empty list"):
        parse_config({"engine": "openai", "model": "m", "server": {"base_url": []}}, "r.toml")
    with (
        MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=3) as a,
        MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=3) as b,
    ):
        cfg = parse_config(
            {
                "engine": "openai",
                "model": "mock",
                "server": {"base_url": [a.base_url, b.base_url]},
                "load_test": {
                    "num_requests": 4,
                    "concurrency": 2,
                    "warmup": 0,
                    "routing": "round_robin",
                    "input_tokens": 4,
                },
            },
            "replicas.toml",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run([cfg], profile="quick", dataset=None, results_dir=tmp_path / "results", report_path=tmp_path / "R.md")
        assert (len(a.log()), len(b.log())) == (2, 2)
    report = (tmp_path / "R.md").read_text()
    assert "## Replicas" in report and f"{cfg.name}: per base URL" in report, report
    assert f"| 1 | {b.base_url} | 2 | 0 |" in report
