"""The quality-evaluation dataset: 520 prompts built reproducibly from public sources.

:func:`build_test_dataset` selects, with a fixed seed, 200 QA items from SQuAD v2 validation
(about half unanswerable), 120 reasoning items from GSM8K test, 120 chat items from Anthropic
HH-RLHF (harmless-base) test and 80 code items from HumanEval, and writes them to one JSON
file. :func:`load_test_dataset` reads that file back and validates it. The sources come from the
Hugging Face hub (``source="hub"``, needs the optional ``datasets`` library) or from a local
folder holding the files below, each either plain or gzipped (``X`` or ``X.gz``)::

    squad_v2_dev_subset.json            official SQuAD v2 JSON: version / data[] / paragraphs[] / qas[]
    gsm8k_test.jsonl                    {"question", "answer"}; the final answer follows "#### "
    hh_rlhf_harmless_base_test.jsonl    {"chosen", "rejected"}: "\\n\\nHuman: ...\\n\\nAssistant: ..." turns
    HumanEval.jsonl                     {"task_id", "prompt", "canonical_solution", "test", "entry_point"}

Selection
---------
Each category draws from its own ``random.Random`` seeded from ``seed`` and the category name,
so changing one category's count (or its source) never changes another category's items.
Items keep the sampled order. QA is stratified: half the QA items (rounded down) are
unanswerable, the rest answerable; if the source has too few of one kind the other kind fills
the gap and the returned summary says so in ``notes``. The two strata are then shuffled
together, so answerable and unanswerable questions are interleaved. Chat rows whose ``chosen``
transcript does not parse into non-empty, alternating Human/Assistant turns that start with
Human and end with Assistant are skipped and counted, never an error.

Output file (the contract for the evaluator)
--------------------------------------------
Written with ``json.dump(..., ensure_ascii=False, indent=1)`` plus a trailing newline, so two
builds from the same inputs and seed are byte-identical::

    {
     "version": 1,
     "seed": 0,
     "source": "hub" | "<the local folder as given>",
     "counts": {"qa": 200, "reasoning": 120, "chat": 120, "code": 80},
     "items": [ITEM, ...]          # all qa items, then reasoning, then chat, then code
    }

Every ITEM has ``id`` (unique, stable), ``category``, ``prompt`` (a dict of prompt parts) and
``reference``, plus the scoring fields of its category:

* ``qa``: id ``qa-<SQuAD id>``; prompt ``{"context", "question"}``; ``answers``: the gold
  answer texts as in the official data (duplicates kept, ``[]`` when unanswerable);
  ``is_impossible`` (bool, true exactly when ``answers`` is empty); ``reference`` = ``answers``.
* ``reasoning``: id ``reasoning-<i>``; prompt ``{"question"}``; ``answer``: the full GSM8K
  solution; ``final_answer``: the text after ``####``, stripped, commas removed;
  ``reference`` = ``final_answer``.
* ``chat``: id ``chat-<i>``; prompt ``{"messages": [{"role", "content"}, ...]}``: the
  ``chosen`` conversation before its final Assistant turn, roles ``user`` / ``assistant``,
  contents stripped, alternating, starting and ending with ``user``; ``reference``: that final
  Assistant turn (stripped, non-empty).
* ``code``: id ``code-<task_id>`` (e.g. ``code-HumanEval/0``); prompt ``{"prompt"}``: the
  HumanEval prompt; ``test``, ``entry_point``, ``canonical_solution``, ``task_id``;
  ``reference`` = ``canonical_solution``.

``<i>`` is the 0-based row index in the GSM8K / HH-RLHF source (blank lines not counted), which
is the same for the local files and the hub splits.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optbench.exceptions import ConfigError, DatasetError
from optbench.jsonl import read_jsonl, read_text

#: Version of the output file's schema; :func:`load_test_dataset` accepts only this one.
SCHEMA_VERSION = 1

#: The categories in the order their items appear in the file.
CATEGORIES: tuple[str, ...] = ("qa", "reasoning", "chat", "code")

#: Items per category in the standard 520-item dataset.
DEFAULT_COUNTS: dict[str, int] = {"qa": 200, "reasoning": 120, "chat": 120, "code": 80}

DEFAULT_OUTPUT = "data/test_dataset.json"

#: The local file of each category (each also accepted with or without a ``.gz`` suffix).
LOCAL_FILES: dict[str, str] = {
    "qa": "squad_v2_dev_subset.json",
    "reasoning": "gsm8k_test.jsonl",
    "chat": "hh_rlhf_harmless_base_test.jsonl.gz",
    "code": "HumanEval.jsonl.gz",
}


@dataclass(frozen=True)
class HubSplit:
    """Where a category's rows live on the Hugging Face hub."""

    repo: str
    split: str
    config: str | None = None
    data_dir: str | None = None

    def describe(self) -> str:
        extra = f" config {self.config}" if self.config else ""
        extra += f" data_dir {self.data_dir}" if self.data_dir else ""
        return f"hub dataset {self.repo}{extra} split {self.split}"


HUB_SPLITS: dict[str, HubSplit] = {
    "qa": HubSplit("rajpurkar/squad_v2", "validation"),
    "reasoning": HubSplit("openai/gsm8k", "test", config="main"),
    "chat": HubSplit("Anthropic/hh-rlhf", "test", data_dir="harmless-base"),
    "code": HubSplit("openai/openai_humaneval", "test"),
}

_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "reasoning": ("question", "answer"),
    "chat": ("chosen",),
    "code": ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
}

# A turn marker of an HH-RLHF transcript; "Human:" inside a turn (not after a blank line) is text.
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class _Rows:
    """A source's rows in their original order, each with its location for error messages."""

    origin: str  # a file path, or a hub split's description
    rows: list[dict[str, Any]]
    locations: list[str]  # "line 3" (JSONL), "row 3" (hub), "data[0].paragraphs[1].qas[2]" (SQuAD)

    def where(self, index: int) -> str:
        return f"{self.origin} {self.locations[index]}"


# --------------------------------------------------------------------------- reading sources


def _candidates(folder: Path, name: str) -> list[Path]:
    """The accepted names of one file: plain first, then gzipped."""
    base = name[: -len(".gz")] if name.endswith(".gz") else name
    return [folder / base, folder / (base + ".gz")]


def _resolve_local_files(folder: Path, categories: list[str]) -> dict[str, Path]:
    """Finds each category's file in ``folder``; one error lists every missing file."""
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: dataset source folder not found (give 'hub' or a folder with "
            f"{', '.join(LOCAL_FILES[c] for c in CATEGORIES)})"
        )
    found: dict[str, Path] = {}
    missing: list[str] = []
    for category in categories:
        paths = _candidates(folder, LOCAL_FILES[category])
        existing = [p for p in paths if p.is_file()]
        if existing:
            found[category] = existing[0]
        else:
            missing.append(" or ".join(str(p) for p in paths))
    if missing:
        raise DatasetError(f"{folder}: missing dataset file(s): expected {'; '.join(missing)}")
    return found


def _read_jsonl(path: Path) -> _Rows:
    """Reads a JSONL file of objects; errors name the file and line."""
    rows: list[dict[str, Any]] = []
    locations: list[str] = []
    for lineno, value in read_jsonl(path):
        if not isinstance(value, dict):
            raise DatasetError(f"{path} line {lineno}: expected a JSON object, got {type(value).__name__}")
        rows.append(value)
        locations.append(f"line {lineno}")
    return _Rows(str(path), rows, locations)


def _read_json(path: Path) -> Any:
    """A JSON file's value (gunzipped when its name ends with ``.gz``); errors name the file and line."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not valid JSON (nested too deeply)") from None


def _read_squad_json(path: Path) -> _Rows:
    """Flattens an official SQuAD v2 JSON file into one row per question."""
    document = _read_json(path)
    expected = "a SQuAD v2 JSON object {'version', 'data': [{'paragraphs': [{'context', 'qas': [...]}]}]}"
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        got = f"keys {sorted(document)}" if isinstance(document, dict) else type(document).__name__
        raise DatasetError(f"{path}: expected {expected}; got {got} (no 'data' list)")
    rows: list[dict[str, Any]] = []
    locations: list[str] = []
    for a, article in enumerate(document["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DatasetError(f"{path} data[{a}]: missing key 'paragraphs' (expected a list)")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise DatasetError(f"{path} {where}: missing key 'context' (expected a string)")
            if not isinstance(paragraph.get("qas"), list):
                raise DatasetError(f"{path} {where}: missing key 'qas' (expected a list)")
            for q, qa in enumerate(paragraph["qas"]):
                qwhere = f"{where}.qas[{q}]"
                if not isinstance(qa, dict):
                    raise DatasetError(f"{path} {qwhere}: expected an object, got {type(qa).__name__}")
                for key in ("id", "question", "answers"):
                    if key not in qa:
                        raise DatasetError(
                            f"{path} {qwhere}: missing key {key!r} (expected 'id', 'question', 'answers')"
                        )
                answers = qa["answers"]
                if not isinstance(answers, list) or not all(
                    isinstance(x, dict) and isinstance(x.get("text"), str) for x in answers
                ):
                    raise DatasetError(
                        f"{path} {qwhere}: 'answers' must be a list of {{'text', 'answer_start'}} objects"
                    )
                rows.append(
                    {
                        "id": qa["id"],
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": [x["text"] for x in answers],
                        "is_impossible": qa.get("is_impossible"),
                    }
                )
                locations.append(qwhere)
    return _Rows(str(path), rows, locations)


def _read_local(category: str, path: Path) -> _Rows:
    return _read_squad_json(path) if category == "qa" else _read_jsonl(path)


def _load_hub_rows(split: HubSplit) -> list[dict[str, Any]]:
    """Downloads one split from the Hugging Face hub as a list of row dicts.

    The only function that touches the hub or the ``datasets`` library; tests replace it."""
    try:
        import datasets as hf_datasets  # optional dependency, imported only when asked for
    except ImportError:
        raise ConfigError(
            'loading the evaluation data from the Hugging Face hub needs the "datasets" library: '
            'pip install "optbench[hub]" (or give a local folder as the source)'
        ) from None
    try:
        data = hf_datasets.load_dataset(split.repo, split.config, split=split.split, data_dir=split.data_dir)
    except Exception as e:  # the library raises many kinds (network, auth, missing config)
        raise DatasetError(f"{split.describe()}: cannot load ({type(e).__name__}: {e})") from e
    return [dict(row) for row in data]


def _squad_hub_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Converts a hub SQuAD row (``answers`` = ``{"text": [...], "answer_start": [...]}``) to the
    internal form of the local file's questions."""
    for key in ("id", "context", "question", "answers"):
        if key not in row:
            raise DatasetError(f"{where}: missing key {key!r} (expected 'id', 'context', 'question', 'answers')")
    answers = row["answers"]
    texts = answers.get("text") if isinstance(answers, dict) else None
    if not isinstance(texts, list):
        raise DatasetError(f"{where}: 'answers' must be {{'text': [...], 'answer_start': [...]}}")
    # The hub rows have no is_impossible; an unanswerable question is one without answers.
    return {
        "id": row["id"],
        "context": row["context"],
        "question": row["question"],
        "answers": list(texts),
        "is_impossible": None,
    }


def _read_hub(category: str) -> _Rows:
    split = HUB_SPLITS[category]
    origin = split.describe()
    raw = _load_hub_rows(split)
    locations = [f"row {i}" for i in range(len(raw))]
    if category == "qa":
        rows = [_squad_hub_row(row, f"{origin} {locations[i]}") for i, row in enumerate(raw)]
    else:
        rows = [dict(row) for row in raw]
    return _Rows(origin, rows, locations)


# --------------------------------------------------------------------------- building items


def _require_strings(source: _Rows, index: int, keys: tuple[str, ...]) -> None:
    row = source.rows[index]
    for key in keys:
        if key not in row:
            raise DatasetError(
                f"{source.where(index)}: missing key {key!r} (expected keys {', '.join(map(repr, keys))})"
            )
        if not isinstance(row[key], str):
            raise DatasetError(f"{source.where(index)}: key {key!r} must be a string, got {type(row[key]).__name__}")


def _take(source: _Rows, pool: list[int], n: int, what: str, rng: random.Random, extra: str = "") -> list[int]:
    """``n`` distinct indices sampled from ``pool``; asking for more than there is is an error."""
    if n > len(pool):
        raise DatasetError(f"{source.origin}: asked for {n} {what} but the source has only {len(pool)}{extra}")
    return rng.sample(pool, n)


def _qa_items(source: _Rows, n: int, rng: random.Random, notes: list[str]) -> list[dict[str, Any]]:
    answerable: list[int] = []
    unanswerable: list[int] = []
    seen: set[str] = set()
    for i, row in enumerate(source.rows):
        _require_strings(source, i, ("id", "context", "question"))
        if row["id"] in seen:
            raise DatasetError(f"{source.where(i)}: duplicate question id {row['id']!r}")
        seen.add(row["id"])
        impossible = not row["answers"]
        # The official evaluation decides answerability by the answers list; a contradicting
        # is_impossible flag would make the two disagree, so it is rejected.
        if row["is_impossible"] is not None and bool(row["is_impossible"]) != impossible:
            raise DatasetError(
                f"{source.where(i)}: is_impossible={row['is_impossible']!r} but it has {len(row['answers'])} answer(s); "
                "expected answers == [] exactly when is_impossible is true"
            )
        (unanswerable if impossible else answerable).append(i)
    if n > len(source.rows):
        raise DatasetError(
            f"{source.origin}: asked for {n} QA questions but the source has only {len(source.rows)} "
            f"({len(answerable)} answerable, {len(unanswerable)} unanswerable)"
        )
    want_unanswerable = n // 2
    n_unanswerable = min(want_unanswerable, len(unanswerable))
    n_answerable = n - n_unanswerable
    if n_answerable > len(answerable):
        n_answerable = len(answerable)
        n_unanswerable = n - n_answerable
    if n_unanswerable != want_unanswerable:
        notes.append(
            f"{source.origin}: {n_unanswerable} unanswerable and {n_answerable} answerable QA questions instead of "
            f"{want_unanswerable}/{n - want_unanswerable} (the source has {len(answerable)} answerable, "
            f"{len(unanswerable)} unanswerable)"
        )
    chosen = rng.sample(answerable, n_answerable) + rng.sample(unanswerable, n_unanswerable)
    rng.shuffle(chosen)  # interleave the strata, so the first items (few-shot shots) are mixed
    items = []
    for i in chosen:
        row = source.rows[i]
        answers = list(row["answers"])
        items.append(
            {
                "id": f"qa-{row['id']}",
                "category": "qa",
                "prompt": {"context": row["context"], "question": row["question"]},
                "reference": answers,
                "answers": list(answers),
                "is_impossible": not answers,
            }
        )
    return items


def gsm8k_final_answer(solution: str) -> str | None:
    """The text after the last ``####`` of a GSM8K solution, stripped, commas removed."""
    if "####" not in solution:
        return None
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return final or None


def _reasoning_items(source: _Rows, n: int, rng: random.Random) -> list[dict[str, Any]]:
    finals: list[str] = []
    for i, row in enumerate(source.rows):
        _require_strings(source, i, _REQUIRED_KEYS["reasoning"])
        final = gsm8k_final_answer(row["answer"])
        if final is None:
            raise DatasetError(f"{source.where(i)}: 'answer' has no final answer (expected '#### <number>' at the end)")
        finals.append(final)
    items = []
    for i in _take(source, list(range(len(source.rows))), n, "GSM8K problems", rng):
        row = source.rows[i]
        items.append(
            {
                "id": f"reasoning-{i}",
                "category": "reasoning",
                "prompt": {"question": row["question"]},
                "reference": finals[i],
                "answer": row["answer"],
                "final_answer": finals[i],
            }
        )
    return items


def parse_hh_transcript(text: str) -> list[dict[str, str]] | None:
    """Splits an HH-RLHF transcript into ``{"role", "content"}`` turns (Human -> user,
    Assistant -> assistant, contents stripped).

    Returns None unless the turns are non-empty, alternate, start with Human and end with
    Assistant."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():  # text before the first turn marker
        return None
    speakers, contents = parts[1::2], [c.strip() for c in parts[2::2]]
    if len(speakers) < 2 or speakers[-1] != "Assistant":
        return None
    for k, speaker in enumerate(speakers):
        if speaker != ("Human" if k % 2 == 0 else "Assistant") or not contents[k]:
            return None
    return [{"role": _HH_ROLES[s], "content": c} for s, c in zip(speakers, contents)]


def _chat_items(source: _Rows, n: int, rng: random.Random) -> tuple[list[dict[str, Any]], int]:
    """The chat items and the number of rows skipped because their transcript does not parse."""
    conversations: dict[int, list[dict[str, str]]] = {}
    for i in range(len(source.rows)):
        _require_strings(source, i, _REQUIRED_KEYS["chat"])
        turns = parse_hh_transcript(source.rows[i]["chosen"])
        if turns is not None:
            conversations[i] = turns
    skipped = len(source.rows) - len(conversations)
    pool = sorted(conversations)
    extra = f" usable rows ({skipped} skipped: their transcript does not parse)"
    items = []
    for i in _take(source, pool, n, "HH-RLHF conversations", rng, extra):
        turns = conversations[i]
        items.append(
            {
                "id": f"chat-{i}",
                "category": "chat",
                "prompt": {"messages": turns[:-1]},
                "reference": turns[-1]["content"],
            }
        )
    return items, skipped


def _code_items(source: _Rows, n: int, rng: random.Random) -> list[dict[str, Any]]:
    seen: set[str] = set()
    for i, row in enumerate(source.rows):
        _require_strings(source, i, _REQUIRED_KEYS["code"])
        if row["task_id"] in seen:
            raise DatasetError(f"{source.where(i)}: duplicate task_id {row['task_id']!r}")
        seen.add(row["task_id"])
    items = []
    for i in _take(source, list(range(len(source.rows))), n, "HumanEval tasks", rng):
        row = source.rows[i]
        items.append(
            {
                "id": f"code-{row['task_id']}",
                "category": "code",
                "prompt": {"prompt": row["prompt"]},
                "reference": row["canonical_solution"],
                "test": row["test"],
                "entry_point": row["entry_point"],
                "canonical_solution": row["canonical_solution"],
                "task_id": row["task_id"],
            }
        )
    return items


def _resolve_counts(counts: dict[str, int] | None) -> dict[str, int]:
    resolved = dict(DEFAULT_COUNTS)
    for category, n in (counts or {}).items():
        if category not in DEFAULT_COUNTS:
            raise ConfigError(f"counts: unknown category {category!r} (expected {', '.join(CATEGORIES)})")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"counts[{category!r}]: expected a non-negative integer, got {n!r}")
        resolved[category] = n
    return resolved


def _category_rng(seed: int, category: str) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and platforms.
    return random.Random(f"optbench-eval-{seed}-{category}")


def build_test_dataset(
    source: str | os.PathLike[str] = "hub",
    output: str | os.PathLike[str] = DEFAULT_OUTPUT,
    seed: int = 0,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Builds the evaluation dataset and writes it to ``output`` (parent folders created).

    ``source`` is ``"hub"`` or a local folder (see the module docstring); ``counts`` overrides
    the per-category numbers (default 200 / 120 / 120 / 80), e.g. ``{"qa": 10}``. Returns a
    summary: ``output``, ``source``, ``seed``, ``counts``, ``total``, ``qa_unanswerable``,
    ``qa_answerable``, ``chat_skipped`` (HH-RLHF rows whose transcript does not parse) and
    ``notes`` (deviations such as a QA stratum filled from the other one).

    Raises DatasetError for a missing or malformed source file, or for a count larger than the
    source; ConfigError for bad ``counts`` or a missing ``datasets`` library (hub)."""
    wanted = _resolve_counts(counts)
    needed = [c for c in CATEGORIES if wanted[c] > 0]
    source_label = "hub" if source == "hub" else os.fspath(source)
    if source == "hub":
        sources = {c: _read_hub(c) for c in needed}
    else:
        paths = _resolve_local_files(Path(source), needed)  # report every missing file before reading
        sources = {c: _read_local(c, paths[c]) for c in needed}

    notes: list[str] = []
    chat_skipped = 0
    by_category: dict[str, list[dict[str, Any]]] = {c: [] for c in CATEGORIES}
    for category in needed:
        rng = _category_rng(seed, category)
        src, n = sources[category], wanted[category]
        if category == "qa":
            by_category[category] = _qa_items(src, n, rng, notes)
        elif category == "reasoning":
            by_category[category] = _reasoning_items(src, n, rng)
        elif category == "chat":
            by_category[category], chat_skipped = _chat_items(src, n, rng)
        else:
            by_category[category] = _code_items(src, n, rng)

    items = [item for c in CATEGORIES for item in by_category[c]]
    ids = [item["id"] for item in items]
    if len(set(ids)) != len(ids):  # the sources' own duplicate checks should make this impossible
        raise DatasetError(f"{source_label}: the selected items have duplicate ids")
    final_counts = {c: len(by_category[c]) for c in CATEGORIES}
    document = {
        "version": SCHEMA_VERSION,
        "seed": seed,
        "source": source_label,
        "counts": final_counts,
        "items": items,
    }
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then rename: a failed write never leaves half a dataset behind.
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        json.dump(document, f, ensure_ascii=False, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, out)

    unanswerable = sum(1 for item in by_category["qa"] if item["is_impossible"])
    return {
        "output": str(out),
        "source": source_label,
        "seed": seed,
        "counts": dict(final_counts),
        "total": len(items),
        "qa_unanswerable": unanswerable,
        "qa_answerable": len(by_category["qa"]) - unanswerable,
        "chat_skipped": chat_skipped,
        "notes": notes,
    }


# --------------------------------------------------------------------------- reading the output


def _check_item(item: Any, index: int, where_file: str) -> str:
    """Validates one item of a dataset file; returns its id."""
    if not isinstance(item, dict):
        raise DatasetError(f"{where_file}: item {index}: expected an object, got {type(item).__name__}")
    item_id = item.get("id")
    where = f"{where_file}: item {index} (id {item_id!r})"
    if not isinstance(item_id, str) or not item_id:
        raise DatasetError(f"{where}: missing or empty 'id' (expected a non-empty string)")
    category = item.get("category")
    if category not in CATEGORIES:
        what = "missing 'category'" if "category" not in item else f"bad category {category!r}"
        raise DatasetError(f"{where}: {what} (expected one of {', '.join(CATEGORIES)})")
    prompt = item.get("prompt")
    if not isinstance(prompt, dict):
        raise DatasetError(f"{where}: missing 'prompt' (expected an object)")
    if "reference" not in item:
        raise DatasetError(f"{where}: missing 'reference'")

    def need(container: dict[str, Any], key: str, kind: type, label: str) -> Any:
        value = container.get(key)
        if not isinstance(value, kind):
            raise DatasetError(f"{where}: {label} must be a {kind.__name__} for a {category} item, got {value!r:.60}")
        return value

    if category == "qa":
        need(prompt, "context", str, "prompt.context")
        need(prompt, "question", str, "prompt.question")
        answers = need(item, "answers", list, "'answers'")
        if not all(isinstance(a, str) for a in answers):
            raise DatasetError(f"{where}: 'answers' must be a list of strings")
        impossible = need(item, "is_impossible", bool, "'is_impossible'")
        if impossible != (not answers):
            raise DatasetError(f"{where}: is_impossible={impossible} disagrees with {len(answers)} answer(s)")
        if item["reference"] != answers:
            raise DatasetError(f"{where}: 'reference' must equal 'answers' for a qa item")
    elif category == "reasoning":
        need(prompt, "question", str, "prompt.question")
        need(item, "answer", str, "'answer'")
        final = need(item, "final_answer", str, "'final_answer'")
        if item["reference"] != final:
            raise DatasetError(f"{where}: 'reference' must equal 'final_answer' for a reasoning item")
    elif category == "chat":
        messages = need(prompt, "messages", list, "prompt.messages")
        if not messages:
            raise DatasetError(f"{where}: prompt.messages is empty (expected at least one user turn)")
        for k, message in enumerate(messages):
            expected_role = "user" if k % 2 == 0 else "assistant"
            if not (
                isinstance(message, dict)
                and message.get("role") == expected_role
                and isinstance(message.get("content"), str)
            ):
                raise DatasetError(
                    f"{where}: prompt.messages[{k}] must be {{'role': {expected_role!r}, 'content': str}} "
                    "(turns alternate user/assistant, starting and ending with user)"
                )
        if len(messages) % 2 == 0:
            raise DatasetError(f"{where}: prompt.messages must end with a user turn")
        reference = item["reference"]
        if not isinstance(reference, str) or not reference:
            raise DatasetError(f"{where}: 'reference' must be a non-empty string for a chat item")
    else:
        need(prompt, "prompt", str, "prompt.prompt")
        for key in ("test", "entry_point", "canonical_solution", "task_id"):
            need(item, key, str, repr(key))
        if item["reference"] != item["canonical_solution"]:
            raise DatasetError(f"{where}: 'reference' must equal 'canonical_solution' for a code item")
    return item_id


def load_test_dataset(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Reads and validates a file written by :func:`build_test_dataset`; returns its items.

    Errors (DatasetError) name the file, the item's index and id, and what was expected."""
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"{file}: evaluation dataset not found (build it with `optbench dataset build`)")
    document = _read_json(file)
    if not isinstance(document, dict):
        raise DatasetError(f"{file}: expected a JSON object with 'version', 'seed', 'source', 'counts', 'items'")
    if document.get("version") != SCHEMA_VERSION:
        raise DatasetError(f"{file}: 'version' is {document.get('version')!r}; expected {SCHEMA_VERSION}")
    items = document.get("items")
    if not isinstance(items, list):
        raise DatasetError(f"{file}: missing 'items' (expected a list of items)")
    seen: dict[str, int] = {}
    tally = {c: 0 for c in CATEGORIES}
    for index, item in enumerate(items):
        item_id = _check_item(item, index, str(file))
        if item_id in seen:
            raise DatasetError(
                f"{file}: item {index} (id {item_id!r}): duplicate id, first used by item {seen[item_id]}"
            )
        seen[item_id] = index
        tally[item["category"]] += 1
    counts = document.get("counts")
    if counts != tally:
        raise DatasetError(f"{file}: 'counts' is {counts!r} but the items are {tally}")
    return items


__all__ = [
    "CATEGORIES",
    "DEFAULT_COUNTS",
    "HUB_SPLITS",
    "LOCAL_FILES",
    "SCHEMA_VERSION",
    "build_test_dataset",
    "gsm8k_final_answer",
    "load_test_dataset",
    "parse_hh_transcript",
]
