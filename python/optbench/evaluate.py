"""Quality evaluation: generate answers for the 520-prompt dataset through the Rust client,
score them per category, and compare configurations.

Prompting (the defaults; every template, ``max_tokens`` and stop list can be replaced):

- the first 2 items of each category in the dataset file are the few-shot examples, shown in
  every prompt of their category and never scored;
- **qa** (completions): an instruction, then ``Context/Question/Answer`` blocks; the model
  must answer with a short span or ``unanswerable`` (scored as the empty answer); stops at a
  newline; 32 tokens;
- **reasoning** (completions): ``Question/Answer`` blocks with GSM8K's worked solutions ending
  in ``#### N``; stops at the next ``Question:``; 320 tokens;
- **chat** (chat endpoint, always): the shot conversations with their chosen replies, then the
  item's conversation; 160 tokens;
- **code** (completions): the shots' prompts with their canonical solutions, then the item's
  prompt; the completion stops at a new top-level ``def``/``class``/``if``/``print``; 384 tokens.

With ``endpoint_mode="chat"`` the qa, reasoning and code prompts go to the chat endpoint as
one user message each. Generation is at temperature 0.

Scores (each in 0..1): qa = (EM + F1) / 2 (official SQuAD v2); reasoning = 1 when the GSM8K
answer is right (``gsm8k_mode``); chat = cosine similarity of all-MiniLM-L6-v2 embeddings of
the answer and the reference; code = 1 when HumanEval's tests pass in the sandbox. A category's
score is the mean over its items; overall = the mean of the category scores. A request that
failed scores 0 and is flagged (``error_kind``).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pandas as pd

from optbench import _core, quality, scoring
from optbench.datasets import CATEGORIES, load_test_dataset
from optbench.exceptions import ConfigError
from optbench.driver import Progress, adrive, drive, records_table, resolve_api_key, start_run, write_parquet
from optbench.options import EvaluationOptions
from optbench.results import append_csv_rows, new_run_id
from optbench.urls import without_credentials
from optbench.servers.probe import check_model

NUM_SHOTS = 2
EVALUATION_CSV = "evaluation_summary.csv"

#: Prompt templates per category, as ``str.format`` templates with the item's prompt fields.
DEFAULT_TEMPLATES: dict[str, dict[str, str]] = {
    "qa": {
        "instruction": (
            "Answer each question with a short span copied from its context. If the context "
            'does not contain the answer, answer "unanswerable".\n\n'
        ),
        "shot": "Context: {context}\nQuestion: {question}\nAnswer: {answer}\n\n",
        "target": "Context: {context}\nQuestion: {question}\nAnswer:",
    },
    "reasoning": {
        "instruction": 'Solve each math word problem step by step, then give the final number after "####".\n\n',
        "shot": "Question: {question}\nAnswer: {answer}\n\n",
        "target": "Question: {question}\nAnswer:",
    },
    "code": {
        "instruction": "",
        "shot": "{prompt}{answer}\n\n",
        "target": "{prompt}",
    },
}
DEFAULT_MAX_TOKENS = {"qa": 32, "reasoning": 320, "chat": 160, "code": 384}
DEFAULT_STOP: dict[str, list[str]] = {
    "qa": ["\n"],
    "reasoning": ["\n\nQuestion:", "\nQuestion:"],
    "chat": [],
    "code": ["\ndef ", "\nclass ", "\nif ", "\nprint"],
}


@dataclass
class EvaluationResult:
    """What an evaluation measured.

    Attributes:
        samples: one row per scored item: ``id``, ``category``, ``prompt`` (as sent: text or
            JSON messages), ``output``, ``score`` and the sub-scores (``exact``, ``f1`` for qa;
            ``correct`` and ``extracted`` for reasoning; ``similarity`` for chat;
            ``code_result`` for code), the latency (``e2e_ms``, ``ttft_ms``), ``output_tokens``,
            ``error_kind``.
        summary: ``{"categories": {cat: {"n", "score", ...}}, "overall": float, "num_failed": int}``.
        config: ``base_url``, ``model``, ``dataset`` and every option, as JSON values (what the
            Parquet metadata records).
        options: the options it ran with (``EvaluationOptions.from_dict(config)`` rebuilds them).
    """

    samples: pd.DataFrame
    summary: dict[str, Any]
    label: str
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    options: EvaluationOptions = field(default_factory=EvaluationOptions)

    @property
    def overall(self) -> float:
        """Mean of the category scores."""
        return float(self.summary["overall"])

    def category_scores(self) -> dict[str, float]:
        return {c: v["score"] for c, v in self.summary["categories"].items()}

    def summary_rows(self) -> list[dict[str, Any]]:
        """Rows for ``evaluation_summary.csv``: one per category plus ``overall``."""
        rows = []
        for cat, v in self.summary["categories"].items():
            rows.append({"label": self.label, "category": cat, **v})
        rows.append(
            {
                "label": self.label,
                "category": "overall",
                "n": int(sum(v["n"] for v in self.summary["categories"].values())),
                "score": self.overall,
            }
        )
        return rows

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Writes the per-sample rows, with the config and summary as metadata."""
        return write_parquet(self.samples, path, config=self.config, summary=self.summary, label=self.label)

    def __str__(self) -> str:
        lines = [f"{self.label}: overall quality {self.overall:.4f}"]
        for cat, v in self.summary["categories"].items():
            extra = f"  EM {v['exact']:.3f} F1 {v['f1']:.3f}" if cat == "qa" else ""
            lines.append(f"  {cat:<10} n={v['n']:<4} score {v['score']:.4f}{extra}")
        if self.summary["num_failed"]:
            lines.append(f"  {self.summary['num_failed']} generations failed (scored 0)")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _shot_answer(item: Mapping[str, Any]) -> str:
    cat = item["category"]
    if cat == "qa":
        return item["answers"][0] if item["answers"] else "unanswerable"
    if cat == "reasoning":
        return item["answer"]
    if cat == "code":
        return item["canonical_solution"]
    return item["reference"]


def render_prompt(
    item: Mapping[str, Any], shots: Sequence[Mapping[str, Any]], templates: Mapping[str, Mapping[str, str]]
) -> str | list[dict[str, str]]:
    """The prompt of ``item``: a text (qa, reasoning, code) or a conversation (chat)."""
    cat = item["category"]
    if cat == "chat":
        messages: list[dict[str, str]] = []
        for shot in shots:
            messages += [dict(m) for m in shot["prompt"]["messages"]]
            messages.append({"role": "assistant", "content": shot["reference"]})
        return messages + [dict(m) for m in item["prompt"]["messages"]]
    t = templates[cat]
    parts = [t.get("instruction", "")]
    parts += [t["shot"].format(**shot["prompt"], answer=_shot_answer(shot)) for shot in shots]
    parts.append(t["target"].format(**item["prompt"]))
    return "".join(parts)


def build_requests(
    items: Sequence[Mapping[str, Any]],
    *,
    categories: Sequence[str] | None = None,
    limit: int | None = None,
    endpoint_mode: str = "completions",
    templates: Mapping[str, Mapping[str, str]] | None = None,
    max_tokens: Mapping[str, int] | None = None,
    stop: Mapping[str, list[str]] | None = None,
) -> tuple[list[Mapping[str, Any]], list[dict[str, Any]]]:
    """Chooses the scored items (all but the shots; at most ``limit`` per category) and builds
    one request per item: ``{"prompt" | "messages", "endpoint", "body": {max_tokens, stop}}``."""
    if endpoint_mode not in ("completions", "chat"):
        raise ConfigError(f"endpoint_mode must be 'completions' or 'chat', got {endpoint_mode!r}")
    cats = list(categories) if categories else list(CATEGORIES)
    unknown = set(cats) - set(CATEGORIES)
    if unknown:
        raise ConfigError(f"unknown categories {sorted(unknown)}; choose from {list(CATEGORIES)}")
    tmpl = {**DEFAULT_TEMPLATES, **(templates or {})}
    mt = {**DEFAULT_MAX_TOKENS, **(max_tokens or {})}
    stops = {**DEFAULT_STOP, **(stop or {})}
    scored: list[Mapping[str, Any]] = []
    requests: list[dict[str, Any]] = []
    for cat in cats:
        of_cat = [it for it in items if it["category"] == cat]
        if len(of_cat) <= NUM_SHOTS:
            raise ConfigError(
                f"the dataset has {len(of_cat)} {cat} items: at least {NUM_SHOTS + 1} are needed ({NUM_SHOTS} are few-shot examples)"
            )
        shots, rest = of_cat[:NUM_SHOTS], of_cat[NUM_SHOTS:]
        for item in rest[:limit] if limit else rest:
            prompt = render_prompt(item, shots, tmpl)
            body: dict[str, Any] = {"max_tokens": mt[cat]}
            if stops[cat]:
                body["stop"] = stops[cat]
            if isinstance(prompt, list):
                req: dict[str, Any] = {"messages": prompt, "endpoint": "chat"}
            elif endpoint_mode == "chat":
                req = {"messages": [{"role": "user", "content": prompt}], "endpoint": "chat"}
            else:
                req = {"prompt": prompt, "endpoint": "completions"}
            req["body"] = body
            scored.append(item)
            requests.append(req)
    return scored, requests


def _score(samples: pd.DataFrame, items: Sequence[Mapping[str, Any]], opts: dict[str, Any]) -> None:
    """Fills the score columns of ``samples`` in place (rows aligned with ``items``)."""
    n = len(samples)
    samples["score"] = 0.0
    for col in ("exact", "f1", "similarity"):
        samples[col] = np.nan
    samples["correct"] = pd.array([pd.NA] * n, dtype="boolean")
    samples["extracted"] = pd.Series([None] * n, dtype=object)
    samples["code_result"] = pd.Series([None] * n, dtype=object)
    cats = samples["category"]
    qa = np.flatnonzero(cats == "qa").tolist()
    if len(qa):
        res = scoring.squad_v2(
            [samples.at[i, "output"].strip() for i in qa],
            [items[i]["answers"] for i in qa],
            no_answer_phrase=opts["no_answer_phrase"],
        )
        samples.loc[qa, "exact"] = res.exact
        samples.loc[qa, "f1"] = res.f1
        samples.loc[qa, "score"] = res.qa_score
    rs = np.flatnonzero(cats == "reasoning").tolist()
    if len(rs):
        outputs = [samples.at[i, "output"] for i in rs]
        correct = scoring.gsm8k_correct(outputs, [items[i]["final_answer"] for i in rs], opts["gsm8k_mode"])
        samples.loc[rs, "extracted"] = [scoring.gsm8k_extract(o, opts["gsm8k_mode"]) for o in outputs]
        samples.loc[rs, "correct"] = correct
        samples.loc[rs, "score"] = np.asarray(correct, dtype=float)
    ch = np.flatnonzero(cats == "chat").tolist()
    if len(ch):
        sims = scoring.chat_similarity(
            [samples.at[i, "output"] for i in ch], [items[i]["reference"] for i in ch], model=opts["embedding_model"]
        )
        samples.loc[ch, "similarity"] = sims
        samples.loc[ch, "score"] = sims
    cd = np.flatnonzero(cats == "code").tolist()
    if len(cd):
        code = scoring.humaneval(
            [items[i] for i in cd],
            [samples.at[i, "output"] for i in cd],
            workers=opts["sandbox_workers"],
            timeout_s=opts["code_timeout_s"],
        )
        samples.loc[cd, "code_result"] = [r.text for r in code.results]
        samples.loc[cd, "score"] = code.passed.astype(float)
        samples.attrs["code_isolation"] = code.isolation
    # A failed generation scores 0 whatever its partial text scored.
    samples.loc[samples["error_kind"].notna(), "score"] = 0.0


def _summarize(samples: pd.DataFrame) -> dict[str, Any]:
    scores = quality.category_scores(samples)
    cats: dict[str, Any] = {}
    for cat, score in scores.items():
        rows = samples[samples["category"] == cat]
        entry: dict[str, Any] = {"n": int(len(rows)), "score": score}
        if cat == "qa":
            entry["exact"] = float(rows["exact"].mean())
            entry["f1"] = float(rows["f1"].mean())
        entry["num_failed"] = int(rows["error_kind"].notna().sum())
        cats[cat] = entry
    overall = quality.overall_score(scores) if scores else 0.0
    return {"categories": cats, "overall": overall, "num_failed": int(samples["error_kind"].notna().sum())}


def start_generation(
    base_url: str,
    model: str,
    requests: list[dict[str, Any]],
    o: EvaluationOptions,
    api_key: str | None,
    journal: str | os.PathLike[str] | None = None,
) -> _core.LoadTest:
    """Starts generating one answer per request, at temperature 0, ``o.concurrency`` at a time
    (each request carries its own ``max_tokens`` and stop sequences, and ``o.extra_body``'s
    fields); each answer is appended
    to ``journal`` (JSON lines) the moment it finishes, when given."""
    return start_run(
        base_url,
        model,
        api_key=api_key,
        requests=requests,
        num_requests=len(requests),
        concurrency=o.concurrency,
        output_tokens=max(DEFAULT_MAX_TOKENS.values()),
        temperature=0.0,
        timeout_s=o.timeout_s,
        extra_body=o.extra_body,
        journal=None if journal is None else str(journal),
    )


def score_generation(
    run: _core.LoadTest,
    items: Sequence[Mapping[str, Any]],
    requests: list[dict[str, Any]],
    opts: dict[str, Any],
    label: str,
    options: EvaluationOptions,
) -> EvaluationResult:
    """Scores the answers of a finished :func:`start_generation` run against ``items`` (one
    row per item; an answer never sent or failed is a failure scored 0)."""
    return score_records(records_table(run).to_pandas(), run.stop_reason(), items, requests, opts, label, options)


def score_records(
    records: pd.DataFrame,
    stop_reason: str,
    items: Sequence[Mapping[str, Any]],
    requests: list[dict[str, Any]],
    opts: dict[str, Any],
    label: str,
    options: EvaluationOptions,
) -> EvaluationResult:
    """:func:`score_generation` over per-request records (the columns of a run's records, with
    ``request_id`` the index into ``requests``; some may come from a journal) and the run's
    ``stop_reason``."""
    rec = records.sort_values("request_id")
    rec = rec.set_index("request_id").reindex(range(len(items)))  # unsent rows (Ctrl-C) stay, as failures
    samples = pd.DataFrame(
        {
            "id": [it["id"] for it in items],
            "category": [it["category"] for it in items],
            "prompt": [
                r.get("prompt") if "prompt" in r else json.dumps(r["messages"], ensure_ascii=False) for r in requests
            ],
            "output": rec["output_text"].fillna("").to_numpy(),
            "e2e_ms": rec["e2e_ms"].to_numpy(),
            "ttft_ms": rec["ttft_ms"].to_numpy(),
            "output_tokens": rec["output_tokens"].to_numpy(),
            "finish_reason": rec["finish_reason"].to_numpy(),
            "error_kind": rec["error_kind"].where(rec["error_kind"].notna(), None).to_numpy(),
        }
    )
    samples.loc[samples["error_kind"].isna() & rec["success"].isna().to_numpy(), "error_kind"] = "not_sent"
    # An answer that is empty on purpose (e.g. a QA stop at once) is an answer, not a failure.
    samples.loc[samples["error_kind"] == "empty_output", "error_kind"] = None
    _score(samples, items, opts)
    summary = _summarize(samples)
    summary["stop_reason"] = stop_reason  # completed, or cancelled by Ctrl-C / SIGTERM
    if "code_isolation" in samples.attrs:
        # What the sandbox actually achieved on this machine, kept with the scores.
        summary["code_isolation"] = samples.attrs.pop("code_isolation")
    warns = list(filter(None, [check_model(opts["base_url"], opts["model"], opts["api_key"])]))
    if summary["num_failed"]:
        warns.append(f"{summary['num_failed']} generations failed and scored 0 (see error_kind)")
    config = {k: v for k, v in opts.items() if k != "api_key"}
    return EvaluationResult(
        samples=samples, summary=summary, label=label, config=config, warnings=warns, options=options
    )


def _load(dataset: str | os.PathLike[str] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(dataset, (str, os.PathLike)):
        return list(load_test_dataset(dataset))
    return list(dataset)


Dataset = Union[str, "os.PathLike[str]", Sequence[Mapping[str, Any]]]


def plan_evaluation(
    base_url: str,
    model: str,
    dataset: Dataset,
    options: EvaluationOptions | Mapping[str, Any] | None,
    overrides: dict[str, Any],
) -> tuple[EvaluationOptions, dict[str, Any], list[Mapping[str, Any]], list[dict[str, Any]]]:
    """The checked options, the run's settings (``opts``: the options, the target and the API
    key), the scored items and their requests."""
    o = EvaluationOptions.make(options, **overrides)
    where = str(dataset) if isinstance(dataset, (str, os.PathLike)) else "<items>"
    opts = {
        "base_url": without_credentials(base_url),
        "model": model,
        "dataset": where,
        **o.to_dict(),
        "api_key": resolve_api_key(o.api_key_env),
    }
    items, requests = build_requests(
        _load(dataset),
        categories=o.categories,
        limit=o.limit,
        endpoint_mode=o.endpoint_mode,
        templates=o.templates,
        max_tokens=o.max_tokens,
        stop=o.stop,
    )
    return o, opts, items, requests


def evaluate(
    base_url: str,
    model: str,
    options: EvaluationOptions | Mapping[str, Any] | None = None,
    *,
    dataset: Dataset = "data/test_dataset.json",
    label: str | None = None,
    progress: Progress = True,
    journal: str | os.PathLike[str] | None = None,
    **option_values: Any,
) -> EvaluationResult:
    """Generates answers for the dataset's items on a running server and scores them.

    The parameters are the fields of :class:`~optbench.options.EvaluationOptions` (each with
    its default and meaning there and in the README): pass an ``options`` object, keyword
    arguments with the same names (``limit=10, gsm8k_mode="official"``...), or both (keywords
    win).

    Args:
        dataset: the file ``optbench dataset build`` wrote (or its items).
        label: the configuration's name in tables (default: ``model``).
        progress: as for :func:`optbench.load_test`.
        journal: a JSON-lines file to which each generated answer is appended as it
            finishes, so a killed evaluation keeps the answers it paid for (its folder must
            exist; read it with :func:`optbench.results.load_journal`).
    """
    o, opts, items, requests = plan_evaluation(base_url, model, dataset, options, option_values)
    label = label or model
    run = start_generation(base_url, model, requests, o, opts["api_key"], journal)
    drive(run, progress, f"{label} evaluation", 0.25, what="evaluation")
    return score_generation(run, items, requests, opts, label, o)


async def aevaluate(
    base_url: str,
    model: str,
    options: EvaluationOptions | Mapping[str, Any] | None = None,
    *,
    dataset: Dataset = "data/test_dataset.json",
    label: str | None = None,
    progress: Progress = False,
    journal: str | os.PathLike[str] | None = None,
    **option_values: Any,
) -> EvaluationResult:
    """:func:`evaluate` for asyncio code and Jupyter: the event loop stays free while answers
    are generated and scored. Cancelling the awaiting task cancels the generation."""
    o, opts, items, requests = await asyncio.to_thread(
        plan_evaluation, base_url, model, dataset, options, option_values
    )
    label = label or model
    run = start_generation(base_url, model, requests, o, opts["api_key"], journal)
    await adrive(run, progress, f"{label} evaluation", 0.25)
    return await asyncio.to_thread(score_generation, run, items, requests, opts, label, o)


def save_evaluation(result: EvaluationResult, results_dir: str | os.PathLike[str] = "results") -> dict[str, Path]:
    """Writes ``runs/<run id>/samples.parquet`` and appends the category rows to
    ``evaluation_summary.csv``."""
    results_dir = Path(results_dir)
    run_id = new_run_id(result.label)
    parquet = result.to_parquet(results_dir / "runs" / run_id / "samples.parquet")
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    csv = results_dir / EVALUATION_CSV
    extra = {"run_id": run_id, "timestamp_utc": stamp, "samples_parquet": str(parquet.relative_to(results_dir))}
    append_csv_rows(csv, [{**row, **extra} for row in result.summary_rows()])
    return {"csv": csv, "parquet": parquet}
