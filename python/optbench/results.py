"""Where results go: CSV tables that grow a row per run, and per-request Parquet files.

Layout (under ``results/`` by default)::

    load_test_results.csv            one row per load test (see LoadTestResult.summary_row)
    runs/<run id>/requests.parquet   one row per request of that load test
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from optbench.loadtest import LoadTestResult

LOAD_TEST_CSV = "load_test_results.csv"


def new_run_id(label: str) -> str:
    """A sortable, filesystem-safe id: UTC time, then the label."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "run"
    return f"{stamp}-{safe[:60]}"


def append_csv_row(path: str | os.PathLike[str], row: Mapping[str, Any]) -> Path:
    """Appends ``row`` to the CSV at ``path``. When the row brings new columns, the file is
    rewritten with the union of columns (old rows keep their values), so no row is ever lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame([dict(row)])
    if path.exists() and path.stat().st_size > 0:
        header = list(pd.read_csv(path, nrows=0).columns)
        if header == list(new.columns):
            new.to_csv(path, mode="a", header=False, index=False)
            return path
        old = pd.read_csv(path)
        combined = pd.concat([old, new], ignore_index=True)
        tmp = path.with_suffix(".csv.tmp")
        combined.to_csv(tmp, index=False)
        tmp.replace(path)
        return path
    new.to_csv(path, index=False)
    return path


def save_load_test(result: LoadTestResult, results_dir: str | os.PathLike[str] = "results") -> dict[str, Path]:
    """Writes the per-request Parquet under ``runs/<run id>/`` and appends the summary row to
    ``load_test_results.csv``. Returns both paths."""
    results_dir = Path(results_dir)
    run_id = new_run_id(result.label)
    parquet = result.to_parquet(results_dir / "runs" / run_id / "requests.parquet")
    row = result.summary_row()
    row["run_id"] = run_id
    row["timestamp_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    row["requests_parquet"] = str(parquet.relative_to(results_dir))
    csv = append_csv_row(results_dir / LOAD_TEST_CSV, row)
    return {"csv": csv, "parquet": parquet}


def ensure_results_dir(path: str | os.PathLike[str]) -> Path:
    """Creates the results folder ``path`` (and its parents) if needed and checks that files can
    be written in it, before any work starts; returns it. A file in the way, a folder that
    cannot be created or one that is not writable raises ``ConfigError`` naming it."""
    import tempfile

    from optbench.exceptions import ConfigError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".optbench-write-check-"):
            pass
    except OSError as e:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"results folder {path}: is a file, not a folder") from None
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"results folder {path}: cannot create it or write in it ({reason})") from None
    return path
