"""Quality under load: the answers at concurrency 1 against N on the same server. A mock whose
answers change when several requests are active is flagged, a steady one passes; `optbench run`
writes under_load.parquet, its results.csv columns and RESULTS.md section; the real embedded
llama-server gives a well-formed report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import optbench
from optbench.answer_journal import AnswerJournal
from optbench.cli import main
from optbench.config import parse_config
from optbench.datasets import build_test_dataset, load_test_dataset
from optbench.evaluate import EvaluationResult
from optbench.exceptions import ConfigError
from optbench.options import LoadTestOptions
from optbench.run import PROFILES, evaluation_options
from optbench.testing import MockServer
from optbench.under_load import CHANGED, NO_EVIDENCE, UNDER_LOAD_PARQUET, compare_answers, read_summary

SMALL = {"qa": 14, "reasoning": 14, "chat": 3, "code": 3}


@pytest.fixture(scope="module")
def dataset_path(shared_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "test_dataset.json"
    build_test_dataset(str(shared_dir / "datasets"), output=path, counts=SMALL)
    return path


def _evaluation(outputs: list[str], scores: list[float], concurrency: int) -> EvaluationResult:
    n = len(outputs)
    samples = pd.DataFrame(
        {
            "id": [f"item{i}" for i in range(n)],
            "category": ["qa"] * n,
            "prompt": ["p"] * n,
            "output": outputs,
            "score": scores,
            "error_kind": [None] * n,
        }
    )
    summary = {"categories": {"qa": {"n": n, "score": sum(scores) / n}}, "overall": sum(scores) / n, "num_failed": 0}
    return EvaluationResult(
        samples, summary, "x", {}, options=optbench.EvaluationOptions(concurrency=concurrency, categories=["qa"])
    )


def test_known_differences_are_counted_located_and_judged():
    # 20 items: 8 answers change under load (from character 4 on) and lose their score.
    alone = _evaluation([f"ans {i} right" for i in range(20)], [1.0] * 20, 1)
    outs = [f"ans {i} right" if i >= 8 else f"ans wrong {i}" for i in range(20)]
    loaded = _evaluation(outs, [1.0 if i >= 8 else 0.0 for i in range(20)], 4)
    r = compare_answers(alone, loaded, concurrency=4, label="x")
    s = r.summary
    assert s["num_compared"] == 20 and s["num_identical"] == 12 and r.identical_share == pytest.approx(0.6)
    assert s["position_unit"] == "character"
    diff = r.pairs[~r.pairs["identical"].astype(bool)]
    assert list(diff["first_difference"]) == [4] * 8
    assert list(r.pairs.loc[r.pairs["identical"].astype(bool), "first_difference"].isna()) == [True] * 12
    qa = s["categories"]["qa"]
    assert qa["change"] == pytest.approx(-0.4) and qa["high"] < 0 and qa["verdict"] == CHANGED
    assert r.scores_changed and r.answers_changed and s["max_drop"]["category"] == "qa"
    # Nothing changed: the interval is exactly 0, no evidence of change.
    same = compare_answers(alone, alone, concurrency=4, label="x")
    assert same.identical_share == 1.0 and not same.answers_changed and not same.scores_changed
    assert same.summary["categories"]["qa"]["verdict"] == NO_EVIDENCE


def _gold_is_the_answer_alone(items, server_url, dataset_items_limit):
    """The items with each scored QA item's gold answer set to the server's own answer at
    concurrency 1, so that every answer scores 1 alone and a changed one scores less."""
    alone = optbench.evaluate(
        server_url, "mock", dataset=items, categories=["qa"], limit=dataset_items_limit, concurrency=1, progress=False
    )
    gold = dict(zip(alone.samples["id"], alone.samples["output"].str.strip()))
    return [{**it, "answers": [gold[it["id"]]]} if it["id"] in gold else it for it in items]


def test_a_steady_server_passes_and_a_server_that_changes_under_load_is_flagged(dataset_path):
    items = load_test_dataset(dataset_path)
    args = dict(categories=["qa"], limit=12, concurrency=4, progress=False)
    with MockServer(ttft_ms=1, gap_ms=2, tokens=6) as steady:
        items = _gold_is_the_answer_alone(items, steady.base_url, 12)
        r = optbench.quality_under_load(steady.base_url, "mock", dataset=items, **args)
    assert r.summary["num_items"] == 12 and r.summary["concurrency"] == 4
    assert r.identical_share == 1.0 and not r.answers_changed and not r.scores_changed
    assert r.summary["categories"]["qa"]["score_1"] == 1.0
    assert r.summary["categories"]["qa"]["verdict"] == NO_EVIDENCE
    # The same answers alone; from its 3rd token on, an answer changes while more than one
    # request is active (the mock's batching bug).
    with MockServer(ttft_ms=1, gap_ms=2, tokens=6, diverge_above=1, diverge_at=2) as flaky:
        r = optbench.quality_under_load(flaky.base_url, "mock", dataset=items, **args)
    assert r.answers_changed and r.identical_share < 0.5
    assert r.summary["categories"]["qa"]["score_1"] == 1.0
    assert r.scores_changed and r.summary["categories"]["qa"]["verdict"] == CHANGED
    assert r.summary["max_drop"]["category"] == "qa" and r.summary["max_drop"]["high"] < 0
    differ = r.pairs[~r.pairs["identical"].astype(bool)]
    assert r.summary["position_unit"] == "character"  # the mock has no /tokenize
    # Each token is " tokD" (5 characters): the answers part in the 3rd token, at character 13.
    assert (differ["first_difference"] == 2 * 5 + len(" tok")).all()
    assert "ANSWERS CHANGE UNDER LOAD" in str(r)


def test_cli_exits_1_when_answers_change(dataset_path, tmp_path, capsys):
    def cli(url):
        return main(
            [
                "quality-under-load",
                "--base-url",
                url,
                "--model",
                "mock",
                "--dataset",
                str(dataset_path),
                "--categories",
                "qa,reasoning",
                "--limit",
                "3",
                "--under-load-concurrency",
                "3",
                "--results-dir",
                str(tmp_path),
                "--no-progress",
            ]
        )

    with MockServer(ttft_ms=1, gap_ms=2, tokens=6) as steady:
        assert cli(steady.base_url) == 0
    with MockServer(ttft_ms=1, gap_ms=2, tokens=6, diverge_above=1, diverge_at=0) as flaky:
        assert cli(flaky.base_url) == 1
    assert "ANSWERS CHANGE UNDER LOAD" in capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "quality_under_load.csv")
    assert list(rows["category"]) == ["qa", "reasoning", "overall"] * 2 and set(rows["concurrency"]) == {3}
    parquet = tmp_path / rows["under_load_parquet"].iloc[-1]
    assert len(pd.read_parquet(parquet)) == 6 and read_summary(parquet)["answers_changed"]
    # Bad settings fail before any request.
    assert main(["quality-under-load", "--base-url", "http://127.0.0.1:9", "--model", "m",
                 "--dataset", str(dataset_path), "--level", "1.5"]) == 2  # fmt: skip
    with pytest.raises(ConfigError, match="resamples"):
        optbench.quality_under_load("http://127.0.0.1:9", "m", dataset=dataset_path, resamples=5)


def _stop_after(answers: int):
    """A progress callback that presses Ctrl-C once ``answers`` answers have succeeded."""

    def callback(p):
        if p["succeeded"] >= answers:
            raise KeyboardInterrupt

    return callback


def test_an_interrupted_comparison_resumes_from_its_journal(dataset_path, tmp_path, capsys):
    journal = tmp_path / "journal"
    args = dict(dataset=dataset_path, categories=["qa"], limit=12, concurrency=3, journal=journal)
    # 12 answers of ~80 ms each at concurrency 1: Ctrl-C after 3 stops the first pass mid-way.
    with MockServer(ttft_ms=1, gap_ms=15, tokens=6) as server:
        with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="interrupted"):
            optbench.quality_under_load(server.base_url, "mock", progress=_stop_after(3), **args)
        sent_first = len(server.log())
        settings = json.loads((journal / "settings.json").read_text())
        assert settings["settings"]["concurrency"] == 3 and settings["segments"][0]["items"] == list(range(12))
        kept = AnswerJournal(journal, settings["settings"]).finished(1)
        assert 3 <= len(kept) < 12 and sent_first < 12
        r = optbench.quality_under_load(server.base_url, "mock", progress=False, **args)
        sent_second = len(server.log()) - sent_first
        # Only the answers missing at concurrency 1, then all 12 at concurrency 3.
        assert sent_second == (12 - len(kept)) + 12
        assert r.summary["num_items"] == 12 and r.summary["num_failed_1"] == 0 and r.identical_share == 1.0
        assert list(r.alone.samples["id"]) == list(r.loaded.samples["id"])
        assert not journal.exists()  # removed once complete
        assert f"{len(kept)} of 12 answers at concurrency 1 taken from the journal" in capsys.readouterr().err
        # A journal left with other settings is set aside, not mixed in: all answers are asked again.
        with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="interrupted"):
            optbench.quality_under_load(server.base_url, "mock", progress=_stop_after(3), **args)
        before = len(server.log())
        optbench.quality_under_load(server.base_url, "mock", progress=False, **{**args, "limit": 6})
        assert len(server.log()) - before == 6 + 6
    err = capsys.readouterr().err
    assert "holds answers to other settings" in err and "set aside as" in err
    aside = list(tmp_path.glob("journal.set-aside-*"))
    assert len(aside) == 1 and (aside[0] / "settings.json").exists() and not journal.exists()


def test_run_writes_quality_under_load(dataset_path, tmp_path):
    with MockServer(ttft_ms=1, gap_ms=2, tokens=6, diverge_above=1, diverge_at=1) as flaky:
        cfg = parse_config(
            {
                "name": "flaky",
                "engine": "openai",
                "model": "mock",
                "server": {"base_url": flaky.base_url},
                "load_test": {"num_requests": 4, "concurrency": 2, "output_tokens": 6, "prompts": ["hi"]},
                "evaluation": {"categories": ["qa", "reasoning"], "limit": 2, "under_load_concurrency": 4},
            },
            "flaky",
        )
        optbench.run(
            [cfg],
            profile="quick",
            dataset=dataset_path,
            results_dir=tmp_path / "results",
            report_path=tmp_path / "RESULTS.md",
            run_id="ul",
            progress=False,
        )
    out = tmp_path / "results" / "runs" / "ul" / "flaky"
    pairs = pd.read_parquet(out / UNDER_LOAD_PARQUET)
    assert len(pairs) == 4 and not pairs["identical"].all()
    row = pd.read_csv(tmp_path / "results" / "results.csv").iloc[0]
    assert row["under_load_concurrency"] == 4 and bool(row["under_load_answers_changed"])
    assert row["under_load_identical_share"] == pytest.approx(pairs["identical"].mean())
    assert row["under_load_max_drop_low"] <= row["under_load_max_drop"] <= row["under_load_max_drop_high"]
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## Quality under load" in md and "| flaky | 4 |" in md


def test_the_reference_profile_checks_quality_under_load_at_the_load_tests_concurrency():
    ref, quick = PROFILES["reference"], PROFILES["quick"]
    assert ref.evaluation.under_load_concurrency == ref.load_test.concurrency == 8
    assert quick.evaluation.under_load_concurrency is None

    def options(profile, load_test, evaluation):
        cfg = parse_config(
            {"engine": "openai", "model": "m", "server": {"base_url": "http://127.0.0.1:9"}, "evaluation": evaluation},
            "c",
        )
        return evaluation_options(
            PROFILES[profile], cfg, LoadTestOptions.make(PROFILES[profile].load_test, **load_test)
        )

    # It follows the configuration's load-test concurrency, unless the configuration sets its own.
    assert options("reference", {"concurrency": 32}, {}).under_load_concurrency == 32
    assert options("reference", {"concurrency": 32}, {"under_load_concurrency": 4}).under_load_concurrency == 4
    assert options("quick", {"concurrency": 32}, {}).under_load_concurrency is None


#: Prompts without the few-shot examples: short, so that two passes fit a busy 2-core machine.
NO_SHOTS = {
    "qa": {"shot": "", "target": "Context: {context}\nQuestion: {question}\nAnswer:"},
    "reasoning": {"shot": "", "target": "Question: {question}\nAnswer:"},
}


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_against_the_real_llama_server(llama_server, dataset_path):
    # llama.cpp at temperature 0 may or may not answer alike when 4 requests share a batch:
    # the report must be well-formed either way (what it says is printed, for the record).
    r = optbench.quality_under_load(
        llama_server.base_url,
        llama_server.model,
        dataset=dataset_path,
        categories=["qa", "reasoning"],
        limit=2,
        templates=NO_SHOTS,
        max_tokens={"qa": 12, "reasoning": 24},
        concurrency=4,
        progress=False,
    )
    s = r.summary
    print(f"\nllama-server, concurrency 1 against 4: {s['num_identical']}/{s['num_compared']} identical")
    print(r.pairs[["id", "identical", "first_difference", "length_1", "length_n"]].to_string())
    assert s["num_items"] == 4 and s["num_compared"] == 4 and s["num_failed_n"] == 0
    assert 0 <= r.identical_share <= 1 and s["answers_changed"] == (r.identical_share < 1)
    assert s["position_unit"] == "token" or not s["answers_changed"]  # llama.cpp has /tokenize
    differ = r.pairs[~r.pairs["identical"].astype(bool)]
    assert differ["first_difference"].notna().all()
    assert (differ["first_difference"] <= differ[["length_1", "length_n"]].min(axis=1)).all()
    assert r.pairs.loc[r.pairs["identical"].astype(bool), "first_difference"].isna().all()
    for v in [*s["categories"].values(), s["overall"]]:
        assert v["verdict"] in (CHANGED, NO_EVIDENCE)
        assert v["change"] == pytest.approx(v["score_n"] - v["score_1"])
    # The first difference is counted in the server's tokens: an answer with a word put in
    # front differs at token 0; one with words added at the end, where the first answer ends.
    samples = r.alone.samples.copy()
    samples.loc[0, "output"] = "Zebra" + samples.loc[0, "output"]
    samples.loc[1, "output"] = samples.loc[1, "output"] + " and then some more words"
    edited = EvaluationResult(samples, r.alone.summary, "edited", {}, options=r.alone.options)
    t = compare_answers(
        r.alone, edited, concurrency=4, label="x", base_url=llama_server.base_url, model=llama_server.model
    )
    assert t.summary["position_unit"] == "token" and t.summary["num_identical"] == 2
    first = t.pairs["first_difference"]
    assert first[0] == 0 and first[1] >= t.pairs.loc[1, "length_1"] - 1 and t.pairs.loc[1, "length_n"] > first[1]


def test_a_configuration_run_again_keeps_its_quality_under_load_journal(tmp_path):
    from optbench.run import UNDER_LOAD_JOURNAL, set_aside_earlier_attempt

    out = tmp_path / "cfg"
    (out / UNDER_LOAD_JOURNAL).mkdir(parents=True)
    (out / UNDER_LOAD_JOURNAL / "settings.json").write_text("{}")
    (out / "meta.json").write_text("{}")
    set_aside_earlier_attempt(out)
    assert (out / UNDER_LOAD_JOURNAL / "settings.json").exists() and not (out / "meta.json").exists()
    assert len(list((out / "attempts").glob("*/meta.json"))) == 1
