"""Quality scorers, computed in Rust and equal to their references.

- :func:`squad_v2`: the official SQuAD v2 exact match and F1 (``evaluate-v2.0.py``);
- :func:`gsm8k_extract` / :func:`gsm8k_correct`: GSM8K final answers in the modes
  ``default`` (the brief's chain, numeric comparison), ``official`` (the GSM8K repository's
  grader), ``lmeval-strict`` and ``lmeval-flexible`` (lm-evaluation-harness's filters and
  exact-match normalisation);
- :func:`pass_at_k`: HumanEval's unbiased estimator.

The chat (embedding similarity) and code (sandboxed execution) scorers are not built yet:
:func:`chat_similarity` and :func:`humaneval` raise ``NotImplementedError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, overload

import numpy as np

from optbench import _core

#: The answer QA prompts ask for when the context does not contain one; it scores as "".
DEFAULT_NO_ANSWER_PHRASE = "unanswerable"

GSM8K_MODES = ("default", "official", "lmeval-strict", "lmeval-flexible")


@dataclass(frozen=True)
class SquadV2Scores:
    """Per-question SQuAD v2 scores (0/1 exact match, F1 in 0..1) and the official summary."""

    exact: np.ndarray
    f1: np.ndarray
    has_answer: np.ndarray

    def summary(self) -> dict[str, Any]:
        """The official script's output keys (percentages), plus ``qa_score`` = (EM + F1) / 2,
        the brief's QA score (in 0..1)."""
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


def gsm8k_extract(text: str, mode: str = "default") -> str:
    """The final answer in ``text`` (``[invalid]`` when none); see the module docs for modes."""
    return _core.gsm8k_extract(text, mode)


@overload
def gsm8k_correct(prediction: str, gold: str, mode: str = ...) -> bool: ...
@overload
def gsm8k_correct(prediction: Sequence[str], gold: Sequence[str], mode: str = ...) -> list[bool]: ...
def gsm8k_correct(prediction: Any, gold: Any, mode: str = "default") -> Any:
    """Whether the prediction's answer matches ``gold`` (a final answer or a whole GSM8K
    solution). Takes one pair or two equal-length lists."""
    if isinstance(prediction, str):
        return _core.gsm8k_correct([prediction], [str(gold)], mode)[0]
    return _core.gsm8k_correct(list(prediction), list(gold), mode)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for ``n`` samples with ``c`` correct: ``1 - prod(1 - k/i, i=n-c+1..n)``."""
    return _core.pass_at_k(n, c, k)


def chat_similarity(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings. Not built yet."""
    raise NotImplementedError("chat_similarity (ONNX embeddings) is not built yet: see issue 3")


def humaneval(*args: Any, **kwargs: Any) -> Any:
    """HumanEval pass@1 through the sandbox. Not built yet."""
    raise NotImplementedError("the HumanEval sandbox is not built yet: see issue 3")
