"""Every bad input is a clear error before any work starts, naming the file, key, line or flag:
no traceback, no wrong result, no secret written anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import optbench
from optbench import results, scoring
from optbench.cli import build_parser, main
from optbench.config import ServerConfig, load_config, parse_config
from optbench.datasets import load_test_dataset
from optbench.evaluate import save_evaluation
from optbench.exceptions import ConfigError, DatasetError
from optbench.options import EvaluationOptions
from optbench.results import save_load_test
from optbench.run import run
from optbench.testing import MockServer

ROOT = Path(__file__).resolve().parents[1]
#: Nothing listens on the discard port: a request sent there would fail, not hang.
NOWHERE = "http://127.0.0.1:9"


def optbench_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optbench", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--output-tokens", "-1", "at least 1"),
        ("--output-tokens", "0", "at least 1"),
        ("--output-tokens", "5000000000", "at most 2^32-1"),
        ("--input-tokens", "-1", "at least 1"),
        ("--input-tokens", "99999999999", "at most 1048576"),
        ("--seed", "-1", "at least 0"),
        ("--seed", str(2**64), "at most 2^64-1"),
        ("--warmup", str(10**12), "at most 1000000"),
        ("--num-requests", "0", "at least 1"),
        ("--concurrency", "0", "at least 1"),
        ("--temperature", "nan", "a finite number"),
        ("--temperature", "inf", "a finite number"),
        ("--temperature", "-0.5", "at least 0"),
        ("--timeout-s", "1e30", "at most 604800"),
        ("--time-limit-s", "0", "above 0"),
        ("--request-rate", "-1", "above 0"),
        ("--burstiness", "0", "above 0"),
    ],
)
def test_load_test_flags_out_of_bounds_name_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["load-test", "--base-url", NOWHERE, "--model", "m", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be " in err and message in err, err


@pytest.mark.parametrize(
    "flag,value", [("--output-tokens", "5000000000"), ("--seed", str(2**64)), ("--input-tokens", "-1")]
)
def test_load_test_numbers_too_big_for_the_core_are_not_a_traceback(flag, value):
    out = optbench_cli("load-test", "--base-url", NOWHERE, "--model", "m", "--no-save", flag, value)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"argument {flag}: must be " in out.stderr


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--limit", "0"], "argument --limit: must be at least 1, got 0"),
        (["--categories", "qa,maths"], "argument --categories: has 'maths', which is not one of qa, reasoning"),
        (["--max-tokens", '{"qa": 0}'], "argument --max-tokens: qa must be at least 1, got 0"),
        (["--max-tokens", '{"poetry": 5}'], "argument --max-tokens: has 'poetry'"),
        (["--code-timeout-s", "nan"], "argument --code-timeout-s: must be a finite number, got nan"),
        (["--extra-body", '{"stream": false}'], "argument --extra-body: has 'stream', which the evaluator sets itself"),
        (
            ["--sandbox-workers", str(2**70)],
            "argument --sandbox-workers: must be at most 4096, got 1180591620717411303424",
        ),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "quality-under-load"])
def test_evaluate_flags_out_of_bounds_name_the_flag(command, flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--base-url", NOWHERE, "--model", "m", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "values,message",
    [
        (dict(output_tokens=5_000_000_000), r"^output_tokens must be at most 2\^32-1, got 5000000000$"),
        (dict(seed=-1), "^seed must be at least 0, got -1$"),
        (dict(timeout_s=1e30), "^timeout_s must be at most 604800, got 1e"),
        (dict(time_limit_s=float("inf")), "^time_limit_s must be a finite number, got inf$"),
        (dict(temperature=float("nan")), "^temperature must be a finite number, got nan$"),
        (dict(warmup=10**12), "^warmup must be at most 1000000"),
        (dict(concurrency=None), "^concurrency must be an integer in a closed loop"),
    ],
)
def test_the_api_rejects_out_of_bounds_options_before_any_request(values, message):
    with MockServer(ttft_ms=1, gap_ms=1, tokens=2) as server:
        with pytest.raises(ConfigError, match=message):
            optbench.load_test(server.base_url, "mock", prompts=["a"], progress=False, **values)
        assert server.log() == []


@pytest.mark.parametrize(
    "values,message",
    [
        (dict(categories=["qa", "maths"]), "^categories has 'maths', which is not one of qa, reasoning, chat, code$"),
        (dict(limit=0), "^limit must be at least 1, got 0$"),
        (dict(max_tokens={"qa": 0}), r"^max_tokens\.qa must be at least 1, got 0$"),
        (dict(stop={"poetry": ["\n"]}), "^stop has 'poetry'"),
        (dict(templates={"qa": {"instruction": "x"}}), r"^templates\.qa needs 'shot' and 'target'"),
        (dict(templates={"chat": {"shot": "", "target": ""}}), "^templates has 'chat', which is not one of"),
        (dict(code_timeout_s=float("inf")), "^code_timeout_s must be a finite number"),
        (dict(code_timeout_s=90_000.0), "^code_timeout_s must be at most 86400"),
    ],
)
def test_evaluation_options_are_checked_when_built(values, message):
    with pytest.raises(ConfigError, match=message):
        EvaluationOptions(**values)


# --------------------------------------------------------------------------- the embedded server's slots


@pytest.mark.parametrize(
    "argv",
    [
        ["load-test", "--embedded", "--parallel", "0"],
        ["evaluate", "--embedded", "--parallel", "-2"],
        ["embedded-server", "--parallel", "0"],
        ["embedded-server", "--port", "70000"],
    ],
)
def test_embedded_slots_and_ports_out_of_bounds_are_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "must be from 1 to" in capsys.readouterr().err


# --------------------------------------------------------------------------- files that are not UTF-8


def test_a_config_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "x.toml"
    path.write_bytes(b'engine = "vllm"\nmodel = "m"\ndescription = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=rf"^{path} line 3: not UTF-8 \(byte 0xe9 at column 19\)$"):
        load_config(path)
    out = optbench_cli("serve", "--print-command", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr and f"{path} line 3: not UTF-8" in out.stderr


def test_a_prompts_file_that_is_not_utf8_names_its_exact_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": f"a prompt long enough to fill the read buffer {i}"}).encode() for i in range(2000)]
    lines[1500] = b'{"prompt": "bad \xff byte"}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DatasetError, match=rf"^{path} line 1501: not UTF-8 \(byte 0xff at column 17\)$"):
        optbench.load_user_prompts(path)


def test_a_dataset_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "test_dataset.json"
    path.write_bytes(b'{\n "version": 1,\n "items": ["\xc3("]\n}\n')
    with pytest.raises(DatasetError, match=rf"^{path} line 3: not UTF-8"):
        load_test_dataset(path)


# --------------------------------------------------------------------------- credentials in URLs


def _files_and_names(folder: Path) -> str:
    """Every file's bytes (Parquet metadata included) and every path under ``folder``, as text."""
    parts = []
    for p in sorted(folder.rglob("*")):
        parts.append(str(p.relative_to(folder)))
        if p.is_file():
            parts.append(p.read_bytes().decode("utf-8", "replace"))
            if p.suffix == ".parquet":
                parts.append(str(pq.read_schema(p).metadata))
    return "\n".join(parts)


def test_credentials_in_the_url_are_never_written(tmp_path):
    items = [
        {
            "id": f"qa-{i}",
            "category": "qa",
            "prompt": {"context": "Paris is in France.", "question": "Where is Paris?"},
            "answers": ["France"],
            "reference": "France",
        }
        for i in range(3)
    ]
    with MockServer(ttft_ms=1, gap_ms=1, tokens=3) as server:
        url = server.base_url.replace("http://", "http://alice:s3cret-pw@")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lt = optbench.load_test(url, "mock", num_requests=3, concurrency=1, output_tokens=3, progress=False)
            ev = optbench.evaluate(url, "mock", dataset=items, categories=["qa"], progress=False)
        assert lt.summary["num_succeeded"] == 3 and ev.summary["num_failed"] == 0
        save_load_test(lt, tmp_path / "results")
        save_evaluation(ev, tmp_path / "results")
        # An openai configuration with the same URL: meta.json, even its failure reason, too.
        cfg = parse_config(
            {"engine": "openai", "model": "mock", "server": {"base_url": url}, "load_test": {"num_requests": 2}},
            "cred.toml",
        )
        run([cfg], profile="quick", dataset=None, results_dir=tmp_path / "results", report_path=tmp_path / "R.md")
    assert "s3cret-pw" not in lt.label and "alice" not in lt.label
    assert lt.config["base_url"] == server.base_url and ev.config["base_url"] == server.base_url
    written = _files_and_names(tmp_path)
    assert "load_test_results.csv" in written and "requests.parquet" in written and "meta.json" in written
    assert "s3cret-pw" not in written and "alice" not in written


# --------------------------------------------------------------------------- configuration files


def _config(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text('engine = "vllm"\nmodel = "m"\n' + text)
    return path


@pytest.mark.parametrize(
    "text,message",
    [
        ("[load_test]\nconcurrency = -1\n", "key 'load_test.concurrency' must be at least 1, got -1"),
        ("[load_test]\nconcurrency = 0\n", "key 'load_test.concurrency' must be at least 1, got 0"),
        ("[load_test]\nnum_requests = 0\n", "key 'load_test.num_requests' must be at least 1, got 0"),
        ("[load_test]\nendpoint = 'embeddings'\n", "key 'load_test.endpoint' must be one of 'completions', 'chat'"),
        ("[load_test]\ntemperature = nan\n", "key 'load_test.temperature' must be a finite number, got nan"),
        ("[load_test]\nconcurency = 4\n", "unknown key 'load_test.concurency'"),
        ("[evaluation]\ncategories = ['qa', 'math']\n", "key 'evaluation.categories' has 'math', which is not one of"),
        ("[evaluation]\nlimit = 0\n", "key 'evaluation.limit' must be at least 1, got 0"),
        ("[evaluation]\nmax_tokens = { qa = 0 }\n", "key 'evaluation.max_tokens'.qa must be at least 1, got 0"),
        ("ready_timeout_s = inf\n", "key 'ready_timeout_s' must be a finite number"),
        ("ready_timeout_s = -5\n", "key 'ready_timeout_s' must be above 0"),
        ("[server]\ngpu_memory_utilization = nan\n", "key 'server.gpu_memory_utilization' must be a finite number"),
    ],
)
def test_bad_load_test_and_evaluation_tables_name_the_file_and_key(tmp_path, text, message):
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def test_bad_tables_fail_before_any_server_starts(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(
        'engine = "openai"\nmodel = "m"\n[server]\nbase_url = "http://127.0.0.1:9"\n[evaluation]\n'
        'categories = ["qa", "poetry"]\n'
    )
    out = optbench_cli("run", str(path), "--results-dir", str(tmp_path / "results"), "--report", str(tmp_path / "R.md"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{path}: key 'evaluation.categories' has 'poetry'" in out.stderr
    assert not (tmp_path / "results").exists()


def test_rules_between_options_fail_before_any_server_starts(tmp_path):
    cfg = ServerConfig(
        name="open", engine="openai", model="m", server={"base_url": NOWHERE}, load_test={"concurrency": None}
    )
    with pytest.raises(
        ConfigError, match=r"^configuration 'open': \[load_test\]: concurrency must be an integer in a closed loop"
    ):
        run([cfg], profile="quick", dataset=None, results_dir=tmp_path / "results", report_path=tmp_path / "R.md")
    assert not (tmp_path / "results").exists()


def test_a_former_value_in_a_configuration_still_works(tmp_path):
    cfg = load_config(_config(tmp_path, '[evaluation]\ngsm8k_mode = "default"\n'))
    with pytest.warns(DeprecationWarning, match="'default' is deprecated"):
        assert EvaluationOptions.make(**cfg.evaluation).gsm8k_mode == "marked-or-last"


@pytest.mark.parametrize("name", ["../x", "/abs/olute", ".hidden", "a b", "a/b", "", "x" * 200])
def test_configuration_names_are_safe_folder_names(tmp_path, name):
    path = _config(tmp_path, "", "ok.toml")
    path.write_text(f"name = {json.dumps(name)}\n" + path.read_text())
    if name == "":  # an empty name falls back to the file's stem
        assert load_config(path).name == "ok"
        return
    with pytest.raises(ConfigError, match=rf"^{path}: key 'name' must be letters, digits, '.', '_' or '-'"):
        load_config(path)


def test_run_checks_names_of_configurations_built_in_python(tmp_path):
    cfg = ServerConfig(name="../../etc", engine="openai", model="m", server={"base_url": NOWHERE})
    with pytest.raises(ConfigError, match=r"^configuration '../../etc': its name must be letters"):
        run([cfg], profile="quick", dataset=None, results_dir=tmp_path / "results", report_path=tmp_path / "R.md")
    assert not (tmp_path / "results").exists()


def test_a_file_name_that_is_not_a_safe_name_asks_for_a_name(tmp_path):
    path = _config(tmp_path, "", "my config.toml")
    with pytest.raises(ConfigError, match=r"the file's name \(set key 'name'\) must be letters"):
        load_config(path)
    path.write_text('name = "my_config"\n' + path.read_text())
    assert load_config(path).name == "my_config"


# --------------------------------------------------------------------------- scoring


def test_humaneval_items_with_missing_keys_name_them():
    with pytest.raises(ConfigError, match=r"^item 1 is missing 'test', 'entry_point' \(a HumanEval item needs"):
        scoring.humaneval(
            [{"prompt": "def f():\n", "test": "", "entry_point": "f"}, {"prompt": "def g():\n"}], ["  pass", "  pass"]
        )
    with pytest.raises(ConfigError, match=r"^item 0: 'test' must be a string, got int$"):
        scoring.humaneval([{"prompt": {"prompt": "x"}, "test": 3, "entry_point": "f"}], ["  pass"])
    with pytest.raises(ConfigError, match="^timeout_s must be a positive number of seconds, got inf$"):
        scoring.humaneval([], [], timeout_s=float("inf"))


# --------------------------------------------------------------------------- the command line's errors


def test_an_os_error_is_one_line_and_a_bug_a_traceback(monkeypatch, capsys):
    import optbench.cli as cli

    def unwritable(args):
        raise PermissionError(13, "Permission denied", "/results/x.csv")

    monkeypatch.setattr(cli, "_cmd_info", unwritable)
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "optbench: error: [Errno 13] Permission denied: '/results/x.csv'\n"

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_cmd_info", bug)
    with pytest.raises(ZeroDivisionError):
        main(["info"])


def test_an_os_error_from_a_command_is_not_a_traceback(tmp_path, shared_dir):
    source = shared_dir / "datasets"
    if not (source / "gsm8k_test.jsonl").is_file():
        pytest.skip("no local dataset sources")
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = optbench_cli("dataset", "build", "--source", str(source), "--output", str(blocker / "data.json"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("optbench: error: [Errno 17] File exists")


# --------------------------------------------------------------------------- the results folder


def test_ensure_results_dir(tmp_path):
    assert results.ensure_results_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write check leaves nothing
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"results folder .*file: is a file, not a folder"):
        results.ensure_results_dir(tmp_path / "file")
    with pytest.raises(ConfigError, match=r"results folder .*sub: cannot create it or write in it \(Not a directory\)"):
        results.ensure_results_dir(tmp_path / "file" / "sub")
    with pytest.raises(ConfigError, match=r"cannot create it or write in it"):
        results.ensure_results_dir("/proc/optbench-results")  # not even root creates folders in /proc


@pytest.mark.parametrize("command", ["load-test", "evaluate"])
def test_a_bad_results_dir_fails_before_any_request(tmp_path, command):
    (tmp_path / "file").write_text("")
    dataset = tmp_path / "d.json"
    dataset.write_text("{}")
    with MockServer(ttft_ms=1, gap_ms=1, tokens=2) as server:
        args = [command, "--base-url", server.base_url, "--model", "mock", "--results-dir", str(tmp_path / "file")]
        args += (
            ["--num-requests", "2", "--input-tokens", "8"] if command == "load-test" else ["--dataset", str(dataset)]
        )
        out = optbench_cli(*args)
        assert server.log() == []
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"results folder {tmp_path / 'file'}: is a file, not a folder" in out.stderr


def test_run_checks_the_results_dir_before_any_server_starts(tmp_path):
    (tmp_path / "file").write_text("")
    with MockServer(ttft_ms=1, gap_ms=1, tokens=2) as server:
        cfg = parse_config({"engine": "openai", "model": "mock", "server": {"base_url": server.base_url}}, "x")
        with pytest.raises(ConfigError, match="is a file, not a folder"):
            run([cfg], profile="quick", dataset=None, results_dir=tmp_path / "file", report_path=tmp_path / "R.md")
        assert server.log() == []
