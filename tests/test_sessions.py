"""Multi-turn sessions: each turn carries the real history, think time is honoured, bad inputs
are clear errors, and (against the real llama-server) later turns reuse the history from cache."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

import optbench
from optbench.cli import main
from optbench.exceptions import ConfigError, DatasetError
from optbench.testing import MockServer


def _quiet_load_test(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optbench.load_test(*args, progress=False, endpoint="chat", **kwargs)


def test_turn_k_carries_the_history_with_the_real_answers() -> None:
    conversations = [["s0 t0", "s0 t1", "s0 t2"], ["s1 t0", "s1 t1", "s1 t2", "s1 t3"], ["s2 t0"]]
    with MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=4) as server:
        result = _quiet_load_test(server.base_url, "mock", conversations=conversations, concurrency=2, output_tokens=4)
        received = [json.loads(entry["messages"]) for entry in server.log()]
    df = result.requests
    assert len(df) == 8 and result.summary["num_succeeded"] == 8
    answers = {(r.session_id, r.turn): r.output_text for r in df.itertuples()}
    # Every request the server saw is one turn of one conversation with exactly its history.
    seen = set()
    for messages in received:
        last = messages[-1]["content"]
        s, t = int(last[1]), int(last[-1])
        assert len(messages) == 2 * t + 1, messages
        expected = []
        for k in range(t):
            expected += [
                {"role": "user", "content": conversations[s][k]},
                {"role": "assistant", "content": answers[(s, k)]},
            ]
        expected.append({"role": "user", "content": conversations[s][t]})
        assert messages == expected
        seen.add((s, t))
    assert seen == set(answers), "every turn was sent once"
    # Turns of a session are sequential: each is sent after the previous one ended.
    for _, session in df.sort_values("turn").groupby("session_id"):
        assert (session["sent_ns"].to_numpy()[1:] >= session["done_ns"].to_numpy()[:-1]).all()
    by_turn = result.summary["by_turn"]
    assert [(t["turn"], t["num_requests"]) for t in by_turn] == [(0, 3), (1, 2), (2, 2), (3, 1)]
    assert result.summary["sessions"]["num_completed"] == 3 and result.summary["sessions"]["num_sessions"] == 3
    text = result.summary_table()
    assert "sessions: 3/3 completed" in text and "turn 3: 1/1 succeeded" in text


def test_concurrency_counts_sessions() -> None:
    with MockServer(model="mock", ttft_ms=20, gap_ms=1, tokens=2) as server:
        _quiet_load_test(server.base_url, "mock", conversations=[["a", "b", "c"]] * 4, concurrency=2, output_tokens=2)
        at_arrival = [entry["concurrent_at_arrival"] for entry in server.log()]
    assert len(at_arrival) == 12 and max(at_arrival) == 2


def test_think_time_is_honoured() -> None:
    think = 0.25
    with MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=2) as server:
        result = _quiet_load_test(
            server.base_url, "mock", conversations=[["a", "b", "c"]], concurrency=1, output_tokens=2, think_time_s=think
        )
    df = result.requests.sort_values("turn")
    pauses = (df["sent_ns"].to_numpy()[1:] - df["done_ns"].to_numpy()[:-1]) / 1e9
    assert len(pauses) == 2
    assert all(think <= p < think + 0.1 for p in pauses), pauses
    duration = result.summary["sessions"]["duration_s"]["p50"]
    assert 2 * think <= duration < 2 * think + 0.5


def test_synthetic_sessions_and_a_failed_turn_ends_its_session() -> None:
    with MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=3, tokenize="words") as server:
        result = _quiet_load_test(server.base_url, "mock", sessions=3, turns=2, input_tokens=8, output_tokens=3)
    df = result.requests
    assert len(df) == 6 and set(df["session_id"]) == {0, 1, 2} and set(df["turn"]) == {0, 1}
    firsts = df[df["turn"] == 0]
    assert firsts["prompt_tokens"].notna().all()
    with MockServer(model="mock", fault="status", fault_arg=500) as bad:
        failed = _quiet_load_test(bad.base_url, "mock", conversations=[["a", "b"], ["c", "d"]], concurrency=2)
        assert len(bad.log()) == 2, "the second turns are not sent"
    s = failed.summary["sessions"]
    assert (s["num_completed"], s["num_cut_short"]) == (0, 2)
    assert set(failed.requests["turn"]) == {0}


def test_conversations_from_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "conv.jsonl"
    path.write_text('["hello", "and then?"]\n\n["one turn"]\n["x", "y", "z"]\n')
    with MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=2) as server:
        result = _quiet_load_test(server.base_url, "mock", conversations=str(path), sessions=2, output_tokens=2)
    assert len(result.requests) == 3, "the first 2 conversations: 2 + 1 turns"


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"sessions": 2, "endpoint": "completions"}, ConfigError, "need endpoint='chat'"),
        ({"sessions": 2, "endpoint": "chat", "request_rate": 2.0}, ConfigError, "drop request_rate"),
        ({"sessions": 2, "endpoint": "chat", "warmup": 1}, ConfigError, "set warmup to 0"),
        ({"sessions": 2, "endpoint": "chat", "prompts": ["a"]}, ConfigError, "not both"),
        ({"think_time_s": 1.0}, ConfigError, "give sessions or conversations"),
        ({"sessions": 0, "endpoint": "chat"}, ConfigError, "sessions must be at least 1"),
        ({"think_time_s": -1.0}, ConfigError, "think_time_s must be at least 0"),
        ({"conversations": [["a"], []], "endpoint": "chat"}, DatasetError, "conversations[1]: a conversation must be"),
        ({"conversations": [["a", 3]], "endpoint": "chat"}, ConfigError, "conversations must be a string or a list"),
        ({"conversations": [["a", " "]], "endpoint": "chat"}, DatasetError, "conversations[0]: turn 1 must be"),
        ({"conversations": [["a"]], "sessions": 2, "endpoint": "chat"}, ConfigError, "holds only 1 conversation"),
        ({"conversations": "/nonexistent.jsonl", "endpoint": "chat"}, DatasetError, "conversations file not found"),
    ],
)
def test_bad_inputs_are_clear_errors(values: dict, error: type, message: str) -> None:
    with MockServer(model="mock") as server:
        with pytest.raises(error) as e:
            optbench.load_test(server.base_url, "mock", progress=False, **values)
        assert server.log() == [], "nothing was sent"
    assert message in str(e.value)


def test_a_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "conv.jsonl"
    path.write_text('["ok"]\n{"turns": ["no"]}\n')
    with pytest.raises(DatasetError, match=r"conv.jsonl line 2: a conversation must be a non-empty list"):
        optbench.load_test("http://127.0.0.1:9", "m", conversations=str(path), endpoint="chat", progress=False)


def test_cli_and_toml_knobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "conv.jsonl"
    path.write_text('["a", "b"]\n["c", "d"]\n')
    with MockServer(model="mock", ttft_ms=2, gap_ms=1, tokens=2) as server:
        argv = ["load-test", "--base-url", server.base_url, "--model", "mock", "--endpoint", "chat"]
        argv += ["--conversations", str(path), "--think-time-s", "0.01", "--concurrency", "2", "--output-tokens", "2"]
        assert main([*argv, "--no-save", "--no-progress", "--json"]) == 0
        assert len(server.log()) == 4
    summary = json.loads(capsys.readouterr().out)
    assert summary["sessions"]["num_completed"] == 2 and [t["turn"] for t in summary["by_turn"]] == [0, 1]
    from optbench.config import parse_config

    cfg = parse_config(
        {
            "engine": "openai",
            "model": "m",
            "server": {"base_url": "http://127.0.0.1:9"},
            "load_test": {"sessions": 4, "turns": 3, "think_time_s": 0.5, "endpoint": "chat", "warmup": 0},
        },
        "s.toml",
    )
    assert cfg.load_test["turns"] == 3
    with pytest.raises(ConfigError, match="s.toml: key 'load_test.turns' must be at least 1"):
        parse_config(
            {"engine": "openai", "model": "m", "server": {"base_url": "http://h:1"}, "load_test": {"turns": 0}},
            "s.toml",
        )


@pytest.mark.llama
@pytest.mark.slow
def test_llama_reuses_the_history_from_its_cache(llama_server) -> None:
    result = _quiet_load_test(
        llama_server.base_url,
        llama_server.model,
        sessions=2,
        turns=3,
        input_tokens=48,
        output_tokens=12,
        concurrency=2,
        ignore_eos=True,
    )
    df = result.requests
    assert result.summary["num_succeeded"] == 6, df["error_message"].tolist()
    for _, session in df.sort_values("turn").groupby("session_id"):
        timings = [json.loads(t) for t in session["server_timings"]]
        cached = [t.get("cache_n", 0) for t in timings]
        evaluated = [t["prompt_n"] for t in timings]
        prompts = session["prompt_tokens"].tolist()
        assert cached[1] > cached[0] and cached[2] > cached[1], (cached, evaluated, prompts)
        # From turn 1 on, the whole previous prompt (the history) comes from the slot's cache.
        for k in (1, 2):
            assert cached[k] >= prompts[k - 1], (k, cached, evaluated, prompts)
            assert evaluated[k] < prompts[k] - prompts[k - 1] + 8, (k, cached, evaluated, prompts)
    by_turn = result.summary["by_turn"]
    assert by_turn[2]["server_cached_tokens_mean"] > by_turn[1]["server_cached_tokens_mean"] > 0
