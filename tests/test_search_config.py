"""A configuration's [search] table and `optbench search --config FILE`: parsed and checked
with the file and key named, the flags override it, and a run against the mock server that the
configuration names (the `openai` engine starts nothing)."""

from __future__ import annotations

import json

import pytest

from optbench.cli import main
from optbench.config import load_config, parse_config
from optbench.exceptions import ConfigError
from optbench.testing import MockServer

BASE = {"engine": "openai", "model": "mock", "server": {"base_url": "http://127.0.0.1:9"}}


def _write(tmp_path, text: str):
    path = tmp_path / "searched.toml"
    path.write_text(text)
    return path


def test_the_search_table_is_parsed_and_kept(tmp_path):
    path = _write(
        tmp_path,
        'engine = "openai"\nmodel = "mock"\n[server]\nbase_url = "http://127.0.0.1:9"\n'
        "[search]\nslo = { ttft_ms = 500, itl_ms = { p99 = 50 } }\ntarget = 0.9\ntrials = 4\nmax_level = 16\n"
        'quality_dataset = "data/test_dataset.json"\nquality_categories = ["qa"]\nquality_limit = 20\n',
    )
    cfg = load_config(path)
    assert cfg.search == {
        "slo": {"ttft_ms": 500, "itl_ms": {"p99": 50}},
        "target": 0.9,
        "trials": 4,
        "max_level": 16,
        "quality_dataset": "data/test_dataset.json",
        "quality_categories": ["qa"],
        "quality_limit": 20,
    }
    assert parse_config(BASE, "c").search == {}


@pytest.mark.parametrize(
    "table,message",
    [
        ({"targte": 0.9}, r"c: unknown key 'search.targte' \(allowed: confidence, factor, .*, slo, .*, trials\)"),
        ({"trials": 2}, "c: key 'search.trials' must be at least 3, got 2"),
        ({"over": "rate"}, "c: key 'search.over' must be"),
        ({"slo": {"ttft": 5}}, "c: key 'search.slo'.*not one of"),
        ({"quality_categories": ["math"]}, "c: key 'search.quality_categories' has 'math'"),
    ],
)
def test_bad_search_keys_name_the_file_and_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "search": table}, "c")


def test_search_config_runs_against_the_mock_and_the_flags_override_it(tmp_path, capsys):
    with MockServer(ttft_ms=1, gap_ms=2, tokens=4) as server:
        path = _write(
            tmp_path,
            f'name = "mocked"\nengine = "openai"\nmodel = "mock"\n[server]\nbase_url = "{server.base_url}"\n'
            '[load_test]\nnum_requests = 10\noutput_tokens = 4\nprompts = ["a", "b", "c"]\n'
            "[search]\nslo = { ttft_ms = 10000 }\ntarget = 0.8\nstart = 1\nmax_level = 8\n",
        )
        # The flag lowers max_level from the file's 8 to 2; the server is the file's.
        code = main(["search", "--config", str(path), "--max-level", "2", "--results-dir", str(tmp_path / "r"),
                     "--no-progress", "--json"])  # fmt: skip
        assert code == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["highest_passing"] == 2 and [lv["level"] for lv in answer["levels"]] == [1, 2]
        assert answer["config"]["search"]["max_level"] == 2 and answer["config"]["search"]["target"] == 0.8
        assert answer["config"]["load_test"]["num_requests"] == 10 and answer["config"]["label"] == "mocked"
        assert answer["config"]["base_url"] == server.base_url
        # A flag breaking a rule between options: the message names the file's table.
        assert main(["search", "--config", str(path), "--start", "16", "--no-save"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: [search] with the flags given: start (16.0) must be at most max_level (8" in err
