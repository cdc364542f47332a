"""The quality constraint of a search (``SearchOptions.quality_dataset``): the highest
concurrency that meets the SLO *and* keeps the answers' quality.

After the SLO search (:func:`optbench.search.run_search`) has found its highest passing
concurrency, the answers to a slice of the quality dataset (``quality_dataset``,
``quality_categories``, ``quality_limit`` per category) are generated at concurrency 1 once and
at that concurrency, at temperature 0, and scored by the evaluation's scorers; the two are
compared as :mod:`optbench.under_load` does (paired per item).

**A quality drop** at a level is both: the slice's overall score at that level is below
``(1 - quality_max_drop)`` (95% by default) of its score at concurrency 1 (the project's 5%
rule, :mod:`optbench.quality`), *and* the paired bootstrap interval of the overall difference
(level minus 1, at the search's ``confidence``) lies wholly below 0. A score below 95% whose
interval reaches 0 is not called a drop (it may be noise), nor is a significant loss smaller
than 5%.

**Stepping down.** When the highest passing level drops, the check bisects among the levels
the SLO search judged PASS, between the highest level known to keep quality (concurrency 1 is
the reference: it keeps quality by definition, without a check) and the lowest known to drop,
at most ``quality_max_steps`` checks in all (the first included). The answer, ``quality_level``,
is the highest checked level that keeps quality (or concurrency 1 when it passed the SLO and
every checked level dropped); levels left between it and a dropping one when the steps run out
are named in the notes. ``bound_by`` is ``"slo"`` when the highest passing level keeps quality,
``"quality"`` when it does not. The check runs after the search, outside its ``time_budget_s``.

Each checked level's answers (both passes, item by item) go to ``quality_<level>.parquet`` in
the search's folder; the levels table gets the quality columns and the plot marks the checked
levels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from optbench.evaluate import plan_evaluation
from optbench.options import EvaluationOptions
from optbench.under_load import QualityUnderLoadResult, compare_answers, generate_answers

if TYPE_CHECKING:
    from optbench.search import SearchOptions, SearchResult

#: The verdicts of a checked level.
KEEPS, DROPS, REFERENCE = "keeps quality", "quality drop", "reference"


def is_drop(summary: Mapping[str, Any], max_drop: float) -> bool:
    """Whether a quality-under-load summary shows a drop: the overall score at N below
    ``(1 - max_drop)`` of the score at 1 and the difference's interval wholly below 0."""
    o = summary["overall"]
    return bool(o["score_n"] < (1 - max_drop) * o["score_1"] and o["high"] < 0)


def check_quality(
    result: SearchResult,
    base_url: str,
    model: str,
    opts: SearchOptions,
    *,
    evaluation: EvaluationOptions | Mapping[str, Any] | None = None,
    api_key_env: str | None = None,
    label: str,
    say: Callable[[str], None] | None = None,
) -> None:
    """Runs the quality check on a finished search ``result`` (see the module's doc) and fills
    its ``quality_level``, ``bound_by``, ``quality``, ``quality_results``, the levels' quality
    columns and notes. ``evaluation``: how the slice is prompted and scored (the search's
    ``quality_categories`` and ``quality_limit``, when set, replace its ``categories`` and ``limit``)."""
    from optbench.search import PASS, level_text

    assert opts.quality_dataset is not None
    started = time.monotonic()
    values: dict[str, Any] = {
        k: v for k, v in (("categories", opts.quality_categories), ("limit", opts.quality_limit)) if v is not None
    }
    if api_key_env is not None:
        values["api_key_env"] = api_key_env
    o, plan, items, requests = plan_evaluation(base_url, model, opts.quality_dataset, evaluation, values)
    say = say or (lambda line: None)
    passing = sorted(float(r["level"]) for _, r in result.levels.iterrows() if r["verdict"] == PASS)
    passing = [lv for lv in passing if result.highest_passing is not None and lv <= result.highest_passing]
    checked: dict[float, dict[str, Any]] = {}
    results: dict[float, QualityUnderLoadResult] = {}
    alone: list[Any] = []

    def check(level: float) -> bool:
        """Whether ``level`` keeps quality (generating the answers at 1 the first time)."""
        if not alone:
            say(f"quality: the slice's {len(requests)} answers at concurrency 1")
            alone.append(generate_answers(base_url, model, o, plan, items, requests, 1, label=label))
        say(f"quality: the slice's answers at concurrency {int(level)}")
        loaded = generate_answers(base_url, model, o, plan, items, requests, int(level), label=label)
        r = compare_answers(
            alone[0], loaded, concurrency=int(level), label=label, base_url=base_url, model=model,
            api_key=plan["api_key"], level=opts.confidence,
        )  # fmt: skip
        drop = is_drop(r.summary, opts.quality_max_drop)
        results[level] = r
        ov = r.summary["overall"]
        checked[level] = {
            "verdict": DROPS if drop else KEEPS,
            "score_1": ov["score_1"],
            "score": ov["score_n"],
            "change": ov["change"],
            "change_low": ov["low"],
            "change_high": ov["high"],
            "identical_share": r.summary["identical_share"],
        }
        say(
            f"quality at concurrency {int(level)}: {ov['score_n']:.4f} against {ov['score_1']:.4f} alone, change "
            f"{ov['change']:+.4f} [{ov['low']:+.4f}, {ov['high']:+.4f}]: {checked[level]['verdict']}"
        )
        return not drop

    notes: list[str] = []
    good, bad = -1, len(passing)  # indices into passing: the highest known to keep, the lowest known to drop
    if passing and passing[0] == 1:
        good = 0  # concurrency 1 is the reference
    steps = 0
    if passing and passing[-1] != 1:
        steps += 1
        if check(passing[-1]):
            good = len(passing) - 1
        else:
            bad = len(passing) - 1
    while bad - good > 1 and steps < opts.quality_max_steps:
        mid = (good + bad) // 2
        steps += 1
        if check(passing[mid]):
            good = mid
        else:
            bad = mid
    if bad - good > 1 and bad < len(passing):
        unchecked = [level_text(lv) for lv in passing[good + 1 : bad]]
        notes.append(
            f"quality: quality_max_steps ({opts.quality_max_steps}) reached; passing levels {', '.join(unchecked)} "
            "were not checked: the answer is the highest level checked to keep quality"
        )
    few = [lv for lv in checked if lv > len(requests)]
    if few:
        notes.append(
            f"quality: the slice has {len(requests)} prompts, fewer than concurrency {', '.join(map(level_text, few))}: "
            f"at most {len(requests)} requests were in flight there (give more prompts: quality_limit)"
        )
    result.quality_level = passing[good] if good >= 0 else None
    result.bound_by = None if result.highest_passing is None else "slo" if bad == len(passing) else "quality"
    result.quality_results = results
    ref: dict[str, Any] = {"verdict": REFERENCE}
    if alone:
        s1 = alone[0].overall
        ref.update(score_1=s1, score=s1, change=0.0, change_low=0.0, change_high=0.0, identical_share=1.0)
    if passing and passing[0] == 1:
        checked.setdefault(1.0, ref)
    _add_columns(result, checked)
    result.notes.extend(notes)
    result.quality = {
        "dataset": opts.quality_dataset,
        "categories": opts.quality_categories,
        "limit": opts.quality_limit,
        "num_prompts": len(requests),
        "max_drop": opts.quality_max_drop,
        "max_steps": opts.quality_max_steps,
        "rule": f"score below {1 - opts.quality_max_drop:g} x concurrency 1's and the paired bootstrap interval "
        "of the difference wholly below 0",
        "checked": {level_text(k): v for k, v in sorted(checked.items())},
        "elapsed_s": time.monotonic() - started,
    }


def _add_columns(result: SearchResult, checked: Mapping[float, Mapping[str, Any]]) -> None:
    """The levels table's quality columns (empty for the levels not checked)."""
    lv = result.levels
    if not len(lv):
        return
    names = ("score_1", "score", "change", "change_low", "change_high", "identical_share")
    for name in names:
        lv[f"quality_{name}"] = [checked.get(float(x), {}).get(name, math.nan) for x in lv["level"]]
    lv["quality_verdict"] = [checked.get(float(x), {}).get("verdict") for x in lv["level"]]
    for row in (result.at_highest, result.at_first_failing):
        if row is not None:
            got = checked.get(float(row["level"]), {})
            row.update({f"quality_{n}": got.get(n, math.nan) for n in names})
            row["quality_verdict"] = got.get("verdict")


__all__ = ["DROPS", "KEEPS", "REFERENCE", "check_quality", "is_drop"]
