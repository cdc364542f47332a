"""The H200 measurement's scripts (benches/gpu/) on the CPU, so its three-command reproduction
cannot rot between GPU sessions.

What runs here is what runs there, on a small model: ``gen_gguf.py`` writes a GGUF with the
vocabulary padded to Llama 3.1's 128,256 entries, and ``sweep.py --small`` serves it through
optbench's orchestrator with the embedded (CPU) llama-server and writes the report, the CSV and
the plots. ``probe_sampling.py`` does the same for its three server variants. The CUDA build
(step1.sh) is the one part only the GPU machine can check."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benches" / "gpu"
pytestmark = [pytest.mark.llama, pytest.mark.slow]


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def llama_binary() -> str:
    if os.environ.get("OPTBENCH_SKIP_LLAMA") == "1":
        pytest.skip("OPTBENCH_SKIP_LLAMA=1")
    from optbench.servers.llama_cpp import find_llama_server

    return str(find_llama_server(None))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 blocks, hidden 256, SmolLM2's real tokenizer padded to 128,256 tokens (as on the GPU)."""
    d = tmp_path_factory.mktemp("gpu-model")
    run([str(GPU / "gen_gguf.py"), "--extract-vocab", str(d / "vocab.gguf")], timeout=120)
    run([str(GPU / "gen_gguf.py"), "--tiny", "--vocab", "128256", "--vocab-from", str(d / "vocab.gguf"),
         "--out", str(d / "tiny.gguf")], timeout=120)
    return d / "tiny.gguf"


def test_the_gguf_plan_has_llama_3_1_8b_shapes() -> None:
    proc = run([str(GPU / "gen_gguf.py"), "--dry-run"], timeout=60)
    out = proc.stderr + proc.stdout
    # Meta's published parameter count for Llama 3.1 8B, and its tensor shapes.
    assert "292 tensors, 8,030,261,312 parameters" in out, out
    assert re.search(r"blk\.0\.attn_k\.weight\s+\(1024, 4096\)\s+f16", out), out
    assert re.search(r"blk\.0\.ffn_gate\.weight\s+\(14336, 4096\)\s+f16", out), out
    assert re.search(r"output\.weight\s+\(128256, 4096\)\s+f16", out), out


@pytest.mark.timeout(600)
def test_sweep_serves_through_optbench_and_reports_without_quality(tiny_model: Path, llama_binary: str,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    run([str(GPU / "sweep.py"), "--small", "--model", str(tiny_model), "--binary", llama_binary,
         "--out", str(out), "--deadline-s", "400"], timeout=560)
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert {"GPU_RESULTS.md", "summary.csv", "requests.parquet", "extras.tar.gz", "throughput_vs_concurrency.png",
            "latency_percentiles.png", "latency_cdfs.png"} <= names, names
    assert len(names) <= 7  # the device returns 8 files from $OUT; step2.sh adds its log

    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [int(r["concurrency"]) for r in rows] == [1, 2]
    for r in rows:
        assert int(r["num_succeeded"]) == int(r["num_requests"]) == 4, r
        assert float(r["client_cpu_share"]) > 0 and float(r["server_cpu_share"]) > 0, r
    assert len({r["prompt_seed"] for r in rows}) == len(rows)  # each run its own prompts

    report = (out / "GPU_RESULTS.md").read_text()
    assert "quality was not evaluated" in report
    assert not re.search(r"\b(f1|exact_match|pass@1|accuracy)\b", report, re.I)  # and no scores anyway
    assert re.search(r"^\| 1 \| 4 / 4 \|", report, re.M) and re.search(r"^\| 2 \| 4 / 4 \|", report, re.M), report
    assert "](throughput_vs_concurrency.png)" in report  # links relative to the run's own folder

    # No request may find its prompt already in a slot: the server's log shows every prompt
    # evaluated in full (a prefix-cache hit evaluates 1 token). The seed per run is what keeps
    # the second run from reusing the first run's prompts.
    with tarfile.open(out / "extras.tar.gz") as tar:
        log = next(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".log"))
    evaluated = [int(n) for n in re.findall(r"prompt eval time =\s+[\d.]+ ms /\s+(\d+) tokens", log)]
    assert len(evaluated) == 4 + 1 + 4, evaluated  # c=1: 4 + 1 warm-up; c=2: 4
    assert min(evaluated) >= 60, evaluated  # 64-token prompts, at most a BOS-sized common prefix


@pytest.mark.timeout(300)
def test_sampling_probe_runs_its_three_variants(tiny_model: Path, llama_binary: str, tmp_path: Path) -> None:
    run([str(GPU / "probe_sampling.py"), "--model", str(tiny_model), "--binary", llama_binary, "--out", str(tmp_path),
         "--input-tokens", "64", "--output-tokens", "32", "--concurrency", "1,2", "--parallel", "2"], timeout=280)
    rows = list(csv.DictReader((tmp_path / "probe_sampling.csv").open()))
    assert [(r["variant"], int(r["concurrency"])) for r in rows] == [
        (v, c) for v in ("default", "backend-sampling", "top-k 1") for c in (1, 2)]
    for r in rows:
        assert int(r["succeeded"]) == int(r["concurrency"]) and float(r["tpot_ms_p50"]) > 0, r
    with tarfile.open(tmp_path / "probe_sampling_logs.tar.gz") as tar:
        assert sorted(m.name for m in tar.getmembers()) == [
            "probe_backend_sampling.log", "probe_default.log", "probe_top_k_1.log"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "PROBE_SAMPLING.md", "probe_sampling.csv", "probe_sampling_logs.tar.gz"]
