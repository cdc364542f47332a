"""Server configurations: one TOML file each, validated with errors that name the file, the key
and what is allowed.

A configuration says which engine serves which model, and how::

    name = "vllm_fp8_quantization"       # optional; default: the file's stem; letters, digits, . _ -
    engine = "vllm"                      # llama_cpp | vllm | sglang | openai (optbench.servers)
    model = "meta-llama/Llama-3.1-8B-Instruct"
    port = 8000                          # host defaults to 127.0.0.1
    baseline = false                     # the configuration others are compared with
    ready_timeout_s = 1200               # how long the server may take to load
    gpu_cost_per_hour = 3.50             # the hourly price of its GPUs: cost per million output tokens
    env = { VLLM_LOGGING_LEVEL = "INFO" }

    [server]                             # engine settings: each engine class's `keys`
    max_model_len = 8192                 # (optbench.servers.<engine>; listed in configs/README.md)
    quantization = "fp8"
    extra_args = ["--enforce-eager"]     # anything else, one argument per element

    [load_test]                          # any field of optbench.LoadTestOptions
    num_requests = 100

    [evaluation]                         # any field of optbench.EvaluationOptions
    limit = 20

    [search]                             # `optbench search --config`: any field of
    slo = { ttft_ms = 500, itl_ms = 50 } # optbench.search.SearchOptions, and the SLO searched
    target = 0.99                        # (the load test's `slo`); the flags override them
    quality_dataset = "data/test_dataset.json"

    [resources]                          # what its Ray task asks for (`optbench run --ray`)
    num_gpus = 1                         # default: the GPUs the [server] settings use
    num_cpus = 4                         # default 1
    accelerator_type = "H100"            # a node with this accelerator
    resources = { fast_disk = 1 }        # custom resources the nodes declare
    labels = { "ray.io/market-type" = "on-demand" }   # a node whose labels match (Ray >= 2.49)

The ``openai`` engine starts nothing: its ``[server]`` names ``base_url`` and ``api_key_env``
(the environment variable holding the key).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optbench import options
from optbench.exceptions import ConfigError
from optbench.jsonl import not_utf8

#: What a configuration's name may be: it names a folder under the run's (results/runs/<run id>/<name>).
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
#: The longest a server may take to load, in seconds (a day).
MAX_READY_TIMEOUT_S = 86_400
#: The highest hourly GPU price a configuration may give (a typing slip beyond it is an error).
MAX_GPU_COST_PER_HOUR = 1_000_000

TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "engine": str,
    "model": str,
    "description": str,
    "host": str,
    "port": int,
    "baseline": bool,
    "ready_timeout_s": (int, float),
    "gpu_cost_per_hour": (int, float),
    "env": dict,
    "server": dict,
    "load_test": dict,
    "evaluation": dict,
    "search": dict,
    "resources": dict,
}

#: The ``[resources]`` keys: type and one line of documentation (configs/README.md lists them).
RESOURCE_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "num_gpus": (
        (int, float),
        "GPUs the task reserves; a fraction below 1 shares one GPU, above 1 a whole number "
        "(default: the GPUs the `[server]` settings use)",
    ),
    "num_cpus": ((int, float), "CPUs the task reserves (default 1)"),
    "accelerator_type": (str, "run on a node with this accelerator, as Ray names it (`H100`, `A100`, `L4`, ...)"),
    "resources": (dict, "custom resources the task reserves, as the nodes declare them (`ray start --resources`)"),
    "labels": (dict, "run on a node whose labels match these selectors (Ray label selectors, Ray >= 2.49)"),
}
#: Resource names Ray reserves for its own arguments (never a custom resource).
RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


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
    #: The hourly price of the GPUs the configuration runs on (any currency): the report's cost
    #: per million output tokens. None: no cost.
    gpu_cost_per_hour: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    load_test: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    #: ``optbench search --config``'s options (:func:`check_search`); ``slo`` is the SLO searched.
    search: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in ts)


def check_table(where: str, table: dict[str, Any], allowed: dict[str, Any], prefix: str) -> None:
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
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: key '{full}' must be a finite number, got {value!r}")


def check_name(name: str, where: str, what: str = "key 'name'") -> None:
    """A configuration's name names its results folder: letters, digits, ``.``, ``_`` and
    ``-``, not starting with ``.`` (so never ``..`` or a path); else ``ConfigError``."""
    if not (isinstance(name, str) and SAFE_NAME.fullmatch(name)):
        raise ConfigError(
            f"{where}: {what} must be letters, digits, '.', '_' or '-', not starting with '.' "
            f"(it names the configuration's results folder), got {name!r}"
        )


def _check_resources(where: str, table: dict[str, Any]) -> dict[str, Any]:
    """The validated ``[resources]`` table (what a configuration's Ray task asks for)."""
    check_table(where, table, {k: t for k, (t, _) in RESOURCE_KEYS.items()}, "resources.")
    for key in ("num_gpus", "num_cpus"):
        if key in table and table[key] < 0:
            raise ConfigError(f"{where}: key 'resources.{key}' must be 0 or more, got {table[key]}")
    gpus = table.get("num_gpus", 0)
    if gpus > 1 and gpus != int(gpus):
        raise ConfigError(f"{where}: key 'resources.num_gpus' above 1 must be a whole number, got {gpus}")
    if table.get("accelerator_type") == "":
        raise ConfigError(f"{where}: key 'resources.accelerator_type' must not be empty")
    for name, amount in table.get("resources", {}).items():
        if name in RAY_BUILTIN_RESOURCES:
            raise ConfigError(
                f"{where}: key 'resources.resources.{name}': {name} is Ray's own resource, "
                "not a custom one (use resources.num_cpus / resources.num_gpus)"
            )
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ConfigError(f"{where}: key 'resources.resources.{name}' must be a number >= 0, got {amount!r}")
    for key, value in table.get("labels", {}).items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key 'resources.labels.{key}' must be a string, got {value!r}")
    return dict(table)


def parse_config(data: dict[str, Any], where: str = "<config>", path: Path | None = None) -> ServerConfig:
    """Validates a configuration table; errors name ``where``, the key and what is allowed."""
    check_table(where, data, TOP_KEYS, "")
    for required in ("engine", "model"):
        if required not in data:
            raise ConfigError(f"{where}: missing key '{required}'")
    from optbench.servers.base import all_engines

    engines = all_engines()
    engine = data["engine"]
    if engine not in engines:
        raise ConfigError(f"{where}: key 'engine' must be one of {', '.join(sorted(engines))}, got {engine!r}")
    server = dict(data.get("server", {}))
    engines[engine].check(where, server)
    load_test = options.check_table(options.LoadTestOptions, where, data.get("load_test", {}))
    evaluation = options.check_table(options.EvaluationOptions, where, data.get("evaluation", {}))
    env = data.get("env", {})
    for k, v in env.items():
        if not isinstance(v, str):
            raise ConfigError(f"{where}: key 'env.{k}' must be a string, got {v!r}")
    search = check_search(where, data.get("search", {}))
    resources = _check_resources(where, data.get("resources", {}))
    port = data.get("port")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{where}: key 'port' must be between 1 and 65535, got {port}")
    ready_timeout_s = data.get("ready_timeout_s", 600.0)
    if not 0 < ready_timeout_s <= MAX_READY_TIMEOUT_S:
        raise ConfigError(
            f"{where}: key 'ready_timeout_s' must be above 0 and at most {MAX_READY_TIMEOUT_S}, got {ready_timeout_s}"
        )
    cost = data.get("gpu_cost_per_hour")
    if cost is not None and not 0 <= cost <= MAX_GPU_COST_PER_HOUR:
        raise ConfigError(
            f"{where}: key 'gpu_cost_per_hour' must be from 0 to {MAX_GPU_COST_PER_HOUR} (an hourly price), got {cost}"
        )
    name = data.get("name") or (path.stem if path else engine)
    check_name(name, where, "key 'name'" if data.get("name") else "the file's name (set key 'name')")
    return ServerConfig(
        name=name,
        engine=engine,
        model=data["model"],
        path=path,
        description=data.get("description", ""),
        host=data.get("host", "127.0.0.1"),
        port=port,
        baseline=data.get("baseline", False),
        ready_timeout_s=float(ready_timeout_s),
        gpu_cost_per_hour=None if cost is None else float(cost),
        env=dict(env),
        server=server,
        load_test=load_test,
        evaluation=evaluation,
        search=search,
        resources=resources,
    )


#: The ``[search]`` keys besides :class:`~optbench.search.SearchOptions`' fields.
SEARCH_EXTRA_KEYS = ("slo",)


def check_search(where: str, table: dict[str, Any]) -> dict[str, Any]:
    """The validated ``[search]`` table: the fields of :class:`optbench.search.SearchOptions`
    each on its own (the rules between them apply once the flags are merged in) and ``slo``,
    the SLO searched (as the load test's ``slo``); errors name the file and the key."""
    from optbench.search import SearchOptions

    table = dict(table)
    allowed = sorted({f.name for f in dataclasses.fields(SearchOptions)} | set(SEARCH_EXTRA_KEYS))
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key 'search.{unknown[0]}' (allowed: {', '.join(allowed)})")
    if "slo" in table:
        problem = options.field_problem(options.LoadTestOptions, "slo", table["slo"])
        if problem is not None:
            raise ConfigError(f"{where}: key 'search.slo'{problem}")
    options.check_table(SearchOptions, where, {k: v for k, v in table.items() if k not in SEARCH_EXTRA_KEYS})
    return table


def run_settings(
    cfg: ServerConfig, load_test: options.LoadTestOptions, evaluation: options.EvaluationOptions
) -> tuple[options.LoadTestOptions, options.EvaluationOptions]:
    """Checks ``cfg`` for a run, before any server starts, and returns its options: its
    ``[load_test]`` and ``[evaluation]`` over ``load_test`` and ``evaluation`` (a profile's). A
    rule between options that the merge breaks (a closed loop without a concurrency, say), or a
    name that is not a safe folder name (a ``ServerConfig`` built in Python), raises
    ``ConfigError`` naming the file and the table or key."""
    where = str(cfg.path) if cfg.path else f"configuration {cfg.name!r}"
    check_name(cfg.name, where, "its name")
    section = "load_test"
    try:
        lt = options.LoadTestOptions.make(load_test, **cfg.load_test)
        section = "evaluation"
        ev = options.EvaluationOptions.make(evaluation, **cfg.evaluation)
    except ConfigError as e:
        raise ConfigError(f"{where}: [{section}]: {e}") from None
    return lt, ev


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
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(not_utf8(path, raw, e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None
    return parse_config(data, str(path), path)
