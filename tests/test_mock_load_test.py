"""The Python API against the Rust mock server: timing truth, faults as rows, progress,
interruption, asyncio, and what gets written."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import optbench
from optbench import _core
from optbench.exceptions import ConfigError, DatasetError, OptbenchError
from optbench.servers.process import free_port
from optbench.testing import MockServer

PROMPTS = [f"prompt {i}" for i in range(4)]


def run(base_url: str, **kw):
    kw.setdefault("num_requests", 6)
    kw.setdefault("concurrency", 3)
    kw.setdefault("output_tokens", 8)
    kw.setdefault("prompts", PROMPTS)
    kw.setdefault("progress", False)
    return optbench.load_test(base_url, "mock", **kw)


def test_extension_is_a_release_build():
    # Timed work needs the optimised build (scripts/setup.sh builds it).
    assert _core.build_profile == "release"


def test_ttft_and_itl_within_1ms_of_the_servers_truth():
    with MockServer(ttft_ms=50, gap_ms=10, tokens=20) as server:
        r = run(server.base_url, num_requests=16, concurrency=4, output_tokens=20)
        truth = [(entry["first_token_sent_s"] - entry["received_s"]) * 1e3 for entry in server.log()]
    assert r.summary["num_succeeded"] == 16
    truth_p50 = float(np.median(truth))
    assert abs(truth_p50 - 50) < 1.0
    assert abs(r.metric("ttft_ms") - truth_p50) < 1.0, (r.metric("ttft_ms"), truth_p50)
    assert abs(r.metric("itl_ms") - 10.0) < 1.0
    assert (r.requests["output_tokens"] == 20).all()
    assert (r.requests["token_count_source"] == "usage").all()


def test_multi_token_chunks_give_per_token_itl_and_a_warning():
    with MockServer(ttft_ms=5, gap_ms=10, tokens=12, tokens_per_chunk=2) as server:
        r = run(server.base_url, num_requests=4, concurrency=2, output_tokens=12)
    assert r.summary["num_succeeded"] == 4
    assert (r.requests["output_tokens"] == 12).all()
    assert all(list(t) == [2] * 6 for t in r.requests["chunk_tokens"])
    assert r.summary["num_chunks"] == 24 and r.summary["num_multi_token_chunks"] == 24
    assert r.summary["metrics"]["tokens_per_chunk"]["max"] == 2.0
    assert abs(r.metric("chunk_gap_ms") - 10.0) < 1.5
    assert abs(r.metric("itl_ms") - 5.0) < 0.75, r.metric("itl_ms")
    assert "100% of chunks carried more than one token; ITL is per token (gap / tokens)" in " ".join(r.warnings)


def test_the_measured_window_leaves_out_the_warmup_and_maps_onto_the_monotonic_clock():
    with MockServer(ttft_ms=20, gap_ms=5, tokens=4) as server:
        before = time.monotonic()
        r = run(server.base_url, num_requests=4, concurrency=2, warmup=2, output_tokens=4)
        after = time.monotonic()
    df, s = r.requests, r.summary
    warm, measured = df[df["warmup"]], df[~df["warmup"]]
    # The warm-up's requests, sent first, all ended before the window starts.
    assert s["measured_start_ns"] > warm["done_ns"].max() > df["sent_ns"].min()
    assert s["measured_start_ns"] == measured["scheduled_ns"].min()
    assert s["measured_end_ns"] == measured["done_ns"].max()
    assert s["duration_s"] == pytest.approx((s["measured_end_ns"] - s["measured_start_ns"]) / 1e9)
    start, end = r.measured_window_monotonic
    assert before < r.clock_origin_monotonic < start < end < after
    # The warm-up took at least its TTFT: the window starts that much after the clock's origin.
    assert start - r.clock_origin_monotonic >= 0.02


def test_one_token_chunks_raise_no_chunk_warning():
    with MockServer(ttft_ms=5, gap_ms=2, tokens=6) as server:
        r = run(server.base_url, num_requests=2, output_tokens=6)
    assert r.summary["num_multi_token_chunks"] == 0
    assert not any("more than one token" in w for w in r.warnings)
    assert r.metric("itl_ms") == pytest.approx(r.metric("chunk_gap_ms"))


@pytest.mark.parametrize(
    "fault,arg,kind,timeout_s",
    [
        ("status", 500, "http_5xx", None),
        ("status", 429, "http_4xx", None),
        ("reset", 3, "stream_reset", None),
        ("malformed", 2, "malformed_chunk", None),
        ("no_done", 0, "missing_done", None),
        ("slow_headers", 3000, "deadline", 0.3),
    ],
)
def test_every_fault_is_a_row_with_its_kind(fault, arg, kind, timeout_s):
    with MockServer(ttft_ms=5, gap_ms=1, tokens=8, fault=fault, fault_arg=arg) as server:
        r = run(server.base_url, timeout_s=timeout_s)
    df = r.requests
    assert len(df) == 6 and r.summary["num_requests"] == 6
    assert (df["error_kind"] == kind).all(), df[["error_kind", "error_message"]]
    assert df["error_message"].str.len().gt(0).all()
    assert r.summary["failures_by_kind"] == {kind: 6}
    assert r.summary["num_succeeded"] == 0 and "ttft_ms" not in r.summary["metrics"]
    if fault == "status":
        assert (df["http_status"] == arg).all()
        assert df["error_message"].str.contains(f"injected status {arg}").all()


def test_connection_refused_is_a_row():
    r = run(f"http://127.0.0.1:{free_port()}")
    assert (r.requests["error_kind"] == "connect").all()
    assert r.summary["num_failed"] == 6


@pytest.mark.parametrize("preconnect", [True, False])
def test_preconnect_opens_the_pool_before_the_clock_and_is_reported(preconnect):
    with MockServer(ttft_ms=5, gap_ms=1, tokens=4) as server:
        r = run(server.base_url, num_requests=12, concurrency=4, output_tokens=4, preconnect=preconnect)
        log = server.log()
    assert r.summary["num_succeeded"] == 12 and len(log) == 12
    p = r.summary["preconnect"]
    assert p["enabled"] is preconnect and p["error"] is None, p
    assert r.options.preconnect is preconnect
    opened_by_a_request = sum(e["earlier_on_connection"] == 0 for e in log)
    if preconnect:
        # Four connections and a spare, opened by GET /v1/models before the clock; none during the run.
        assert (p["connections_wanted"], p["connections_opened"], p["connections_opened_during_run"]) == (5, 5, 0)
        assert 0 < p["seconds"] < 5
        # The server's side: the requests came on those five connections (accepted one after the
        # other, after the one the model check used), none accepted later.
        used = {e["connection"] for e in log}
        assert max(used) - min(used) < 5, used
    else:
        assert (p["connections_wanted"], p["connections_opened"]) == (0, 0)
        assert p["connections_opened_during_run"] >= 4 and opened_by_a_request >= 4
    assert not any("preconnect" in w for w in r.warnings)


def test_a_failed_preconnect_is_a_warning():
    r = run(f"http://127.0.0.1:{free_port()}")
    assert r.summary["preconnect"]["error"] and "GET /v1/models failed" in r.summary["preconnect"]["error"]
    assert any(w.startswith("preconnect: ") for w in r.warnings)


def test_open_loop_follows_the_seeded_schedule_and_excludes_warmup():
    with MockServer(ttft_ms=5, gap_ms=1, tokens=4) as server:
        a = run(server.base_url, num_requests=12, request_rate=40, arrival="poisson", seed=3, warmup=2)
        b = run(server.base_url, num_requests=12, request_rate=40, arrival="poisson", seed=3)
    measured = a.requests[~a.requests["warmup"]]
    assert a.requests["warmup"].sum() == 2 and a.summary["num_warmup"] == 2
    assert a.summary["num_requests"] == 12
    offsets_a = measured["scheduled_ns"].to_numpy() - measured["scheduled_ns"].iloc[0]
    offsets_b = b.requests["scheduled_ns"].to_numpy() - b.requests["scheduled_ns"].iloc[0]
    assert np.array_equal(offsets_a, offsets_b), "same seed, same schedule"
    assert a.metric("queue_delay_ms", "p50") < 1.0


def test_summary_is_recomputable_from_the_rows_with_pandas():
    with MockServer(ttft_ms=10, gap_ms=2, tokens=10) as server:
        r = run(server.base_url, num_requests=10, output_tokens=10)
    ok = r.requests[r.requests["success"] & ~r.requests["warmup"]]
    for metric in ("ttft_ms", "e2e_ms", "tokens_per_s"):
        for stat, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            assert ok[metric].quantile(q) == pytest.approx(r.metric(metric, stat), rel=1e-12)
    itl = np.concatenate(ok["itl_ms"].to_list())
    assert np.percentile(itl, 50) == pytest.approx(r.metric("itl_ms"), rel=1e-12)
    # tokens/s = output tokens / (E2E - TTFT)
    row = ok.iloc[0]
    assert row["tokens_per_s"] == pytest.approx(row["output_tokens"] / ((row["e2e_ms"] - row["ttft_ms"]) / 1e3))


def test_progress_is_reported_in_batches_and_ends_complete():
    seen = []
    with MockServer(ttft_ms=5, gap_ms=5, tokens=20) as server:
        run(
            server.base_url,
            num_requests=8,
            concurrency=2,
            output_tokens=20,
            progress=seen.append,
            progress_interval_s=0.05,
        )
    # ~8 requests x 100 ms / 2 slots = 0.4 s: a handful of snapshots, not one per token.
    assert 2 <= len(seen) < 40
    last = seen[-1]
    assert last["succeeded"] == 8 and last["failed"] == 0 and last["total"] == 8
    assert last["chunks"] == 8 * 20


def test_progress_starts_with_a_snapshot_even_for_a_run_shorter_than_the_interval():
    # A caller measuring between snapshots (CPU time, say) needs one at the start: a 0.1 s run
    # with a 30 s interval gets the start and the final counts, not only the end.
    for load_test in (optbench.load_test, lambda *a, **kw: asyncio.run(optbench.aload_test(*a, **kw))):
        seen = []
        with MockServer(ttft_ms=5, gap_ms=2, tokens=10) as server:
            load_test(
                server.base_url,
                "mock",
                num_requests=4,
                concurrency=2,
                output_tokens=10,
                prompts=PROMPTS,
                progress=seen.append,
                progress_interval_s=30,
            )
        assert [p["succeeded"] for p in seen] == [0, 4], seen


def test_ctrl_c_returns_the_finished_rows():
    calls = []

    def interrupt_after_some(p):
        calls.append(p)
        if p["succeeded"] >= 2:
            raise KeyboardInterrupt

    with MockServer(ttft_ms=5, gap_ms=5, tokens=40) as server:
        with pytest.warns(UserWarning, match="interrupted"):
            r = run(
                server.base_url,
                num_requests=50,
                concurrency=2,
                output_tokens=40,
                progress=interrupt_after_some,
                progress_interval_s=0.05,
            )
    assert r.stop_reason == "cancelled" and r.interrupted
    df = r.requests
    assert df["success"].sum() >= 2
    assert set(df.loc[~df["success"], "error_kind"]) <= {"cancelled"}
    assert len(df) < 50


def test_aload_test_inside_a_running_event_loop():
    async def main():
        with MockServer(ttft_ms=5, gap_ms=1, tokens=6) as server:
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            t = asyncio.create_task(ticker())
            r = await optbench.aload_test(
                server.base_url, "mock", num_requests=10, concurrency=2, output_tokens=6, prompts=PROMPTS
            )
            t.cancel()
            return r, ticks

    r, ticks = asyncio.run(main())
    assert r.summary["num_succeeded"] == 10
    assert ticks > 3, "the event loop kept running during the load test"


def test_cancelling_the_awaiting_task_cancels_the_run():
    async def main():
        with MockServer(ttft_ms=5, gap_ms=10, tokens=500) as server:
            task = asyncio.create_task(
                optbench.aload_test(
                    server.base_url, "mock", num_requests=4, concurrency=2, output_tokens=500, prompts=PROMPTS
                )
            )
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_results_are_written_and_rows_appended(tmp_path):
    with MockServer(ttft_ms=5, gap_ms=1, tokens=4) as server:
        r1 = run(server.base_url, label="first")
        r2 = run(server.base_url, label="second", num_requests=3)
    p1 = optbench.save_load_test(r1, tmp_path)
    p2 = optbench.save_load_test(r2, tmp_path)
    csv = pd.read_csv(p2["csv"])
    assert list(csv["label"]) == ["first", "second"]
    assert list(csv.columns[:4]) == ["label", "ttft_p50_ms", "tokens_per_s_p50", "e2e_p50_ms"]
    assert csv.loc[1, "num_requests"] == 3
    table = pq.read_table(p1["parquet"])
    assert table.num_rows == 6
    meta = table.schema.metadata
    assert json.loads(meta[b"optbench.summary"])["num_requests"] == 6
    assert pd.read_parquet(p2["parquet"]).shape[0] == 3


def test_user_prompts_from_jsonl_and_chat_messages(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n\n["not", "messages"]\n')
    with pytest.raises(DatasetError, match=r"prompts.jsonl line 3"):
        optbench.load_user_prompts(path)
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"prompt": "x"}\n')
    with pytest.raises(DatasetError, match="mixes"):
        optbench.load_user_prompts(path)
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with MockServer(ttft_ms=5, gap_ms=1, tokens=4) as server:
        r = run(server.base_url, prompts=str(path), endpoint="chat", num_requests=3)
        assert r.summary["num_succeeded"] == 3
        with pytest.raises(ConfigError, match="endpoint='chat'"):
            run(server.base_url, prompts=str(path), endpoint="completions")
    with pytest.raises(DatasetError, match="not found"):
        optbench.load_user_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="line 1: not valid JSON"):
        (tmp_path / "bad.jsonl").write_text("{oops\n")
        optbench.load_user_prompts(tmp_path / "bad.jsonl")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_requests=0), "num_requests"),
        (dict(endpoint="embeddings"), "endpoint"),
        (dict(concurrency=0), "concurrency"),
        (dict(request_rate=-1.0), "request_rate"),
        (dict(request_rate=1.0, arrival="weibull"), "arrival"),
        (dict(api_key_env="OPTBENCH_SURELY_UNSET_VAR"), "not set"),
        (dict(timeout_s=0), "timeout_s"),
    ],
)
def test_bad_configuration_raises_a_clear_error(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        run("http://127.0.0.1:9", **kwargs)
    assert isinstance(info.value, OptbenchError)


def test_base_url_needs_a_scheme():
    with pytest.raises(ConfigError, match="http://"):
        run("127.0.0.1:8000")


@pytest.mark.parametrize(
    "base_url,api_key,match",
    [
        ("http://127.0.0.1:99999", None, "invalid port"),
        ("http://127.0.0.1:8000/ v1", None, "space"),
        ("ftp://127.0.0.1:8000", None, "http://"),
        ("http://127.0.0.1:8000/v1/completions", None, "names an endpoint"),
        ("http://127.0.0.1:8000/v1/chat/completions", None, "names an endpoint"),
        ("http://127.0.0.1:9", "sk-key\n", "api_key"),
    ],
)
@pytest.mark.parametrize("synthetic", [False, True])
def test_a_bad_target_is_a_config_error_before_the_run(monkeypatch, base_url, api_key, match, synthetic):
    # These used to start the run and give rows of connection errors (or double the path).
    kw: dict = {"prompts": None, "input_tokens": 8} if synthetic else {}
    if api_key is not None:
        monkeypatch.setenv("OPTBENCH_TEST_KEY", api_key)
        kw["api_key_env"] = "OPTBENCH_TEST_KEY"
    with pytest.raises(ConfigError, match=match) as info:
        run(base_url, **kw)
    assert "sk-key" not in str(info.value)


def test_a_redirect_is_an_http_3xx_row_naming_the_location():
    import http.server
    import threading

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        r = run(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    df = r.requests
    # It used to be labelled http_5xx (after following the redirect to a dead port: connect).
    assert (df["error_kind"] == "http_3xx").all(), df[["error_kind", "error_message"]]
    assert (df["http_status"] == 302).all()
    assert df["error_message"].str.contains("redirected to http://127.0.0.1:1/elsewhere").all()
    assert r.summary["failures_by_kind"] == {"http_3xx": 6}


def test_a_hanging_tokenize_costs_at_most_timeout_s_before_and_after_the_run():
    # The probe used to wait 30 s, and the recount 30 s per answer, one at a time.
    with MockServer(ttft_ms=5, gap_ms=1, tokens=8, fault="no_usage", tokenize="hang") as server:
        started = time.monotonic()
        with pytest.warns(UserWarning, match="did not answer within 1.0 s"):
            r = run(server.base_url, prompts=None, input_tokens=16, num_requests=12, timeout_s=1.0)
        took = time.monotonic() - started
    assert took < 5.0, took
    assert r.prompt_source == "estimate" and any("/tokenize" in w for w in r.warnings)
    assert r.stop_reason == "completed"
    assert (r.requests["token_count_source"] == "chunks").all()
    assert (r.requests["output_tokens"] == 8).all()


def test_a_working_tokenize_sizes_prompts_and_recounts_answers():
    with MockServer(ttft_ms=5, gap_ms=1, tokens=8, fault="no_usage", tokenize="words") as server:
        r = run(server.base_url, prompts=None, input_tokens=16, num_requests=12, timeout_s=5.0)
    assert r.prompt_source == "server"
    assert (r.requests["token_count_source"] == "tokenizer").all()
    # " tok0 ... tok7": one token per word.
    assert (r.requests["output_tokens"] == 8).all()


def test_synthetic_prompts_without_tokenize_warn_and_estimate():
    with MockServer() as server:
        ps = optbench.synthetic_prompts(server.base_url, "mock", 3, 100, seed=1)
    assert ps.source == "estimate"
    assert ps.warnings and "estimated" in ps.warnings[0]
    assert len({p[:30] for p in ps.texts}) == 3


def test_a_tokenizer_file_counts_when_the_server_cannot(shared_dir):
    tok = str(shared_dir / "models" / "all-MiniLM-L6-v2" / "tokenizer.json")
    # BERT's [CLS] and [SEP] count as the special tokens a server would add.
    assert _core.count_tokens(tok, "hello world") == 4
    assert _core.count_tokens(tok, "hello world", add_special=False) == 2
    with MockServer() as server:
        ps = optbench.synthetic_prompts(server.base_url, "mock", 3, 120, seed=2, tokenizer=tok)
        assert ps.source == "tokenizer" and not ps.warnings
        assert all(115 <= _core.count_tokens(tok, t) <= 120 for t in ps.texts)
        # Answers without usage are counted by the same tokenizer over the whole text.
    with MockServer(fault="no_usage", tokens=6) as server:
        r = run(server.base_url, output_tokens=6, tokenizer=tok)
    assert (r.requests["token_count_source"] == "tokenizer").all()
    # " tok0 tok1 ... tok5" in BERT WordPiece: 'to', '##k', '##0' per word.
    assert (r.requests["output_tokens"] == 18).all()


def test_a_bad_tokenizer_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    with pytest.raises(optbench.TokenizerError, match="tokenizer.json"):
        _core.count_tokens(str(bad), "x")
