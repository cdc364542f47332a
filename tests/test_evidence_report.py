"""results.csv and RESULTS.md carry the client's calibrated error, the server's view and GPU
energy and cost beside the speed numbers, rebuilt from a run's files alone."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import optbench
from optbench.config import parse_config
from optbench.exceptions import ConfigError
from optbench.report import build_report
from optbench.server_metrics import parse_metrics, summarize
from optbench.telemetry import GpuSample, summarize_samples
from optbench.testing import MockServer


def _histogram(buckets: list[float]) -> str:
    les = ["0.01", "0.02", "0.04", "+Inf"]
    lines = [f'vllm:time_to_first_token_seconds_bucket{{le="{le}"}} {c}' for le, c in zip(les, buckets)]
    return (
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        + "\n".join(lines)
        + f"\nvllm:time_to_first_token_seconds_count {buckets[-1]}\nvllm:time_to_first_token_seconds_sum 1.0\n"
    )


def _write_config(run_dir, name: str, meta: dict, ttft_ms: float) -> pd.DataFrame:
    with MockServer(ttft_ms=ttft_ms, gap_ms=4, tokens=8) as server:
        r = optbench.load_test(
            server.base_url, "mock", num_requests=6, concurrency=2, output_tokens=8, prompts=["p"], progress=False
        )
    d = run_dir / name
    d.mkdir(parents=True)
    r.to_parquet(d / "requests.parquet")
    full = {"name": name, "engine": "vllm", "model": "mock", "status": "ok", "load_test": r.options.to_dict(), **meta}
    (d / "meta.json").write_text(json.dumps(full))
    return r.requests


@pytest.mark.timeout(120)
def test_results_csv_and_report_carry_calibration_server_view_and_gpu_cost(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    # The server's TTFT histogram: all 6 requests between 20 and 40 ms while the client saw ~5 ms.
    server = summarize(parse_metrics(_histogram([0, 0, 0, 0]), 0.0), [], parse_metrics(_histogram([0, 0, 6, 6]), 1.0))
    samples = [
        GpuSample(time=t, gpu=0, power_w=300.0, energy_j=1000.0 + 300.0 * t, memory_used_mib=5000.0 + t,
                  utilization_pct=90.0, sm_clock_mhz=1980.0)
        for t in (0.0, 1.0, 2.0)
    ]  # fmt: skip
    gpu = summarize_samples(samples, output_tokens=48, requests=6)
    # An ITL error at P99 of 1.5 ms against a measured P50 ITL of ~4 ms: large.
    calibration = {
        "concurrency": 2, "gap_ms": 10.0, "offered_tokens_per_s": 200.0, "cpu_ms_per_1k_tokens": 20.0,
        "ttft_err_p50_ms": 0.1, "ttft_err_p99_ms": 0.2, "itl_err_p50_ms": 0.05, "itl_err_p99_ms": 1.5,
    }  # fmt: skip
    requests = _write_config(
        run_dir,
        "gpu",
        {"calibration": calibration, "server_metrics": server, "gpu_telemetry": gpu, "gpu_cost_per_hour": 3.6},
        ttft_ms=5,
    )
    no_gpu = {"available": False, "reason": "NVML: NVML Shared Library Not Found"}
    _write_config(run_dir, "cpu", {"calibration": {"error": "the mock did not start"}, "gpu_telemetry": no_gpu}, 5)
    report = build_report(run_dir, results_dir=tmp_path / "results", report_path=tmp_path / "RESULTS.md")
    table = pd.read_csv(tmp_path / "results" / "results.csv").set_index("configuration")
    g = table.loc["gpu"]
    assert g["calibration_itl_err_p99_ms"] == 1.5 and g["client_cpu_ms_per_1k_tokens"] == 20.0
    assert bool(g["calibration_large_error"]) is True
    assert g["server_metrics_engine"] == "vllm" and g["server_ttft_p50_ms"] == pytest.approx(30.0)
    assert g["client_server_disagreements"] >= 1
    assert g["gpu_energy_j"] == pytest.approx(600.0) and g["gpu_energy_per_output_token_j"] == pytest.approx(12.5)
    assert g["gpu_energy_per_request_j"] == pytest.approx(100.0) and g["gpu_memory_peak_mib"] == 5002.0
    assert g["cost_per_million_output_tokens"] == pytest.approx(3.6 / (g["output_token_throughput"] * 3600) * 1e6)
    c = table.loc["cpu"]
    assert pd.isna(c["calibration_ttft_err_p50_ms"]) and pd.isna(c["gpu_energy_j"])
    assert pd.isna(c["cost_per_million_output_tokens"])
    md = report["markdown"]
    for text in (
        "### The client's calibrated error",
        "| gpu | +0.10 / +0.20 | +0.05 / +1.50 | 20.0 | concurrency 2, 10 ms gap (200 tok/s)",
        "**Warning** (gpu): the client's calibrated ITL error at P99 (+1.50 ms)",
        "| cpu | failed: the mock did not start |",
        "### Client vs server",
        "`vllm:time_to_first_token_seconds`",
        "**Warning** (gpu): client and server disagree on TTFT P50",
        "### GPU telemetry, energy and cost",
        "| gpu | 600 | 12.500 | 100.0 | 300 | 5,002 | 90 | 3.60 |",
        "- cpu: GPU telemetry: none (NVML: NVML Shared Library Not Found).",
    ):
        assert text in md, text
    client_ttft = requests[requests["success"]]["ttft_ms"].quantile(0.5)
    assert f"| gpu | TTFT P50 | {client_ttft:.2f} | 30.00 |" in md
    assert md.index("## Results") < md.index("### The client's calibrated error") < md.index("## Findings")


def test_a_run_without_any_of_it_reports_as_before(tmp_path):
    run_dir = tmp_path / "runs" / "old"
    _write_config(run_dir, "old", {}, ttft_ms=2)
    md = build_report(run_dir, results_dir=tmp_path / "results", report_path=None)["markdown"]
    assert "### The client's calibrated error" not in md and "### GPU telemetry" not in md
    assert "### Client vs server" not in md


def test_gpu_cost_per_hour_is_checked_in_the_configuration():
    cfg = parse_config({"engine": "vllm", "model": "m", "gpu_cost_per_hour": 2}, "a.toml")
    assert cfg.gpu_cost_per_hour == 2.0
    for bad, what in ((-1, "from 0 to"), ("3 dollars", "a number")):
        with pytest.raises(ConfigError, match=f"a.toml: key 'gpu_cost_per_hour' must be .*{what}"):
            parse_config({"engine": "vllm", "model": "m", "gpu_cost_per_hour": bad}, "a.toml")
