"""Nothing a user paid for is lost: finished requests survive SIGTERM and SIGKILL, result
files are written whole, concurrent runs into one results folder keep every row, and the
report survives damaged files."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import optbench
from optbench.report import build_report
from optbench.results import (
    JOURNAL,
    LOAD_TEST_CSV,
    append_csv_rows,
    load_journal,
)
from optbench.testing import MockServer

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "optbench", *args],
        cwd=kw.get("cwd"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_journal_rows(journal_glob, results: Path, n: int, timeout_s: float = 60) -> Path:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for j in results.glob(journal_glob):
            if len(j.read_bytes().splitlines()) >= n:
                return j
        time.sleep(0.05)
    raise AssertionError(f"no journal under {results} reached {n} rows")


def _load_test_args(server: MockServer, results: Path, n: int = 200) -> list[str]:
    return [
        "load-test",
        "--base-url",
        server.base_url,
        "--model",
        "mock",
        "--num-requests",
        str(n),
        "--concurrency",
        "2",
        "--output-tokens",
        "8",
        "--input-tokens",
        "16",
        "--no-progress",
        "--results-dir",
        str(results),
        "--label",
        "killed-run",
    ]


def test_sigkill_mid_run_leaves_the_finished_requests_readable(tmp_path: Path) -> None:
    results = tmp_path / "results"
    # 200 requests of ~100 ms at concurrency 2: about 10 s; killed after 10 have finished.
    with MockServer(ttft_ms=20, gap_ms=10, tokens=8) as server:
        proc = _cli(*_load_test_args(server, results))
        journal = _wait_for_journal_rows(f"runs/*/{JOURNAL}", results, 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert not (results / LOAD_TEST_CSV).exists()  # the process never got to write its row
    rows, summary, bad = load_journal(journal)
    assert rows.num_rows >= 10 and bad in ([], [rows.num_rows + 1])
    finished = rows.to_pandas()
    assert finished["success"].all() and (finished["output_tokens"] == 8).all()
    assert finished["request_id"].is_unique

    # The next `optbench load-test` into the same folder recovers the killed run first.
    with MockServer(ttft_ms=1, gap_ms=1, tokens=8) as server:
        args = _load_test_args(server, results, n=4)
        done = subprocess.run([sys.executable, "-m", "optbench", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "recovered" in done.stderr and "killed run" in done.stderr
    table = pd.read_csv(results / LOAD_TEST_CSV)
    assert list(table["stop_reason"]) == ["killed", "completed"]
    killed = table.iloc[0]
    assert killed["num_succeeded"] == summary["num_succeeded"] >= 10
    recovered = pd.read_parquet(results / killed["requests_parquet"])
    assert len(recovered) == rows.num_rows
    assert not list(results.glob(f"runs/*/{JOURNAL}"))  # turned into Parquet, then removed


def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    results = tmp_path / "results"
    with MockServer(ttft_ms=20, gap_ms=10, tokens=8) as server:
        proc = _cli(*_load_test_args(server, results))
        _wait_for_journal_rows(f"runs/*/{JOURNAL}", results, 5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    table = pd.read_csv(results / LOAD_TEST_CSV)
    assert list(table["stop_reason"]) == ["cancelled"]
    assert table["num_succeeded"].iloc[0] >= 5
    rows = pd.read_parquet(results / table["requests_parquet"].iloc[0])
    # Every request that was sent is a row: finished ones and the ones cut off in flight.
    assert (rows["success"] | (rows["error_kind"] == "cancelled")).all()
    assert not list(results.glob(f"runs/*/{JOURNAL}*"))


def _append_worker(path: str, worker: int, rows: int, extra_column: bool) -> None:
    batch = [{"label": f"w{worker}", "row": i} for i in range(rows)]
    if extra_column:  # forces the rewrite-with-new-columns path while others append
        batch = [{**r, f"extra_{worker}": 1.0} for r in batch]
    append_csv_rows(path, batch)


def test_concurrent_appends_never_lose_a_row_in_50_trials(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for trial in range(50):
        path = tmp_path / f"trial{trial}.csv"
        workers = [
            ctx.Process(target=_append_worker, args=(str(path), w, 3, w == 2 and trial % 2 == 0)) for w in range(6)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
            assert w.exitcode == 0
        table = pd.read_csv(path)
        assert len(table) == 18, f"trial {trial}: {len(table)} rows"
        assert sorted(table.groupby("label").size()) == [3] * 6
        assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_concurrent_load_tests_into_one_folder_keep_every_row(tmp_path: Path) -> None:
    results = tmp_path / "results"
    with MockServer(ttft_ms=1, gap_ms=1, tokens=4) as server:
        for trial in range(3):
            procs = [_cli(*_load_test_args(server, results, n=4)[:-1], f"run-{trial}-{i}") for i in range(3)]
            for p in procs:
                _, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
    table = pd.read_csv(results / LOAD_TEST_CSV)
    assert sorted(table["label"]) == sorted(f"run-{t}-{i}" for t in range(3) for i in range(3))
    for parquet in table["requests_parquet"]:
        assert len(pd.read_parquet(results / parquet)) == 4


def _openai_config(tmp_path: Path, name: str, base_url: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nengine = "openai"\nmodel = "mock"\n\n[server]\nbase_url = "{base_url}/v1"\n\n'
        "[load_test]\nnum_requests = 300\nconcurrency = 2\ninput_tokens = 16\noutput_tokens = 8\nwarmup = 0\n"
    )
    return path


def test_a_killed_run_is_reported_interrupted_and_resume_finishes_it(tmp_path: Path) -> None:
    results = tmp_path / "results"
    with MockServer(ttft_ms=20, gap_ms=10, tokens=8) as server:
        first = _openai_config(tmp_path, "first", server.base_url)
        second = _openai_config(tmp_path, "second", server.base_url)
        code = (
            "import optbench, sys; optbench.run(sys.argv[1:], dataset=None, profile='quick', "
            f"results_dir={str(results)!r}, report_path=None, run_id='r1', progress=False)"
        )
        proc = subprocess.Popen([sys.executable, "-c", code, str(first), str(second)], stderr=subprocess.PIPE)
        _wait_for_journal_rows(f"runs/r1/first/{JOURNAL}", results, 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        run_dir = results / "runs" / "r1"
        meta = json.loads((run_dir / "first" / "meta.json").read_text())
        assert meta["status"] == "running" and meta["phase"] == "load test"
        report = build_report(run_dir, results_dir=results, report_path=tmp_path / "RESULTS.md")
        row = report["table"].set_index("configuration").loc["first"]
        assert row["status"] == "interrupted"
        assert row["num_requests"] >= 10  # the finished requests, from the journal
        text = (tmp_path / "RESULTS.md").read_text()
        assert "first interrupted" in text and "recovered from its journal" in text

        # Quick load tests for the resumed run.
        for cfg in (first, second):
            cfg.write_text(cfg.read_text().replace("num_requests = 300", "num_requests = 6"))
        report = optbench.run(
            [first, second],
            dataset=None,
            profile="quick",
            results_dir=results,
            report_path=None,
            run_id="r1",
            progress=False,
        )
        assert list(report["table"]["status"]) == ["ok", "ok"]
        # The killed attempt's files are kept, set aside.
        attempts = list((run_dir / "first" / "attempts").iterdir())
        assert len(attempts) == 1 and (attempts[0] / JOURNAL).exists()
        before = (run_dir / "second" / "meta.json").stat().st_mtime_ns
        optbench.run(
            [first, second],
            dataset=None,
            profile="quick",
            results_dir=results,
            report_path=None,
            resume=True,
            progress=False,
        )
        assert (run_dir / "second" / "meta.json").stat().st_mtime_ns == before  # complete: skipped


def test_report_survives_an_unreadable_parquet(tmp_path: Path) -> None:
    results = tmp_path / "results"
    with MockServer(ttft_ms=1, gap_ms=1, tokens=4) as server:
        cfgs = [_openai_config(tmp_path, n, server.base_url) for n in ("good", "damaged")]
        for cfg in cfgs:
            cfg.write_text(cfg.read_text().replace("num_requests = 300", "num_requests = 4"))
        optbench.run(cfgs, dataset=None, profile="quick", results_dir=results, report_path=None, run_id="r")
    damaged = results / "runs" / "r" / "damaged" / "requests.parquet"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # a kill mid-write
    report = build_report(results / "runs" / "r", results_dir=results, report_path=tmp_path / "RESULTS.md")
    table = report["table"].set_index("configuration")
    assert table.loc["good", "status"] == "ok" and table.loc["damaged", "status"] == "failed"
    assert "requests.parquet is unreadable" in (tmp_path / "RESULTS.md").read_text()
    # The CLI says the same, with no traceback.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "optbench",
            "report",
            str(results / "runs" / "r"),
            "--results-dir",
            str(results),
            "--report",
            str(tmp_path / "R2.md"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_a_result_file_is_whole_or_absent(tmp_path: Path) -> None:
    from optbench.files import atomic_write_text

    target = tmp_path / "meta.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        from optbench.files import atomic_path

        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]
