"""Trace replay: requests sent on a recorded trace's start times, with its input and output
lengths and its shared prefixes.

**The trace** is a JSONL file, one request per line (the Mooncake traces' keys, plus two):

- ``timestamp``: when the request arrives, in **milliseconds** (a number >= 0) from any origin;
  the first request is sent at once and each other one ``(timestamp - first) / trace_speedup``
  ms after it. Lines must be in time order (equal times are fine).
- ``input_length``: prompt tokens (an integer >= 1), in the server's tokens, measured as
  synthetic prompts are (its ``/tokenize``, else ``tokenizer``, else an estimate).
- ``output_length``: tokens to generate (an integer >= 1): the request's ``max_tokens``, sent
  with ``ignore_eos`` so that the server generates exactly that many.
- ``prefix_id`` (optional, a string or an integer) and ``prefix_length`` (tokens, required with
  it, below ``input_length``): requests with the same ``prefix_id`` start with the same
  ``prefix_length`` tokens of text, so a prefix cache can reuse them; every other part of every
  prompt is its own.
- ``hash_ids`` (Mooncake's block hashes) is accepted and not used: give ``prefix_id`` for shared
  prefixes. Any other key is an error.

Every bad line is a :class:`~optbench.exceptions.DatasetError` naming the file and the line,
before anything is sent.

**Lateness.** Each request's lateness is when it was sent minus its deadline on the trace
(``sent_ns - scheduled_ns``, both from the run's clock). ``summary["trace"]`` gives its P50, P99
and max, with the trace's span as replayed; with a ``concurrency`` cap, time spent waiting for a
slot counts as lateness too (None: no cap).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from optbench import _core
from optbench.exceptions import DatasetError
from optbench.jsonl import read_jsonl

#: The keys a trace line may have.
KEYS = ("timestamp", "input_length", "output_length", "prefix_id", "prefix_length", "hash_ids")


@dataclass(frozen=True)
class TraceRecord:
    """One request of a trace."""

    timestamp_ms: float
    input_length: int
    output_length: int
    prefix_id: str | int | None = None
    prefix_length: int | None = None


def _count(value: Any, key: str, where: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DatasetError(f"{where}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def parse_record(item: Any, where: str) -> TraceRecord:
    """One trace line's value as a record; a :class:`DatasetError` naming ``where`` if bad."""
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - set(KEYS))
    if unknown:
        raise DatasetError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(KEYS)})")
    missing = [k for k in ("timestamp", "input_length", "output_length") if k not in item]
    if missing:
        raise DatasetError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
    ts = item["timestamp"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
        raise DatasetError(f"{where}: 'timestamp' must be a number of milliseconds >= 0, got {ts!r}")
    input_length = _count(item["input_length"], "input_length", where)
    output_length = _count(item["output_length"], "output_length", where)
    prefix_id = item.get("prefix_id")
    prefix_length = item.get("prefix_length")
    if prefix_id is not None:
        if isinstance(prefix_id, bool) or not isinstance(prefix_id, (str, int)):
            raise DatasetError(f"{where}: 'prefix_id' must be a string or an integer, got {prefix_id!r}")
        if prefix_length is None:
            raise DatasetError(f"{where}: 'prefix_id' needs 'prefix_length' (its tokens)")
        prefix_length = _count(prefix_length, "prefix_length", where)
        if prefix_length >= input_length:
            raise DatasetError(
                f"{where}: 'prefix_length' ({prefix_length}) must be below 'input_length' ({input_length})"
            )
    elif prefix_length is not None:
        raise DatasetError(f"{where}: 'prefix_length' needs 'prefix_id'")
    return TraceRecord(float(ts), input_length, output_length, prefix_id, prefix_length)


def read_trace(path: str | os.PathLike[str]) -> list[TraceRecord]:
    """The records of a trace file, checked line by line (see the module docs)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: trace file not found")
    records: list[TraceRecord] = []
    prefix_lengths: dict[str | int, tuple[int, int]] = {}
    for lineno, value in read_jsonl(path):
        where = f"{path} line {lineno}"
        rec = parse_record(value, where)
        if records and rec.timestamp_ms < records[-1].timestamp_ms:
            raise DatasetError(
                f"{where}: 'timestamp' {rec.timestamp_ms:g} ms is before the previous line's "
                f"{records[-1].timestamp_ms:g} ms (lines must be in time order)"
            )
        if rec.prefix_id is not None and rec.prefix_length is not None:
            first = prefix_lengths.setdefault(rec.prefix_id, (rec.prefix_length, lineno))
            if first[0] != rec.prefix_length:
                raise DatasetError(
                    f"{where}: prefix_id {rec.prefix_id!r} has prefix_length {rec.prefix_length}, "
                    f"but {first[0]} on line {first[1]}"
                )
        records.append(rec)
    if not records:
        raise DatasetError(f"{path}: the trace has no requests")
    return records


def offsets_ns(records: list[TraceRecord], speedup: float) -> list[int]:
    """Each record's start after the first, in nanoseconds, the trace sped up ``speedup`` times."""
    t0 = records[0].timestamp_ms
    return [round((r.timestamp_ms - t0) * 1e6 / speedup) for r in records]


@dataclass
class TraceWorkload:
    """A trace ready to send: one request per record, and its start offsets."""

    records: list[TraceRecord]
    requests: list[dict[str, Any]]
    offsets_ns: list[int]
    #: How lengths were measured: ``server``, ``tokenizer`` or ``estimate``.
    source: str
    warnings: list[str]


def build(
    base_url: str,
    model: str,
    path: str,
    speedup: float,
    *,
    seed: int = 0,
    tokenizer: str | None = None,
    api_key: str | None = None,
    timeout_s: float | None = None,
) -> TraceWorkload:
    """Reads the trace at ``path`` and builds its prompts in the server's tokens."""
    records = read_trace(path)
    prefixes: dict[str | int, int] = {}
    prefix_tokens: list[int] = []
    specs: list[tuple[int | None, int]] = []
    for r in records:
        k = None
        if r.prefix_id is not None and r.prefix_length is not None:
            if r.prefix_id not in prefixes:
                prefixes[r.prefix_id] = len(prefix_tokens)
                prefix_tokens.append(r.prefix_length)
            k = prefixes[r.prefix_id]
        specs.append((k, r.input_length))
    texts, _, source, warning = _core.make_trace_prompts(
        base_url, model, prefix_tokens, specs, seed=seed, tokenizer=tokenizer, api_key=api_key, timeout_s=timeout_s
    )
    requests = [
        {"prompt": text, "body": {"max_tokens": r.output_length, "ignore_eos": True}} for text, r in zip(texts, records)
    ]
    return TraceWorkload(records, requests, offsets_ns(records, speedup), source, [warning] if warning else [])


def add_columns(requests: pd.DataFrame, workload: TraceWorkload) -> pd.DataFrame:
    """``requests`` with the trace's ``trace_input_length``, ``trace_output_length``,
    ``trace_prefix_id`` and ``lateness_ms`` (sent minus the trace's deadline)."""
    ids = requests["request_id"].astype(int).to_numpy()
    out = requests.copy()
    out["trace_input_length"] = [workload.records[i].input_length for i in ids]
    out["trace_output_length"] = [workload.records[i].output_length for i in ids]
    out["trace_prefix_id"] = [
        None if workload.records[i].prefix_id is None else str(workload.records[i].prefix_id) for i in ids
    ]
    out["lateness_ms"] = (out["sent_ns"] - out["scheduled_ns"]) / 1e6
    return out


def report(requests: pd.DataFrame, workload: TraceWorkload, speedup: float) -> dict[str, Any]:
    """``summary["trace"]``: the requests, the trace's span as replayed and the lateness
    (P50, P99, max in ms) of the requests that were sent."""
    lateness = requests["lateness_ms"].dropna().to_numpy(dtype=float)
    stats: Mapping[str, float | None] = (
        {
            "p50": float(np.percentile(lateness, 50)),
            "p99": float(np.percentile(lateness, 99)),
            "max": float(lateness.max()),
        }
        if lateness.size
        else {"p50": None, "p99": None, "max": None}
    )
    return {
        "records": len(workload.records),
        "speedup": speedup,
        "span_s": workload.offsets_ns[-1] / 1e9,
        "sent": int(lateness.size),
        "lateness_ms": dict(stats),
    }


def summary_line(rep: Mapping[str, Any]) -> str:
    """The report in one line, for terminals and logs."""
    late = rep["lateness_ms"]
    shown = (
        "n/a"
        if late["p50"] is None
        else f"P50 {late['p50']:.3f} ms, P99 {late['p99']:.3f} ms, max {late['max']:.3f} ms"
    )
    return (
        f"trace: {rep['records']} requests over {rep['span_s']:.3f} s (speed-up {rep['speedup']:g}), lateness {shown}"
    )


__all__ = ["KEYS", "TraceRecord", "TraceWorkload", "add_columns", "build", "offsets_ns", "parse_record", "read_trace"]
