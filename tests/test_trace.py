"""Trace replay on the mock server: sends on the trace's times (and twice as fast with a speed-up
of 2), the trace's output lengths, shared prefixes, and bad lines named before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import optbench
from optbench.exceptions import ConfigError, DatasetError
from optbench.testing import MockServer
from optbench.trace import read_trace

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _trace(tmp_path: Path) -> Path:
    # 60 requests over 590 ms in bursts (gaps 0 and 20 ms), outputs of 1 to 6 tokens, and a
    # prefix shared by every third request.
    rows = []
    for i in range(60):
        row = {"timestamp": 10 * (i - i % 2), "input_length": 30 + i % 7, "output_length": 1 + i % 6}
        if i % 3 == 0:
            row.update(prefix_id="sys", prefix_length=20)
        rows.append(row)
    return _write(tmp_path / "trace.jsonl", rows)


def test_a_trace_is_replayed_on_its_times_lengths_and_prefixes(tmp_path):
    path = _trace(tmp_path)
    # The mock answers at once (no TTFT or gap to spin on), so it does not compete with the
    # sender; a fresh one (an empty prefix cache) for each run.
    results = []
    for speedup in (1.0, 2.0):
        with MockServer(ttft_ms=0, gap_ms=0, tokens=64, tokenize="words", prefix_cache=100) as server:
            results.append(
                optbench.load_test(
                    server.base_url, "mock", trace=str(path), trace_speedup=speedup, concurrency=None, progress=False
                )
            )
    normal, fast = results
    for result, speedup in ((normal, 1.0), (fast, 2.0)):
        rows = result.requests
        assert rows["success"].all() and len(rows) == 60
        # Intended starts are the trace's times over the speed-up, to the nanosecond.
        offsets = rows["scheduled_ns"] - rows["scheduled_ns"].iloc[0]
        expected = [round(10 * (i - i % 2) * 1e6 / speedup) for i in range(60)]
        assert offsets.tolist() == expected
        # Output lengths are the trace's (max_tokens with ignore_eos), counted by the server.
        assert (rows["output_tokens"] == rows["trace_output_length"]).all()
        assert (rows["prompt_tokens"] == rows["trace_input_length"]).all()
        # Lateness: on this shared 2-core machine the OS now and then deschedules the sender
        # for a few ms, so the P50 is held to 1 ms and the P99 to 20 ms (the Rust timing test
        # measures the sub-ms P99 where the machine is quiet).
        late = result.summary["trace"]["lateness_ms"]
        assert rows["lateness_ms"].min() >= 0
        assert late["p50"] < 1.0 and late["p99"] < 20.0, late
        assert result.summary["trace"]["span_s"] == pytest.approx(0.58 / speedup)
        # Requests with the prefix share it: after the first, the mock serves its 20 tokens
        # (BOS included) from its cache; the others share nothing.
        shared = rows[rows["trace_prefix_id"] == "sys"]
        assert shared["cached_tokens"].iloc[0] == 0 and (shared["cached_tokens"].iloc[1:] == 20).all()
        assert (rows[rows["trace_prefix_id"].isna()]["cached_tokens"] == 0).all()
    # The speed-up halves the span of the sends.
    assert fast.requests["sent_ns"].max() - fast.requests["sent_ns"].min() == pytest.approx(
        (normal.requests["sent_ns"].max() - normal.requests["sent_ns"].min()) / 2, abs=20e6
    )
    assert "trace: 60 requests over 0.290 s (speed-up 2)" in fast.summary_table()
    row = fast.summary_row()
    assert row["trace_lateness_p99_ms"] == fast.summary["trace"]["lateness_ms"]["p99"] and row["trace_speedup"] == 2.0


def test_the_example_trace_reads():
    records = read_trace(ROOT / "examples" / "trace.jsonl")
    assert len(records) == 12 and records[0].prefix_id == "system-a"


@pytest.mark.parametrize(
    "line,message",
    [
        ("{nope", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object, got list"),
        ('{"timestamp": 5, "input_length": 10}', "line 2: missing 'output_length'"),
        ('{"timestamp": -1, "input_length": 10, "output_length": 1}', "line 2: 'timestamp' must be a number"),
        ('{"timestamp": 5, "input_length": 0, "output_length": 1}', "line 2: 'input_length' must be an integer >= 1"),
        ('{"timestamp": 5, "input_length": 10, "output_length": 1.5}', "line 2: 'output_length' must be an integer"),
        ('{"timestamp": 5, "input_length": 10, "output_length": 1, "extra": 1}', "line 2: unknown key 'extra'"),
        ('{"timestamp": 5, "input_length": 10, "output_length": 1, "prefix_id": "a"}', "line 2: 'prefix_id' needs"),
        (
            '{"timestamp": 5, "input_length": 10, "output_length": 1, "prefix_id": "a", "prefix_length": 10}',
            "line 2: 'prefix_length' \\(10\\) must be below 'input_length' \\(10\\)",
        ),
        ('{"timestamp": 1, "input_length": 10, "output_length": 1}', "line 2: 'timestamp' 1 ms is before"),
        (
            '{"timestamp": 5, "input_length": 50, "output_length": 1, "prefix_id": "a", "prefix_length": 30}',
            "line 2: prefix_id 'a' has prefix_length 30, but 20 on line 1",
        ),
    ],
)
def test_bad_trace_lines_are_errors_naming_the_line(tmp_path, line, message):
    first = {"timestamp": 2, "input_length": 40, "output_length": 1, "prefix_id": "a", "prefix_length": 20}
    path = _write(tmp_path / "bad.jsonl", [first, line])
    with pytest.raises(DatasetError, match=rf"bad.jsonl {message}"):
        read_trace(path)
    # The load test fails the same way before sending anything.
    with MockServer(tokenize="words") as server:
        with pytest.raises(DatasetError, match=rf"bad.jsonl {message}"):
            optbench.load_test(server.base_url, "mock", trace=str(path), progress=False)
        assert server.log() == []


def test_trace_options_exclude_what_the_trace_sets(tmp_path):
    with pytest.raises(ConfigError, match="leave out request_rate, warmup"):
        optbench.LoadTestOptions(trace="t.jsonl", request_rate=2.0, warmup=1)
    with pytest.raises(ConfigError, match="trace_speedup must be above 0"):
        optbench.LoadTestOptions(trace="t.jsonl", trace_speedup=0)
    with pytest.raises(DatasetError, match="missing.jsonl: trace file not found"):
        optbench.load_test("http://127.0.0.1:9", "m", trace=str(tmp_path / "missing.jsonl"), progress=False)
