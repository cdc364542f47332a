"""Golden tests: the Rust scorers against reference implementations written here from the
references' documented behaviour (the official SQuAD v2 evaluation script, the GSM8K grader,
lm-evaluation-harness's gsm8k filters and exact_match), on real data and edge cases."""

from __future__ import annotations

import collections
import json
import random
import re
import string

import pytest

from optbench import scoring
from optbench.exceptions import ConfigError

# --- SQuAD v2 reference (the official script's algorithm, in plain Python) -----------------


def ref_normalize(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", s)
    return " ".join(s.split())


def ref_tokens(s: str) -> list[str]:
    return ref_normalize(s).split() if s else []


def ref_f1(gold: str, pred: str) -> float:
    g, p = ref_tokens(gold), ref_tokens(pred)
    common = collections.Counter(g) & collections.Counter(p)
    same = sum(common.values())
    if not g or not p:
        return float(g == p)
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return (2 * precision * recall) / (precision + recall)


def ref_scores(pred: str, answers: list[str]) -> tuple[float, float]:
    golds = [a for a in answers if ref_normalize(a)] or [""]
    return (
        max(float(ref_normalize(a) == ref_normalize(pred)) for a in golds),
        max(ref_f1(a, pred) for a in golds),
    )


EDGE_PREDICTIONS = [
    "",
    " ",
    "the",
    "An apple",
    "a-team",
    "rock'n'roll",
    "U.S.A.",
    "Ünïcödé Straße",
    "ΟΔΟΣ",
    "İstanbul",
    "the\u0301 end",
    "x\u00a0y",
    "x\u3000y",
    "x\x1cy",
    "x\u200by",
    "«quoted»",
    "same same same",
    "café",
    "cafe\u0301",
    "1,000",
    "$5.00",
    "the the the",
    "The Beatles",
    "ﬁne",
    "ǅemal",
    "10\u00bd",
    "٣ apples",
    "_under_score_",
    "tab\tnew\nline",
    "e\u0301 the",
]


@pytest.fixture(scope="module")
def squad_questions(shared_dir):
    data = json.loads((shared_dir / "datasets" / "squad_v2_dev_subset.json").read_text())
    return [qa for article in data["data"] for para in article["paragraphs"] for qa in para["qas"]]


def test_squad_equals_the_official_algorithm_on_real_answers_and_edge_cases(squad_questions):
    rng = random.Random(0)
    all_answers = [a["text"] for q in squad_questions for a in q["answers"]]
    preds, golds = [], []
    for q in squad_questions:
        answers = [a["text"] for a in q["answers"]]
        candidates = [
            *(answers[:1]),
            rng.choice(all_answers),
            (answers[0] if answers else "nothing").upper() + "!",
            "the " + (answers[0] if answers else ""),
            " ".join((answers[0] if answers else "a b c").split()[:1]),
            rng.choice(EDGE_PREDICTIONS),
        ]
        for c in candidates:
            preds.append(c)
            golds.append(answers)
    for e in EDGE_PREDICTIONS:
        for g in (["the"], [e], ["An apple a day"], []):
            preds.append(e)
            golds.append(g)
    got = scoring.squad_v2(preds, golds, no_answer_phrase=None)
    mismatches = []
    for i, (p, g) in enumerate(zip(preds, golds)):
        em, f1 = ref_scores(p, g)
        if got.exact[i] != em or got.f1[i] != f1:  # exact float equality, not approx
            mismatches.append((p, g, (got.exact[i], got.f1[i]), (em, f1)))
    assert not mismatches, mismatches[:5]
    assert len(preds) > 4000
    for e in EDGE_PREDICTIONS:
        assert scoring.squad_normalize(e) == ref_normalize(e), e


def test_squad_summary_matches_the_official_eval_dict(squad_questions):
    preds = [q["answers"][0]["text"] if q["answers"] and i % 3 else "" for i, q in enumerate(squad_questions)]
    golds = [[a["text"] for a in q["answers"]] for q in squad_questions]
    s = scoring.squad_v2(preds, golds).summary()
    ref = [ref_scores(p, g) for p, g in zip(preds, golds)]
    has = [bool(g) for g in golds]
    assert s["total"] == len(squad_questions) == 706
    assert s["exact"] == pytest.approx(100 * sum(e for e, _ in ref) / len(ref), abs=1e-12)
    assert s["f1"] == pytest.approx(100 * sum(f for _, f in ref) / len(ref), abs=1e-12)
    assert s["HasAns_total"] == sum(has) == 386 and s["NoAns_total"] == 320
    no_ans_exact = [e for (e, _), h in zip(ref, has) if not h]
    assert s["NoAns_exact"] == pytest.approx(100 * sum(no_ans_exact) / len(no_ans_exact), abs=1e-12)
    assert s["qa_score"] == pytest.approx((s["exact"] + s["f1"]) / 200)


def test_unanswerable_phrase_is_configurable():
    assert scoring.squad_v2(["Unanswerable."], [[]]).exact[0] == 1.0
    assert scoring.squad_v2(["Unanswerable."], [[]], no_answer_phrase=None).exact[0] == 0.0
    assert scoring.squad_v2(["no answer"], [[]], no_answer_phrase="No answer").exact[0] == 1.0
    with pytest.raises(ConfigError, match="one list per prediction"):
        scoring.squad_v2(["a", "b"], [["a"]])


# --- GSM8K references ---------------------------------------------------------------------

OFFICIAL_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def ref_official(text: str) -> str:
    m = OFFICIAL_RE.search(text)
    return m.group(1).strip().replace(",", "") if m else "[invalid]"


def ref_strict(text: str) -> str:
    m = OFFICIAL_RE.findall(text)
    return m[0] if m else "[invalid]"


def ref_flexible(text: str) -> str:
    m = FLEXIBLE_RE.findall(text)
    if not m:
        return "[invalid]"
    last = m[-1]
    return [g for g in last if g][0] if isinstance(last, tuple) else last


def ref_lmeval_match(pred: str, target: str) -> bool:
    for pattern in IGNORE:
        pred, target = re.sub(pattern, "", pred), re.sub(pattern, "", target)
    return pred.lower() == target.lower()


@pytest.fixture(scope="module")
def gsm8k_texts(shared_dir):
    rows = [json.loads(line) for line in (shared_dir / "datasets" / "gsm8k_test.jsonl").read_text().splitlines()]
    rng = random.Random(1)
    texts = [r["answer"] for r in rows]
    finals = [r["answer"].split("####")[-1].strip() for r in rows]
    # Completions as models write them.
    for f in finals[:300]:
        texts += [
            f"The answer is {f}.",
            f"So she pays ${f}.",
            f"#### {f}\n",
            f"Result: -{f}, not {rng.randint(0, 99)}",
            f"{rng.randint(1, 9)},{rng.randint(100, 999)} items and {f}.5 km",
            f"answer is: {f}\n",
            f"...$ {f}... #### {f}.",
            "no numbers at all",
            f"1.2.3 then {f},",
            f".{f} ,, -- $$",
        ]
    return texts, finals


def test_gsm8k_official_and_lmeval_extraction_equal_their_references(gsm8k_texts):
    texts, _ = gsm8k_texts
    for mode, ref in (("official", ref_official), ("lmeval-strict", ref_strict), ("lmeval-flexible", ref_flexible)):
        bad = [(t, scoring.gsm8k_extract(t, mode), ref(t)) for t in texts if scoring.gsm8k_extract(t, mode) != ref(t)]
        assert not bad, (mode, bad[:3])


def test_gsm8k_lmeval_exact_match_equals_the_reference(gsm8k_texts):
    texts, finals = gsm8k_texts
    rng = random.Random(2)
    golds = [rng.choice(finals) for _ in texts]
    for mode, extract in (("lmeval-strict", ref_strict), ("lmeval-flexible", ref_flexible)):
        got = scoring.gsm8k_correct(texts, golds, mode)
        want = [ref_lmeval_match(extract(t), g) for t, g in zip(texts, golds)]
        assert got == want
        # And every real solution is judged correct against its own final answer.
    solutions = texts[: len(finals)]
    assert all(scoring.gsm8k_correct(solutions, solutions, "lmeval-strict"))
    assert all(scoring.gsm8k_correct(solutions, finals, "official"))
    assert all(scoring.gsm8k_correct(solutions, finals, "marked-or-last"))


def test_gsm8k_marked_or_last_chain():
    cases = [
        ("Step... #### 1,234", "1234", True),
        ("The answer is $1,000.", "1000", True),
        ("the answer is 12 apples", "12", True),
        ("I think 3, then 4, final: 5.", "5", True),
        ("It is -7.", "-7", True),
        ("It is 2.50 dollars", "2.5", True),
        ("#### 18 but the answer is 20", "18", True),  # #### comes first in the chain
        ("nothing", "0", False),
        ("12 and 13", "12", False),  # the last number wins
    ]
    for text, gold, ok in cases:
        assert scoring.gsm8k_correct(text, gold) is ok, (text, gold)
    assert scoring.gsm8k_extract("no digits", "marked-or-last") == "[invalid]"
    # The mode's former name still works, with a deprecation warning.
    with pytest.warns(DeprecationWarning, match="'default' is deprecated: use 'marked-or-last'"):
        assert scoring.gsm8k_extract("so #### 7", "default") == "7"
    with pytest.raises(ConfigError, match="gsm8k mode"):
        scoring.gsm8k_extract("1", "fuzzy")


def test_pass_at_k():
    assert scoring.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert scoring.pass_at_k(5, 5, 2) == 1.0
    assert scoring.pass_at_k(200, 0, 10) == 0.0
    # 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert scoring.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    with pytest.raises(ConfigError):
        scoring.pass_at_k(3, 4, 1)


def test_chat_similarity_with_the_real_model(shared_dir):
    model = str(shared_dir / "models" / "all-MiniLM-L6-v2")
    sims = scoring.chat_similarity(
        ["I can help you bake bread.", "The stock market fell today.", ""],
        ["I can help you bake bread.", "Here is a recipe for sourdough.", "Hello"],
        model=model,
    )
    assert sims[0] == pytest.approx(1.0, abs=1e-6)
    assert -1.0 <= sims[1] < 0.5 and -1.0 <= sims[2] <= 1.0
    with pytest.raises(ConfigError):
        scoring.chat_similarity(["a"], [], model=model)
