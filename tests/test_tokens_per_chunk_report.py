"""Chunks that carry several tokens, through `optbench.run` and its report: the comparison table's
tokens-per-chunk columns (ITL per token, chunk gap per chunk, where the counts came from),
RESULTS.md's "Tokens per chunk" table and its warning; one token per chunk, from a server that
sends no per-chunk usage (as llama.cpp), gives no warning."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import optbench
from optbench.report import run_speed_metrics, speed_metrics
from optbench.testing import MockServer

GAP_MS = 12.0


def _config(tmp_path: Path, name: str, base_url: str, load_test: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nengine = "openai"\nmodel = "mock"\n\n[server]\nbase_url = "{base_url}/v1"\n\n'
        "[load_test]\nnum_requests = 6\nconcurrency = 2\ninput_tokens = 16\noutput_tokens = 12\nwarmup = 1\n"
        + load_test
    )
    return path


#: Asks for the final usage only: the mock then sends no per-chunk usage (as llama.cpp never does).
NO_CHUNK_USAGE = "extra_body = { stream_options = { include_usage = true } }\n"


def test_three_tokens_per_chunk_show_in_the_table_and_warn_in_the_report(tmp_path: Path) -> None:
    results, report_md = tmp_path / "results", tmp_path / "RESULTS.md"
    with (
        MockServer(ttft_ms=5, gap_ms=GAP_MS, tokens=12, tokens_per_chunk=3) as k3,
        MockServer(ttft_ms=5, gap_ms=GAP_MS, tokens=12) as k1,
    ):
        report = optbench.run(
            [_config(tmp_path, "k3", k3.base_url), _config(tmp_path, "k1", k1.base_url, NO_CHUNK_USAGE)],
            dataset=None,
            profile="quick",
            results_dir=results,
            report_path=report_md,
            calibrate=False,
            progress=False,
        )
    table = pd.read_csv(results / "results.csv").set_index("configuration")
    assert list(report["table"]["status"]) == ["ok", "ok"]
    k3_row, k1_row = table.loc["k3"], table.loc["k1"]
    # 12 tokens in 4 chunks of 3: every chunk carried several tokens.
    assert k3_row["tokens_per_chunk_mean"] == 3.0 and k3_row["multi_token_chunk_share"] == 1.0
    assert k3_row["chunk_tokens_source"] == "usage"
    assert k3_row["chunk_gap_p50_ms"] == pytest.approx(GAP_MS, abs=2.0)
    assert k3_row["itl_p50_ms"] == pytest.approx(k3_row["chunk_gap_p50_ms"] / 3, rel=0.05)
    assert k1_row["tokens_per_chunk_mean"] == 1.0 and k1_row["multi_token_chunk_share"] == 0.0
    assert k1_row["chunk_tokens_source"] == "none"
    assert k1_row["itl_p50_ms"] == pytest.approx(k1_row["chunk_gap_p50_ms"])

    # The columns recomputed from the rows with pandas are the stored summary's.
    run_dir = next((results / "runs").iterdir())
    parquet = run_dir / "k3" / "requests.parquet"
    from_rows = speed_metrics(pd.read_parquet(parquet))
    for col in ("tokens_per_chunk_mean", "multi_token_chunk_share", "itl_p50_ms", "chunk_gap_p50_ms"):
        assert from_rows[col] == pytest.approx(run_speed_metrics(parquet)[col], rel=1e-12), col
    assert from_rows["chunk_tokens_source"] == "usage"

    md = report_md.read_text()
    assert "### Tokens per chunk" in md
    assert "| k3 | 3.00 | 100% |" in md and "| k1 | 1.00 | 0% |" in md and md.count(" | usage |") == 1
    warnings = [line for line in md.splitlines() if line.startswith("- **Warning**")]
    assert len(warnings) == 1, warnings
    assert "(k3): 100% of chunks carried several tokens" in warnings[0]
    assert "ITL here is per token: chunk gaps are 3.0× larger" in warnings[0]
