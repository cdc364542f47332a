"""The load test: ``optbench.load_test`` and ``await optbench.aload_test``.

The requests run in the Rust core on its own runtime; Python only prepares prompts, polls
progress a few times a second (never per token) and turns the Arrow records into pandas.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa

from optbench import _core, evidence, prefix_cache, replicas, sessions
from optbench import trace as _trace
from optbench.files import atomic_write_text
from optbench.driver import Progress, adrive, drive, records_table, resolve_api_key, start_run, write_parquet
from optbench.options import LoadTestOptions
from optbench.prompts import PromptSet, load_user_prompts, synthetic_prompts
from optbench.slo import evaluate as evaluate_slo
from optbench.slo import summary_columns
from optbench.server_metrics import MetricsScraper, server_timing_columns, server_timing_summary, summarize
from optbench.urls import without_credentials
from optbench.servers.probe import check_model

#: The metrics of ``summary["metrics"]`` (the Rust core's names, in its order).
METRICS: tuple[str, ...] = tuple(_core.METRIC_NAMES)
#: The metrics a run with reasoning adds to ``summary["metrics"]`` (absent in runs without).
REASONING_METRICS: tuple[str, ...] = tuple(_core.REASONING_METRIC_NAMES)
#: The statistics of each metric besides its ``count``.
STATS: tuple[str, ...] = tuple(s for s in _core.STATISTIC_NAMES if s != "count")


@dataclass
class LoadTestResult:
    """What a load test measured.

    Attributes:
        requests: one row per request (warm-up rows included with ``warmup=True``): every field
            of the per-request record plus the derived ``ttft_ms``, ``e2e_ms``, ``tokens_per_s``,
            ``tpot_ms``, ``queue_delay_ms`` and the per-request ``itl_ms`` list; where the server
            reports its own timings (llama.cpp), ``server_prompt_ms``, ``server_decode_ms``,
            ``server_prompt_tokens``, ``server_cached_tokens``, ``server_output_tokens`` and
            ``ttft_minus_server_prompt_ms`` (see :mod:`optbench.server_metrics`). ``output_text``
            is the answer; a reasoning model's thinking is in ``reasoning_text``, timed and counted
            by ``ttft_reasoning_ms``, ``ttft_answer_ms``, ``reasoning_tokens``,
            ``answer_tokens``, ``reasoning_token_source``, ``reasoning_tokens_per_s`` and
            ``answer_tokens_per_s`` (null for requests without reasoning; ``ttft_answer_ms`` is
            filled for every request with an answer); which base URL served it:
            ``base_url_index`` and ``base_url`` (without credentials); in multi-turn sessions,
            ``session_id`` and ``turn`` (:mod:`optbench.sessions`); with
            ``shared_prefixes``, ``prefix_id``, ``suffix_id``, ``intended_cached_tokens`` and
            ``intended_prompt_tokens`` (:mod:`optbench.prefix_cache`); with ``trace``,
            ``trace_input_length``, ``trace_output_length``, ``trace_prefix_id`` and
            ``lateness_ms`` (:mod:`optbench.trace`).
        summary: aggregates over measured requests: counts, ``failures_by_kind``,
            ``duration_s`` (the measured window: ``measured_start_ns`` to ``measured_end_ns``,
            the first measured request's scheduled start to the last one's end, on the
            records' clock), ``request_throughput``, ``output_token_throughput`` and
            ``metrics[name][stat]`` for each metric in :data:`METRICS` and stat in ``count`` +
            :data:`STATS`; with an ``slo`` option, ``slo``: attainment (with its Wilson
            interval) and goodput (``optbench.slo.evaluate``); ``server_timings`` where the
            server reported its own (the P50 / P99 / mean of its prompt time and of TTFT minus
            it); ``reasoning`` (None for runs without reasoning): the reasoning and answer token
            totals and throughputs, with :data:`REASONING_METRICS` in ``metrics``; with several
            base URLs, ``by_base_url``: one entry per URL (requests, failures, TTFT and ITL
            statistics, throughputs; :func:`optbench.replicas.breakdown`); in multi-turn
            sessions, ``by_turn`` and ``sessions`` (:mod:`optbench.sessions`); with
            ``shared_prefixes``, ``prefix_cache``: the intended and the achieved prefix-cache
            hit rate and where the latter came from (:func:`optbench.prefix_cache.report`; the
            ``/metrics`` source is read with one base URL only); with ``trace``, ``trace``: its
            span as replayed and the lateness of the sends (:func:`optbench.trace.report`).
            ``optbench run`` adds
            ``calibration``, ``server_metrics`` and ``gpu_telemetry`` (:mod:`optbench.evidence`).
        config: the parameters of the run: ``base_url`` (a list with several), ``model`` and
            every option, as JSON values (what the Parquet metadata records).
        label: a name for the run in tables.
        stop_reason: ``completed``, ``cancelled`` (Ctrl-C) or ``time_limit``.
        prompt_source: how prompt lengths were measured (``server``, ``tokenizer``,
            ``estimate``) or ``user`` for the caller's prompts.
        warnings: anything the user should know about the numbers.
        options: the options it ran with (``LoadTestOptions.from_dict(config)`` rebuilds them).
        clock_origin_monotonic: the instant the records' ``*_ns`` times count from, on
            ``time.monotonic()``'s clock (None for a run recovered from its journal).
    """

    requests: pd.DataFrame
    summary: dict[str, Any]
    config: dict[str, Any]
    label: str
    stop_reason: str
    prompt_source: str
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    _arrow: pa.Table | None = field(default=None, repr=False)
    options: LoadTestOptions = field(default_factory=LoadTestOptions)
    clock_origin_monotonic: float | None = None

    @property
    def measured_window_monotonic(self) -> tuple[float, float] | None:
        """The measured window (warm-up excluded) on ``time.monotonic()``'s clock, for GPU
        telemetry and ``/metrics`` reads; None without measured requests or a clock origin."""
        start, end = self.summary.get("measured_start_ns"), self.summary.get("measured_end_ns")
        if self.clock_origin_monotonic is None or start is None or end is None:
            return None
        return self.clock_origin_monotonic + start / 1e9, self.clock_origin_monotonic + end / 1e9

    @property
    def interrupted(self) -> bool:
        """True when the run was cut short by Ctrl-C or its time limit."""
        return self.stop_reason != "completed"

    def metric(self, name: str, stat: str = "p50") -> float | None:
        """``summary["metrics"][name][stat]``, or None when no request measured it."""
        return self.summary["metrics"].get(name, {}).get(stat)

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Writes the per-request rows to ``path``, with the config and summary as metadata."""
        rows = self._arrow if self._arrow is not None else self.requests
        return write_parquet(rows, path, config=self.config, summary=self.summary, label=self.label)

    def summary_row(self) -> dict[str, Any]:
        """The run as one flat table row: label, P50 TTFT, P50 tokens/s and P50 E2E first (the
        headline figures), then every other statistic, the counts and the throughputs."""
        row: dict[str, Any] = {"label": self.label}
        for m in ("ttft_ms", "tokens_per_s", "e2e_ms"):
            row[column_name(m, "p50")] = self.metric(m)
        reasoning = self.summary.get("reasoning")
        for m in METRICS + (REASONING_METRICS if reasoning else ()):
            for st in STATS:
                row.setdefault(column_name(m, st), self.metric(m, st))
        s = self.summary
        row.update(
            num_requests=s["num_requests"],
            num_succeeded=s["num_succeeded"],
            num_failed=s["num_failed"],
            failures_by_kind=json.dumps(s["failures_by_kind"], sort_keys=True),
            request_throughput=s["request_throughput"],
            output_token_throughput=s["output_token_throughput"],
            total_output_tokens=s["total_output_tokens"],
            duration_s=s["duration_s"],
            stop_reason=self.stop_reason,
            prompt_source=self.prompt_source,
        )
        if reasoning:
            row.update(
                reasoning_token_throughput=reasoning["reasoning_token_throughput"],
                answer_token_throughput=reasoning["answer_token_throughput"],
                total_reasoning_tokens=reasoning["total_reasoning_tokens"],
                total_answer_tokens=reasoning["total_answer_tokens"],
            )
        row.update(summary_columns(s.get("slo")))
        if s.get("prefix_cache"):
            pc = s["prefix_cache"]
            row.update(
                prefix_cache_intended=pc["intended_hit_rate"],
                prefix_cache_achieved=pc["achieved_hit_rate"],
                prefix_cache_source=pc["source"],
            )
        if s.get("trace"):
            late = s["trace"]["lateness_ms"]
            row.update(
                trace_lateness_p50_ms=late["p50"], trace_lateness_p99_ms=late["p99"], trace_lateness_max_ms=late["max"]
            )
        for k in (
            "base_url",
            "model",
            "endpoint",
            "concurrency",
            "request_rate",
            "arrival",
            "input_tokens",
            "output_tokens",
            "ignore_eos",
            "seed",
            "shared_prefixes",
            "trace",
            "trace_speedup",
        ):
            row[k] = self.config.get(k)
        if isinstance(row["base_url"], list):  # several replicas: one CSV cell
            row["base_url"] = " ".join(row["base_url"])
        return row

    def summary_table(self) -> str:
        """A plain-text table of the aggregates, for terminals and logs."""
        s = self.summary
        lines = [
            f"{self.label}: {s['num_succeeded']}/{s['num_requests']} succeeded"
            + (f", {s['num_failed']} failed {s['failures_by_kind']}" if s["num_failed"] else "")
            + (f" [{self.stop_reason}]" if self.interrupted else ""),
        ]
        reasoning = s.get("reasoning")
        names = [m for m in METRICS + (REASONING_METRICS if reasoning else ()) if s["metrics"].get(m)]
        width = max([16, *map(len, names)])
        lines.append(f"{'metric':<{width}}" + "".join(f"{st:>10}" for st in STATS))
        for m in names:
            stats = s["metrics"][m]
            lines.append(f"{m:<{width}}" + "".join(f"{stats[st]:>10.2f}" for st in STATS))
        lines.append(
            f"window {s['duration_s']:.2f} s | {s['request_throughput']:.3f} req/s | "
            f"{s['output_token_throughput']:.1f} output tok/s | {s['total_output_tokens']} output tokens"
        )
        if reasoning:
            from_chunks = reasoning["num_reasoning_counts_from_chunks"]
            lines.append(
                f"reasoning: {reasoning['num_with_reasoning']}/{s['num_succeeded']} requests reasoned | "
                f"{reasoning['reasoning_token_throughput']:.1f} reasoning tok/s, "
                f"{reasoning['answer_token_throughput']:.1f} answer tok/s | "
                f"{reasoning['total_reasoning_tokens']} reasoning, {reasoning['total_answer_tokens']} answer tokens "
                + (f"({from_chunks} reasoning counts per chunk)" if from_chunks else "(reasoning counts from usage)")
            )
        if s.get("slo"):
            g = s["slo"]
            lines.append(
                f"SLO {', '.join(g['objectives'])}: attainment {g['attainment']:.3f} "
                f"[{g['attainment_low']:.3f}, {g['attainment_high']:.3f}] ({g['good']}/{g['n']} good) | "
                f"goodput {g['goodput_rps']:.3f} req/s, {g['goodput_tps']:.1f} tok/s"
                + ("" if g["slo_met"] is None else f" | percentile objectives {'met' if g['slo_met'] else 'MISSED'}")
            )
        lines.extend(replicas.breakdown_lines(s.get("by_base_url") or []))
        lines.extend(sessions.summary_lines(s))
        if s.get("prefix_cache"):
            lines.append(prefix_cache.summary_line(s["prefix_cache"]))
        if s.get("trace"):
            lines.append(_trace.summary_line(s["trace"]))
        lines.extend(evidence.summary_lines(s))  # calibration, the server's view, GPU telemetry
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary_table()


def column_name(metric: str, stat: str) -> str:
    """Table column of a statistic: ``ttft_p50_ms``, ``tokens_per_s_p99``, ``itl_mean_ms``..."""
    if metric.endswith("_ms"):
        return f"{metric.removesuffix('_ms')}_{stat}_ms"
    return f"{metric}_{stat}"


def _prepare(base_urls: list[str], model: str, options: LoadTestOptions, api_key: str | None) -> PromptSet:
    """The run's prompts (lengths measured on the first base URL), with a warning for each
    base URL whose server does not list ``model``."""
    prompt_set = _prompts(base_urls[0], model, options, api_key)
    prompt_set.warnings += filter(None, [check_model(url, model, api_key) for url in base_urls])
    return prompt_set


def _prompts(base_url: str, model: str, options: LoadTestOptions, api_key: str | None) -> PromptSet:
    o = options
    if o.conversations is not None:
        return PromptSet(sessions=sessions.load_conversations(o.conversations, o.sessions))
    if o.sessions is not None:
        # Every user turn distinct: a cache hit can only come from a session's own history.
        texts = synthetic_prompts(
            base_url,
            model,
            o.sessions * o.turns,
            o.input_tokens,
            seed=o.seed,
            tokenizer=o.tokenizer,
            api_key=api_key,
            timeout_s=o.timeout_s,
        )
        assert texts.texts is not None
        turns = [texts.texts[i * o.turns : (i + 1) * o.turns] for i in range(o.sessions)]
        return PromptSet(sessions=turns, source=texts.source, warnings=texts.warnings)
    if o.prompts is not None:
        return load_user_prompts(o.prompts)
    if o.trace is not None:
        replay = _trace.build(
            base_url,
            model,
            o.trace,
            o.trace_speedup,
            seed=o.seed,
            tokenizer=o.tokenizer,
            api_key=api_key,
            timeout_s=o.timeout_s,
        )
        return PromptSet(texts=None, source=replay.source, warnings=list(replay.warnings), trace=replay)
    if o.shared_prefixes is not None:
        workload = prefix_cache.build(base_url, model, o, api_key)
        return PromptSet(
            texts=workload.texts, source=workload.source, warnings=list(workload.warnings), prefix_workload=workload
        )
    # One distinct prompt per request, warm-up included, so a prefix cache never helps.
    return synthetic_prompts(
        base_url,
        model,
        o.num_requests + o.warmup,
        o.input_tokens,
        seed=o.seed,
        tokenizer=o.tokenizer,
        api_key=api_key,
        timeout_s=o.timeout_s,
    )


def _result(
    run: _core.LoadTest,
    config: dict[str, Any],
    label: str,
    prompt_set: PromptSet,
    options: LoadTestOptions,
    base_urls: list[str],
    metrics: Mapping[str, Any] | None = None,
) -> LoadTestResult:
    table = records_table(run)
    public = [without_credentials(u) for u in base_urls]
    table = table.append_column(
        "base_url", pa.array([public[i] for i in table.column("base_url_index").to_pylist()], pa.string())
    )
    df = server_timing_columns(table.to_pandas())  # llama.cpp's own timings as columns
    stop_reason = run.stop_reason()
    warns = list(prompt_set.warnings)
    summary = dict(run.summary())
    preconnect = run.summary().get("preconnect")
    if preconnect and preconnect["error"]:
        warns.append(f"preconnect: {preconnect['error']} (the first requests may include opening connections)")
    if len(base_urls) > 1:
        summary["by_base_url"] = replicas.breakdown(df, base_urls, run.summary()["duration_s"])
    if prompt_set.sessions is not None:
        summary["by_turn"] = sessions.turn_summary(df)
        summary["sessions"] = sessions.session_summary(df, [len(t) for t in prompt_set.sessions])
    if prompt_set.trace is not None:
        df = _trace.add_columns(df, prompt_set.trace)
        summary["trace"] = _trace.report(df, prompt_set.trace, options.trace_speedup)
    if prompt_set.prefix_workload is not None:
        df = prefix_cache.add_columns(df, prompt_set.prefix_workload)
        hit_rates = prefix_cache.report(df, options, metrics)
        summary["prefix_cache"] = hit_rates
        warns += filter(None, [prefix_cache.warning(hit_rates)])
    timings = server_timing_summary(df)
    if timings is not None:
        summary["server_timings"] = timings
    if summary["num_token_counts_estimated"]:
        warns.append(
            f"{summary['num_token_counts_estimated']} responses had no usage and no tokenizer could "
            "count them: their token counts are chunk counts (token_count_source='chunks')"
        )
    core_summary = run.summary()
    if core_summary["num_multi_token_chunks"]:
        share = 100 * core_summary["num_multi_token_chunks"] / core_summary["num_chunks"]
        warns.append(
            f"{share:.0f}% of chunks carried more than one token; ITL is per token (gap / tokens), "
            "chunk_gap_ms is the gap between chunks"
        )
    reasoning = core_summary["reasoning"]
    if reasoning and reasoning["num_reasoning_counts_from_chunks"]:
        warns.append(
            f"{reasoning['num_reasoning_counts_from_chunks']} responses' usage had no "
            "completion_tokens_details.reasoning_tokens: their reasoning and answer tokens are counted per "
            "chunk (reasoning_token_source='chunks'): exact where every chunk carried the cumulative usage "
            "(vLLM's continuous_usage_stats) and held thinking or answer, not both; a chunk holding both counts "
            "as answer"
        )
    if _core.build_profile != "release":
        warns.append("optbench._core is a debug build: timings carry extra client overhead")
    if stop_reason != "completed":
        warns.append(f"the run stopped early ({stop_reason}); the results cover what finished")
    if options.slo:
        summary["slo"] = evaluate_slo(df, options.slo, run.summary()["duration_s"])
    return LoadTestResult(
        requests=df,
        summary=summary,
        config=config,
        label=label,
        stop_reason=stop_reason,
        prompt_source=prompt_set.source,
        warnings=warns,
        wall_s=run.wall_s(),
        _arrow=table,
        options=options,
        clock_origin_monotonic=run.clock_origin_monotonic(),
    )


def _plan(
    base_url: str | Sequence[str],
    model: str,
    options: LoadTestOptions | Mapping[str, Any] | None,
    overrides: dict[str, Any],
    label: str | None,
) -> tuple[list[str], LoadTestOptions, dict[str, Any], str, str | None]:
    """The checked base URLs and options, the config a result records (the URLs without
    credentials), the label and the API key."""
    urls = replicas.base_url_list(base_url)
    opts = LoadTestOptions.make(options, **overrides)
    config = {"base_url": replicas.public(urls), "model": model, **opts.to_dict()}
    default_label = _default_label(model, urls[0]) + (f"+{len(urls) - 1}" if len(urls) > 1 else "")
    return urls, opts, config, label or default_label, resolve_api_key(opts.api_key_env)


def _start(
    base_urls: list[str],
    model: str,
    opts: LoadTestOptions,
    key: str | None,
    prompt_set: PromptSet,
    journal: str | None,
) -> _core.LoadTest:
    """Starts the run on the Rust core (it goes on until done; drive it to wait)."""
    target = base_urls[0] if len(base_urls) == 1 else base_urls
    if prompt_set.trace is not None:  # the trace's requests, on its times
        arguments = opts.core_arguments()
        arguments.update(num_requests=len(prompt_set.trace.requests))
        return start_run(
            target,
            model,
            api_key=key,
            requests=prompt_set.trace.requests,
            trace_offsets_ns=prompt_set.trace.offsets_ns,
            journal=journal,
            **arguments,
        )
    return start_run(
        target,
        model,
        api_key=key,
        prompts=prompt_set.texts,
        messages=prompt_set.messages,
        sessions=prompt_set.sessions,
        journal=journal,
        **opts.core_arguments(),
    )


@contextlib.contextmanager
def _journal(journal: str | os.PathLike[str] | None, config: dict[str, Any], label: str) -> Iterator[str | None]:
    """Writes the journal's settings file next to it (what recovering it needs)."""
    if journal is None:
        yield None
        return
    path = Path(journal)
    meta = {"label": label, "config": config, "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1, default=str) + "\n")
    yield str(path)


def _metrics_scraper(base_urls: list[str], prompt_set: PromptSet, key: str | None) -> MetricsScraper | None:
    """A reader of the server's ``/metrics`` for a shared-prefix workload's hit rate (None for
    other workloads, and with several base URLs: one replica's counters are not the run's)."""
    if prompt_set.prefix_workload is None or len(base_urls) != 1:
        return None
    return MetricsScraper(base_urls[0], api_key=key)


def _metrics_summary(scraper: MetricsScraper | None) -> dict[str, Any] | None:
    """What ``/metrics`` says about the run (``scraper.before`` read before it), or None."""
    if scraper is None or scraper.before is None:
        return None
    return summarize(scraper.before, [], scraper.scrape())


def _default_label(model: str, base_url: str) -> str:
    public = without_credentials(base_url)
    host = urlparse(public).netloc or public
    return f"{Path(model).name or model}@{host}"


def load_test(
    base_url: str | Sequence[str],
    model: str,
    options: LoadTestOptions | Mapping[str, Any] | None = None,
    *,
    label: str | None = None,
    progress: Progress = True,
    progress_interval_s: float = 0.25,
    journal: str | os.PathLike[str] | None = None,
    **option_values: Any,
) -> LoadTestResult:
    """Load-tests an OpenAI-compatible server with streaming requests and returns what it measured.

    The parameters are the fields of :class:`~optbench.options.LoadTestOptions` (each with its
    default and meaning there and in the README): pass an ``options`` object, keyword arguments
    with the same names (``num_requests=100, concurrency=8``...), or both (keywords win).

    Closed loop by default: ``num_requests`` requests with ``concurrency`` in flight (100 at
    8). With ``request_rate`` it is an open loop: requests start at that mean rate on absolute
    deadlines (``arrival`` = ``constant``, ``poisson`` or ``gamma`` with ``burstiness`` as the
    shape), and ``concurrency`` caps requests in flight (None: no cap; waiting for a slot shows
    as queue delay). Synthetic prompts are ``input_tokens`` long in the server's tokens (its
    ``/tokenize``, else ``tokenizer``, else an estimate with a warning); ``prompts`` replaces
    them with the caller's (a list of strings or conversations, or a JSONL path), used in turn;
    ``shared_prefixes`` with a shared-prefix workload whose intended and achieved prefix-cache
    hit rates the summary reports (:mod:`optbench.prefix_cache`); ``trace`` replays a JSONL
    trace on its own times, lengths and shared prefixes and reports how late each request was
    sent (:mod:`optbench.trace`).

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:8000`` (a ``/v1`` suffix is fine), or
            a list of the roots of several replicas of one deployment: requests are spread over
            them by the ``routing`` option, each row says which served it (``base_url_index``,
            ``base_url``) and ``summary["by_base_url"]`` breaks the run down per URL. Every URL
            is checked before anything is sent (a ``ConfigError`` names the bad one).
        model: the ``model`` field of each request.
        label: the run's name in tables (default ``model@host``).
        progress: True for a tqdm bar in Jupyter or a live line on a terminal, ``"tqdm"`` for a
            tqdm bar anywhere, False for none, or a callback receiving progress dicts: one as
            the run starts (after the prompts are ready), then every ``progress_interval_s``
            (never one call per token), and the final counts.
        journal: a file to which each request is appended (a JSON line) the moment it
            finishes, with the run's settings in the same name ending ``.json``; a process
            killed mid-run leaves its finished requests there (read them with
            :func:`optbench.results.load_journal`). Its folder must exist.

    Ctrl-C stops the run and returns the finished rows (``result.interrupted`` is True).
    """
    urls, opts, config, label, key = _plan(base_url, model, options, option_values, label)
    prompt_set = _prepare(urls, model, opts, key)
    for w in prompt_set.warnings:
        warnings.warn(w, stacklevel=2)
    scraper = _metrics_scraper(urls, prompt_set, key)
    if scraper is not None:
        scraper.before = scraper.scrape()
    with _journal(journal, config, label) as journal_path:
        run = _start(urls, model, opts, key, prompt_set, journal_path)
        drive(run, progress, label, progress_interval_s, what="load test")
    return _result(run, config, label, prompt_set, opts, urls, _metrics_summary(scraper))


async def aload_test(
    base_url: str | Sequence[str],
    model: str,
    options: LoadTestOptions | Mapping[str, Any] | None = None,
    *,
    label: str | None = None,
    progress: Progress = False,
    progress_interval_s: float = 0.25,
    journal: str | os.PathLike[str] | None = None,
    **option_values: Any,
) -> LoadTestResult:
    """:func:`load_test` for asyncio code and Jupyter (``await optbench.aload_test(...)``).

    The event loop stays free while the run goes on. Cancelling the awaiting task cancels the
    run; a KeyboardInterrupt returns the finished rows like :func:`load_test`.
    """
    urls, opts, config, label, key = _plan(base_url, model, options, option_values, label)
    prompt_set = await asyncio.to_thread(_prepare, urls, model, opts, key)
    for w in prompt_set.warnings:
        warnings.warn(w, stacklevel=2)
    scraper = _metrics_scraper(urls, prompt_set, key)
    if scraper is not None:
        scraper.before = await asyncio.to_thread(scraper.scrape)
    with _journal(journal, config, label) as journal_path:
        run = _start(urls, model, opts, key, prompt_set, journal_path)
        await adrive(run, progress, label, progress_interval_s)
    metrics = await asyncio.to_thread(_metrics_summary, scraper)
    return _result(run, config, label, prompt_set, opts, urls, metrics)
