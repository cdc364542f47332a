"""Quality scorers, computed in Rust and equal to their references.

- :func:`squad_v2`: the official SQuAD v2 exact match and F1 (``evaluate-v2.0.py``);
- :func:`gsm8k_extract` / :func:`gsm8k_correct`: GSM8K final answers in the modes
  ``marked-or-last`` (the number after ``####``, else after "answer is", else the last number;
  numeric comparison), ``official`` (the GSM8K repository's grader), ``lmeval-strict`` and
  ``lmeval-flexible`` (lm-evaluation-harness's filters and exact-match normalisation).
  ``default`` is the former name of ``marked-or-last`` (deprecated);
- :func:`pass_at_k`: HumanEval's unbiased estimator.

- :func:`chat_similarity`: cosine similarity of all-MiniLM-L6-v2 sentence embeddings;
- :func:`humaneval`: HumanEval pass/fail through the sandbox.
"""

from __future__ import annotations

import math
import os
import typing
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, overload

import numpy as np

from optbench import _core
from optbench.exceptions import ConfigError
from optbench.options import RENAMED_VALUES, Gsm8kMode

#: The answer QA prompts ask for when the context does not contain one; it scores as "".
DEFAULT_NO_ANSWER_PHRASE = "unanswerable"

#: The GSM8K extraction modes (their type is ``optbench.options.Gsm8kMode``).
GSM8K_MODES: tuple[str, ...] = typing.get_args(Gsm8kMode)


def _gsm8k_mode(mode: str) -> str:
    """``mode``, or the current name of a former one (with a deprecation warning)."""
    renamed = RENAMED_VALUES["gsm8k_mode"]
    if mode in renamed:
        warnings.warn(
            f"GSM8K mode {mode!r} is deprecated: use {renamed[mode]!r} (the same thing)",
            DeprecationWarning,
            stacklevel=3,
        )
        return renamed[mode]
    return mode


@dataclass(frozen=True)
class SquadV2Scores:
    """Per-question SQuAD v2 scores (0/1 exact match, F1 in 0..1) and the official summary."""

    exact: np.ndarray
    f1: np.ndarray
    has_answer: np.ndarray

    def summary(self) -> dict[str, Any]:
        """The official script's output keys (percentages), plus ``qa_score`` = (EM + F1) / 2,
        the QA category's score (in 0..1)."""
        out: dict[str, Any] = {
            "exact": 100.0 * float(self.exact.mean()) if len(self.exact) else 0.0,
            "f1": 100.0 * float(self.f1.mean()) if len(self.f1) else 0.0,
            "total": int(len(self.exact)),
        }
        for name, mask in (("HasAns", self.has_answer), ("NoAns", ~self.has_answer)):
            if mask.any():
                out[f"{name}_exact"] = 100.0 * float(self.exact[mask].mean())
                out[f"{name}_f1"] = 100.0 * float(self.f1[mask].mean())
                out[f"{name}_total"] = int(mask.sum())
        out["qa_score"] = (out["exact"] + out["f1"]) / 200.0
        return out

    @property
    def qa_score(self) -> np.ndarray:
        """Per question: (EM + F1) / 2."""
        return (self.exact + self.f1) / 2.0


def squad_v2(
    predictions: Sequence[str],
    gold_answers: Sequence[Sequence[str]],
    *,
    no_answer_phrase: str | None = DEFAULT_NO_ANSWER_PHRASE,
) -> SquadV2Scores:
    """Scores predictions against gold answer texts (``[]`` for an unanswerable question).

    ``no_answer_phrase``: a prediction whose normal form equals this phrase's (e.g. the model
    said "Unanswerable.") is read as the empty answer; ``None`` turns that off.
    """
    exact, f1, has = _core.squad_v2_scores(
        [str(p) for p in predictions], [[str(a) for a in g] for g in gold_answers], no_answer_phrase
    )
    return SquadV2Scores(np.asarray(exact), np.asarray(f1), np.asarray(has, dtype=bool))


def squad_normalize(text: str) -> str:
    """The official ``normalize_answer``."""
    return _core.squad_normalize(text)


def gsm8k_extract(text: str, mode: str = "marked-or-last") -> str:
    """The final answer in ``text`` (``[invalid]`` when none); see the module docs for modes."""
    return _core.gsm8k_extract(text, _gsm8k_mode(mode))


@overload
def gsm8k_correct(prediction: str, gold: str, mode: str = ...) -> bool: ...  # type: ignore[overload-overlap]
@overload
def gsm8k_correct(prediction: Sequence[str], gold: Sequence[str], mode: str = ...) -> list[bool]: ...
def gsm8k_correct(prediction: Any, gold: Any, mode: str = "marked-or-last") -> Any:
    """Whether the prediction's answer matches ``gold`` (a final answer or a whole GSM8K
    solution). Takes one pair or two equal-length lists."""
    mode = _gsm8k_mode(mode)
    if isinstance(prediction, str):
        return _core.gsm8k_correct([prediction], [str(gold)], mode)[0]
    return _core.gsm8k_correct(list(prediction), list(gold), mode)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for ``n`` samples with ``c`` correct: ``1 - prod(1 - k/i, i=n-c+1..n)``."""
    return _core.pass_at_k(n, c, k)


_EMBEDDERS: dict[str, Any] = {}


def chat_similarity(predictions: Sequence[str], references: Sequence[str], *, model: str | None = None) -> np.ndarray:
    """Cosine similarity of each prediction's and reference's all-MiniLM-L6-v2 embedding (ONNX
    Runtime, as sentence-transformers computes them). ``model``: a local folder or a hub id
    (default: ``$OPTBENCH_EMBEDDING_MODEL``, else ``optbench.embeddings.DEFAULT_MODEL`` from the
    hub); the loaded model is reused."""
    from optbench.embeddings import DEFAULT_MODEL, Embedder

    if len(predictions) != len(references):
        raise ConfigError(f"{len(predictions)} predictions but {len(references)} references")
    key = str(model or os.environ.get("OPTBENCH_EMBEDDING_MODEL") or DEFAULT_MODEL)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = Embedder(key)
    return np.asarray(_EMBEDDERS[key].similarity(list(predictions), list(references)), dtype=float)


@dataclass(frozen=True)
class HumanEvalScores:
    """One sandbox result per completion, pass@1, and the isolation the sandbox achieved."""

    results: list[Any]
    isolation: _core.Isolation

    @property
    def passed(self) -> np.ndarray:
        return np.array([r.status == "passed" for r in self.results], dtype=bool)

    @property
    def pass_at_1(self) -> float:
        return float(self.passed.mean()) if self.results else 0.0


def humaneval(
    items: Sequence[Any],
    completions: Sequence[str],
    *,
    workers: int | None = None,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int | None = None,
    python: str | os.PathLike[str] | None = None,
    fork_server: bool = True,
) -> HumanEvalScores:
    """Runs each HumanEval item's ``check(entry_point)`` against ``prompt + completion`` in the
    sandbox (own process group, resource limits, timeout, empty environment, throwaway
    directory, no network where possible, unprivileged uid under root; see
    :func:`optbench.sandbox.run_tests`): the completion in one process, the test in another.
    A completion passes when ``check`` returned.

    ``items`` are HumanEval rows (``prompt``, ``test``, ``entry_point``) or code items of the
    evaluation dataset (whose ``prompt`` is ``{"prompt": ...}``); ``completions[i]`` completes
    ``items[i]``'s prompt. ``cpu_s`` (CPU-time limit) defaults to ``timeout_s``. ``fork_server``
    as in :func:`optbench.sandbox.run_programs` (default True: a fork server per worker)."""
    from optbench import sandbox

    if len(items) != len(completions):
        raise ConfigError(f"{len(items)} items but {len(completions)} completions: give one completion per item")
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    tests = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfigError(f"item {i} must be a HumanEval item (a dict), got {type(item).__name__}")
        values = dict(item)
        if isinstance(values.get("prompt"), Mapping):  # a code item of the evaluation dataset
            values["prompt"] = values["prompt"].get("prompt")
        missing = [k for k in ("prompt", "test", "entry_point") if values.get(k) is None]
        if missing:
            raise ConfigError(
                f"item {i} is missing {', '.join(repr(k) for k in missing)} "
                "(a HumanEval item needs prompt, test and entry_point)"
            )
        wrong = [(repr(k), values[k]) for k in ("prompt", "test", "entry_point") if not isinstance(values[k], str)]
        wrong += [] if isinstance(completions[i], str) else [("its completion", completions[i])]
        if wrong:
            raise ConfigError(f"item {i}: {wrong[0][0]} must be a string, got {type(wrong[0][1]).__name__}")
        tests.append((values["prompt"], completions[i], values["test"], values["entry_point"]))
    # The completion and the test run in two processes, so that a completion cannot forge a
    # pass (see optbench.sandbox.run_tests).
    results, isolation = sandbox.run_tests(
        tests,
        workers=workers,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        cpu_s=max(1, int(timeout_s)) if cpu_s is None else cpu_s,
        python=python,
        fork_server=fork_server,
    )
    return HumanEvalScores(results=results, isolation=isolation)
