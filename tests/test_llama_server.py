"""End to end against the real llama.cpp llama-server with SmolLM2-135M-Instruct (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pandas as pd
import pytest

import optbench
from optbench.exceptions import ServerStartError
from optbench.servers.llama_cpp import LlamaServer

pytestmark = [pytest.mark.llama, pytest.mark.slow]


def tokenize(base_url: str, text: str) -> int:
    req = urllib.request.Request(
        f"{base_url}/tokenize",
        data=json.dumps({"content": text, "add_special": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return len(json.load(resp)["tokens"])


def check_against_server_timings(df: pd.DataFrame) -> None:
    """llama.cpp reports its own per-request timings: its token counts must equal `usage`,
    and our TTFT (which includes the prompt's processing) cannot be below its prompt_ms."""
    for _, row in df.iterrows():
        timings = json.loads(row["server_timings"])
        assert timings["predicted_n"] == row["output_tokens"]
        assert timings["prompt_n"] + timings.get("cache_n", 0) == row["prompt_tokens"]
        assert row["ttft_ms"] >= timings["prompt_ms"], (row["ttft_ms"], timings)


def test_closed_loop_completions(llama_server):
    r = optbench.load_test(
        llama_server.base_url,
        llama_server.model,
        num_requests=8,
        concurrency=4,
        input_tokens=128,
        output_tokens=16,
        ignore_eos=True,
        progress=False,
        label="closed",
    )
    df = r.requests
    s = r.summary
    assert s["num_succeeded"] + s["num_failed"] == s["num_requests"] == len(df) == 8
    assert s["num_succeeded"] == 8, df["error_message"].tolist()
    assert r.prompt_source == "server"
    # Prompt lengths are exact in the server's own tokens, and every prompt is different.
    assert (df["prompt_tokens"] == 128).all()
    assert (df["output_tokens"] == 16).all() and (df["token_count_source"] == "usage").all()
    assert (df["finish_reason"] == "length").all()
    texts = df["output_text"]
    assert texts.str.len().gt(0).all()
    check_against_server_timings(df)
    for m in ("ttft_ms", "e2e_ms", "tokens_per_s", "tpot_ms", "itl_ms"):
        assert r.metric(m) > 0
    assert r.metric("e2e_ms") > r.metric("ttft_ms")
    # The preconnected connections (4 and a spare) carried the first wave. llama-server closes a
    # connection after each streamed answer (without preconnect this run opens 8), so each later
    # request opens its own (the spare, idle for longer than the pool keeps one, may be gone):
    # at most 8 - 4.
    p = s["preconnect"]
    assert p["error"] is None and p["connections_wanted"] == p["connections_opened"] == 5, p
    assert p["connections_opened_during_run"] <= 4, p


def test_open_loop_chat(llama_server):
    r = optbench.load_test(
        llama_server.base_url,
        llama_server.model,
        num_requests=6,
        request_rate=3.0,
        arrival="constant",
        concurrency=None,
        input_tokens=64,
        output_tokens=8,
        endpoint="chat",
        ignore_eos=True,
        warmup=1,
        progress=False,
    )
    df = r.requests
    assert len(df) == 7 and df["warmup"].sum() == 1
    assert r.summary["num_succeeded"] == 6, df["error_message"].tolist()
    measured = df[~df["warmup"]]
    gaps = measured["scheduled_ns"].diff().dropna()
    assert ((gaps - 1e9 / 3.0).abs() <= 1).all(), gaps
    assert r.metric("queue_delay_ms", "p99") < 5.0
    check_against_server_timings(measured)


def test_synthetic_prompts_hit_the_target_in_server_tokens(llama_server):
    ps = optbench.synthetic_prompts(llama_server.base_url, llama_server.model, 4, 300, seed=5)
    assert ps.source == "server" and not ps.warnings
    counts = [tokenize(llama_server.base_url, t) for t in ps.texts]
    # The longest word sequence not over the target: within a word (a few tokens) of it.
    assert all(295 <= c <= 300 for c in counts), counts
    assert len({t[:40] for t in ps.texts}) == 4
    again = optbench.synthetic_prompts(llama_server.base_url, llama_server.model, 4, 300, seed=5)
    assert again.texts == ps.texts


def test_cli_load_test_appends_a_csv_row_and_writes_parquet(llama_server, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "optbench.cli",
        "load-test",
        "--base-url",
        llama_server.base_url,
        "--model",
        llama_server.model,
        "--num-requests",
        "4",
        "--concurrency",
        "2",
        "--input-tokens",
        "64",
        "--output-tokens",
        "8",
        "--ignore-eos",
        "--label",
        "cli-run",
        "--results-dir",
        str(tmp_path),
        "--no-progress",
    ]
    for _ in range(2):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
    assert "ttft_ms" in out.stdout and "4/4 succeeded" in out.stdout
    csv = pd.read_csv(tmp_path / "load_test_results.csv")
    assert list(csv["label"]) == ["cli-run", "cli-run"]
    assert (csv["num_succeeded"] == 4).all()
    for rel in csv["requests_parquet"]:
        assert len(pd.read_parquet(tmp_path / rel)) == 4


def test_taken_port_is_reported(llama_server):
    with pytest.raises(ServerStartError, match="already in use"):
        LlamaServer(port=llama_server.port).start()


def test_a_server_that_dies_fails_fast_with_its_log(tmp_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file")
    with pytest.raises(ServerStartError, match="exited with code") as info:
        LlamaServer(bad, log_path=tmp_path / "server.log", ready_timeout_s=60).start()
    assert "gguf" in str(info.value).lower()


def test_the_whole_process_group_is_stopped(tmp_path):
    server = optbench.embedded_server(parallel=1, log_path=tmp_path / "log.txt")
    with server:
        pid = server.process.pid
        os.kill(pid, 0)  # alive
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_server_is_stopped_when_the_body_raises(tmp_path):
    server = optbench.embedded_server(parallel=1, log_path=tmp_path / "log.txt")
    with pytest.raises(RuntimeError):
        with server:
            pid = server.process.pid
            raise RuntimeError("caller failed")
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_server_dies_with_a_killed_parent(tmp_path):
    # A Python process that starts the server and is then SIGKILLed must not leave it running.
    code = (
        "import optbench,sys,time\n"
        f"s=optbench.embedded_server(parallel=1, log_path={str(tmp_path / 'log.txt')!r}).start()\n"
        "print(s.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(child.stdout.readline())
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        for _ in range(100):
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            import time

            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
            pytest.fail("llama-server outlived its killed parent")
    finally:
        if child.poll() is None:
            child.kill()
