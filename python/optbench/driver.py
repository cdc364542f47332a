"""Drives the Rust core's runs from Python, for load tests (``optbench.loadtest``) and
evaluations (``optbench.evaluate``) alike: the sync and async loops that wait for a run while
showing its progress, API-key resolution, records to pandas, and Parquet files carrying the
run's settings and summary.

Python never sits in the per-token path: a loop polls the run's counters every
``interval_s`` (a few times a second) and otherwise waits without holding the GIL.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from optbench import _core
from optbench.exceptions import ConfigError
from optbench.files import atomic_path

ProgressCallback = Callable[[Mapping[str, Any]], None]
#: ``True`` (a tqdm bar in Jupyter, a live line on a terminal, else nothing), ``"tqdm"`` (a tqdm
#: bar anywhere), ``False`` (nothing), or a callback receiving each progress snapshot.
Progress = Union[bool, Literal["tqdm"], ProgressCallback]


class ProgressLine:
    """A one-line live display on stderr: done, failed, rolling tokens/s."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.history: list[tuple[float, int]] = []

    def __call__(self, p: Mapping[str, Any]) -> None:
        now = p["elapsed_s"]
        self.history.append((now, p["chunks"]))
        # Rolling rate over the last ~2 s of snapshots.
        while len(self.history) > 2 and now - self.history[0][0] > 2.0:
            self.history.pop(0)
        t0, c0 = self.history[0]
        rate = (p["chunks"] - c0) / (now - t0) if now > t0 else 0.0
        done = p["succeeded"] + p["failed"]
        self.stream.write(
            f"\r{self.label}: {done}/{p['total']} done, {p['failed']} failed, "
            f"{p['sent'] - done} in flight, {rate:,.0f} tok/s, {now:.1f} s   "
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class TqdmProgress:
    """A tqdm bar (tqdm.auto: a widget in Jupyter) fed from progress snapshots, never per token."""

    def __init__(self, label: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=None, desc=label, unit="req")
        self.done = 0

    def __call__(self, p: Mapping[str, Any]) -> None:
        if self.bar.total is None:
            self.bar.total = p["total"]
        done = p["succeeded"] + p["failed"]
        self.bar.update(done - self.done)
        self.done = done
        self.bar.set_postfix(failed=p["failed"], tokens=p["chunks"], refresh=False)

    def close(self) -> None:
        self.bar.close()


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_display(progress: Progress, label: str) -> tuple[ProgressCallback | None, Any]:
    """The callback for ``progress`` and what to close afterwards: ``True``: a tqdm bar in
    Jupyter, a live line on a terminal, nothing otherwise; ``"tqdm"``: always a tqdm bar;
    ``False``: nothing; a callable: called with each progress snapshot."""
    if callable(progress):
        return progress, None
    if progress == "tqdm" or (progress is True and in_notebook()):
        bar = TqdmProgress(label)
        return bar, bar
    if progress and sys.stderr.isatty():
        line = ProgressLine(label)
        return line, line
    return None, None


def drive(run: _core.LoadTest, progress: Progress, label: str, interval_s: float, what: str) -> None:
    """Waits for a run while reporting progress every ``interval_s``. Ctrl-C stops sending,
    lets requests in flight end as ``cancelled`` rows and returns normally (the finished rows
    are kept); any other exception cancels the run and propagates."""
    callback, closer = progress_display(progress, label)
    try:
        if callback:
            callback(run.progress())  # the start: a window measured between snapshots covers the run
        while not run.wait(interval_s):
            if callback:
                callback(run.progress())
        if callback:
            callback(run.progress())  # the final counts
    except KeyboardInterrupt:
        run.cancel()
        run.wait()
        warnings.warn(f"{what} interrupted: returning the requests that finished", stacklevel=3)
    except BaseException:
        run.cancel()
        run.wait()
        raise
    finally:
        if closer:
            closer.close()


async def adrive(run: _core.LoadTest, progress: Progress, label: str, interval_s: float) -> None:
    """:func:`drive` for asyncio: the event loop stays free. Cancelling the awaiting task
    cancels the run; a KeyboardInterrupt stops it and returns normally (rows kept)."""
    callback, closer = progress_display(progress, label)
    done = asyncio.ensure_future(run.wait_async())
    try:
        if callback:
            callback(run.progress())  # the start, as in drive()
        while not run.done():
            await asyncio.wait([done], timeout=interval_s)
            if callback:
                callback(run.progress())
    except asyncio.CancelledError:
        run.cancel()
        # The requests in flight end as `cancelled` within moments: wait for that, so the run
        # is over (and its future settled on this loop) when the cancellation propagates.
        await asyncio.wait([done], timeout=10)
        raise
    except KeyboardInterrupt:
        run.cancel()
        await asyncio.to_thread(run.wait)
    finally:
        if closer:
            closer.close()


def resolve_api_key(api_key_env: str | None) -> str | None:
    """The bearer key held by the environment variable ``api_key_env`` (None: no key)."""
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise ConfigError(f"api_key_env={api_key_env!r} names an environment variable that is not set")
    return key


def start_run(base_url: str | list[str], model: str, *, api_key: str | None, **arguments: Any) -> _core.LoadTest:
    """Starts a run of the Rust core (``_core.LoadTest``: the inputs, ``prompts``, ``messages``
    or ``requests``, and its settings); the one place Python starts one. It runs on the core's
    runtime until it ends; wait for it with :func:`drive` or :func:`adrive`."""
    return _core.LoadTest(base_url, model, api_key=api_key, **arguments)


def records_table(run: _core.LoadTest) -> pa.Table:
    """A finished run's per-request records as an Arrow table (``.to_pandas()`` for pandas)."""
    return pa.Table.from_batches([pa.record_batch(run.records())])


def write_parquet(
    rows: pa.Table | pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    label: str,
) -> Path:
    """Writes ``rows`` to ``path`` (folders created) with the run's ``config`` (its target and
    options), ``summary`` and ``label`` as JSON in the Parquet metadata (``optbench.config``,
    ``optbench.summary``, ``optbench.label``). The file appears whole or not at all (written
    to a temporary name, then renamed)."""
    path = Path(path)
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(rows, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"optbench.config"] = json.dumps(config, default=str).encode()
    meta[b"optbench.summary"] = json.dumps(summary).encode()
    meta[b"optbench.label"] = label.encode()
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    return path


__all__ = [
    "Progress",
    "ProgressCallback",
    "adrive",
    "drive",
    "progress_display",
    "records_table",
    "resolve_api_key",
    "start_run",
    "write_parquet",
]
