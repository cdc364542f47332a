"""The readers of user files never fail with anything but their documented error: random bytes,
random TOML-ish text and random JSON(L) give ``ConfigError`` (configurations, options) or
``DatasetError`` (prompts, datasets; a ``ConfigError`` too), never a traceback of another type.
Bounded: a few hundred examples in all, well under 30 s."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optbench
from optbench.config import load_config
from optbench.datasets import load_test_dataset
from optbench.exceptions import ConfigError, DatasetError
from optbench.jsonl import read_jsonl
from optbench.options import EvaluationOptions, LoadTestOptions, check_table

FUZZ = settings(
    max_examples=60,
    deadline=2000,
    derandomize=True,  # the same examples on every run: a failure is reproducible, never flaky
    database=None,  # nothing written into the repository (.hypothesis/)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- strategies

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
#: Valid UTF-8 text, bytes that are not, and text cut anywhere in a multi-byte character.
BYTES = st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8")[:-1])


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"


TOML_SCALARS = st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=12)
TOML_KEYS = st.from_regex(r"[a-z_]{1,8}", fullmatch=True)


def _toml_containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(inner, max_size=3) | st.dictionaries(TOML_KEYS, inner, max_size=3)


TOML_VALUES = st.recursive(TOML_SCALARS, _toml_containers, max_leaves=8)
KEYS = [
    "name", "engine", "model", "port", "host", "baseline", "ready_timeout_s", "description",
    "num_requests", "concurrency", "request_rate", "arrival", "burstiness", "input_tokens", "output_tokens",
    "seed", "warmup", "timeout_s", "temperature", "prompts", "extra_body", "categories", "limit", "max_tokens",
    "templates", "stop", "gsm8k_mode", "model_path", "parallel", "ctx_size", "gpu_memory_utilization",
    "quantization", "extra_args", "base_url", "api_key_env", "max_num_seqs", "unknown_key",
]  # fmt: skip
SECTIONS = ["", "[server]", "[load_test]", "[evaluation]", "[env]", "[other]", "[server.x]", "[[load_test]]"]
ENGINES = st.sampled_from(["llama_cpp", "vllm", "sglang", "openai", "tgi"])


@st.composite
def toml_documents(draw: st.DrawFn) -> bytes:
    """A configuration in TOML's shape: a valid start (or not), then sections and key = value lines
    from the keys optbench knows, with values of any TOML type, and now and then a broken line."""
    lines = []
    if draw(st.booleans()):
        lines += [f"engine = {json.dumps(draw(ENGINES))}", 'model = "m"']
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append(draw(st.sampled_from(SECTIONS)))
        elif kind == 1:
            lines.append(draw(st.text(max_size=30)))  # anything at all
        else:
            lines.append(f"{draw(st.sampled_from(KEYS))} = {_toml_value(draw(TOML_VALUES))}")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def datasets(draw: st.DrawFn) -> object:
    """A dataset document: the right shape with random items, or any JSON value."""
    if draw(st.booleans()):
        return draw(JSON_VALUES)
    item = st.fixed_dictionaries(
        {
            "id": st.text(max_size=5) | st.integers(),
            "category": st.sampled_from(["qa", "reasoning", "chat", "code", "x"]),
        },
        optional={
            "prompt": JSON_VALUES | st.fixed_dictionaries({"messages": JSON_VALUES}),
            "answers": JSON_VALUES,
            "reference": JSON_VALUES,
            "final_answer": JSON_VALUES,
        },
    )
    return {
        "version": 1,
        "seed": 0,
        "source": "x",
        "counts": draw(JSON_VALUES),
        "items": draw(st.lists(item, max_size=4)),
    }


# --------------------------------------------------------------------------- configuration files


@FUZZ
@given(data=BYTES | toml_documents())
def test_configuration_files_raise_only_config_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(e).startswith(f"{path}"), str(e)
    else:  # a valid configuration: its tables make valid options
        LoadTestOptions.make(**cfg.load_test)
        EvaluationOptions.make(**cfg.evaluation)


@FUZZ
@given(table=st.dictionaries(st.sampled_from(KEYS), TOML_VALUES | JSON_VALUES, max_size=5))
def test_options_tables_raise_only_config_errors(table: dict[str, object]) -> None:
    for cls in (LoadTestOptions, EvaluationOptions):
        try:
            check_table(cls, "fuzz.toml", table)
        except ConfigError as e:
            assert str(e).startswith("fuzz.toml: "), str(e)
        try:
            cls.make(**table)
        except ConfigError:
            pass


# --------------------------------------------------------------------------- prompts and datasets


@FUZZ
@given(
    data=BYTES
    | st.lists(JSON_VALUES.map(json.dumps) | st.text(max_size=20), max_size=6).map(lambda ls: "\n".join(ls).encode())
)
def test_prompt_files_raise_only_dataset_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(data)
    try:
        rows = read_jsonl(path)
    except DatasetError as e:
        assert str(e).startswith(f"{path} line "), str(e)
    else:
        assert all(isinstance(n, int) and n >= 1 for n, _ in rows)
    try:
        prompts = optbench.load_user_prompts(path)
    except DatasetError as e:
        assert str(e).startswith(f"{path}"), str(e)
    else:
        assert len(prompts) >= 1


@FUZZ
@given(data=BYTES | datasets().map(lambda d: json.dumps(d).encode()))
def test_dataset_files_raise_only_dataset_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "test_dataset.json"
    path.write_bytes(data)
    try:
        items = load_test_dataset(path)
    except DatasetError as e:
        assert str(e).startswith(f"{path}"), str(e)
    else:
        assert isinstance(items, list)


@pytest.mark.parametrize("depth", [100_000])
def test_deeply_nested_files_are_errors_too(tmp_path: Path, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    (tmp_path / "c.toml").write_text('engine = "vllm"\nmodel = "m"\nx = ' + nested + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "p.jsonl").write_text('"ok"\n' + nested + "\n")
    with pytest.raises(DatasetError, match=r"p.jsonl line 2: not valid JSON \(nested too deeply\)"):
        optbench.load_user_prompts(tmp_path / "p.jsonl")
    (tmp_path / "d.json").write_text(nested)
    with pytest.raises(DatasetError, match="nested too deeply"):
        load_test_dataset(tmp_path / "d.json")
