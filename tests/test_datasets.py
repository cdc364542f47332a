"""The evaluation dataset builder (optbench.datasets) on the real source files in
../shared/datasets, on small malformed copies written here, and on a fake hub."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from optbench import datasets as ds
from optbench.exceptions import ConfigError, DatasetError


@pytest.fixture(scope="session")
def source_dir(shared_dir: Path) -> Path:
    path = shared_dir / "datasets"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the tests read the real evaluation sources from it")
    return path


@pytest.fixture(scope="module")
def built(source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The standard 520-item dataset, built once for this module."""
    out = tmp_path_factory.mktemp("dataset") / "data" / "test_dataset.json"
    summary = ds.build_test_dataset(source_dir, out, seed=0)
    return {"summary": summary, "path": out, "items": ds.load_test_dataset(out)}


def _by_category(items: list[dict[str, Any]], category: str) -> list[dict[str, Any]]:
    return [item for item in items if item["category"] == category]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------- the real data


def test_builds_520_items_with_the_standard_counts(built: dict[str, Any]) -> None:
    items, summary = built["items"], built["summary"]
    assert len(items) == 520
    assert summary["counts"] == {"qa": 200, "reasoning": 120, "chat": 120, "code": 80}
    assert summary["total"] == 520 and summary["output"] == str(built["path"])
    assert [len(_by_category(items, c)) for c in ds.CATEGORIES] == [200, 120, 120, 80]
    # Categories appear in blocks, in CATEGORIES order.
    assert [item["category"] for item in items] == [c for c in ds.CATEGORIES for _ in range(ds.DEFAULT_COUNTS[c])]
    ids = [item["id"] for item in items]
    assert len(set(ids)) == 520
    assert all(item["id"].startswith(item["category"] + "-") for item in items)
    assert all("reference" in item for item in items)
    document = json.loads(built["path"].read_text(encoding="utf-8"))
    assert document["version"] == 1 and document["seed"] == 0 and document["source"] == summary["source"]


def test_qa_has_answerable_and_unanswerable_questions(built: dict[str, Any], source_dir: Path) -> None:
    qa = _by_category(built["items"], "qa")
    unanswerable = [item for item in qa if item["is_impossible"]]
    assert len(unanswerable) == 100 and built["summary"]["qa_unanswerable"] == 100
    assert built["summary"]["notes"] == []
    assert all(item["answers"] == [] and item["reference"] == [] for item in unanswerable)
    # Mixed order: the first items (the few-shot shots) are not all of one kind.
    assert len({item["is_impossible"] for item in qa[:20]}) == 2
    # Every item matches its question in the official file, duplicates in answers included.
    squad = json.loads((source_dir / "squad_v2_dev_subset.json").read_text(encoding="utf-8"))
    by_id = {
        qa_row["id"]: (paragraph["context"], qa_row)
        for article in squad["data"]
        for paragraph in article["paragraphs"]
        for qa_row in paragraph["qas"]
    }
    for item in qa:
        context, row = by_id[item["id"].removeprefix("qa-")]
        assert item["prompt"] == {"context": context, "question": row["question"]}
        assert item["answers"] == [a["text"] for a in row["answers"]] == item["reference"]
        assert item["is_impossible"] is row["is_impossible"]
    assert any(len(item["answers"]) != len(set(item["answers"])) for item in qa)  # duplicates kept


def test_same_seed_is_byte_identical_and_another_seed_differs(
    built: dict[str, Any], source_dir: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again.json"
    ds.build_test_dataset(source_dir, again, seed=0)
    assert again.read_bytes() == built["path"].read_bytes()
    assert again.read_bytes().endswith(b"}\n")
    other = tmp_path / "seed1.json"
    ds.build_test_dataset(source_dir, other, seed=1)
    other_items = ds.load_test_dataset(other)
    for category in ds.CATEGORIES:
        ids0 = [item["id"] for item in _by_category(built["items"], category)]
        ids1 = [item["id"] for item in _by_category(other_items, category)]
        assert ids0 != ids1, category


def test_chat_items_are_the_conversation_before_the_final_assistant_turn(
    built: dict[str, Any], source_dir: Path
) -> None:
    chat = _by_category(built["items"], "chat")
    rows = _read_jsonl(source_dir / "hh_rlhf_harmless_base_test.jsonl.gz")
    assert built["summary"]["chat_skipped"] > 0  # the real test split has a few malformed transcripts
    for item in chat:
        messages = item["prompt"]["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2) + ["user"]
        assert all(m["content"] and m["content"] == m["content"].strip() for m in messages)
        chosen = rows[int(item["id"].removeprefix("chat-"))]["chosen"]
        # An independent reading: the final turn follows the last "\n\nAssistant:" marker.
        assert item["reference"] and item["reference"] == chosen.rsplit("\n\nAssistant:", 1)[1].strip()
    for item in chat[:3]:
        # Re-parse a few transcripts completely, turn by turn.
        chosen = rows[int(item["id"].removeprefix("chat-"))]["chosen"]
        turns = []
        for chunk in chosen.split("\n\nHuman:")[1:]:
            human, *assistant = chunk.split("\n\nAssistant:")
            turns.append({"role": "user", "content": human.strip()})
            turns += [{"role": "assistant", "content": a.strip()} for a in assistant]
        assert item["prompt"]["messages"] == turns[:-1]
        assert item["reference"] == turns[-1]["content"]


def test_code_items_carry_the_test_and_come_from_humaneval(built: dict[str, Any], source_dir: Path) -> None:
    code = _by_category(built["items"], "code")
    rows = {row["task_id"]: row for row in _read_jsonl(source_dir / "HumanEval.jsonl.gz")}
    assert len(rows) == 164
    task_ids = [item["task_id"] for item in code]
    assert len(set(task_ids)) == 80 and set(task_ids) <= set(rows)
    for item in code:
        row = rows[item["task_id"]]
        assert item["id"] == f"code-{row['task_id']}"
        assert item["prompt"] == {"prompt": row["prompt"]}
        assert (item["test"], item["entry_point"]) == (row["test"], row["entry_point"])
        assert item["reference"] == item["canonical_solution"] == row["canonical_solution"]
        assert "def check(" in item["test"]


def test_reasoning_final_answer_is_the_text_after_the_hashes(built: dict[str, Any], source_dir: Path) -> None:
    rows = _read_jsonl(source_dir / "gsm8k_test.jsonl")
    reasoning = _by_category(built["items"], "reasoning")
    for item in reasoning:
        row = rows[int(item["id"].removeprefix("reasoning-"))]
        assert item["prompt"] == {"question": row["question"]}
        assert item["answer"] == row["answer"]
        expected = row["answer"].split("#### ")[-1].strip().replace(",", "")
        assert item["final_answer"] == item["reference"] == expected


def test_hh_transcripts_that_do_not_alternate_or_have_empty_turns_are_rejected() -> None:
    parse = ds.parse_hh_transcript
    assert parse("\n\nHuman: a Human: b\n\nAssistant:  c \n\nHuman: d\n\nAssistant: e") == [
        {"role": "user", "content": "a Human: b"},  # "Human:" inside a turn is text
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
        {"role": "assistant", "content": "e"},
    ]
    assert parse("\n\nHuman: a\n\nAssistant: ") is None  # empty final turn
    assert parse("\n\nHuman: \n\nAssistant: b") is None  # empty turn inside
    assert parse("\n\nHuman: a\n\nHuman: b\n\nAssistant: c") is None  # not alternating
    assert parse("\n\nHuman: a\n\nAssistant: b\n\nHuman: c") is None  # ends with Human
    assert parse("\n\nAssistant: a") is None
    assert parse("preface\n\nHuman: a\n\nAssistant: b") is None


def test_gsm8k_thousands_separator_is_removed() -> None:
    assert ds.gsm8k_final_answer("so 1,234 + 1 = 1,235\n#### 1,235") == "1235"
    assert ds.gsm8k_final_answer("no final answer") is None


# --------------------------------------------------------------------------- small synthetic sources


def _write_jsonl(path: Path, rows: list[Any], gz: bool = False) -> Path:
    text = "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _squad(answerable: int, unanswerable: int) -> dict[str, Any]:
    qas = [
        {"id": f"a{i}", "question": f"q{i}?", "answers": [{"text": "x", "answer_start": 0}] * 2, "is_impossible": False}
        for i in range(answerable)
    ] + [
        {
            "id": f"u{i}",
            "question": f"u{i}?",
            "answers": [],
            "plausible_answers": [{"text": "x", "answer_start": 0}],
            "is_impossible": True,
        }
        for i in range(unanswerable)
    ]
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "x y z", "qas": qas}]}]}


def _hh(human: str, assistant: str) -> dict[str, str]:
    return {
        "chosen": f"\n\nHuman: {human}\n\nAssistant: {assistant}",
        "rejected": f"\n\nHuman: {human}\n\nAssistant: no",
    }


def _humaneval(i: int) -> dict[str, str]:
    return {
        "task_id": f"HumanEval/{i}",
        "prompt": f"def f{i}(x):\n",
        "canonical_solution": "    return x\n",
        "test": "def check(candidate):\n    assert candidate(1) == 1\n",
        "entry_point": f"f{i}",
    }


@pytest.fixture()
def small_sources(tmp_path: Path) -> Path:
    """A valid source folder of synthetic rows, small enough to edit per test."""
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "squad_v2_dev_subset.json").write_text(json.dumps(_squad(6, 6)), encoding="utf-8")
    _write_jsonl(
        folder / "gsm8k_test.jsonl", [{"question": f"q{i}", "answer": f"work\n#### {i},000"} for i in range(8)]
    )
    hh = [_hh(f"hi {i}", f"hello {i}") for i in range(8)]
    hh.append({"chosen": "\n\nAssistant: starts with the assistant", "rejected": ""})  # does not parse: skipped
    _write_jsonl(folder / "hh_rlhf_harmless_base_test.jsonl.gz", hh, gz=True)
    _write_jsonl(folder / "HumanEval.jsonl.gz", [_humaneval(i) for i in range(8)], gz=True)
    return folder


SMALL = {"qa": 4, "reasoning": 3, "chat": 3, "code": 2}


def test_small_sources_build_and_skip_bad_transcripts(small_sources: Path, tmp_path: Path) -> None:
    summary = ds.build_test_dataset(small_sources, tmp_path / "out.json", seed=3, counts=SMALL)
    assert summary["counts"] == SMALL and summary["chat_skipped"] == 1 and summary["qa_unanswerable"] == 2
    items = ds.load_test_dataset(tmp_path / "out.json")
    assert {i["final_answer"] for i in items if i["category"] == "reasoning"} <= {f"{k}000" for k in range(8)}
    # Asking for every parseable chat row works; one more names the file and the skipped row.
    ds.build_test_dataset(small_sources, tmp_path / "all.json", counts={**SMALL, "chat": 8})
    with pytest.raises(DatasetError, match=r"hh_rlhf_harmless_base_test\.jsonl\.gz.*only 8 usable rows \(1 skipped"):
        ds.build_test_dataset(small_sources, tmp_path / "x.json", counts={**SMALL, "chat": 9})


def test_plain_or_gzipped_files_are_both_accepted(small_sources: Path, tmp_path: Path) -> None:
    gsm8k = small_sources / "gsm8k_test.jsonl"
    gzipped = gsm8k.with_name(gsm8k.name + ".gz")
    gzipped.write_bytes(gzip.compress(gsm8k.read_bytes()))
    gsm8k.unlink()
    squad = small_sources / "squad_v2_dev_subset.json"
    squad.with_name(squad.name + ".gz").write_bytes(gzip.compress(squad.read_bytes()))
    squad.unlink()
    humaneval = small_sources / "HumanEval.jsonl.gz"
    (small_sources / "HumanEval.jsonl").write_bytes(gzip.decompress(humaneval.read_bytes()))
    humaneval.unlink()
    assert ds.build_test_dataset(small_sources, tmp_path / "out.json", counts=SMALL)["counts"] == SMALL


def test_qa_fills_a_short_stratum_from_the_other_and_says_so(small_sources: Path, tmp_path: Path) -> None:
    (small_sources / "squad_v2_dev_subset.json").write_text(json.dumps(_squad(9, 1)), encoding="utf-8")
    summary = ds.build_test_dataset(small_sources, tmp_path / "out.json", counts={**SMALL, "qa": 6})
    assert (summary["qa_unanswerable"], summary["qa_answerable"]) == (1, 5)
    assert len(summary["notes"]) == 1 and "1 unanswerable and 5 answerable" in summary["notes"][0]
    with pytest.raises(DatasetError, match=r"squad_v2_dev_subset\.json: asked for 11 QA questions .* only 10"):
        ds.build_test_dataset(small_sources, tmp_path / "out.json", counts={**SMALL, "qa": 11})


def test_broken_jsonl_line_names_the_file_and_line(small_sources: Path, tmp_path: Path) -> None:
    rows: list[Any] = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]
    rows[2] = '{"question": "q2", "answer": '  # line 3 is cut off
    _write_jsonl(small_sources / "gsm8k_test.jsonl", rows)
    with pytest.raises(DatasetError, match=r"gsm8k_test\.jsonl line 3: not valid JSON"):
        ds.build_test_dataset(small_sources, tmp_path / "out.json", counts=SMALL)
    assert not (tmp_path / "out.json").exists()


def test_missing_key_names_the_file_line_and_key(small_sources: Path, tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]
    del rows[1]["answer"]
    _write_jsonl(small_sources / "gsm8k_test.jsonl", [""] + rows)  # a blank first line: row 1 is on line 3
    with pytest.raises(DatasetError, match=r"gsm8k_test\.jsonl line 3: missing key 'answer'"):
        ds.build_test_dataset(small_sources, tmp_path / "out.json", counts=SMALL)
    _write_jsonl(small_sources / "gsm8k_test.jsonl", [{"question": "q", "answer": "no hashes"}] * 4)
    with pytest.raises(DatasetError, match=r"gsm8k_test\.jsonl line 1: 'answer' has no final answer"):
        ds.build_test_dataset(small_sources, tmp_path / "out.json", counts=SMALL)


def test_missing_file_names_the_expected_paths(small_sources: Path, tmp_path: Path) -> None:
    (small_sources / "HumanEval.jsonl.gz").unlink()
    with pytest.raises(DatasetError) as info:
        ds.build_test_dataset(small_sources, tmp_path / "out.json", counts=SMALL)
    message = str(info.value)
    assert str(small_sources / "HumanEval.jsonl") in message and str(small_sources / "HumanEval.jsonl.gz") in message
    assert message.startswith(f"{small_sources}: missing dataset file")
    with pytest.raises(DatasetError, match="dataset source folder not found"):
        ds.build_test_dataset(tmp_path / "nowhere", tmp_path / "out.json")


def test_squad_without_data_names_the_file_and_what_was_expected(small_sources: Path, tmp_path: Path) -> None:
    squad = small_sources / "squad_v2_dev_subset.json"
    squad.write_text(json.dumps({"version": "v2.0", "articles": []}), encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"squad_v2_dev_subset\.json: expected a SQuAD v2 JSON object .*no 'data' list"
    ):
        ds.build_test_dataset(small_sources, tmp_path / "out.json", counts=SMALL)
    broken = _squad(3, 3)
    del broken["data"][0]["paragraphs"][0]["qas"][4]["id"]
    squad.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"squad_v2_dev_subset\.json data\[0\]\.paragraphs\[0\]\.qas\[4\]: missing key 'id'"
    ):
        ds.build_test_dataset(small_sources, tmp_path / "out.json", counts=SMALL)


def test_bad_counts_are_config_errors(small_sources: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown category 'math'"):
        ds.build_test_dataset(small_sources, tmp_path / "out.json", counts={"math": 3})
    with pytest.raises(ConfigError, match="non-negative integer"):
        ds.build_test_dataset(small_sources, tmp_path / "out.json", counts={"qa": -1})


# --------------------------------------------------------------------------- load_test_dataset


def test_load_rejects_an_item_without_category(small_sources: Path, tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    ds.build_test_dataset(small_sources, path, counts=SMALL)
    document = json.loads(path.read_text(encoding="utf-8"))
    broken_id = document["items"][5]["id"]
    del document["items"][5]["category"]
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        ds.load_test_dataset(path)
    message = str(info.value)
    assert message.startswith(f"{path}: item 5 (id {broken_id!r}): missing 'category'")
    assert "expected one of qa, reasoning, chat, code" in message


def test_load_rejects_other_malformed_files(small_sources: Path, tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    ds.build_test_dataset(small_sources, path, counts=SMALL)
    good = json.loads(path.read_text(encoding="utf-8"))

    def check(document: Any, pattern: str) -> None:
        path.write_text(json.dumps(document), encoding="utf-8")
        with pytest.raises(DatasetError, match=pattern):
            ds.load_test_dataset(path)

    chat_index = next(i for i, item in enumerate(good["items"]) if item["category"] == "chat")
    document = json.loads(json.dumps(good))
    document["items"][chat_index]["prompt"]["messages"][0]["role"] = "assistant"
    check(document, rf"item {chat_index} .*prompt\.messages\[0\] must be \{{'role': 'user'")
    document = json.loads(json.dumps(good))
    document["items"][1]["id"] = document["items"][0]["id"]
    check(document, r"item 1 .*duplicate id, first used by item 0")
    document = json.loads(json.dumps(good))
    document["version"] = 2
    check(document, r"'version' is 2; expected 1")
    document = json.loads(json.dumps(good))
    document["counts"]["qa"] = 5
    check(document, r"'counts' is .* but the items are")
    path.write_text('{\n"version": 1,\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"out\.json line 3 column 1: not valid JSON"):
        ds.load_test_dataset(path)
    with pytest.raises(DatasetError, match="evaluation dataset not found"):
        ds.load_test_dataset(tmp_path / "missing.json")


# --------------------------------------------------------------------------- command line


def test_cli_handler_builds_the_file(source_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from optbench.cli import build_parser

    parser = build_parser()
    out = tmp_path / "data" / "test_dataset.json"
    args = parser.parse_args(["dataset", "build", "--source", str(source_dir), "--output", str(out), "--seed", "0"])
    assert args.func(args) == 0
    assert len(ds.load_test_dataset(out)) == 520
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert str(out) in lines[0]
    for part in ("520 items", "qa 200 (100 unanswerable)", "reasoning 120", "chat 120", "code 80"):
        assert part in lines[0]
    args = parser.parse_args(
        ["dataset", "build", "--source", str(source_dir), "--output", str(out), "--counts", "qa=two"]
    )
    with pytest.raises(ConfigError, match="--counts"):
        args.func(args)
    with pytest.raises(SystemExit):  # "dataset" alone needs a sub-command
        parser.parse_args(["dataset"])


# --------------------------------------------------------------------------- the hub, faked


def _fake_hub_rows(calls: list[ds.HubSplit]) -> Any:
    def load(split: ds.HubSplit) -> list[dict[str, Any]]:
        calls.append(split)
        if split.repo == "rajpurkar/squad_v2":
            return [
                {
                    "id": f"h{i}",
                    "title": "T",
                    "context": "ctx",
                    "question": f"q{i}?",
                    "answers": {"text": ["a", "a"] if i % 2 else [], "answer_start": [0, 0] if i % 2 else []},
                }
                for i in range(10)
            ]
        if split.repo == "openai/gsm8k":
            return [{"question": f"q{i}", "answer": f"steps\n#### {i}"} for i in range(10)]
        if split.repo == "Anthropic/hh-rlhf":
            return [_hh(f"hi {i}", f"hello {i}") for i in range(10)]
        if split.repo == "openai/openai_humaneval":
            return [_humaneval(i) for i in range(10)]
        raise AssertionError(split)

    return load


def test_hub_source_with_a_fake_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[ds.HubSplit] = []
    monkeypatch.setattr(ds, "_load_hub_rows", _fake_hub_rows(calls))
    summary = ds.build_test_dataset("hub", tmp_path / "hub.json", seed=0, counts=SMALL)
    assert summary["counts"] == SMALL and summary["source"] == "hub"
    assert summary["qa_unanswerable"] == 2 and summary["chat_skipped"] == 0
    assert {(c.repo, c.config, c.split, c.data_dir) for c in calls} == {
        ("rajpurkar/squad_v2", None, "validation", None),
        ("openai/gsm8k", "main", "test", None),
        ("Anthropic/hh-rlhf", None, "test", "harmless-base"),
        ("openai/openai_humaneval", None, "test", None),
    }
    items = ds.load_test_dataset(tmp_path / "hub.json")
    for item in _by_category(items, "qa"):
        assert item["answers"] == ([] if item["is_impossible"] else ["a", "a"])
        assert item["prompt"] == {"context": "ctx", "question": f"q{item['id'].removeprefix('qa-h')}?"}
    chat = _by_category(items, "chat")
    assert all(i["reference"] == f"hello {i['id'].removeprefix('chat-')}" for i in chat)

    # Errors from hub rows name the split and the row.
    def broken(split: ds.HubSplit) -> list[dict[str, Any]]:
        rows = _fake_hub_rows([])(split)
        if split.repo == "openai/gsm8k":
            del rows[4]["answer"]
        return rows

    monkeypatch.setattr(ds, "_load_hub_rows", broken)
    with pytest.raises(
        DatasetError, match=r"hub dataset openai/gsm8k config main split test row 4: missing key 'answer'"
    ):
        ds.build_test_dataset("hub", tmp_path / "hub2.json", counts=SMALL)


def test_hub_without_the_datasets_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ConfigError, match=r'pip install "optbench\[hub\]"'):
        ds.build_test_dataset("hub", tmp_path / "hub.json", counts=SMALL)
