"""Where results go: CSV tables that grow a row per run, and per-request Parquet files.

Layout (under ``results/`` by default)::

    load_test_results.csv                 one row per load test (see LoadTestResult.summary_row)
    runs/<run id>/requests.parquet        one row per request of that load test
    runs/<run id>/requests.journal.jsonl  while it runs: each request as it finishes
    runs/<run id>/requests.journal.json   while it runs: the run's settings and label

Nothing already measured is lost:

- every file is written under a temporary name in its own folder, then renamed over the
  target in one step (a kill mid-write leaves the old file or none, never half of one);
- CSV appends take an exclusive lock on ``<file>.lock`` (concurrent runs into one results
  folder each add their rows whole);
- a load test writes each finished request to its journal the moment it ends; a run killed
  before it could write its Parquet (SIGKILL, the OOM killer) leaves the journal, and
  :func:`recover_journals` (run by ``optbench load-test`` and ``optbench report``) turns it
  into the run's Parquet and CSV row, marked ``stop_reason = killed``.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
from filelock import FileLock

from optbench import _core
from optbench.files import atomic_path, atomic_write_text, utc_stamp
from optbench.loadtest import LoadTestResult

LOAD_TEST_CSV = "load_test_results.csv"
#: A load test's journal (JSON lines, a request per line as it finished) and its settings.
JOURNAL = "requests.journal.jsonl"
JOURNAL_META = "requests.journal.json"
#: How long a CSV append waits for another process's lock before failing.
CSV_LOCK_TIMEOUT_S = 120.0


def new_run_id(label: str) -> str:
    """A sortable, filesystem-safe id: UTC time, then the label."""
    stamp = utc_stamp()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "run"
    return f"{stamp}-{safe[:60]}"


def append_csv_row(path: str | os.PathLike[str], row: Mapping[str, Any]) -> Path:
    """Appends ``row`` to the CSV at ``path`` (see :func:`append_csv_rows`)."""
    return append_csv_rows(path, [row])


def append_csv_rows(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Appends ``rows`` to the CSV at ``path`` under an exclusive lock on ``<path>.lock``, so
    concurrent writers (two runs into one results folder) each add their rows whole. When the
    rows bring new columns the file is rewritten with the union of columns (old rows keep
    their values) through a temporary file and one rename, so no row is ever lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame([dict(r) for r in rows])
    with FileLock(str(path) + ".lock", timeout=CSV_LOCK_TIMEOUT_S):
        if path.exists() and path.stat().st_size > 0:
            header = list(pd.read_csv(path, nrows=0).columns)
            if header == list(new.columns):
                # One write call: a reader never sees half a row from this writer.
                buf = io.StringIO()
                new.to_csv(buf, header=False, index=False)
                with open(path, "a", encoding="utf-8", newline="") as f:
                    f.write(buf.getvalue())
                return path
            old = pd.read_csv(path)
            combined = pd.concat([old, new], ignore_index=True)
        else:
            combined = new
        with atomic_path(path) as tmp:
            combined.to_csv(tmp, index=False)
    return path


def save_load_test(
    result: LoadTestResult, results_dir: str | os.PathLike[str] = "results", run_id: str | None = None
) -> dict[str, Path]:
    """Writes the per-request Parquet under ``runs/<run id>/`` and appends the summary row to
    ``load_test_results.csv``; then removes the run's journal, if any (the Parquet holds it
    all). ``run_id``: the folder :func:`start_journal` prepared (default: a new one). Returns
    both paths."""
    results_dir = Path(results_dir)
    run_id = run_id or new_run_id(result.label)
    run_dir = results_dir / "runs" / run_id
    parquet = result.to_parquet(run_dir / "requests.parquet")
    row = result.summary_row()
    row["run_id"] = run_id
    row["timestamp_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    row["requests_parquet"] = str(parquet.relative_to(results_dir))
    csv = append_csv_row(results_dir / LOAD_TEST_CSV, row)
    for name in (JOURNAL, JOURNAL_META, f"{JOURNAL}.lock"):
        (run_dir / name).unlink(missing_ok=True)
    return {"csv": csv, "parquet": parquet}


def start_journal(
    results_dir: str | os.PathLike[str], label: str, config: Mapping[str, Any], run_id: str | None = None
) -> tuple[str, Path]:
    """Creates ``runs/<run id>/`` before a load test, with the settings its journal needs
    to be recovered (``requests.journal.json``). Returns the run id and the journal's path
    (pass it to ``load_test(journal=...)``). Fails here, before any request, when the results
    folder cannot be written."""
    run_id = run_id or new_run_id(label)
    run_dir = Path(results_dir) / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "label": label,
        "config": dict(config),
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(run_dir / JOURNAL_META, json.dumps(meta, indent=1, default=str) + "\n")
    return run_id, run_dir / JOURNAL


def load_journal(journal: str | os.PathLike[str]) -> tuple[pa.Table, dict[str, Any], list[int]]:
    """The finished requests a journal holds: ``(rows, summary, bad_lines)`` with the rows as
    an Arrow table (the columns of ``requests.parquet``), the summary the Rust core computes
    over them, and the line numbers skipped (a partial last line after a kill)."""
    batch, summary, bad = _core.read_journal(str(journal))
    return pa.Table.from_batches([pa.record_batch(batch)]), dict(summary), list(bad)


def journal_rows(run_dir: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The finished requests in ``run_dir``'s journal as a DataFrame, or None without one."""
    journal = Path(run_dir) / JOURNAL
    return load_journal(journal)[0].to_pandas() if journal.exists() else None


def journal_lock(journal: str | os.PathLike[str]) -> FileLock:
    """The lock a live run holds on its journal until its results are saved, so that
    :func:`recover_journals` in another process never takes a live journal for a dead one."""
    return FileLock(f"{journal}.lock")


def recover_journals(results_dir: str | os.PathLike[str] = "results") -> list[Path]:
    """Turns every load-test journal left under ``runs/*/`` by a killed run (a journal and no
    ``requests.parquet``) into that run's Parquet and CSV row, with ``stop_reason`` ``killed``.
    Returns the Parquet files written. A journal whose run is still going on is left alone:
    its process holds ``<journal>.lock`` (see :func:`journal_lock`) from before the journal
    exists until it has been saved and removed."""
    results_dir = Path(results_dir)
    written = []
    for journal in sorted(results_dir.glob(f"runs/*/{JOURNAL}")):
        run_dir = journal.parent
        lock = journal_lock(journal)
        try:
            lock.acquire(timeout=0)
        except Exception:
            continue  # a live run holds it
        try:
            if (run_dir / "requests.parquet").exists() or not journal.exists():
                continue
            meta_file = run_dir / JOURNAL_META
            meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
            label = meta.get("label", run_dir.name)
            config = meta.get("config", {})
            rows, summary, bad = load_journal(journal)
            killed = LoadTestResult(
                requests=rows.to_pandas(),
                summary=summary,
                config=config,
                label=label,
                stop_reason="killed",
                prompt_source="unknown",
                _arrow=rows,
            )
            parquet = killed.to_parquet(run_dir / "requests.parquet")
            row = killed.summary_row()
            row.update(
                run_id=run_dir.name,
                timestamp_utc=meta.get("started_utc"),
                requests_parquet=str(parquet.relative_to(results_dir)),
            )
            append_csv_row(results_dir / LOAD_TEST_CSV, row)
            journal.unlink(missing_ok=True)
            meta_file.unlink(missing_ok=True)
            written.append(parquet)
            warnings.warn(
                f"recovered {len(rows)} finished requests of the killed run {run_dir.name} from its journal"
                + (f" ({len(bad)} partial line(s) skipped)" if bad else ""),
                stacklevel=2,
            )
        finally:
            lock.release()
            Path(str(journal) + ".lock").unlink(missing_ok=True)
    return written


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
