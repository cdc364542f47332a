"""The comparison table, the plots and RESULTS.md, rebuilt from a run's Parquet files alone
(``optbench report``), so every number can be checked with pandas.

Speed: the load test's summary computed by the Rust core, stored in ``requests.parquet``'s
metadata (measured = not warm-up; latencies over successful requests; percentiles interpolate
linearly): P50/P99 TTFT, P50 tokens/s, P50/P99 E2E; request and output-token throughput over
the measured window (first scheduled start to last end). :func:`speed_metrics` recomputes the
same figures from the rows with pandas (a test holds the two equal).
Quality: from ``samples.parquet``: each category's mean score; overall = mean of the categories.
With ``--trials K``, each speed figure is the median over the trials. The recommendation says by
how much the recommended configuration's output-token throughput differs from the baseline's,
with a bootstrap interval, or that there is no real difference (:mod:`optbench.compare`).
Quality under load: from ``under_load.parquet`` (:mod:`optbench.under_load`): the share of identical
answers and the category whose score dropped most under load, with its interval.
The baseline is the configuration marked ``baseline = true`` (else the first); a configuration
is acceptable when its overall quality is at least 95% of the baseline's. The recommendation
is the acceptable configuration with the highest output-token throughput.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from optbench import evidence
from optbench.compare import recommendation_sentence, trial_files
from optbench.datasets import CATEGORIES
from optbench.exceptions import ConfigError
from optbench.options import EvaluationOptions, LoadTestOptions
from optbench.files import atomic_path, atomic_write_text
from optbench.quality import QUALITY_THRESHOLD, acceptable, category_scores, overall_score
from optbench.replicas import breakdown_markdown
from optbench.results import JOURNAL, load_journal
from optbench.under_load import UNDER_LOAD_PARQUET
from optbench.under_load import markdown_section as under_load_section
from optbench.under_load import read_summary as read_under_load
from optbench.under_load import report_columns as under_load_columns
from optbench.slo import summary_columns

RESULTS_CSV = "results.csv"


def _stat(summary: dict[str, Any], metric: str, name: str) -> float:
    """Statistic ``name`` of ``metric`` in a Rust summary (NaN where it has none)."""
    value = summary.get("metrics", {}).get(metric, {}).get(name)
    return float("nan") if value is None else float(value)


def speed_metrics_from_summary(summary: dict[str, Any]) -> dict[str, float]:
    """The load-test columns of the comparison table, from the Rust summary of the run."""

    def stat(metric: str, name: str) -> float:
        return _stat(summary, metric, name)

    window = summary["duration_s"] > 0
    return {
        "ttft_p50_ms": stat("ttft_ms", "p50"),
        "ttft_p99_ms": stat("ttft_ms", "p99"),
        "tokens_per_s_p50": stat("tokens_per_s", "p50"),
        "e2e_p50_ms": stat("e2e_ms", "p50"),
        "e2e_p99_ms": stat("e2e_ms", "p99"),
        "request_throughput": float(summary["request_throughput"]) if window else float("nan"),
        "output_token_throughput": float(summary["output_token_throughput"]) if window else float("nan"),
        "num_requests": int(summary["num_requests"]),
        "num_failed": int(summary["num_failed"]),
        **summary_columns(summary.get("slo")),  # attainment and goodput under the run's SLO
        **_reasoning_from_summary(summary),
        **chunk_columns(
            stat("tokens_per_chunk", "mean"),
            summary.get("num_chunks", 0),
            summary.get("num_multi_token_chunks", 0),
            stat("itl_ms", "p50"),
            stat("chunk_gap_ms", "p50"),
            summary.get("num_chunk_counts_from_usage"),
            summary.get("num_chunk_counts_one_per_chunk"),
        ),
    }


def chunk_columns(
    tokens_per_chunk_mean: float,
    num_chunks: int,
    num_multi: int,
    itl_p50_ms: float,
    chunk_gap_p50_ms: float,
    from_usage: int | None,
    one_per_chunk: int | None,
) -> dict[str, Any]:
    """The tokens-per-chunk columns of the comparison table. ``chunk_tokens_source`` says where
    the per-chunk counts of the successful requests came from: ``usage`` (every chunk's
    cumulative ``usage``: vLLM's ``continuous_usage_stats``), ``none`` (the server sent no
    per-chunk usage, llama.cpp's case: each chunk counted one token), ``partial`` (some requests
    each way); NaN without chunks. ``from_usage`` and ``one_per_chunk`` count the requests each
    way (None for runs recorded before they were: then ``usage`` where a chunk counted several
    tokens, else NaN)."""
    if from_usage is None or one_per_chunk is None:
        source: Any = "usage" if num_multi else float("nan")
    else:
        source = {(True, False): "usage", (False, True): "none", (True, True): "partial"}.get(
            (from_usage > 0, one_per_chunk > 0), float("nan")
        )
    return {
        "tokens_per_chunk_mean": tokens_per_chunk_mean,
        "multi_token_chunk_share": num_multi / num_chunks if num_chunks else float("nan"),
        "itl_p50_ms": itl_p50_ms,
        "chunk_gap_p50_ms": chunk_gap_p50_ms,
        "chunk_tokens_source": source,
    }


def _reasoning_from_summary(summary: dict[str, Any]) -> dict[str, float]:
    """The reasoning columns (none for a run without reasoning), from the Rust summary."""
    reasoning = summary.get("reasoning")
    if not reasoning:
        return {}
    window = summary["duration_s"] > 0
    return {
        "ttft_answer_p50_ms": _stat(summary, "ttft_answer_ms", "p50"),
        "ttft_answer_p99_ms": _stat(summary, "ttft_answer_ms", "p99"),
        "reasoning_tokens_p50": _stat(summary, "reasoning_tokens", "p50"),
        "answer_tokens_per_s_p50": _stat(summary, "answer_tokens_per_s", "p50"),
        "reasoning_token_throughput": float(reasoning["reasoning_token_throughput"]) if window else float("nan"),
        "answer_token_throughput": float(reasoning["answer_token_throughput"]) if window else float("nan"),
    }


def _reasoning_from_rows(ok: pd.DataFrame, window_s: float) -> dict[str, float]:
    """:func:`_reasoning_from_summary` recomputed from the successful measured rows: a request
    without reasoning counts 0 reasoning tokens, all its output as answer, and its tokens/s as
    its answer rate."""
    if "reasoning_tokens" not in ok or not ok["reasoning_tokens"].notna().any():
        return {}
    reasoned = ok["reasoning_tokens"].notna()
    reasoning_tokens = ok["reasoning_tokens"].fillna(0)
    answer_tokens = ok["answer_tokens"].where(reasoned, ok["output_tokens"])
    answer_rate = ok["answer_tokens_per_s"].where(reasoned, ok["tokens_per_s"])
    q = lambda col, p: float(col.quantile(p)) if col.notna().any() else float("nan")  # noqa: E731
    per_s = lambda n: float(n) / window_s if window_s > 0 else float("nan")  # noqa: E731
    return {
        "ttft_answer_p50_ms": q(ok["ttft_answer_ms"], 0.5),
        "ttft_answer_p99_ms": q(ok["ttft_answer_ms"], 0.99),
        "reasoning_tokens_p50": q(reasoning_tokens, 0.5),
        "answer_tokens_per_s_p50": q(answer_rate, 0.5),
        "reasoning_token_throughput": per_s(reasoning_tokens.sum()),
        "answer_token_throughput": per_s(answer_tokens.sum()),
    }


def run_speed_metrics(path: str | os.PathLike[str]) -> dict[str, float]:
    """The speed columns of one ``requests.parquet``: from the summary in its metadata, or
    recomputed from its rows when the file has none."""
    meta = pq.read_schema(path).metadata or {}
    if b"optbench.summary" in meta:
        return speed_metrics_from_summary(json.loads(meta[b"optbench.summary"]))
    return speed_metrics(pd.read_parquet(path))


def trials_speed_metrics(config_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The speed columns of a configuration run with ``--trials K``: each figure's median over
    the trials (``requests.parquet``, ``requests_trial2.parquet``...), the counts summed, and
    ``trials``. With one trial, :func:`run_speed_metrics` of ``requests.parquet``."""
    per_trial = pd.DataFrame([run_speed_metrics(f) for f in trial_files(config_dir)])
    out: dict[str, Any] = {}
    for col in per_trial:
        values = per_trial[col]
        if col in ("num_requests", "num_failed"):
            out[col] = int(values.sum())
        elif pd.api.types.is_bool_dtype(values):
            out[col] = bool(values.all())  # e.g. slo_met: met in every trial
        elif pd.api.types.is_numeric_dtype(values):
            out[col] = float(values.median())
        else:
            out[col] = values.iloc[0]
    out["trials"] = len(per_trial)
    return out


def speed_metrics(requests: pd.DataFrame) -> dict[str, float]:
    """The load-test columns of the comparison table, recomputed from per-request rows."""
    measured = requests[~requests["warmup"]]
    ok = measured[measured["success"]]
    end = measured["done_ns"].fillna(measured["last_token_ns"]).fillna(measured["sent_ns"])
    window_s = (end.max() - measured["scheduled_ns"].min()) / 1e9 if len(measured) else float("nan")
    q = lambda col, p: float(ok[col].quantile(p)) if ok[col].notna().any() else float("nan")  # noqa: E731
    return {
        "ttft_p50_ms": q("ttft_ms", 0.5),
        "ttft_p99_ms": q("ttft_ms", 0.99),
        "tokens_per_s_p50": q("tokens_per_s", 0.5),
        "e2e_p50_ms": q("e2e_ms", 0.5),
        "e2e_p99_ms": q("e2e_ms", 0.99),
        "request_throughput": len(ok) / window_s if window_s > 0 else float("nan"),
        "output_token_throughput": float(ok["output_tokens"].sum()) / window_s if window_s > 0 else float("nan"),
        "num_requests": int(len(measured)),
        "num_failed": int((~measured["success"]).sum()),
        **_reasoning_from_rows(ok, window_s),
        **_chunks_from_rows(ok),
    }


def _chunks_from_rows(ok: pd.DataFrame) -> dict[str, Any]:
    """:func:`chunk_columns` recomputed from the successful measured rows (a row without
    ``chunk_tokens``, written before they existed, counts one token per chunk)."""
    tokens = (
        [
            np.asarray(t, dtype=float) if len(t) else np.ones(n)
            for t, n in zip(ok["chunk_tokens"], ok["num_chunks"], strict=True)
        ]
        if "chunk_tokens" in ok
        else [np.ones(n) for n in ok["num_chunks"]]
    )
    per_chunk = np.concatenate(tokens) if tokens else np.array([])

    def p50(col: str) -> float:
        values = np.concatenate([np.asarray(v, dtype=float) for v in ok[col]]) if len(ok) else np.array([])
        return float(np.percentile(values, 50)) if len(values) else float("nan")

    sources = ok["chunk_tokens_source"] if "chunk_tokens_source" in ok else None
    return chunk_columns(
        float(per_chunk.mean()) if len(per_chunk) else float("nan"),
        len(per_chunk),
        int((per_chunk > 1).sum()),
        p50("itl_ms"),
        p50("chunk_gap_ms"),
        None if sources is None else int((sources == "usage").sum()),
        None if sources is None else int((sources == "chunks").sum()),
    )


def quality_metrics(samples: pd.DataFrame) -> dict[str, float]:
    """Each category's mean score and the overall (mean of the category means)."""
    scores = category_scores(samples)
    out = {f"quality_{cat}": score for cat, score in scores.items()}
    out["quality_overall"] = overall_score(scores)
    return out


#: What reading a result file can raise when the file is damaged (a kill mid-write by an older
#: optbench, a full disk, a copy cut short).
UNREADABLE = (OSError, ValueError, KeyError, TypeError, pa.ArrowException)


def _read_meta(meta_file: Path) -> dict[str, Any]:
    """A configuration's meta.json; an unreadable one becomes a failed configuration."""
    try:
        meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict) or "name" not in meta or "status" not in meta:
            raise ValueError("not an optbench meta.json (no name or status)")
    except UNREADABLE as e:
        meta = {
            "name": meta_file.parent.name,
            "status": "failed",
            "reason": f"{meta_file} is unreadable ({type(e).__name__}: {e})",
            "engine": "unknown",
            "model": "unknown",
        }
    meta["_dir"] = str(meta_file.parent)
    return meta


def _config_row(meta: dict[str, Any]) -> dict[str, Any]:
    """One configuration's row. A damaged file makes the configuration ``failed`` with the
    reason; a run killed mid-way (meta.json still says ``running``) is ``interrupted``, with
    the requests its journal holds. Updates ``meta``'s status and reason to match."""
    d = Path(meta["_dir"])
    row: dict[str, Any] = {"configuration": meta["name"]}
    problems = []
    if meta["status"] == "running":
        meta["status"] = "interrupted"
        problems.append(f"the run stopped during {meta.get('phase', 'an unknown phase')} (killed?)")
    requests, journal = d / "requests.parquet", d / JOURNAL
    try:
        if requests.exists():
            row.update(trials_speed_metrics(d))
        elif journal.exists():
            _, summary, bad = load_journal(journal)
            row.update(speed_metrics_from_summary(summary))
            problems.append(
                f"load test cut short: {summary['num_succeeded'] + summary['num_failed']} finished requests "
                f"recovered from its journal" + (f" ({len(bad)} partial line(s) skipped)" if bad else "")
            )
    except UNREADABLE as e:
        problems.append(
            f"{requests.name if requests.exists() else journal.name} is unreadable ({type(e).__name__}: {e})"
        )
    if (d / "samples.parquet").exists():
        try:
            row.update(quality_metrics(pd.read_parquet(d / "samples.parquet")))
        except UNREADABLE as e:
            problems.append(f"samples.parquet is unreadable ({type(e).__name__}: {e})")
    row.update(evidence.columns(meta))  # calibration, the server's view, GPU telemetry and cost
    if (d / UNDER_LOAD_PARQUET).exists():
        try:
            row.update(under_load_columns(read_under_load(d / UNDER_LOAD_PARQUET)))
        except UNREADABLE as e:
            problems.append(f"{UNDER_LOAD_PARQUET} is unreadable ({type(e).__name__}: {e})")
    if problems:
        if meta["status"] == "ok":
            meta["status"] = "failed"
        meta["reason"] = "; ".join([*([meta["reason"]] if meta.get("reason") else []), *problems])
    row["status"] = meta["status"]
    return row


def comparison_table(run_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """One row per configuration of the run, and the configurations' meta.json contents. A
    configuration whose files cannot be read is a ``failed`` row with the reason, never an
    error for the whole report."""
    run_dir = Path(run_dir)
    metas = [_read_meta(f) for f in sorted(run_dir.glob("*/meta.json"), key=lambda p: p.stat().st_mtime)]
    if not metas:
        raise ConfigError(f"{run_dir}: no configuration results (*/meta.json) found")
    rows = [_config_row(meta) for meta in metas]
    table = pd.DataFrame(rows)
    base_i = next((i for i, m in enumerate(metas) if m.get("baseline")), 0)
    base_q = table.loc[base_i, "quality_overall"] if "quality_overall" in table else float("nan")
    if "quality_overall" in table and pd.notna(base_q) and base_q > 0:
        table["quality_change_vs_baseline"] = (table["quality_overall"] - base_q) / base_q
        table["acceptable"] = acceptable(table["quality_overall"], base_q) & (table["status"] == "ok")
    else:
        table["quality_change_vs_baseline"] = np.nan
        table["acceptable"] = table["status"] == "ok"
    table["baseline"] = [i == base_i for i in range(len(table))]
    return table, metas


def _fmt(v: Any, digits: int = 1) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "–" if np.isnan(v) else f"{v:,.{digits}f}"
    return str(v)


def _options_text(meta: dict[str, Any]) -> str:
    """The options a configuration ran with that differ from the defaults, as text."""
    parts = []
    for phase, cls in (("load test", LoadTestOptions), ("evaluation", EvaluationOptions)):
        if isinstance(meta.get(cls.section), dict):
            try:
                changed = cls.from_dict(meta[cls.section]).changed()
            except ConfigError:  # written by another version of optbench
                changed = dict(meta[cls.section])
            values = {k: json.dumps(v) for k, v in changed.items()}
            shown = ", ".join(f"`{k}={v if len(v) <= 60 else v[:57] + '...'}`" for k, v in values.items())
            shown = shown or "defaults"
            parts.append(f"{phase} {shown}")
    return "; ".join(parts) or "not recorded"


def _slo_text(table: pd.DataFrame) -> str:
    """RESULTS.md's sentence on the SLO (see ``optbench.slo``)."""
    slos = ", ".join(f"`{s}`" for s in table["slo"].dropna().unique()) if "slo" in table else "–"
    return (
        f"SLO {slos}: a request is good when it succeeded and met every objective (ITL: its mean gap); "
        "SLO attainment = good / finished requests; goodput = good requests (and their output tokens) "
        "per second of the measured window."
    )


#: The Method's note for runs where a model streamed reasoning (reasoning_content).
REASONING_NOTE = (
    "Reasoning: TTFT is the first token of any kind (reasoning or answer); TTFT answer is the time to "
    "the first answer token (`delta.content`); reasoning and answer tokens come from the server's "
    "`usage.completion_tokens_details.reasoning_tokens` where it sent them, else per chunk; answer "
    "tokens/s is a request's answer tokens / (last token − first answer token); reasoning and answer "
    "tok/s are their tokens over the measured window. Quality scores the answer only."
)


def render_markdown(
    table: pd.DataFrame, metas: list[dict[str, Any]], decision_png: str | None = None
) -> tuple[str, dict[str, Any]]:
    """RESULTS.md's text and the findings it states; ``decision_png`` is embedded when given."""
    base = table[table["baseline"]].iloc[0]
    ok = (
        table[table["acceptable"] & table["output_token_throughput"].notna()]
        if "output_token_throughput" in table
        else table.iloc[0:0]
    )
    best = ok.sort_values("output_token_throughput", ascending=False).iloc[0] if len(ok) else None
    findings: dict[str, Any] = {
        "baseline": base["configuration"],
        "recommended": None if best is None else best["configuration"],
    }
    lines = ["# optbench results", ""]
    m0 = metas[0]
    lt = m0.get("load_test", {})
    lines += [
        "## Method",
        "",
        f"Each configuration's server was started by optbench, warmed up with {lt.get('warmup', 0)} request(s), then "
        f"load-tested with {lt.get('num_requests')} streaming requests at concurrency {lt.get('concurrency')} "
        f"({lt.get('input_tokens')}-token prompts, {lt.get('output_tokens')} output tokens, temperature 0"
        f"{', ignore_eos' if lt.get('ignore_eos') else ''}), then evaluated on the quality dataset "
        "(QA: SQuAD v2 (EM+F1)/2; reasoning: GSM8K accuracy; chat: embedding similarity to the chosen reply; "
        "code: HumanEval pass@1 in a sandbox), then stopped. TTFT, tokens/s (output tokens / (E2E − TTFT)) and E2E "
        "are per-request percentiles over successful requests; throughputs are over the measured window. A "
        f"configuration is acceptable when its overall quality is at least {100 * (1 - QUALITY_THRESHOLD):.0f}% of "
        f"the baseline's (`{base['configuration']}`). Profile: `{m0.get('profile')}`."
        + (
            f" Each load test ran {m0['trials']} times (trials); the table shows each speed figure's median over them."
            if m0.get("trials", 1) > 1
            else ""
        ),
        *(["", _slo_text(table)] if "attainment" in table else []),
        *(["", REASONING_NOTE] if "answer_token_throughput" in table else []),
        "",
        "Options that differ from the defaults (every option is in each configuration's `meta.json`):",
        "",
        *[f"- {m['name']}: {_options_text(m)}" for m in metas],
        "",
        "## Results",
        "",
    ]
    cols = [
        ("configuration", "configuration", 0),
        ("status", "status", 0),
        ("ttft_p50_ms", "P50 TTFT (ms)", 1),
        ("ttft_p99_ms", "P99 TTFT (ms)", 1),
        ("tokens_per_s_p50", "P50 tokens/s", 2),
        ("e2e_p50_ms", "P50 E2E (ms)", 1),
        ("e2e_p99_ms", "P99 E2E (ms)", 1),
        ("request_throughput", "req/s", 3),
        ("output_token_throughput", "output tok/s", 1),
        # Only where a configuration's model reasoned (see the Method's note).
        ("ttft_answer_p50_ms", "P50 TTFT answer (ms)", 1),
        ("ttft_answer_p99_ms", "P99 TTFT answer (ms)", 1),
        ("reasoning_tokens_p50", "P50 reasoning tokens", 0),
        ("answer_tokens_per_s_p50", "P50 answer tokens/s", 2),
        ("reasoning_token_throughput", "reasoning tok/s", 1),
        ("answer_token_throughput", "answer tok/s", 1),
        ("attainment", "SLO attainment", 3),
        ("goodput_rps", "goodput req/s", 3),
        ("goodput_tps", "goodput tok/s", 1),
    ]
    cols += [(f"quality_{c}", c, 3) for c in CATEGORIES if f"quality_{c}" in table]
    cols += [
        ("quality_overall", "overall quality", 3),
        ("quality_change_vs_baseline", "vs baseline", 3),
        ("acceptable", "acceptable", 0),
    ]
    cols = [c for c in cols if c[0] in table]
    lines.append("| " + " | ".join(h for _, h, _ in cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for _, r in table.iterrows():
        cells = []
        for key, _, d in cols:
            v = r[key]
            cells.append(f"{100 * v:+.1f}%" if key == "quality_change_vs_baseline" and pd.notna(v) else _fmt(v, d))
        lines.append("| " + " | ".join(cells) + " |")
    if decision_png:
        lines += [
            "",
            f"![Speed against quality: the baseline's {100 * QUALITY_THRESHOLD:.0f}% band is shaded, "
            f"acceptable configurations are filled]({decision_png})",
        ]
    lines += [*chunks_section(table)]
    lines += [*_replicas_section(metas)]
    lines += ["", *evidence.markdown(table, metas)]
    lines += [*under_load_section(metas), "## Findings", ""]
    if best is not None:
        speedup = (
            best["output_token_throughput"] / base["output_token_throughput"]
            if base.get("output_token_throughput")
            else float("nan")
        )
        findings["speedup_vs_baseline"] = float(speedup)
        lines.append(
            f"- Fastest acceptable configuration: **{best['configuration']}**, {_fmt(best['output_token_throughput'])} "
            f"output tokens/s, {speedup:.2f}x the baseline's {_fmt(base['output_token_throughput'])} "
            f"(P50 tokens/s {_fmt(best['tokens_per_s_p50'], 2)} vs {_fmt(base['tokens_per_s_p50'], 2)})."
        )
    else:
        lines.append("- No configuration finished with acceptable quality.")
    for _, r in table.iterrows():
        if (
            r["configuration"] == base["configuration"]
            or "quality_overall" not in table
            or pd.isna(r.get("quality_overall"))
        ):
            continue
        deltas = ", ".join(
            f"{c} {r[f'quality_{c}'] - base[f'quality_{c}']:+.3f}"
            for c in CATEGORIES
            if f"quality_{c}" in table and pd.notna(r[f"quality_{c}"]) and pd.notna(base[f"quality_{c}"])
        )
        lines.append(f"- {r['configuration']}: quality changes against the baseline: {deltas}.")
    for m in metas:
        if m["status"] != "ok":
            lines.append(f"- {m['name']} {m['status']}: {m.get('reason')}.")
    lines += ["", "## Caveats", ""]
    gpus = {g["name"] for m in metas if m.get("gpu") for g in m["gpu"].get("gpus", [])}
    lines.append(
        f"- Hardware: {', '.join(sorted(gpus)) if gpus else 'no GPU (CPU only)'}; host {platform.machine()} "
        f"with {os.cpu_count()} CPUs (where the report was built)."
    )
    for m in metas:
        lines.append(f"- {m['name']}: engine {m['engine']} {m.get('engine_version', 'unknown')}, model {m['model']}.")
    if m0.get("profile") not in ("reference", "full"):  # "full": the reference profile's former name
        lines.append(
            f"- The `{m0.get('profile')}` profile used a small slice of the dataset and a short load test: "
            "differences within a few percent are noise."
        )
    lines += ["", "## Recommendation", ""]
    if best is not None:
        lines.append(
            f"Deploy **{best['configuration']}**: it is the fastest configuration whose quality stays within "
            f"{100 * QUALITY_THRESHOLD:.0f}% of the baseline."
        )
        sentence = _speed_difference(best, base, ok, metas)
        if sentence:
            findings["speed_difference"] = sentence
            lines += ["", f"Output-token throughput: {sentence}."]
    else:
        lines.append("No recommendation: no configuration both finished and kept the baseline's quality.")
    return "\n".join(lines) + "\n", findings


def chunks_section(table: pd.DataFrame) -> list[str]:
    """RESULTS.md's "Tokens per chunk" table (configurations with a load test), with a warning
    line for each configuration whose chunks carried several tokens."""
    if "tokens_per_chunk_mean" not in table or not table["tokens_per_chunk_mean"].notna().any():
        return []
    lines = [
        "",
        "### Tokens per chunk",
        "",
        "ITL is per token: a chunk of k tokens that arrived g after the previous one counts k gaps of g / k; "
        "the chunk gap is the time between chunks, whatever they carried.",
        "",
        "| configuration | mean tokens/chunk | multi-token chunks | P50 ITL (ms) | P50 chunk gap (ms) | source |",
        "|---|---|---|---|---|---|",
    ]
    warnings = []
    for _, r in table[table["tokens_per_chunk_mean"].notna()].iterrows():
        share = r["multi_token_chunk_share"]
        lines.append(
            f"| {r['configuration']} | {_fmt(r['tokens_per_chunk_mean'], 2)} | "
            f"{'–' if pd.isna(share) else f'{100 * share:.0f}%'} | {_fmt(r['itl_p50_ms'], 2)} | "
            f"{_fmt(r['chunk_gap_p50_ms'], 2)} | {_fmt(r['chunk_tokens_source'])} |"
        )
        if pd.notna(share) and share > 0:
            warnings.append(
                f"- **Warning** ({r['configuration']}): {100 * share:.0f}% of chunks carried several tokens "
                f"(mean {r['tokens_per_chunk_mean']:.2f}): ITL here is per token: chunk gaps are "
                f"{r['tokens_per_chunk_mean']:.1f}× larger (P50 chunk gap {_fmt(r['chunk_gap_p50_ms'], 2)} ms, "
                f"P50 ITL {_fmt(r['itl_p50_ms'], 2)} ms)."
            )
    return [*lines, *([""] + warnings if warnings else [])]


def _replicas_section(metas: list[dict[str, Any]]) -> list[str]:
    """Per base URL, for each configuration whose load test spread its requests over several
    (the first trial's ``summary["by_base_url"]``, kept in its Parquet metadata)."""
    out: list[str] = []
    for m in metas:
        files = trial_files(m["_dir"]) if "_dir" in m else []
        if not files:
            continue
        try:
            summary = json.loads((pq.read_schema(files[0]).metadata or {}).get(b"optbench.summary", b"{}"))
        except UNREADABLE:
            continue  # the results table already says the file is unreadable
        entries = summary.get("by_base_url") if isinstance(summary, dict) else None
        if entries:
            out += ["", f"### {m['name']}: per base URL", "", *breakdown_markdown(entries)]
    return ["", "## Replicas", *out] if out else []


def _speed_difference(best: Any, base: Any, ok: pd.DataFrame, metas: list[dict[str, Any]]) -> str:
    """The recommended configuration's throughput against the baseline's with its bootstrap
    interval (when the baseline is the recommendation: the next-fastest acceptable one against it)."""
    dirs = {m["name"]: m["_dir"] for m in metas if "_dir" in m}  # metas read from a run's folders
    other = best["configuration"]
    if other == base["configuration"]:
        rest = ok[ok["configuration"] != other].sort_values("output_token_throughput", ascending=False)
        if not len(rest):
            return ""
        other = rest.iloc[0]["configuration"]
    if base["configuration"] not in dirs or other not in dirs:
        return ""
    return recommendation_sentence(dirs[base["configuration"]], dirs[other])


def build_report(
    run_dir: str | os.PathLike[str],
    *,
    results_dir: str | os.PathLike[str] = "results",
    report_path: str | os.PathLike[str] | None = "RESULTS.md",
) -> dict[str, Any]:
    """Writes ``<results_dir>/results.csv`` and RESULTS.md from ``run_dir``'s Parquet files."""
    from optbench.plots import plot_run  # matplotlib (and its Agg backend) only when plotting

    table, metas = comparison_table(run_dir)
    csv = Path(results_dir) / RESULTS_CSV
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    plots = plot_run(run_dir, table, Path(results_dir) / "plots")
    decision = None
    if report_path and "decision" in plots:
        decision = os.path.relpath(plots["decision"], Path(report_path).resolve().parent)
    text, findings = render_markdown(table, metas, decision)
    if report_path:
        atomic_write_text(report_path, text)
    return {"table": table, "findings": findings, "csv": csv, "report": report_path, "markdown": text, "plots": plots}


def latest_run(results_dir: str | os.PathLike[str] = "results") -> Path:
    """The newest run folder under ``results/runs`` that holds configuration results."""
    runs = sorted(p.parent.parent for p in Path(results_dir).glob("runs/*/*/meta.json"))
    if not runs:
        raise ConfigError(f"no runs with results under {Path(results_dir) / 'runs'}")
    return runs[-1]
