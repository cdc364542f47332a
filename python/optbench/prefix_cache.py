"""Shared-prefix workloads and the prefix-cache hit rate they should get, beside the one the
server reports.

**The workload.** ``shared_prefixes`` = N different prefixes of ``prefix_tokens`` tokens, each
followed by each of ``suffixes`` = M different suffixes adding ``suffix_tokens`` (the server's
tokens, measured as synthetic prompts are: its ``/tokenize``, else ``tokenizer``, else an
estimate). Prefixes differ from their first word and so do suffixes, so what a prefix cache can
reuse is exactly a prompt's prefix. The N × M prompts go in ``prefix_order``: ``grouped`` (the M
suffixes of prefix 0, then those of prefix 1...) or ``interleaved`` (suffix 0 of every prefix,
then suffix 1 of every prefix...). Request ``i`` (warm-up first) sends prompt ``i mod N×M``.

**The hit rate** is cached prompt tokens / prompt tokens, summed over the measured successful
requests. The *intended* one follows from the arrangement, for a cache that keeps everything and
a server that finishes each request's prefill before the next request arrives: a request whose
exact prompt was sent before reuses all of it but one token (a server always computes the last
prompt token); else one whose prefix was sent before reuses the prefix's tokens (specials such
as a BOS included); else nothing. Warm-up requests fill the cache too. Requests of one prefix
in flight together may all miss on a real server: ``interleaved`` with ``shared_prefixes`` at
least the concurrency keeps them apart. A server may also reuse a lone BOS, or a suffix token
that happens to match (digits), which the margin absorbs.

**The achieved hit rate** is read back from the server, by the first source that has it:

- ``usage``: per request ``usage.prompt_tokens_details.cached_tokens`` over ``prompt_tokens``
  (OpenAI's field; vLLM with ``--enable-prompt-tokens-details``; the mock server);
- ``server_timings``: llama.cpp's per-request ``timings.cache_n`` (reused from the slot) over
  ``cache_n + prompt_n`` (evaluated);
- ``metrics``: the server's Prometheus ``/metrics`` read before and after the run
  (:mod:`optbench.server_metrics`: vLLM's ``prefix_cache_hits`` / ``prefix_cache_queries``,
  SGLang's and llama.cpp's cached prompt-token counters, else SGLang's ``cache_hit_rate``
  gauge). It covers every request of the window, warm-up included, so it is compared with the
  intended rate over all requests.

The report (``summary["prefix_cache"]``) gives both rates, the source, every source that
answered, and a warning when they differ by more than ``hit_rate_margin``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from optbench import _core
from optbench.options import LoadTestOptions

#: The per-request columns the workload adds to a result's rows.
COLUMNS = ("prefix_id", "suffix_id", "intended_cached_tokens", "intended_prompt_tokens")


@dataclass
class PrefixWorkload:
    """The N × M prompts of a shared-prefix workload, in the order they are sent."""

    texts: list[str]
    #: Per prompt: which prefix and which suffix it is made of.
    prefix_ids: list[int]
    suffix_ids: list[int]
    #: Per prompt: tokens of its prefix alone and of the whole prompt (specials included).
    prefix_tokens: list[int]
    prompt_tokens: list[int]
    #: How lengths were measured: ``server``, ``tokenizer`` or ``estimate``.
    source: str = "server"
    warnings: list[str] = field(default_factory=list)

    def intended_cached(self, num_requests: int) -> list[int]:
        """Cached prompt tokens each of ``num_requests`` requests (request ``i`` sends prompt
        ``i mod len(texts)``) gets from a cache that keeps everything (see the module docs)."""
        seen_prompts: set[int] = set()
        seen_prefixes: set[int] = set()
        out = []
        for i in range(num_requests):
            k = i % len(self.texts)
            if k in seen_prompts:
                out.append(self.prompt_tokens[k] - 1)
            elif self.prefix_ids[k] in seen_prefixes:
                out.append(self.prefix_tokens[k])
            else:
                out.append(0)
            seen_prompts.add(k)
            seen_prefixes.add(self.prefix_ids[k])
        return out


def arrangement(prefixes: int, suffixes: int, order: str) -> list[tuple[int, int]]:
    """``(prefix, suffix)`` of each prompt in sending order: ``grouped`` or ``interleaved``."""
    if order == "grouped":
        return [(p, s) for p in range(prefixes) for s in range(suffixes)]
    return [(p, s) for s in range(suffixes) for p in range(prefixes)]


def build(base_url: str, model: str, options: LoadTestOptions, api_key: str | None) -> PrefixWorkload:
    """The workload of ``options`` (``shared_prefixes`` set), measured in the server's tokens."""
    o = options
    n, m = o.shared_prefixes or 1, o.suffixes
    texts, prefix_counts, prompt_counts, source, warning = _core.make_prefix_prompts(
        base_url,
        model,
        n,
        o.prefix_tokens,
        m,
        o.suffix_tokens,
        seed=o.seed,
        tokenizer=o.tokenizer,
        api_key=api_key,
        timeout_s=o.timeout_s,
    )
    order = arrangement(n, m, o.prefix_order)
    return PrefixWorkload(
        texts=[texts[p * m + s] for p, s in order],
        prefix_ids=[p for p, _ in order],
        suffix_ids=[s for _, s in order],
        prefix_tokens=[prefix_counts[p] for p, _ in order],
        prompt_tokens=[prompt_counts[p * m + s] for p, s in order],
        source=source,
        warnings=[warning] if warning else [],
    )


def add_columns(requests: pd.DataFrame, workload: PrefixWorkload) -> pd.DataFrame:
    """``requests`` with :data:`COLUMNS`: each row's prefix and suffix, and the cached and prompt
    tokens the workload intends for it."""
    ids = requests["request_id"].astype(int).to_numpy()
    total = int(ids.max()) + 1 if len(ids) else 0
    intended = np.asarray(workload.intended_cached(total), dtype=float)
    k = ids % len(workload.texts)
    out = requests.copy()
    out["prefix_id"] = np.asarray(workload.prefix_ids)[k]
    out["suffix_id"] = np.asarray(workload.suffix_ids)[k]
    out["intended_cached_tokens"] = intended[ids] if total else intended
    out["intended_prompt_tokens"] = np.asarray(workload.prompt_tokens, dtype=float)[k]
    return out


def _rate(cached: Any, prompt: Any) -> float | None:
    total = float(np.nansum(prompt))
    return float(np.nansum(cached)) / total if total > 0 else None


def report(
    requests: pd.DataFrame,
    options: LoadTestOptions,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Intended vs achieved hit rate over ``requests`` (rows with :data:`COLUMNS`; the measured
    successful ones count), with ``metrics`` (:func:`optbench.server_metrics.summarize` over the
    run) as the last source. Keys: ``intended_hit_rate``, ``achieved_hit_rate``, ``source``,
    ``difference``, ``margin``, ``within_margin``, ``sources`` (every source that answered: its
    achieved and intended rate and the requests it covers), ``prefixes``, ``suffixes``,
    ``prefix_order``, ``intended_hit_rate_all`` (warm-up included)."""
    ok = requests[requests["success"]]
    measured = ok[~ok["warmup"]] if "warmup" in ok else ok
    intended = _rate(measured["intended_cached_tokens"], measured["intended_prompt_tokens"])
    intended_all = _rate(ok["intended_cached_tokens"], ok["intended_prompt_tokens"])
    sources: dict[str, dict[str, Any]] = {}
    if "cached_tokens" in measured and measured["cached_tokens"].notna().any():
        rows = measured[measured["cached_tokens"].notna() & measured["prompt_tokens"].notna()]
        sources["usage"] = {
            "achieved": _rate(rows["cached_tokens"], rows["prompt_tokens"]),
            "intended": _rate(rows["intended_cached_tokens"], rows["intended_prompt_tokens"]),
            "requests": int(len(rows)),
        }
    if "server_cached_tokens" in measured and measured["server_prompt_tokens"].notna().any():
        rows = measured[measured["server_prompt_tokens"].notna()]
        cached = rows["server_cached_tokens"].fillna(0)
        sources["server_timings"] = {
            "achieved": _rate(cached, cached + rows["server_prompt_tokens"]),
            "intended": _rate(rows["intended_cached_tokens"], rows["intended_prompt_tokens"]),
            "requests": int(len(rows)),
        }
    if metrics and metrics.get("available") and metrics.get("prefix_cache_hit_rate") is not None:
        sources["metrics"] = {
            "achieved": float(metrics["prefix_cache_hit_rate"]),
            "intended": intended_all,
            "requests": int(len(requests)),
            "engine": metrics.get("engine"),
        }
    out: dict[str, Any] = {
        "prefixes": options.shared_prefixes,
        "suffixes": options.suffixes,
        "prefix_order": options.prefix_order,
        "intended_hit_rate": intended,
        "intended_hit_rate_all": intended_all,
        "achieved_hit_rate": None,
        "source": None,
        "difference": None,
        "margin": options.hit_rate_margin,
        "within_margin": None,
        "sources": sources,
    }
    source = next(iter(sources), None)
    if source is not None:
        chosen = sources[source]
        out.update(source=source, achieved_hit_rate=chosen["achieved"])
        if chosen["achieved"] is not None and chosen["intended"] is not None:
            diff = chosen["achieved"] - chosen["intended"]
            out.update(difference=diff, within_margin=bool(abs(diff) <= options.hit_rate_margin))
    return out


def warning(rep: Mapping[str, Any]) -> str | None:
    """What to tell the user about the hit rate, if anything."""
    if rep["source"] is None:
        return (
            "prefix cache: the server reported no cached prompt tokens (no usage.prompt_tokens_details, "
            "no timings, no /metrics): the achieved hit rate is unknown"
        )
    if rep["within_margin"] is False:
        intended = rep["sources"][rep["source"]]["intended"]
        return (
            f"prefix cache: the server's hit rate ({rep['source']}) is {rep['achieved_hit_rate']:.3f}, "
            f"the workload intends {intended:.3f}: they differ by more than {rep['margin']} "
            "(a cache too small for the prefixes, requests of one prefix in flight together, or no prefix cache)"
        )
    return None


def summary_line(rep: Mapping[str, Any]) -> str:
    """The report in one line, for terminals and logs."""
    achieved = rep["achieved_hit_rate"]
    intended = rep["intended_hit_rate"]
    shown = "unknown" if achieved is None else f"{achieved:.3f} ({rep['source']})"
    want = "n/a" if intended is None else f"{intended:.3f}"
    return (
        f"prefix cache: {rep['prefixes']} prefixes x {rep['suffixes']} suffixes ({rep['prefix_order']}), "
        f"hit rate intended {want}, achieved {shown}"
    )


__all__ = ["COLUMNS", "PrefixWorkload", "add_columns", "arrangement", "build", "report", "summary_line", "warning"]
