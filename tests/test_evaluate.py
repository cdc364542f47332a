"""Evaluation: prompts built from the real dataset, generation through the Rust client,
scoring, results files, and the quality verdict."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

import optbench
from optbench.datasets import build_test_dataset, load_test_dataset
from optbench.evaluate import DEFAULT_MAX_TOKENS, DEFAULT_STOP, NUM_SHOTS, build_requests
from optbench.quality import compare_quality
from optbench.exceptions import ConfigError, DatasetError
from optbench.testing import MockServer

SMALL = {"qa": 6, "reasoning": 5, "chat": 5, "code": 5}


@pytest.fixture(scope="module")
def dataset_path(shared_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "test_dataset.json"
    build_test_dataset(str(shared_dir / "datasets"), output=path, counts=SMALL)
    return path


def test_requests_leave_out_the_shots_and_follow_the_templates(dataset_path):
    items = load_test_dataset(dataset_path)
    scored, requests = build_requests(items, limit=2)
    assert len(scored) == len(requests) == 8
    by_cat = {}
    for it, req in zip(scored, requests):
        by_cat.setdefault(it["category"], []).append((it, req))
    for cat, pairs in by_cat.items():
        shots = [it for it in items if it["category"] == cat][:NUM_SHOTS]
        assert all(it["id"] not in {s["id"] for s in shots} for it, _ in pairs), "shots are never scored"
        it, req = pairs[0]
        if cat == "chat":
            msgs = req["messages"]
            assert req["endpoint"] == "chat" and msgs[-1]["role"] == "user"
            assert msgs[-1]["content"] == it["prompt"]["messages"][-1]["content"]
            assert {"role": "assistant", "content": shots[0]["reference"]} in msgs
        else:
            text = req["prompt"]
            assert req["endpoint"] == "completions"
            if cat == "qa":
                assert text.endswith(f"Question: {it['prompt']['question']}\nAnswer:")
                assert shots[0]["prompt"]["context"] in text
            if cat == "reasoning":
                assert shots[1]["answer"] in text and text.endswith("Answer:")
            if cat == "code":
                assert text.endswith(it["prompt"]["prompt"]) and shots[0]["canonical_solution"] in text
                assert req["body"]["stop"] == DEFAULT_STOP["code"]
    _, chat_mode = build_requests(items, categories=["qa"], limit=1, endpoint_mode="chat")
    assert chat_mode[0]["endpoint"] == "chat" and chat_mode[0]["messages"][0]["role"] == "user"
    with pytest.raises(ConfigError, match="unknown categories"):
        build_requests(items, categories=["poetry"])


def test_generation_failures_are_kept_and_scored_zero(dataset_path, tmp_path):
    with MockServer(fault="status", fault_arg=503) as server:
        r = optbench.evaluate(
            server.base_url, "mock", dataset=dataset_path, categories=["qa", "reasoning"], limit=2, progress=False
        )
    assert len(r.samples) == 4
    assert (r.samples["error_kind"] == "http_5xx").all() and (r.samples["score"] == 0).all()
    assert r.summary["num_failed"] == 4 and r.warnings


def test_mock_generation_is_scored_and_saved(dataset_path, tmp_path):
    with MockServer(ttft_ms=1, gap_ms=0, tokens=5) as server:
        r = optbench.evaluate(
            server.base_url,
            "mock",
            dataset=dataset_path,
            categories=["qa", "reasoning"],
            limit=3,
            concurrency=2,
            progress=False,
            label="mock",
        )
    s = r.samples
    assert list(s["category"]) == ["qa"] * 3 + ["reasoning"] * 3
    # The mock answers " tokD" five times, D a digit from a hash of the prompt.
    assert s["output"].str.fullmatch(r"( tok\d){5}").all()
    assert s["output"].nunique() > 1
    # Such an answer has no right answer; its last number is its last digit.
    reasoning = s[s["category"] == "reasoning"]
    assert (reasoning["extracted"] == reasoning["output"].str[-1]).all()
    assert r.summary["categories"]["qa"]["n"] == 3
    assert s["e2e_ms"].notna().all()
    paths = optbench.save_evaluation(r, tmp_path)
    csv = pd.read_csv(paths["csv"])
    assert list(csv["category"]) == ["qa", "reasoning", "overall"]
    assert pd.read_parquet(paths["parquet"]).shape[0] == 6


def test_cancelling_aevaluate_cancels_the_generation(dataset_path):
    # Each answer takes ~1.6 s (32 tokens 50 ms apart) and one runs at a time: cancelled after
    # 0.4 s, no later request may be answered.
    async def main(server):
        task = asyncio.create_task(
            optbench.aevaluate(
                server.base_url,
                "mock",
                dataset=dataset_path,
                categories=["qa"],
                limit=3,
                concurrency=1,
                max_tokens={"qa": 32},
            )
        )
        await asyncio.sleep(0.4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=2)

    with MockServer(ttft_ms=5, gap_ms=50, tokens=32) as server:
        asyncio.run(main(server))
        time.sleep(2.5)
        log = server.log()
    assert 0 < log[0]["tokens_sent"] < 32, log
    # A request sent in the instant the first one was cancelled is cancelled at once.
    assert len(log) <= 2 and all(entry["tokens_sent"] == 0 for entry in log[1:]), log


def test_compare_quality_applies_the_5_percent_rule():
    base = {"overall": 0.80, "categories": {"qa": {"score": 0.7}, "code": {"score": 0.9}}}
    ok = {"overall": 0.761, "categories": {"qa": {"score": 0.75}, "code": {"score": 0.772}}}
    bad = {"overall": 0.759, "categories": {"qa": {"score": 0.6}, "code": {"score": 0.918}}}
    v = compare_quality(base, ok)
    assert v["acceptable"] and v["categories"]["qa"]["delta"] == pytest.approx(0.05)
    assert not compare_quality(base, bad)["acceptable"]
    assert compare_quality(base, bad, threshold=0.06)["acceptable"]
    with pytest.raises(ConfigError):
        compare_quality(base, ok, threshold=1.5)


def test_a_malformed_dataset_names_the_file_and_item(tmp_path, dataset_path):
    data = json.loads(dataset_path.read_text())
    del data["items"][3]["category"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"bad.json.*item 3"):
        optbench.evaluate("http://127.0.0.1:9", "m", dataset=bad, progress=False)


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_evaluate_against_the_real_llama_server(llama_server, dataset_path, tmp_path, shared_dir):
    r = optbench.evaluate(
        llama_server.base_url,
        llama_server.model,
        dataset=dataset_path,
        limit=2,
        concurrency=4,
        progress=False,
        max_tokens={"code": 64, "chat": 32, "reasoning": 64},
        embedding_model=str(shared_dir / "models" / "all-MiniLM-L6-v2"),
    )
    s = r.samples
    assert len(s) == 8 and s["error_kind"].isna().all(), s[["error_kind"]]
    assert list(r.summary["categories"]) == ["qa", "reasoning", "chat", "code"]
    assert (s["output_tokens"] > 0).sum() >= 6
    chat = s[s["category"] == "chat"]
    assert chat["similarity"].between(-1, 1).all() and (chat["score"] == chat["similarity"]).all()
    code = s[s["category"] == "code"]
    assert code["code_result"].str.match(r"^(passed|timed out|failed: )").all()
    assert "network_namespace" in r.summary["code_isolation"]
    # QA answers stop at the newline; reasoning answers stop before the next question.
    assert not s.loc[s["category"] == "qa", "output"].str.contains("\n").any()
    assert not s.loc[s["category"] == "reasoning", "output"].str.contains("Question:").any()
    assert 0.0 <= r.overall <= 1.0
    saved = optbench.save_evaluation(r, tmp_path)
    assert pd.read_csv(saved["csv"]).shape[0] == 5


@pytest.mark.llama
@pytest.mark.slow
def test_cli_evaluate_writes_rows_and_samples(llama_server, dataset_path, tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "optbench.cli",
            "evaluate",
            "--base-url",
            llama_server.base_url,
            "--model",
            llama_server.model,
            "--dataset",
            str(dataset_path),
            "--categories",
            "qa",
            "--limit",
            "2",
            "--label",
            "cli-eval",
            "--results-dir",
            str(tmp_path),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "overall quality" in out.stdout
    csv = pd.read_csv(tmp_path / "evaluation_summary.csv")
    assert list(csv["category"]) == ["qa", "overall"] and (csv["label"] == "cli-eval").all()
    assert pd.read_parquet(tmp_path / csv.loc[0, "samples_parquet"]).shape[0] == 2


class _RecordingServer(ThreadingHTTPServer):
    """A minimal OpenAI-compatible completions server that keeps every request body and answers
    each with one streamed chunk of text and the usage."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        super().__init__(("127.0.0.1", 0), _RecordingHandler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RecordingHandler(BaseHTTPRequestHandler):
    server: _RecordingServer

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for chunk in (
            {"choices": [{"index": 0, "text": " answer", "finish_reason": None}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
        ):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def do_GET(self) -> None:  # noqa: N802
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


def test_extra_body_reaches_every_evaluation_request(dataset_path):
    server = _RecordingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        r = optbench.evaluate(
            server.base_url,
            "m",
            dataset=dataset_path,
            categories=["qa"],
            limit=2,
            extra_body={"top_p": 0.5, "stream_options": {"include_usage": True}},
            progress=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert r.summary["num_failed"] == 0 and len(server.bodies) == 2
    for body in server.bodies:
        assert body["top_p"] == 0.5 and body["stream_options"] == {"include_usage": True}
        # The evaluator's own fields are still its own.
        assert body["temperature"] == 0 and body["model"] == "m" and body["stream"] is True
        assert body["max_tokens"] == DEFAULT_MAX_TOKENS["qa"] and body["stop"] == DEFAULT_STOP["qa"]


def test_extra_body_may_not_replace_what_the_evaluator_sets(dataset_path):
    with pytest.raises(ConfigError, match=r"extra_body has 'stop', which the evaluator sets itself"):
        optbench.evaluate("http://127.0.0.1:9", "m", dataset=dataset_path, extra_body={"stop": ["x"]}, progress=False)
    with pytest.raises(ConfigError, match=r"extra_body has 'model', 'prompt'"):
        optbench.quality_under_load(
            "http://127.0.0.1:9", "m", dataset=dataset_path, extra_body={"prompt": "x", "model": "y"}, progress=False
        )
