"""Quality under load: do the answers change when the server is busy?

Batching and scheduling can change a model's greedy output: the same prompt at temperature 0
may get another answer when it shares a batch with other requests. :func:`quality_under_load`
generates the dataset's answers twice on one running server, with the same prompts in the same
order at temperature 0: once at concurrency 1 (each request alone) and once at concurrency N,
then compares them item by item:

- **identical share** = answers identical at 1 and at N / items answered in both passes (a
  request that failed in either pass is counted apart, in ``num_failed_1`` / ``num_failed_n``);
  **answers changed** when it is below 1: at temperature 0 every answer should be the same, so a
  difference is the flag of a server whose batching or scheduling changes what the model says;
- **first difference** = for an answer that differs, the position of its first differing token
  (0-based): both answers are tokenized by the server's ``/tokenize`` endpoint (llama.cpp, vLLM),
  and the position is the length of their common prefix of token ids. A server without
  ``/tokenize`` gets positions in *characters* instead; ``summary["position_unit"]`` says which;
- **score change** per category = the category's score at N minus its score at 1 (the mean
  over its items of the per-item differences; scores as :func:`optbench.evaluate` gives them, a
  failed request scoring 0), with a paired percentile bootstrap interval: items are resampled
  with replacement and each resampled item keeps both of its scores (see
  :mod:`optbench.bootstrap`). **changed** when the interval excludes 0, else **no evidence of
  change**. The overall change (the mean of the category changes) resamples items within
  each category.

``optbench run`` does this for each configuration when the evaluation option
``under_load_concurrency`` is set (the ``reference`` profile sets it to its load test's
concurrency) and writes ``<config>/under_load.parquet`` (one row per item, both answers).

**Nothing lost.** With ``journal`` (``optbench run``: ``<config>/under_load.journal/``;
``optbench quality-under-load``: ``<results>/journals/quality-under-load/<label>/``), every answer
is kept on disk the moment it finishes, and an interrupted comparison started again with the
same settings generates only the answers it lacks (:mod:`optbench.answer_journal`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from optbench import bootstrap
from optbench.answer_journal import COLUMNS, AnswerJournal, requests_digest
from optbench.driver import Progress, drive, records_table, write_parquet
from optbench.evaluate import Dataset, EvaluationResult, plan_evaluation, score_records, start_generation
from optbench.exceptions import ConfigError
from optbench.options import EvaluationOptions
from optbench.results import append_csv_rows, new_run_id

#: The file ``optbench run`` writes per configuration, and the CSV ``save_quality_under_load`` appends to.
UNDER_LOAD_PARQUET = "under_load.parquet"
UNDER_LOAD_CSV = "quality_under_load.csv"
CHANGED = "changed"
NO_EVIDENCE = "no evidence of change"
#: Below this many items in a category its interval is rough; the result says so.
FEW_ITEMS = 10
#: ``/tokenize`` calls in flight at once, and the time each may take.
TOKENIZE_WORKERS = 8
TOKENIZE_TIMEOUT_S = 30.0


@dataclass
class QualityUnderLoadResult:
    """The two passes and their comparison.

    ``pairs`` has one row per item: ``id``, ``category``, ``output_1`` / ``output_n`` (the answers
    at concurrency 1 and N), ``error_kind_1`` / ``error_kind_n``, ``identical`` (NA when either
    request failed), ``first_difference`` (position of the first differing token, or character
    where the server cannot tokenize; NA when identical or not compared), ``length_1`` /
    ``length_n`` (the answers' lengths in the same unit, for differing answers),
    ``score_1`` / ``score_n`` and ``score_change`` (N minus 1). ``summary`` holds the shares,
    the per-category changes with their intervals and verdicts (``categories``), ``overall``,
    the worst category (``max_drop``) and the settings."""

    pairs: pd.DataFrame
    summary: dict[str, Any]
    label: str
    alone: EvaluationResult
    loaded: EvaluationResult
    warnings: list[str] = field(default_factory=list)

    @property
    def identical_share(self) -> float:
        """Share of the items answered in both passes whose answers are identical."""
        return float(self.summary["identical_share"])

    @property
    def answers_changed(self) -> bool:
        """Whether some answer at concurrency N differs from the one at 1 (at temperature 0 they
        should all be the same: the flag of a server whose answers change under load)."""
        return bool(self.summary["answers_changed"])

    @property
    def scores_changed(self) -> bool:
        """Whether some category's score changed under load (its interval excludes 0)."""
        return bool(self.summary["scores_changed"])

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per category and one ``overall``: scores at 1 and N, the change, its interval, the verdict."""
        s = self.summary
        rows = []
        for cat, v in [*s["categories"].items(), ("overall", s["overall"])]:
            rows.append(
                {
                    "label": self.label,
                    "concurrency": s["concurrency"],
                    "category": cat,
                    **{k: v.get(k) for k in ("n", "identical_share", "score_1", "score_n", "change", "low", "high")},
                    "verdict": v["verdict"],
                    "level": s["level"],
                }
            )
        return rows

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Writes ``pairs`` with the summary and the evaluation settings as metadata."""
        return write_parquet(self.pairs, path, config=self.alone.config, summary=self.summary, label=self.label)

    def __str__(self) -> str:
        s = self.summary
        verdict = (
            f"ANSWERS CHANGE UNDER LOAD: {s['num_compared'] - s['num_identical']} of {s['num_compared']} differ"
            if s["answers_changed"]
            else "the answers are the same under load"
        )
        lines = [
            f"{self.label}: quality under load, concurrency 1 against {s['concurrency']}: {verdict}"
            + ("; scores changed" if s["scores_changed"] else ""),
            f"  identical answers: {s['num_identical']}/{s['num_compared']} ({_pct(s['identical_share'])})"
            + (
                f"; first difference at {s['position_unit']} {s['first_difference_median']:.0f} (median)"
                if s["num_compared"] > s["num_identical"]
                else ""
            ),
            f"  score change (N minus 1) with its {100 * s['level']:.0f}% paired bootstrap interval:",
        ]
        for cat, v in [*s["categories"].items(), ("overall", s["overall"])]:
            lines.append(
                f"  {cat:<10} {v['score_1']:.4f} -> {v['score_n']:.4f}  {v['change']:+.4f} "
                f"[{v['low']:+.4f}, {v['high']:+.4f}]  {v['verdict']}"
            )
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _pct(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def quality_under_load(
    base_url: str,
    model: str,
    options: EvaluationOptions | Mapping[str, Any] | None = None,
    *,
    dataset: Dataset = "data/test_dataset.json",
    label: str | None = None,
    progress: Progress = True,
    loaded: EvaluationResult | None = None,
    level: float = bootstrap.DEFAULT_LEVEL,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = 0,
    journal: str | os.PathLike[str] | None = None,
    journal_target: str | None = None,
    **option_values: Any,
) -> QualityUnderLoadResult:
    """Generates the dataset's answers at concurrency 1 and at concurrency N on a running
    server (temperature 0, same prompts, same order) and compares them (see the module's doc).

    The evaluation's parameters are the fields of :class:`~optbench.options.EvaluationOptions`
    (``options`` and/or keywords, as for :func:`optbench.evaluate`: ``categories``, ``limit``,
    ``max_tokens``...). N is ``under_load_concurrency`` when set, else ``concurrency`` (8 by
    default), so ``quality_under_load(url, model, concurrency=16)`` compares 1 with 16.

    Args:
        dataset: the file ``optbench dataset build`` wrote (or its items).
        label: the server's name in tables (default: ``model``).
        progress: as for :func:`optbench.load_test`.
        loaded: answers already generated at concurrency N with the same options (an
            :func:`optbench.evaluate` result): only the concurrency-1 pass runs.
        level: the intervals' confidence level.
        resamples: bootstrap resamples.
        seed: the bootstrap's seed (the same inputs and seed give the same intervals).
        journal: a folder where each answer is kept the moment it finishes
            (:mod:`optbench.answer_journal`): called again after an interruption with the same
            settings, only the answers missing are generated; with other settings the old
            folder is set aside. Removed once both passes are complete.
        journal_target: what names the server in the journal's settings (default: ``base_url``
            without credentials; ``optbench run`` gives the configuration, whose port may change).

    Ctrl-C or SIGTERM during a pass stops it (the next pass is not started) and raises
    KeyboardInterrupt; the finished answers stay in ``journal``.
    """
    bootstrap.check_settings(level, resamples, seed)
    o, opts, items, requests = plan_evaluation(base_url, model, dataset, options, option_values)
    n = o.under_load_concurrency if o.under_load_concurrency is not None else o.concurrency
    label = label or model
    if loaded is not None:
        ids = [it["id"] for it in items]
        if loaded.options.concurrency != n or list(loaded.samples["id"]) != ids:
            raise ConfigError(
                f"loaded: expected the answers to the same {len(ids)} items generated at concurrency {n} "
                "with the same options"
            )
    answers = None
    if journal is not None:
        settings = {
            "target": journal_target or opts["base_url"],
            "model": model,
            "dataset": opts["dataset"],
            "concurrency": n,
            "num_items": len(items),
            "items_sha256": requests_digest([{"id": it["id"]} for it in items]),
            "requests_sha256": requests_digest(requests),
        }
        answers = AnswerJournal(journal, settings)
    results = {}
    for c in [1] if loaded is not None else [1, n]:
        results[c] = generate_answers(
            base_url, model, o, opts, items, requests, c, label=label, progress=progress, journal=answers
        )
        if results[c].summary.get("stop_reason") == "cancelled":
            if answers is not None:
                print(f"optbench: {label}: the finished answers are kept in {answers.folder}", file=sys.stderr)
            raise KeyboardInterrupt
    if answers is not None:
        answers.remove()
    alone = results[1]
    loaded = loaded if loaded is not None else results[n]
    return compare_answers(
        alone,
        loaded,
        concurrency=n,
        label=label,
        base_url=base_url,
        model=model,
        api_key=opts["api_key"],
        level=level,
        resamples=resamples,
        seed=seed,
    )


def generate_answers(
    base_url: str,
    model: str,
    o: EvaluationOptions,
    opts: dict[str, Any],
    items: list[Mapping[str, Any]],
    requests: list[dict[str, Any]],
    concurrency: int,
    *,
    label: str,
    progress: Progress = False,
    journal: AnswerJournal | None = None,
) -> EvaluationResult:
    """The answers to ``requests`` (as :func:`optbench.evaluate.plan_evaluation` planned them:
    ``o``, ``opts``, ``items``) generated at ``concurrency`` at temperature 0, scored. With a
    ``journal``, the answers it already holds at ``concurrency`` are taken from it and only the
    others are asked, each journaled as it finishes."""
    oc = replace(o, concurrency=concurrency)
    done = journal.finished(concurrency) if journal is not None else pd.DataFrame(columns=COLUMNS)
    kept = set(done["request_id"].astype(int))
    todo = [i for i in range(len(requests)) if i not in kept]
    if kept:
        print(
            f"optbench: {label}: {len(kept)} of {len(requests)} answers at concurrency {concurrency} taken from "
            f"the journal {journal.folder if journal else ''}",
            file=sys.stderr,
        )
    frames = [done]
    stop_reason = "completed"
    if todo:
        path = journal.segment(concurrency, todo) if journal is not None else None
        run = start_generation(base_url, model, [requests[i] for i in todo], oc, opts["api_key"], path)
        drive(run, progress, f"{label} answers at concurrency {concurrency}", 0.25, what="quality under load")
        new = records_table(run).to_pandas()[COLUMNS]
        new["request_id"] = [todo[int(k)] for k in new["request_id"]]
        frames.append(new)
        stop_reason = run.stop_reason()
    records = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else done
    return score_records(records, stop_reason, items, requests, {**opts, "concurrency": concurrency}, label, oc)


def compare_answers(
    alone: EvaluationResult,
    loaded: EvaluationResult,
    *,
    concurrency: int,
    label: str,
    base_url: str | None = None,
    model: str = "",
    api_key: str | None = None,
    level: float = bootstrap.DEFAULT_LEVEL,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> QualityUnderLoadResult:
    """The comparison of two evaluations of the same items (``alone`` at concurrency 1,
    ``loaded`` at ``concurrency``); first differences in the server's tokens when ``base_url``
    has a ``/tokenize`` endpoint, else in characters."""
    bootstrap.check_settings(level, resamples, seed)
    a, b = alone.samples, loaded.samples
    if list(a["id"]) != list(b["id"]):
        raise ConfigError("the two evaluations must cover the same items in the same order")
    pairs = pd.DataFrame(
        {
            "id": a["id"].to_numpy(),
            "category": a["category"].to_numpy(),
            "prompt": a["prompt"].to_numpy(),
            "output_1": a["output"].to_numpy(),
            "output_n": b["output"].to_numpy(),
            "error_kind_1": a["error_kind"].to_numpy(),
            "error_kind_n": b["error_kind"].to_numpy(),
            "score_1": a["score"].to_numpy(dtype=float),
            "score_n": b["score"].to_numpy(dtype=float),
        }
    )
    pairs["score_change"] = pairs["score_n"] - pairs["score_1"]
    answered = pairs["error_kind_1"].isna() & pairs["error_kind_n"].isna()
    same = pairs["output_1"] == pairs["output_n"]
    pairs["identical"] = pd.array([bool(s) if ok else pd.NA for s, ok in zip(same, answered)], dtype="boolean")
    differ = (answered & ~same).to_numpy()
    warns: list[str] = []
    unit, source, tokenize = "character", "characters", None
    if differ.any() and base_url is not None:
        tokenize, why = _server_tokenizer(base_url, model, api_key)
        if tokenize is not None:
            unit, source = "token", "the server's /tokenize"
        else:
            warns.append(f"first differences are in characters: {why}")
    first = pd.array([pd.NA] * len(pairs), dtype="Int64")
    len1 = pd.array([pd.NA] * len(pairs), dtype="Int64")
    lenn = pd.array([pd.NA] * len(pairs), dtype="Int64")
    rows = np.flatnonzero(differ).tolist()
    if rows:
        texts = [pairs.at[i, "output_1"] for i in rows] + [pairs.at[i, "output_n"] for i in rows]
        if tokenize is not None:
            with ThreadPoolExecutor(TOKENIZE_WORKERS) as pool:
                seqs: list[Any] = list(pool.map(tokenize, texts))
        else:
            seqs = list(texts)
        for k, i in enumerate(rows):
            s1, sn = seqs[k], seqs[k + len(rows)]
            first[i] = _common_prefix(s1, sn)
            len1[i], lenn[i] = len(s1), len(sn)
    pairs["first_difference"] = first
    pairs["length_1"] = len1
    pairs["length_n"] = lenn

    rng = np.random.default_rng(seed)
    cats: dict[str, Any] = {}
    per_cat_changes = []
    for cat in dict.fromkeys(pairs["category"]):
        rows_c = pairs[pairs["category"] == cat]
        d = rows_c["score_change"].to_numpy(dtype=float)
        means = bootstrap.resampled_means(d, resamples, rng)
        per_cat_changes.append(means)
        low, high = bootstrap.percentile_interval(bootstrap.expand(means, len(d), level), level)
        ans = rows_c["identical"].dropna()
        cats[str(cat)] = {
            "n": int(len(rows_c)),
            "identical_share": float(ans.mean()) if len(ans) else float("nan"),
            "score_1": float(rows_c["score_1"].mean()),
            "score_n": float(rows_c["score_n"].mean()),
            "change": float(d.mean()),
            "low": low,
            "high": high,
            "verdict": CHANGED if bootstrap.is_real(low, high) else NO_EVIDENCE,
        }
        if len(rows_c) < FEW_ITEMS:
            warns.append(f"{cat}: {len(rows_c)} items; an interval from fewer than {FEW_ITEMS} is rough")
    overall_means = np.mean(np.vstack(per_cat_changes), axis=0) if per_cat_changes else np.full(resamples, np.nan)
    low, high = bootstrap.percentile_interval(bootstrap.expand(overall_means, len(pairs), level), level)
    overall = {
        "n": int(len(pairs)),
        "identical_share": float(pairs["identical"].dropna().mean()) if answered.any() else float("nan"),
        "score_1": float(np.mean([v["score_1"] for v in cats.values()])) if cats else float("nan"),
        "score_n": float(np.mean([v["score_n"] for v in cats.values()])) if cats else float("nan"),
        "change": float(np.mean([v["change"] for v in cats.values()])) if cats else float("nan"),
        "low": low,
        "high": high,
        "verdict": CHANGED if bootstrap.is_real(low, high) else NO_EVIDENCE,
    }
    worst = min(cats, key=lambda c: cats[c]["change"]) if cats else None
    num_compared = int(answered.sum())
    num_identical = int((answered & same).sum())
    summary: dict[str, Any] = {
        "concurrency": int(concurrency),
        "baseline_concurrency": 1,
        "num_items": int(len(pairs)),
        "num_compared": num_compared,
        "num_identical": num_identical,
        "identical_share": num_identical / num_compared if num_compared else float("nan"),
        "num_failed_1": int(pairs["error_kind_1"].notna().sum()),
        "num_failed_n": int(pairs["error_kind_n"].notna().sum()),
        "position_unit": unit,
        "position_source": source,
        "first_difference_median": float(pd.Series(first).dropna().median()) if rows else float("nan"),
        "categories": cats,
        "overall": overall,
        "max_drop": {"category": worst, **{k: cats[worst][k] for k in ("change", "low", "high", "verdict")}}
        if worst
        else None,
        "answers_changed": num_identical < num_compared,
        "scores_changed": any(v["verdict"] == CHANGED for v in cats.values()),
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "interval": "paired percentile bootstrap over items (within categories for overall)",
    }
    for name, res in (("concurrency 1", alone), (f"concurrency {concurrency}", loaded)):
        if res.summary["num_failed"]:
            warns.append(f"{res.summary['num_failed']} requests failed at {name} (scored 0, not compared)")
    return QualityUnderLoadResult(pairs=pairs, summary=summary, label=label, alone=alone, loaded=loaded, warnings=warns)


def _common_prefix(a: Any, b: Any) -> int:
    """The length of the common prefix of two sequences (token ids or characters)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _server_tokenizer(base_url: str, model: str, api_key: str | None) -> tuple[Any, str]:
    """A function text -> token ids through the server's ``/tokenize`` (llama.cpp reads
    ``content``, vLLM ``prompt`` and ``model``; no special tokens added), or None and why not."""
    parts = urllib.parse.urlsplit(base_url.strip().rstrip("/"))
    path = parts.path[: -len("/v1")] if parts.path.endswith("/v1") else parts.path
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    url = urllib.parse.urlunsplit((parts.scheme, netloc, path + "/tokenize", "", ""))
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    elif parts.username:
        user = urllib.parse.unquote(parts.username) + ":" + urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()

    def tokenize(text: str) -> list[int]:
        body = {"content": text, "prompt": text, "model": model, "add_special": False, "add_special_tokens": False}
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=TOKENIZE_TIMEOUT_S) as resp:
            tokens = json.loads(resp.read())["tokens"]
        # llama.cpp may answer pieces ({"id", "piece"}) when asked; ids otherwise.
        return [t["id"] if isinstance(t, dict) else t for t in tokens]

    try:
        if not tokenize("hello world"):
            return None, f"{url} returned no tokens"
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else f"{type(e).__name__}: {e}"
        return None, f"{url} did not tokenize ({reason})"
    return tokenize, ""


def save_quality_under_load(
    result: QualityUnderLoadResult, results_dir: str | os.PathLike[str] = "results"
) -> dict[str, Path]:
    """Writes ``runs/<run id>/under_load.parquet`` and appends the category rows to
    ``quality_under_load.csv``."""
    results_dir = Path(results_dir)
    run_id = new_run_id(result.label)
    parquet = result.to_parquet(results_dir / "runs" / run_id / UNDER_LOAD_PARQUET)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    extra = {"run_id": run_id, "timestamp_utc": stamp, "under_load_parquet": str(parquet.relative_to(results_dir))}
    csv = append_csv_rows(results_dir / UNDER_LOAD_CSV, [{**row, **extra} for row in result.summary_rows()])
    return {"csv": csv, "parquet": parquet}


# --------------------------------------------------------------------------- the report


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary stored in an ``under_load.parquet``."""
    meta = pq.read_schema(path).metadata or {}
    if b"optbench.summary" not in meta:
        raise ValueError(f"{path}: no optbench summary in its metadata")
    summary = json.loads(meta[b"optbench.summary"])
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: its optbench summary is not an object")
    return summary


def report_columns(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The results.csv columns of one configuration's quality under load."""
    drop = summary.get("max_drop") or {}
    return {
        "under_load_concurrency": summary["concurrency"],
        "under_load_identical_share": summary["identical_share"],
        "under_load_max_drop_category": drop.get("category"),
        "under_load_max_drop": drop.get("change", float("nan")),
        "under_load_max_drop_low": drop.get("low", float("nan")),
        "under_load_max_drop_high": drop.get("high", float("nan")),
        "under_load_answers_changed": summary["answers_changed"],
        "under_load_scores_changed": summary["scores_changed"],
    }


def markdown_section(metas: list[dict[str, Any]]) -> list[str]:
    """RESULTS.md's "Quality under load" section (no lines when no configuration has one)."""
    found: list[tuple[str, dict[str, Any] | None]] = []
    for m in metas:
        path = Path(m.get("_dir", "")) / UNDER_LOAD_PARQUET
        if "_dir" in m and path.exists():
            try:
                found.append((m["name"], read_summary(path)))
            except (OSError, ValueError, KeyError):
                found.append((m["name"], None))
    if not found:
        return []
    level = next((s["level"] for _, s in found if s), bootstrap.DEFAULT_LEVEL)
    lines = [
        "## Quality under load",
        "",
        "The dataset's answers generated at concurrency 1 and at concurrency N on the same server (temperature 0, "
        "same prompts and order). Identical: the share of answers that are the same. Score change: N minus 1, with "
        f"its {100 * level:.0f}% paired bootstrap interval (items resampled); *changed* when the interval "
        "excludes 0.",
        "",
        "| configuration | N | identical | first difference (median) | category | change | interval | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in found:
        if s is None:
            lines.append(f"| {name} | – | – | – | – | – | – | {UNDER_LOAD_PARQUET} is unreadable |")
            continue
        first = (
            f"{s['position_unit']} {s['first_difference_median']:.0f}"
            if s["num_compared"] > s["num_identical"]
            else "–"
        )
        for i, (cat, v) in enumerate([*s["categories"].items(), ("overall", s["overall"])]):
            head = (
                [
                    name,
                    str(s["concurrency"]),
                    f"{s['num_identical']}/{s['num_compared']} ({_pct(s['identical_share'])})",
                    first,
                ]
                if i == 0
                else ["", "", "", ""]
            )
            verdict = f"**{v['verdict']}**" if v["verdict"] == CHANGED else v["verdict"]
            lines.append(
                "| "
                + " | ".join([*head, cat, f"{v['change']:+.3f}", f"[{v['low']:+.3f}, {v['high']:+.3f}]", verdict])
                + " |"
            )
    lines.append("")
    return lines


__all__ = [
    "QualityUnderLoadResult",
    "compare_answers",
    "generate_answers",
    "markdown_section",
    "quality_under_load",
    "read_summary",
    "report_columns",
    "save_quality_under_load",
]
