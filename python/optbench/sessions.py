"""Multi-turn sessions: conversations whose every turn carries the history so far.

With ``sessions`` or ``conversations`` (``LoadTestOptions``), a load test sends conversations
instead of independent prompts, on the chat endpoint: each session sends its user turns one
after the other, turn ``k`` with the ``2k`` earlier messages (the previous user turns and the
answers the server actually gave, as ``assistant`` messages) plus its own user turn. After a
turn's answer the session waits ``think_time_s`` before its next turn. ``concurrency`` counts
sessions: a closed loop of sessions, the next one starting when one ends. A failed turn ends its
session (its later turns are not sent: they would lack the answer). With several base URLs a
session's turns all go where its first turn went.

The turns are synthetic (``sessions`` × ``turns`` user turns of ``input_tokens`` tokens each,
all distinct) or the caller's ``conversations``: a list of conversations, each a list of user
turns (strings), or a JSONL file with one conversation per line, e.g.::

    ["Plan a 3-day trip to Lisbon.", "Make day 2 cheaper.", "Now write it as a packing list."]
    ["What is a B-tree?", "How does it differ from an LSM tree?"]

Each request row gets ``session_id`` and ``turn`` (from 0); the summary gets ``by_turn`` (per
turn index: requests, TTFT statistics, and the mean prompt and cached tokens where the server
reports them: TTFT falls with the turn on servers that reuse the history from their prefix
cache) and ``sessions`` (how many completed, and the session duration: from its first turn's
send to its last turn's end, think time included).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from optbench.exceptions import ConfigError, DatasetError
from optbench.jsonl import read_jsonl
from optbench.replicas import value_stats


def _turns(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: a conversation must be a non-empty list of user turns (strings)")
    for i, turn in enumerate(value):
        if not isinstance(turn, str) or not turn.strip():
            raise DatasetError(f"{where}: turn {i} must be a non-empty string, got {turn!r:.60}")
    return list(value)


def load_conversations(
    conversations: str | os.PathLike[str] | Sequence[Any], limit: int | None = None
) -> list[list[str]]:
    """The caller's conversations (a list, or a JSONL path with one JSON list of user turns per
    line), the first ``limit`` of them; errors name the file and line (or the index)."""
    if isinstance(conversations, (str, os.PathLike)):
        path = Path(conversations)
        if not path.is_file():
            raise DatasetError(f"{path}: conversations file not found (a JSONL file, one list of user turns a line)")
        out = [_turns(value, f"{path} line {lineno}") for lineno, value in read_jsonl(path)]
        origin = str(path)
    elif isinstance(conversations, Sequence):
        out = [_turns(value, f"conversations[{i}]") for i, value in enumerate(conversations)]
        origin = "conversations"
    else:
        raise ConfigError(f"conversations must be a list or a JSONL file path, got {type(conversations).__name__}")
    if not out:
        raise DatasetError(f"{origin}: no conversations found")
    if limit is not None:
        if limit > len(out):
            raise ConfigError(f"sessions={limit} but {origin} holds only {len(out)} conversation(s)")
        out = out[:limit]
    return out


def _mean(series: pd.Series) -> float | None:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def turn_summary(requests: pd.DataFrame) -> list[dict[str, Any]]:
    """Per turn index: ``turn``, ``num_requests``, ``num_succeeded``, ``ttft_ms`` statistics
    (``count``, ``mean``, ``p50``, ``p90``, ``p99`` over successful turns), and the means of
    ``prompt_tokens`` and, where the server reports its timings (llama.cpp),
    ``server_cached_tokens`` (prompt tokens reused from its cache) and ``server_prompt_tokens``
    (prompt tokens it evaluated)."""
    rows = requests[requests["turn"].notna() & ~requests["warmup"].astype(bool)]
    out = []
    for turn, group in rows.groupby(rows["turn"].astype(int)):
        ok = group[group["success"].astype(bool)]
        entry: dict[str, Any] = {
            "turn": int(turn),
            "num_requests": int(len(group)),
            "num_succeeded": int(len(ok)),
            "ttft_ms": value_stats(ok["ttft_ms"]),
            "prompt_tokens_mean": _mean(ok["prompt_tokens"]),
        }
        for column in ("server_cached_tokens", "server_prompt_tokens"):
            if column in ok:
                entry[f"{column}_mean"] = _mean(ok[column])
        out.append(entry)
    return out


def session_summary(requests: pd.DataFrame, planned_turns: Sequence[int]) -> dict[str, Any]:
    """``num_sessions`` (planned), ``num_completed`` (every turn sent and answered),
    ``num_cut_short`` (a failed turn or the run's end stopped them) and ``duration_s``
    statistics of the sessions that completed (first turn sent to last turn's end, think time
    included)."""
    rows = requests[requests["session_id"].notna()]
    durations = []
    completed = 0
    for session, group in rows.groupby(rows["session_id"].astype(int)):
        if len(group) == planned_turns[session] and group["success"].astype(bool).all():
            completed += 1
            durations.append((group["done_ns"].max() - group["sent_ns"].min()) / 1e9)
    return {
        "num_sessions": len(planned_turns),
        "num_completed": completed,
        "num_cut_short": len(planned_turns) - completed,
        "duration_s": value_stats(durations),
    }


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The per-turn and per-session figures as plain-text lines (none outside sessions)."""
    s = summary.get("sessions")
    if not s:
        return []
    d = s["duration_s"]
    lines = [
        f"sessions: {s['num_completed']}/{s['num_sessions']} completed | duration p50 {_num(d['p50'], 2)} s,"
        f" p99 {_num(d['p99'], 2)} s"
    ]
    for t in summary.get("by_turn", []):
        cached = t.get("server_cached_tokens_mean")
        lines.append(
            f"turn {t['turn']}: {t['num_succeeded']}/{t['num_requests']} succeeded | TTFT p50 {_num(t['ttft_ms']['p50'])}"
            f" ms, mean {_num(t['ttft_ms']['mean'])} ms | prompt tokens mean {_num(t['prompt_tokens_mean'])}"
            + (f" | cached tokens mean {_num(cached)}" if cached is not None else "")
        )
    return lines


__all__ = ["load_conversations", "session_summary", "summary_lines", "turn_summary"]
