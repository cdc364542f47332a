"""The options of a load test and of an evaluation are declared once (optbench.options); the
API, the command line, the configuration files, the profiles, the README and the results all
follow them, and these tests fail when one of them drifts."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import subprocess
import sys
import types
import typing
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import optbench
from optbench import options as opt
from optbench.cli import build_parser
from optbench.config import parse_config
from optbench.exceptions import ConfigError
from optbench.options import EvaluationOptions, LoadTestOptions
from optbench.options_cli import options_from_cli
from optbench.run import PROFILES
from optbench.testing import MockServer

ROOT = Path(__file__).resolve().parents[1]
BOTH = [LoadTestOptions, EvaluationOptions]


def _sample(tp, default):
    """A valid value of type ``tp`` other than ``default``, as a configuration file can hold it."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return _sample(args[0], default)
    if typing.get_origin(tp) is typing.Literal:
        return next(a for a in args if a != default)
    if tp is bool:
        return not default
    if tp is int:
        return (default or 0) + 3
    if tp is float:
        return (default or 0.0) + 0.5
    if tp is str:
        return "sample.jsonl"
    if typing.get_origin(tp) is list:
        return [_sample(args[0], None)] if args[0] is not typing.Any else ["a prompt"]
    if typing.get_origin(tp) is dict:
        return {"qa": _sample(args[1], None) if args[1] is not typing.Any else 1}
    raise AssertionError(f"no sample for {tp}")


#: A valid value other than the default for every field of each class, from its type.
SAMPLE = {
    cls: {f.name: _sample(typing.get_type_hints(cls)[f.name], f.default) for f in dataclasses.fields(cls)}
    for cls in BOTH
}
# Fields whose values are names: a valid name rather than any string.
SAMPLE[EvaluationOptions]["categories"] = ["qa"]
SAMPLE[LoadTestOptions]["slo"] = {"ttft_ms": 500, "itl_ms": {"p99": 50}}
# A shared-prefix workload builds its own prompts, and a trace sets the requests and their
# times: they exclude prompts, request_rate, warmup..., so the sample (which sets every other
# field) leaves prompts and trace at their defaults.
SAMPLE[LoadTestOptions]["prompts"] = None
SAMPLE[LoadTestOptions]["trace"] = None
LEFT_AT_DEFAULT = {"prompts", "trace"}
SAMPLE[EvaluationOptions]["templates"] = {"qa": {"shot": "Q: {question}\nA: {answer}\n", "target": "Q: {question}\nA:"}}


def test_every_field_has_a_doc_line():
    for cls in BOTH:
        for f in dataclasses.fields(cls):
            doc = f.metadata.get("doc", "")
            assert doc and "\n" not in doc, f"{cls.__name__}.{f.name} needs one line of doc"
            assert SAMPLE[cls][f.name] != f.default or f.name in LEFT_AT_DEFAULT


@pytest.mark.parametrize("cls", BOTH, ids=lambda c: c.__name__)
def test_the_readme_tables_are_the_generated_ones(cls):
    table = opt.markdown_table(cls)
    assert table in (ROOT / "README.md").read_text(), (
        f"README.md's {cls.__name__} table is out of date: run scripts/readme_tables.py (the table is:\n\n{table}\n)"
    )


def _together(cls, values):
    """``values`` with the fields that exclude each other made compatible: multi-turn sessions
    (the samples set them) exclude an open loop, a warm-up, prompts and shared prefixes."""
    together = dict(values)
    if cls is LoadTestOptions:
        together.update(request_rate=None, warmup=0, prompts=None, endpoint="chat", shared_prefixes=None)
    return together


@pytest.mark.parametrize("cls", BOTH, ids=lambda c: c.__name__)
def test_a_configuration_file_can_set_every_field(cls):
    values = SAMPLE[cls]
    cfg = parse_config({"engine": "vllm", "model": "m", cls.section: values}, "configs/x.toml")
    assert getattr(cfg, cls.section) == values
    together = _together(cls, values)
    assert cls.make(**together).to_dict() == together
    with pytest.raises(
        ConfigError, match=rf"configs/x.toml: unknown key '{cls.section}.nope' \(allowed: .*concurrency"
    ):
        parse_config({"engine": "vllm", "model": "m", cls.section: {"nope": 1}}, "configs/x.toml")


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("load_test", "num_requests", "10", "must be an integer"),
        ("load_test", "warmup", -1, "must be at least 0"),
        ("load_test", "ignore_eos", 1, "must be true or false"),
        ("load_test", "arrival", "weibull", "must be one of 'constant', 'poisson', 'gamma'"),
        ("load_test", "extra_body", "top_k=1", "must be a table"),
        ("evaluation", "stop", {"code": "def"}, "must be a table of lists of strings"),
        ("evaluation", "gsm8k_mode", "fuzzy", "must be one of 'marked-or-last'"),
        (
            "evaluation",
            "extra_body",
            {"top_p": 0.9, "temperature": 1, "max_tokens": 5},
            r"has 'max_tokens', 'temperature', which the evaluator sets itself .*leave it out of extra_body",
        ),
    ],
)
def test_configuration_errors_name_the_file_and_key(section, key, value, message):
    with pytest.raises(ConfigError, match=rf"^configs/x.toml: key '{section}.{key}' {message}"):
        parse_config({"engine": "vllm", "model": "m", section: {key: value}}, "configs/x.toml")


def _cli_values(cls, command: list[str]) -> list[str]:
    argv = []
    for f in dataclasses.fields(cls):
        value = SAMPLE[cls][f.name]
        flag = "--" + f.name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:  # an option on by default: its --no- form
            argv.append("--no-" + flag[2:])
        elif value is None:
            argv += [flag, ""]  # '' means None
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif isinstance(value, list):
            argv += [flag, ",".join(value)]
        else:
            argv += [flag, str(value)]
    return command + argv


@pytest.mark.parametrize(
    "cls,command", [(LoadTestOptions, ["load-test"]), (EvaluationOptions, ["evaluate"])], ids=["load-test", "evaluate"]
)
def test_the_command_line_has_one_option_per_field(cls, command):
    args = build_parser().parse_args(_cli_values(cls, command))
    given = options_from_cli(cls, args)
    assert given == SAMPLE[cls]
    assert cls.make(**_together(cls, given)).to_dict() == _together(cls, SAMPLE[cls])
    # Options left out are not passed: the fields' defaults apply.
    assert options_from_cli(cls, build_parser().parse_args(command)) == {}


def test_help_prints_each_default_once():
    out = subprocess.run([sys.executable, "-m", "optbench", "load-test", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "measured requests; from 1 to 1000000 (default 100)" in text
    assert "(default: " not in text and text.count("(default 100)") == 1
    for f in dataclasses.fields(LoadTestOptions):
        assert "--" + f.name.replace("_", "-") in text


def test_bad_json_on_the_command_line_names_the_option():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["load-test", "--extra-body", "{nope"])


def test_profiles_are_options():
    for name, profile in PROFILES.items():
        assert isinstance(profile.load_test, LoadTestOptions) and isinstance(profile.evaluation, EvaluationOptions)
    ref = PROFILES["reference"].load_test
    assert (ref.num_requests, ref.concurrency, ref.input_tokens, ref.output_tokens) == (100, 8, 2048, 1024)


def test_former_names_still_work_with_a_deprecation_warning():
    run_module = importlib.import_module("optbench.run")  # optbench.run is also the function

    with pytest.warns(DeprecationWarning, match="'full' is deprecated: use 'reference'"):
        assert run_module.profile_named("full") is PROFILES["reference"]
    with pytest.warns(DeprecationWarning, match="BRIEF_LOAD_TEST is deprecated"):
        assert run_module.BRIEF_LOAD_TEST["num_requests"] == 100
    with pytest.warns(DeprecationWarning, match="gsm8k_mode='default' is deprecated"):
        assert EvaluationOptions(gsm8k_mode="default").gsm8k_mode == "marked-or-last"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EvaluationOptions(gsm8k_mode="marked-or-last")


def test_types_are_checked_once_naming_the_field():
    with pytest.raises(ConfigError, match="^concurrency must be an integer or None, got 'eight'$"):
        LoadTestOptions(concurrency="eight")
    with pytest.raises(ConfigError, match=r"unknown LoadTestOptions field\(s\) \['num_requets'\]"):
        LoadTestOptions.make(num_requets=5)
    with pytest.raises(ConfigError, match="^max_tokens must be a table of integers or None"):
        EvaluationOptions(max_tokens={"qa": "many"})
    # Paths and tuples become JSON values, so options compare and serialise.
    assert LoadTestOptions(prompts=Path("p.jsonl")).prompts == "p.jsonl"
    assert EvaluationOptions(categories=("qa",)).categories == ["qa"]


def test_progress_accepts_what_its_type_says(capsys):
    from optbench.driver import Progress

    for func in (optbench.load_test, optbench.aload_test, optbench.evaluate, optbench.aevaluate):
        assert inspect.signature(func).parameters["progress"].annotation == "Progress"
    assert typing.get_args(Progress)[1] == typing.Literal["tqdm"]
    with MockServer(ttft_ms=2, gap_ms=1, tokens=4) as server:
        optbench.load_test(
            server.base_url,
            "mock",
            num_requests=3,
            concurrency=1,
            output_tokens=4,
            prompts=["a"],
            label="bar",
            progress="tqdm",
            progress_interval_s=0.01,
        )
    assert "bar: 100%" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cls,func",
    [(LoadTestOptions, optbench.load_test), (EvaluationOptions, optbench.evaluate)],
    ids=["load_test", "evaluate"],
)
def test_the_api_takes_options_and_keywords(cls, func):
    params = inspect.signature(func).parameters
    assert "options" in params and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert not set(params) & {f.name for f in dataclasses.fields(cls)}, "options are declared in the class only"


def _stub_parameters(name: str) -> set[str]:
    tree = ast.parse((ROOT / "python" / "optbench" / "_core.pyi").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    new = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__new__")
    return {a.arg for a in new.args.args + new.args.kwonlyargs}


def test_every_option_the_core_runs_is_in_its_stub():
    core = {f.name for f in dataclasses.fields(LoadTestOptions) if f.metadata.get("core", True)}
    missing = core - _stub_parameters("LoadTest")
    assert not missing, f"LoadTestOptions fields the Rust LoadTest does not take (per _core.pyi): {missing}"


def test_a_result_records_its_options_and_the_run_can_be_repeated(tmp_path):
    options = LoadTestOptions(
        num_requests=5, concurrency=2, output_tokens=4, prompts=["a", "b"], seed=3, extra_body={"top_k": 1}
    )
    with MockServer(ttft_ms=2, gap_ms=1, tokens=4) as server:
        r = optbench.load_test(server.base_url, "mock", options, warmup=1, progress=False)
        assert r.options == LoadTestOptions.make(options, warmup=1)
        path = r.to_parquet(tmp_path / "requests.parquet")
        recorded = json.loads(pq.read_schema(path).metadata[b"optbench.config"])
        assert recorded["base_url"] == server.base_url and recorded["model"] == "mock"
        again = LoadTestOptions.from_dict(recorded)
        assert again == r.options
        repeat = optbench.load_test(recorded["base_url"], recorded["model"], again, progress=False)
    assert repeat.summary["num_requests"] == 5 and repeat.summary["num_warmup"] == 1
    assert list(repeat.requests["output_tokens"]) == list(r.requests["output_tokens"])
