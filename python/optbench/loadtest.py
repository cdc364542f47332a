"""The load test: ``optbench.load_test`` and ``await optbench.aload_test``.

The requests run in the Rust core on its own runtime; Python only prepares prompts, polls
progress a few times a second (never per token) and turns the Arrow records into pandas.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from optbench import _core
from optbench.exceptions import ConfigError
from optbench.prompts import PromptSet, PromptsInput, load_user_prompts, synthetic_prompts

#: Default per-request deadline in seconds: long enough for 1024 tokens on a slow CPU server.
DEFAULT_TIMEOUT_S = 600.0

ProgressCallback = Callable[[dict[str, Any]], None]

#: The metrics of ``summary["metrics"]``, in the order tables show them.
METRICS = ("ttft_ms", "tokens_per_s", "e2e_ms", "tpot_ms", "itl_ms", "queue_delay_ms")
STATS = ("mean", "p50", "p90", "p95", "p99", "min", "max")


@dataclass
class LoadTestResult:
    """What a load test measured.

    Attributes:
        requests: one row per request (warm-up rows included with ``warmup=True``): every field
            of the per-request record plus the derived ``ttft_ms``, ``e2e_ms``, ``tokens_per_s``,
            ``tpot_ms``, ``queue_delay_ms`` and the per-request ``itl_ms`` list.
        summary: aggregates over measured requests: counts, ``failures_by_kind``,
            ``duration_s``, ``request_throughput``, ``output_token_throughput`` and
            ``metrics[name][stat]`` for each metric in :data:`METRICS` and stat in ``count`` +
            :data:`STATS`.
        config: the parameters of the run.
        label: a name for the run in tables.
        stop_reason: ``completed``, ``cancelled`` (Ctrl-C) or ``time_limit``.
        prompt_source: how prompt lengths were measured (``server``, ``tokenizer``,
            ``estimate``) or ``user`` for the caller's prompts.
        warnings: anything the user should know about the numbers.
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

    @property
    def interrupted(self) -> bool:
        """True when the run was cut short by Ctrl-C or its time limit."""
        return self.stop_reason != "completed"

    def metric(self, name: str, stat: str = "p50") -> float | None:
        """``summary["metrics"][name][stat]``, or None when no request measured it."""
        return self.summary["metrics"].get(name, {}).get(stat)

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Writes the per-request rows to ``path``, with the config and summary as metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = self._arrow if self._arrow is not None else pa.Table.from_pandas(self.requests)
        meta = dict(table.schema.metadata or {})
        meta[b"optbench.config"] = json.dumps(self.config).encode()
        meta[b"optbench.summary"] = json.dumps(self.summary).encode()
        meta[b"optbench.label"] = self.label.encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
        return path

    def summary_row(self) -> dict[str, Any]:
        """The run as one flat table row: label, the brief's P50 TTFT, P50 tokens/s and P50 E2E
        first, then every other statistic, the counts and the throughputs."""
        row: dict[str, Any] = {"label": self.label}
        for m in ("ttft_ms", "tokens_per_s", "e2e_ms"):
            row[column_name(m, "p50")] = self.metric(m)
        for m in METRICS:
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
        for k in ("base_url", "model", "endpoint", "concurrency", "request_rate", "arrival",
                  "input_tokens", "output_tokens", "ignore_eos", "seed"):
            row[k] = self.config.get(k)
        return row

    def summary_table(self) -> str:
        """A plain-text table of the aggregates, for terminals and logs."""
        s = self.summary
        lines = [
            f"{self.label}: {s['num_succeeded']}/{s['num_requests']} succeeded"
            + (f", {s['num_failed']} failed {s['failures_by_kind']}" if s["num_failed"] else "")
            + (f" [{self.stop_reason}]" if self.interrupted else ""),
            f"{'metric':<16}" + "".join(f"{st:>10}" for st in STATS),
        ]
        for m in METRICS:
            stats = s["metrics"].get(m)
            if stats:
                lines.append(f"{m:<16}" + "".join(f"{stats[st]:>10.2f}" for st in STATS))
        lines.append(
            f"window {s['duration_s']:.2f} s | {s['request_throughput']:.3f} req/s | "
            f"{s['output_token_throughput']:.1f} output tok/s | {s['total_output_tokens']} output tokens"
        )
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary_table()


def column_name(metric: str, stat: str) -> str:
    """Table column of a statistic: ``ttft_p50_ms``, ``tokens_per_s_p99``, ``itl_mean_ms``..."""
    if metric.endswith("_ms"):
        return f"{metric.removesuffix('_ms')}_{stat}_ms"
    return f"{metric}_{stat}"


class _ProgressLine:
    """A one-line live display on stderr: done, failed, rolling tokens/s."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.history: list[tuple[float, int]] = []

    def __call__(self, p: dict[str, Any]) -> None:
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


def drive(
    run: _core.LoadTest, progress: bool | str | ProgressCallback, label: str, interval_s: float, what: str
) -> None:
    """Waits for a run while reporting progress every ``interval_s``. Ctrl-C stops sending,
    lets requests in flight end as ``cancelled`` rows and returns normally (the finished rows
    are kept); any other exception cancels the run and propagates."""
    callback, closer = _progress_fn(progress, label)
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


def _api_key(api_key_env: str | None) -> str | None:
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise ConfigError(f"api_key_env={api_key_env!r} names an environment variable that is not set")
    return key


def _prepare(
    base_url: str,
    model: str,
    num_requests: int,
    warmup: int,
    input_tokens: int,
    prompts: PromptsInput | None,
    seed: int,
    tokenizer: str | None,
    api_key: str | None,
) -> PromptSet:
    if prompts is not None:
        return load_user_prompts(prompts)
    # One distinct prompt per request, warm-up included, so a prefix cache never helps.
    return synthetic_prompts(
        base_url, model, num_requests + warmup, input_tokens, seed=seed, tokenizer=tokenizer, api_key=api_key
    )


def _finish(
    run: _core.LoadTest, config: dict[str, Any], label: str, prompt_set: PromptSet
) -> LoadTestResult:
    table = pa.Table.from_batches([pa.record_batch(run.records())])
    df = table.to_pandas()
    stop_reason = run.stop_reason()
    warns = list(prompt_set.warnings)
    summary = dict(run.summary())
    if summary["num_token_counts_estimated"]:
        warns.append(
            f"{summary['num_token_counts_estimated']} responses had no usage and no tokenizer could "
            "count them: their token counts are chunk counts (token_count_source='chunks')"
        )
    if _core.build_profile != "release":
        warns.append("optbench._core is a debug build: timings carry extra client overhead")
    if stop_reason != "completed":
        warns.append(f"the run stopped early ({stop_reason}); the results cover what finished")
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
    )


def _start(
    base_url: str,
    model: str,
    prompt_set: PromptSet,
    config: dict[str, Any],
    api_key: str | None,
    tokenizer: str | None,
) -> _core.LoadTest:
    return _core.LoadTest(
        base_url,
        model,
        prompts=prompt_set.texts,
        messages=prompt_set.messages,
        endpoint=config["endpoint"],
        num_requests=config["num_requests"],
        concurrency=config["concurrency"],
        request_rate=config["request_rate"],
        arrival=config["arrival"],
        burstiness=config["burstiness"],
        output_tokens=config["output_tokens"],
        seed=config["seed"],
        warmup=config["warmup"],
        ignore_eos=config["ignore_eos"],
        timeout_s=config["timeout_s"],
        time_limit_s=config["time_limit_s"],
        api_key=api_key,
        temperature=config["temperature"],
        extra_body=config["extra_body"] or None,
        tokenizer=tokenizer,
    )


def _config(**kw: Any) -> dict[str, Any]:
    if kw["num_requests"] < 1:
        raise ConfigError("num_requests must be at least 1")
    if kw["warmup"] < 0:
        raise ConfigError("warmup must be >= 0")
    if kw["request_rate"] is None and (kw["concurrency"] is None or kw["concurrency"] < 1):
        raise ConfigError("concurrency must be at least 1 (or give request_rate for an open loop)")
    if kw["endpoint"] not in ("completions", "chat"):
        raise ConfigError(f"endpoint must be 'completions' or 'chat', got {kw['endpoint']!r}")
    if kw["extra_body"] is not None and not isinstance(kw["extra_body"], dict):
        raise ConfigError("extra_body must be a dict of extra JSON fields")
    return kw


#: The parameters of load_test / aload_test recorded in a result's config.
_CONFIG_KEYS = (
    "base_url", "model", "num_requests", "concurrency", "request_rate", "arrival", "burstiness",
    "input_tokens", "output_tokens", "endpoint", "seed", "warmup", "ignore_eos", "timeout_s",
    "time_limit_s", "temperature", "extra_body",
)


def _plan(params: dict[str, Any]) -> tuple[dict[str, Any], str, str | None]:
    """The validated config, the label and the API key from load_test's / aload_test's arguments."""
    config = _config(**{k: params[k] for k in _CONFIG_KEYS}, user_prompts=params["prompts"] is not None)
    label = params["label"] or _default_label(params["model"], params["base_url"])
    return config, label, _api_key(params["api_key_env"])


def _default_label(model: str, base_url: str) -> str:
    host = urlparse(base_url).netloc or base_url
    return f"{Path(model).name or model}@{host}"


class _TqdmProgress:
    """A tqdm bar (tqdm.auto: a widget in Jupyter) fed from progress snapshots, never per token."""

    def __init__(self, label: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=None, desc=label, unit="req")
        self.done = 0

    def __call__(self, p: dict[str, Any]) -> None:
        if self.bar.total is None:
            self.bar.total = p["total"]
        done = p["succeeded"] + p["failed"]
        self.bar.update(done - self.done)
        self.done = done
        self.bar.set_postfix(failed=p["failed"], tokens=p["chunks"], refresh=False)

    def close(self) -> None:
        self.bar.close()


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _progress_fn(progress: bool | str | ProgressCallback, label: str) -> tuple[ProgressCallback | None, Any]:
    """``True``: a tqdm bar in Jupyter, a live line on a terminal, nothing otherwise; ``"tqdm"``:
    always a tqdm bar; ``False``: nothing; a callable: called with each progress snapshot."""
    if callable(progress):
        return progress, None
    if progress == "tqdm" or (progress is True and _in_notebook()):
        bar = _TqdmProgress(label)
        return bar, bar
    if progress and sys.stderr.isatty():
        line = _ProgressLine(label)
        return line, line
    return None, None


def load_test(
    base_url: str,
    model: str,
    *,
    num_requests: int = 100,
    concurrency: int | None = 8,
    request_rate: float | None = None,
    arrival: Literal["constant", "poisson", "gamma"] = "poisson",
    burstiness: float = 1.0,
    input_tokens: int = 2048,
    output_tokens: int = 1024,
    endpoint: Literal["completions", "chat"] = "completions",
    prompts: PromptsInput | None = None,
    seed: int = 0,
    warmup: int = 0,
    ignore_eos: bool = False,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    time_limit_s: float | None = None,
    temperature: float = 0.0,
    api_key_env: str | None = None,
    tokenizer: str | None = None,
    extra_body: dict[str, Any] | None = None,
    label: str | None = None,
    progress: bool | ProgressCallback = True,
    progress_interval_s: float = 0.25,
) -> LoadTestResult:
    """Load-tests an OpenAI-compatible server with streaming requests and returns what it measured.

    Closed loop by default: ``num_requests`` requests with ``concurrency`` in flight (the
    brief's 100 at 8). With ``request_rate`` it is an open loop: requests start at that mean
    rate on absolute deadlines (``arrival`` = ``constant``, ``poisson`` or ``gamma`` with
    ``burstiness`` as the shape), and ``concurrency`` caps requests in flight (None: no cap;
    waiting for a slot shows as queue delay).

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:8000`` (a ``/v1`` suffix is fine).
        model: the ``model`` field of each request.
        input_tokens: length of each synthetic prompt in the server's tokens (its ``/tokenize``,
            else ``tokenizer``, else an estimate with a warning). Ignored when ``prompts`` is given.
        output_tokens: ``max_tokens`` of each request.
        endpoint: ``completions`` (``/v1/completions``) or ``chat`` (``/v1/chat/completions``).
        prompts: the caller's prompts (a list of strings or conversations, or a JSONL path);
            they are used in turn, cycling when there are fewer than requests.
        seed: seed of the synthetic prompts and of the open-loop schedule.
        warmup: requests sent first and excluded from every metric.
        ignore_eos: ask the server to generate exactly ``output_tokens`` (llama.cpp, vLLM, SGLang).
        timeout_s: per-request deadline (a failed row of kind ``deadline``); None waits forever.
        time_limit_s: stop the measured phase after this long; requests then in flight become
            ``cancelled`` rows.
        api_key_env: name of an environment variable holding a bearer API key.
        tokenizer: a ``tokenizer.json`` for servers without ``/tokenize``.
        extra_body: extra JSON fields for every request (override the defaults).
        label: the run's name in tables (default ``model@host``).
        progress: True for a tqdm bar in Jupyter or a live line on a terminal, ``"tqdm"`` for a
            tqdm bar anywhere, False for none, or a callback receiving progress dicts: one as
            the run starts (after the prompts are ready), then every ``progress_interval_s``
            (never one call per token), and the final counts.

    Ctrl-C stops the run and returns the finished rows (``result.interrupted`` is True).
    """
    config, label, key = _plan(locals())
    prompt_set = _prepare(base_url, model, num_requests, warmup, input_tokens, prompts, seed, tokenizer, key)
    for w in prompt_set.warnings:
        warnings.warn(w, stacklevel=2)
    run = _start(base_url, model, prompt_set, config, key, tokenizer)
    drive(run, progress, label, progress_interval_s, what="load test")
    return _finish(run, config, label, prompt_set)


async def aload_test(
    base_url: str,
    model: str,
    *,
    num_requests: int = 100,
    concurrency: int | None = 8,
    request_rate: float | None = None,
    arrival: Literal["constant", "poisson", "gamma"] = "poisson",
    burstiness: float = 1.0,
    input_tokens: int = 2048,
    output_tokens: int = 1024,
    endpoint: Literal["completions", "chat"] = "completions",
    prompts: PromptsInput | None = None,
    seed: int = 0,
    warmup: int = 0,
    ignore_eos: bool = False,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    time_limit_s: float | None = None,
    temperature: float = 0.0,
    api_key_env: str | None = None,
    tokenizer: str | None = None,
    extra_body: dict[str, Any] | None = None,
    label: str | None = None,
    progress: bool | ProgressCallback = False,
    progress_interval_s: float = 0.25,
) -> LoadTestResult:
    """:func:`load_test` for asyncio code and Jupyter (``await optbench.aload_test(...)``).

    The event loop stays free while the run goes on. Cancelling the awaiting task cancels the
    run; a KeyboardInterrupt returns the finished rows like :func:`load_test`.
    """
    config, label, key = _plan(locals())
    prompt_set = await asyncio.to_thread(
        _prepare, base_url, model, num_requests, warmup, input_tokens, prompts, seed, tokenizer, key
    )
    for w in prompt_set.warnings:
        warnings.warn(w, stacklevel=2)
    run = _start(base_url, model, prompt_set, config, key, tokenizer)
    callback, closer = _progress_fn(progress, label)
    done = run.wait_async()
    try:
        if callback:
            callback(run.progress())  # the start, as in drive()
        while not run.done():
            await asyncio.wait([done], timeout=progress_interval_s)
            if callback:
                callback(run.progress())
    except asyncio.CancelledError:
        run.cancel()
        raise
    except KeyboardInterrupt:
        run.cancel()
        await asyncio.to_thread(run.wait)
    finally:
        if closer:
            closer.close()
    return _finish(run, config, label, prompt_set)
